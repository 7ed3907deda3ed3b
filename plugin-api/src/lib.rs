//! The contract between the TaskIt host, its plugins and its clients.
//!
//! - [`abi`]: the FFI-safe root module and call path (`abi_stable`).
//! - [`export_plugin!`]: turns ordinary Rust functions into a plugin.
//! - [`codec`], [`args`]: how arguments and results are written.
//! - [`error`]: TaskIt's `{type, args}` error model.
//! - [`context`]: what a running task can ask of the host.
//! - [`wire`]: the TaskIt 4.0 and native protocols, as functions over bytes.

pub mod abi;
pub mod args;
mod bridge;
pub mod callback;
pub mod codec;
pub mod context;
pub mod error;
mod export;
mod fields;
#[cfg(feature = "frontend")]
pub mod frontend;
pub mod log;
pub mod resync;
pub mod simple;
pub mod task;
pub mod wire;

/// Used by [`export_plugin!`]; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::{CallRequest, HostServices, PluginModRef, RTaskError};
    pub use crate::export::{
        call_root_module_loader, dispatch, init, invoke, root_module, RawTask, UserInit,
    };
    pub use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
    pub use abi_stable::std_types::{RResult, RStr, RString, RVec};
}

pub use abi_stable;
pub use args::{decode_args, encode_args, DecodeArgs, EncodeArgs};
pub use codec::{Bincode, Codec, CodecError, CodecKind, Json};
pub use context::{Subtask, TaskContext};
pub use error::{IntoTaskError, TaskError};
pub use task::{call_task, IntoReply, Invocation, Kw, Reply, TaskFn};
