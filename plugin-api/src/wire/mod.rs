//! The two wire protocols, as plain functions over bytes (no I/O), shared by
//! the host's server and the frontend, and easy to fuzz.
//!
//! - [`firstbytes`]: TaskIt 4.0's FirstBytes framing (one message per
//!   connection, cut into articles with a 5-byte ASCII header).
//! - [`compat`]: TaskIt 4.0's JSON envelopes, `[task, args, kwargs]` and
//!   `["success", result]` / `["error", type, args]`, ASCII-only toward peers.
//! - [`native`]: our protocol: a hello, then length-prefixed frames with
//!   request ids, many calls in flight on one connection.
//!
//! `docs/protocol.md` describes both byte for byte.

pub mod compat;
pub mod firstbytes;
pub mod native;

/// The default TaskIt port.
pub const DEFAULT_PORT: u16 = 54543;

/// Admin signal: stop accepting, answer every accepted call, exit.
pub const STOP: &str = "<stop>";
/// Admin signal: exit now.
pub const KILL: &str = "<kill>";
/// Admin signal: the running-task count, as a decimal string.
pub const STATUS: &str = "<status>";
/// Admin signal: the loaded plugins and their task ids.
pub const TASKS: &str = "<tasks>";
/// Admin signal: rescan the plugins directory now.
pub const RELOAD: &str = "<reload>";

/// Whether `task` names an admin signal (ids starting with `<` are reserved).
pub fn is_signal(task: &str) -> bool {
    task.starts_with('<')
}

/// Error types the server itself answers with (besides those of
/// [`crate::error::kind`]).
pub mod kind {
    /// The message or frame is not well formed (wrong envelope shape,
    /// unknown frame kind); args: `[message]`.
    pub const PROTOCOL_ERROR: &str = "ProtocolError";
    /// A message or frame over the host's `--max-message`; args: `[limit]`.
    pub const MESSAGE_TOO_LARGE: &str = "MessageTooLarge";
    /// An admin signal without the right token; args: `[signal]`.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// The host is stopping and accepts no new calls; args: `[task]`.
    pub const STOPPING: &str = "Stopping";
    /// An unknown admin signal; args: `[signal]`.
    pub const UNKNOWN_SIGNAL: &str = "UnknownSignal";
}

/// What went wrong reading a peer's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("corrupt FirstBytes header: first byte {0:#04x} is neither '0' nor '1'")]
    BadArticleFlag(u8),
    #[error("corrupt FirstBytes header: length {0:?} is not 4 hexadecimal digits")]
    BadArticleLength(String),
    #[error("message of at least {size} bytes is over the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("bad hello: {0}")]
    BadHello(String),
    #[error("bad frame: {0}")]
    BadFrame(String),
}

/// One entry of the `<tasks>` reply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginSummary {
    /// The plugin's name (`embedded` for the host program's own tasks).
    pub name: String,
    pub version: String,
    /// The plugin file (empty for embedded tasks).
    pub file: String,
    /// The ids it serves.
    pub tasks: Vec<String>,
}

/// The `<reload>` reply: files loaded, refused and removed by the rescan.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    pub loaded: Vec<String>,
    pub refused: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: u64,
}
