//! The TaskIt host: loads task plugins (`.so` files exporting
//! `taskit_plugin_api::export_plugin!`), keeps them in step with a watched
//! directory, and serves their tasks by id over TCP, in both protocols.
//!
//! # Layout
//!
//! A call travels down this table: the server reads it off the wire as a
//! [`TaskCall`], the registry resolves its id to a [`Route`], the route runs
//! it on a plugin version (or an in-process function) and counts it running.
//!
//! | module | what it holds |
//! |---|---|
//! | `server` | [`Server`]: listeners, both protocols, limits, the drain; dispatching calls and admin signals |
//! | `call` | [`TaskCall`]: one call, the same from the wire to the task |
//! | `registry` | [`Registry`]: task id → [`Route`], swapped atomically on reload; conflict ranking |
//! | `plugin_host` | [`PluginHost`]: a registry kept in step with a plugins directory |
//! | `watcher` | the thread applying changes: debouncing file events, the load policy |
//! | `loader` | one plugin version: shadow copy, ELF check, `dlopen`, ABI checks, `init` |
//! | `worker` | process isolation: plugin versions served by supervised worker processes |
//! | `counters` | the running-task count, in memory shared with the workers |
//! | `services` | what plugins may ask of the host across the ABI: the running count, logging |
//! | `tls` | [`ServerTls`]: the TLS binds' certificate, key and client CA; the clear side of a TLS connection |
//! | `metrics` | [`MetricsEndpoint`]: counters of calls, gauges, `/metrics` and `/healthz` |
//!
//! Embedding: serve your own functions with [`Registry::register`] and
//! [`Server::start`], with or without a [`PluginHost`] (see
//! `examples/worker.rs`). The `taskit-host` binary is this library plus a
//! command line (the `cli` feature, on by default; embedders may turn it
//! off to leave out its dependencies).

#![warn(missing_docs)]

mod batch;
mod call;
mod counters;
mod fair;
mod loader;
mod metrics;
mod plugin_host;
mod rate;
mod registry;
mod server;
mod services;
mod text;
mod tls;
mod watcher;
mod worker;

pub use call::TaskCall;
pub use loader::LoadError;
pub use metrics::MetricsEndpoint;
pub use plugin_host::{HostConfig, PluginEvent, PluginHost, ReloadSummary, StartError};
pub use registry::{Conflict, PluginInfo, RegisterError, Registry, Route, EMBEDDED};
pub use server::{Bound, Exit, Served, Server, ServerConfig, ServerHandle};
pub use services::PLUGIN_LOG_TARGET;
pub use tls::ServerTls;
pub use watcher::is_plugin_file;
pub use worker::{run_worker, Isolation, WorkerOptions, FRAME_SLACK, WORKER_SUBCOMMAND};

/// Ends the process now with `code`, without waiting for running tasks
/// (what `<kill>` asks for), after removing the shadow directories of this
/// process's plugin hosts, which an exit skipping destructors would leave
/// behind.
pub fn exit_now(code: i32) -> ! {
    loader::remove_shadow_dirs();
    std::process::exit(code)
}
