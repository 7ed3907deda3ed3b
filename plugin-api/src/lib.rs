//! What a TaskIt plugin author, a TaskIt client and the TaskIt host share.
//!
//! A plugin is a `cdylib` that calls [`export_plugin!`] once with ordinary
//! Rust functions; the host loads it and serves its tasks by id. Clients call
//! those tasks through the [`frontend`]. The in-process tools of TaskIt 4.0
//! ([`simple`], [`resync`], [`log`]) live here too.
//!
//! # Layout
//!
//! | module | what it holds | feature |
//! |---|---|---|
//! | `task` | [`TaskFn`] (the function shapes a task may have), [`Kw`], [`IntoReply`], [`Reply`], [`TaskContext`] | always |
//! | `codec` | [`Codec`], [`Json`], [`Bincode`], [`CodecKind`]; positional arguments as a sequence ([`encode_args`], [`decode_args`]) | always |
//! | [`error`] | [`TaskError`], TaskIt's `{type, args}`, and [`error::kind`], every error type the runtime answers with | always |
//! | `plugin_side` | what [`export_plugin!`] expands to, and the bridge of a plugin's `tracing` records to the host | always |
//! | [`log`] | TaskIt's levels on `tracing`; its loggers as `tracing-subscriber` layers | layers: `log-layers` |
//! | [`simple`], [`resync`] | local tasks run three ways; one-shot rendezvous | `local` (default) |
//! | [`wire`] | both protocols as functions over bytes, and the admin signals | `wire` |
//! | [`frontend`] | the client: many backends, both protocols, async and blocking | `frontend` |
//!
//! The FFI-safe types themselves are in the `taskit-plugin-abi` crate, which
//! has its own version (the ABI version, see docs/plugins.md): a plugin
//! keeps loading whatever else of TaskIt changes.
//!
//! A plugin needs no feature: it compiles the author's surface above and
//! nothing of the wire or the client.

#![warn(missing_docs)]

mod codec;
pub mod error;
#[cfg(feature = "frontend")]
pub mod frontend;
pub mod log;
#[cfg(feature = "local")]
mod on_error;
mod plugin_side;
#[cfg(feature = "local")]
pub mod resync;
#[cfg(feature = "local")]
pub mod simple;
mod task;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "wire")]
pub mod wire;

pub use codec::args::{decode_args, encode_args, DecodeArgs, EncodeArgs};
pub use codec::{Bincode, Codec, CodecError, CodecErrorKind, CodecKind, Json};
pub use error::{IntoTaskError, TaskError};
#[cfg(feature = "local")]
pub use on_error::OnError;
pub use task::context::{Subtask, TaskContext};
pub use task::{IntoReply, Kw, Reply, TaskFn};

/// What only the host uses: the ABI types, the one function that runs a
/// task, and the conversions at the boundary. Not for plugins or clients;
/// it may change in any release.
#[doc(hidden)]
pub mod host_side {
    pub use crate::task::run::{invoke, run_task, TaskRunner};
    pub use crate::task::Invocation;
    pub use taskit_plugin_abi as abi;
}

/// Used by [`export_plugin!`]; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::plugin_side::{
        call_root_module_loader, dispatch, init, invoke, root_module, RawTask, UserInit,
    };
    pub use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
    pub use abi_stable::std_types::{RResult, RStr, RString, RVec};
    pub use taskit_plugin_abi::__root_module_symbol;
    pub use taskit_plugin_abi::{CallRequest, HostServices, PluginModRef, RTaskError};
}
