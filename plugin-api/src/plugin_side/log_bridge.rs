//! Plugin logs to the host: a `tracing` subscriber, installed as the global
//! default of each loaded plugin copy, that hands every event across the
//! ABI. The host re-emits it in its own subscriber tagged with the plugin's
//! name and version; nothing of the plugin's `tracing` (callsites, spans)
//! is shared with the host, so a reload cannot leave the host holding
//! pointers into an old copy.

use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Dispatch, Event, Level, Metadata, Subscriber};

use taskit_plugin_abi::{HostServices, LogLevel};

struct HostLog {
    host: HostServices,
}

fn level_of(level: &Level) -> LogLevel {
    match *level {
        Level::TRACE => LogLevel::Trace,
        Level::DEBUG => LogLevel::Debug,
        Level::INFO => LogLevel::Info,
        Level::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

impl Subscriber for HostLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.host.log_enabled(level_of(metadata.level()))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut message = crate::log::fields::Message::default();
        event.record(&mut message);
        let meta = event.metadata();
        self.host
            .log(level_of(meta.level()), meta.target(), &message.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Makes the host the destination of this plugin copy's `tracing` events.
pub(crate) fn install(host: HostServices) {
    let _ = tracing_core::dispatcher::set_global_default(Dispatch::new(HostLog { host }));
}

/// Sends one record to the host directly (used where `tracing` may not be
/// safe to enter, such as the panic hook).
pub(crate) fn send(level: LogLevel, target: &str, message: &str) {
    if let Some(host) = super::host() {
        host.log(level, target, message);
    }
}
