//! TaskIt's loggers as `tracing-subscriber` layers.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer};

use super::{format_line, Level};

/// Lets through records of the listed TaskIt levels only.
#[derive(Debug, Clone)]
pub struct Allowed(Vec<Level>);

impl Allowed {
    /// Lets through exactly `levels`.
    pub fn new(levels: &[Level]) -> Self {
        Self(levels.to_vec())
    }
}

impl<S> Filter<S> for Allowed {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        self.0.contains(&Level::of(meta.level()))
    }
}

/// TaskIt's `LoggerNode(children, allowed)`: records of an allowed level go
/// to every child; `None` allows every level. Nodes nest into trees.
pub fn node<S>(
    children: Vec<Box<dyn Layer<S> + Send + Sync>>,
    allowed: Option<&[Level]>,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match allowed {
        None => Box::new(children),
        Some(levels) => Box::new(children.with_filter(Allowed::new(levels))),
    }
}

/// TaskIt's `FileLogger`: writes `LEVEL (time)\tmessage` lines to any
/// `Write`, flushing every `flush_every` lines (never, with 0, until dropped
/// or flushed through [`FileLogger::flush_handle`]: a subscriber installed
/// globally is never dropped, so keep a handle to flush a buffered writer
/// before the program ends).
///
/// A record logged by the writer itself (an [`OutToLog`](super::OutToLog)
/// inside it, say) is dropped rather than written back into the writer.
pub struct FileLogger<W: Write + Send + 'static> {
    out: Arc<Mutex<(W, usize)>>,
    flush_every: usize,
}

/// Flushes a [`FileLogger`]'s writer from anywhere.
#[derive(Clone)]
pub struct FlushHandle(Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>);

impl FlushHandle {
    /// Flushes the logger's writer now.
    pub fn flush(&self) -> std::io::Result<()> {
        (self.0)()
    }
}

impl<W: Write + Send + 'static> FileLogger<W> {
    /// Writes TaskIt lines to `out`, flushing every `flush_every` lines
    /// (0: never, leave it to `out`).
    pub fn new(out: W, flush_every: usize) -> Self {
        Self {
            out: Arc::new(Mutex::new((out, 0))),
            flush_every,
        }
    }

    /// A handle that flushes this logger's writer.
    pub fn flush_handle(&self) -> FlushHandle {
        let out = Arc::clone(&self.out);
        FlushHandle(Arc::new(move || {
            out.lock().unwrap_or_else(PoisonError::into_inner).0.flush()
        }))
    }
}

thread_local! {
    /// Set while this thread writes a record, so a record logged by the
    /// writer is dropped instead of deadlocking on the logger's lock.
    static WRITING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl<W: Write + Send + 'static> Drop for FileLogger<W> {
    fn drop(&mut self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.0.flush();
    }
}

impl<S: Subscriber, W: Write + Send + 'static> Layer<S> for FileLogger<W> {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if WRITING.with(|w| w.replace(true)) {
            return;
        }
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                WRITING.with(|w| w.set(false));
            }
        }
        let _done = Done;
        self.write_event(event);
    }
}

impl<W: Write + Send + 'static> FileLogger<W> {
    fn write_event(&self, event: &Event<'_>) {
        let mut message = super::fields::Message::default();
        event.record(&mut message);
        let line = format_line(
            Level::of(event.metadata().level()),
            std::time::SystemTime::now(),
            &message.0,
        );
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let (writer, count) = &mut *out;
        // A log write that fails has nowhere to be reported; it is dropped.
        let _ = writer.write_all(line.as_bytes());
        if self.flush_every > 0 {
            *count += 1;
            if *count >= self.flush_every {
                let _ = writer.flush();
                *count = 0;
            }
        }
    }
}

/// TaskIt's `null_logger`: a layer that keeps nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullLogger;

impl<S: Subscriber> Layer<S> for NullLogger {}
