//! TaskIt's error model: a remote error is a type name and a list of
//! arguments, exactly what a Python peer's `BackendProcessingError` carries.

use std::fmt;

use serde_json::Value;

use taskit_plugin_abi::RTaskError;

/// Every error type the runtime itself answers with, in one place: those a
/// task call can get (whichever way it travels) and those of the server.
/// Tasks may use any other name for their own errors.
pub mod kind {
    /// The task panicked; args: `[message]`.
    pub const PANIC: &str = "Panic";
    /// Wrong number or types of arguments, or an unexpected keyword
    /// argument; args: `[message]` (Python raises `TypeError` here too).
    pub const TYPE_ERROR: &str = "TypeError";
    /// No task with that id is served; args: `[task_id]` (TaskIt 4.0 answers
    /// an unknown task with a `KeyError` carrying its name).
    pub const UNKNOWN_TASK: &str = "KeyError";
    /// The arguments are not valid in the connection's codec; args: `[message]`.
    pub const DECODE_ERROR: &str = "DecodeError";
    /// The task's result cannot be written in the connection's codec;
    /// args: `[message]`.
    pub const ENCODE_ERROR: &str = "EncodeError";
    /// The request named a codec the plugin does not know; args: `[codec]`.
    pub const UNSUPPORTED_CODEC: &str = "UnsupportedCodec";

    /// The message or frame is not well formed (wrong envelope shape,
    /// unknown frame kind); args: `[message]`.
    pub const PROTOCOL_ERROR: &str = "ProtocolError";
    /// A message or frame over the host's `--max-message`; args: `[message]`.
    pub const MESSAGE_TOO_LARGE: &str = "MessageTooLarge";
    /// An admin signal without the right token; args: `[signal]`.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// The host is stopping and accepts no new calls; args: `[task]`.
    pub const STOPPING: &str = "Stopping";
    /// An unknown admin signal; args: `[signal]`.
    pub const UNKNOWN_SIGNAL: &str = "UnknownSignal";

    /// The worker process running the call died before answering (process
    /// isolation); args: `[plugin, version, cause]`, the cause such as
    /// `"killed by SIGSEGV"` or `"exited with status 0"`. The task may have
    /// run: clients retry it only if the call is marked idempotent.
    pub const WORKER_CRASHED: &str = "WorkerCrashed";
    /// The plugin's workers crashed too often and it is no longer started
    /// until its file changes or the host is told to reload; args:
    /// `[plugin, version, reason]`. The call was not run.
    pub const PLUGIN_UNAVAILABLE: &str = "PluginUnavailable";
    /// The task overran its time limit (the host's `--task-timeout`, or the
    /// client's timeout), ignored its cancellation for the kill grace, and
    /// its worker was killed; args: `[plugin, version, task, message]`.
    pub const TIME_LIMIT_EXCEEDED: &str = "TimeLimitExceeded";
    /// The task's result is larger than the host sends (its
    /// `--max-message`); args: `[size, limit]` in bytes. The task ran.
    pub const REPLY_TOO_LARGE: &str = "ReplyTooLarge";
    /// The client cancelled the call, gave up on it, or went away while it
    /// waited for a task slot; it did not run. args: `[message]`.
    pub const CANCELLED: &str = "Cancelled";
}

/// An error reply: `type` and `args`, as in TaskIt.
///
/// A task returns one through `Result<T, E>`: `E` may be a `TaskError`
/// (full control over type and args) or any `std::error::Error`, whose type
/// name becomes `type` and whose message becomes the single argument.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    kind: String,
    args: Vec<Value>,
}

impl TaskError {
    /// An error of type `kind` with arguments `args`.
    pub fn new(kind: impl Into<String>, args: Vec<Value>) -> Self {
        Self {
            kind: kind.into(),
            args,
        }
    }

    /// An error of type `kind` with one string argument, the common case.
    pub fn msg(kind: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::new(kind, vec![Value::String(message.to_string())])
    }

    /// The error's type, e.g. `TypeError`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The error's arguments.
    pub fn args(&self) -> &[Value] {
        &self.args
    }

    /// Splits the error into its type and arguments.
    pub fn into_parts(self) -> (String, Vec<Value>) {
        (self.kind, self.args)
    }

    /// The arguments as the text of a JSON array: how they cross the plugin
    /// boundary and the native protocol.
    pub fn args_json(&self) -> Vec<u8> {
        args_to_json(&self.args)
    }

    /// An error whose arguments arrive as JSON text. Text that is not a JSON
    /// array (a misbehaving plugin or peer) is kept as one string argument
    /// rather than lost.
    pub fn from_args_json(kind: &str, args_json: &[u8]) -> Self {
        let args = serde_json::from_slice::<Vec<Value>>(args_json).unwrap_or_else(|_| {
            vec![Value::String(
                String::from_utf8_lossy(args_json).into_owned(),
            )]
        });
        Self::new(kind, args)
    }

    /// Converts to the FFI form.
    #[doc(hidden)]
    pub fn into_ffi(self) -> RTaskError {
        let args_json = args_to_json(&self.args);
        RTaskError {
            kind: self.kind.into(),
            args_json: String::from_utf8(args_json)
                .unwrap_or_else(|_| "[]".to_owned())
                .into(),
        }
    }

    /// Reads the FFI form.
    #[doc(hidden)]
    pub fn from_ffi(err: &RTaskError) -> Self {
        Self::from_args_json(err.kind.as_str(), err.args_json.as_bytes())
    }
}

/// `args` as the text of a JSON array (`[]` should they not encode, which
/// plain JSON values always do).
pub(crate) fn args_to_json(args: &[Value]) -> Vec<u8> {
    serde_json::to_vec(args).unwrap_or_else(|_| b"[]".to_vec())
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        for (i, arg) in self.args.iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            match arg {
                Value::String(s) => write!(f, "{sep}{s}")?,
                other => write!(f, "{sep}{other}")?,
            }
        }
        Ok(())
    }
}

/// The text of a panic payload (`panic!` with a message gives a `&str` or a
/// `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Turns a task's error value into a [`TaskError`].
pub trait IntoTaskError {
    /// The error reply this value stands for.
    fn into_task_error(self) -> TaskError;
}

impl IntoTaskError for TaskError {
    fn into_task_error(self) -> TaskError {
        self
    }
}

impl<E: std::error::Error> IntoTaskError for E {
    fn into_task_error(self) -> TaskError {
        TaskError::msg(short_type_name::<E>(), self)
    }
}

/// `std::num::ParseIntError` → `ParseIntError`, `Box<dyn Error>` → `Box`:
/// the last path segment before any generic arguments, like a Python class name.
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_errors_keep_their_type_name() {
        let err = "x".parse::<i32>().unwrap_err().into_task_error();
        assert_eq!(err.kind(), "ParseIntError");
        assert_eq!(
            err.args(),
            &[Value::String("invalid digit found in string".into())]
        );
    }

    #[test]
    fn ffi_round_trip_and_bad_args_text() {
        let err = TaskError::new("AssertionError", vec![Value::from(1), Value::from("two")]);
        assert_eq!(TaskError::from_ffi(&err.clone().into_ffi()), err);
        let odd = RTaskError {
            kind: "X".into(),
            args_json: "not json".into(),
        };
        assert_eq!(TaskError::from_ffi(&odd).args(), &[Value::from("not json")]);
    }
}
