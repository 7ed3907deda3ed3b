//! The two wire protocols, as plain functions over bytes (no I/O), shared by
//! the host's server, the frontend and the fuzz targets.
//!
//! - [`firstbytes`]: TaskIt 4.0's framing, FirstBytes (one message per
//!   connection, cut into articles with a 5-byte ASCII header).
//! - [`taskit4`]: TaskIt 4.0's JSON envelopes, `[task, args, kwargs]` and
//!   `["success", result]` / `["error", type, args]`, ASCII-only toward peers.
//! - [`native`]: our protocol: a hello, then length-prefixed frames with
//!   request ids, many calls in flight on one connection.
//! - [`admin`]: the admin signals (`<stop>`, `<status>` …) and their replies,
//!   the same in both protocols.
//!
//! `docs/protocol.md` describes both byte for byte. The error types the
//! server answers with are in [`crate::error::kind`].

pub mod admin;
pub mod firstbytes;
pub mod native;
pub mod taskit4;

/// The default TaskIt port.
pub const DEFAULT_PORT: u16 = 54543;

/// What went wrong reading a peer's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A FirstBytes article header whose first byte is neither `0` nor `1`.
    #[error("corrupt FirstBytes header: first byte {0:#04x} is neither '0' nor '1'")]
    BadArticleFlag(u8),
    /// A FirstBytes article length that is not four hexadecimal digits.
    #[error("corrupt FirstBytes header: length {0:?} is not 4 hexadecimal digits")]
    BadArticleLength(String),
    /// A message or frame over the receiver's limit (refused before it is read).
    #[error("message of at least {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The size declared so far.
        size: u64,
        /// The receiver's limit.
        max: u64,
    },
    /// A native hello that is not one.
    #[error("bad hello: {0}")]
    BadHello(String),
    /// A native frame that does not parse.
    #[error("bad frame: {0}")]
    BadFrame(String),
}
