//! One call of a task, as the host runs it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use taskit_plugin_api::error::kind;
use taskit_plugin_api::host_side::Invocation;
use taskit_plugin_api::{CodecError, CodecKind, EncodeArgs, TaskError};

use crate::fair::Caller;
use crate::server::Backlog;

/// One call of a task: read off the wire (either protocol) or made by an
/// embedding program, and carried unchanged to the task that runs it. It
/// owns its bytes, so it can move to whichever thread runs it.
#[derive(Debug)]
pub struct TaskCall {
    task: String,
    codec: CodecKind,
    args: Vec<u8>,
    kwargs: Vec<u8>,
    cancelled: Arc<AtomicBool>,
    /// Set once the caller's connection is gone: a call that has not
    /// started by then never does.
    caller_gone: Option<Arc<AtomicBool>>,
    /// Whose call it is: the line it waits in for a task slot.
    caller: Caller,
    /// Its connection's unwritten replies: it does not start while they
    /// are too many.
    backlog: Option<Arc<Backlog>>,
}

impl TaskCall {
    /// A call of `task` with positional arguments encoded by `codec` (a
    /// sequence, see [`encode_args`](taskit_plugin_api::encode_args)) and
    /// keyword arguments as a JSON object, or empty for none.
    pub fn new(task: impl Into<String>, codec: CodecKind, args: Vec<u8>, kwargs: Vec<u8>) -> Self {
        Self {
            task: task.into(),
            codec,
            args,
            kwargs,
            cancelled: Arc::default(),
            caller_gone: None,
            caller: Caller::default(),
            backlog: None,
        }
    }

    /// A call of `task` with `args` encoded by `codec` and no keyword
    /// arguments.
    pub fn with_args(
        task: impl Into<String>,
        codec: CodecKind,
        args: &(impl EncodeArgs + ?Sized),
    ) -> Result<Self, CodecError> {
        let args = codec.encode_args(args)?;
        Ok(Self::new(task, codec, args, Vec::new()))
    }

    /// The task id.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The codec of the arguments and of the result.
    pub fn codec(&self) -> CodecKind {
        self.codec
    }

    /// Asks the task to give up early: it sees it through
    /// [`TaskContext::is_cancelled`](taskit_plugin_api::TaskContext::is_cancelled).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Ties the call to its caller's connection: once `gone` is set, the
    /// call is dropped if it has not started.
    pub(crate) fn tied_to_caller(mut self, gone: &Arc<AtomicBool>) -> Self {
        self.caller_gone = Some(Arc::clone(gone));
        self
    }

    /// Says whose call it is (see [`crate::fair`]).
    pub(crate) fn made_by(mut self, caller: Caller) -> Self {
        self.caller = caller;
        self
    }

    /// Whose call it is.
    pub(crate) fn caller(&self) -> Caller {
        self.caller
    }

    /// Holds the call back from starting while `backlog` is too long.
    pub(crate) fn held_back_by(mut self, backlog: &Arc<Backlog>) -> Self {
        self.backlog = Some(Arc::clone(backlog));
        self
    }

    /// What holds it back from starting, if anything may.
    pub(crate) fn backlog(&self) -> Option<&Arc<Backlog>> {
        self.backlog.as_ref()
    }

    /// Whether it may start now (see [`Backlog::allows_start`]).
    pub(crate) fn may_start(&self) -> bool {
        self.backlog.as_ref().is_none_or(|b| b.allows_start())
    }

    /// The flag set once the caller is gone, if the call has a caller.
    pub(crate) fn caller_gone(&self) -> Option<&Arc<AtomicBool>> {
        self.caller_gone.as_ref()
    }

    /// Whether the caller is gone.
    pub(crate) fn is_orphaned(&self) -> bool {
        self.caller_gone
            .as_ref()
            .is_some_and(|gone| gone.load(Ordering::Acquire))
    }

    /// A handle that cancels this call from elsewhere (a CANCEL frame).
    pub(crate) fn canceller(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancelled)
    }

    /// The flag the task's context reads.
    pub(crate) fn cancelled(&self) -> &AtomicBool {
        &self.cancelled
    }

    /// The call as a task function receives it.
    pub(crate) fn invocation(&self) -> Invocation<'_> {
        Invocation {
            task: &self.task,
            args: &self.args,
            kwargs: &self.kwargs,
        }
    }

    /// The positional arguments, encoded.
    pub(crate) fn args(&self) -> &[u8] {
        &self.args
    }

    /// The keyword arguments, JSON or empty.
    pub(crate) fn kwargs(&self) -> &[u8] {
        &self.kwargs
    }
}

/// Bytes a reply's framing may add to its result (either protocol).
pub(crate) const REPLY_FRAMING: usize = 64;

/// The largest result (or error arguments) a host whose largest message is
/// `max_message` bytes sends: its frame must fit the limit the client
/// holds too, and a length must never wrap.
pub(crate) fn max_result(max_message: usize) -> usize {
    max_message.saturating_sub(REPLY_FRAMING)
}

/// `result`, or `ReplyTooLarge` (args `[size, limit]`) if it carries more
/// than `limit` bytes. The task ran; only its answer is lost.
pub(crate) fn within(
    result: Result<Vec<u8>, TaskError>,
    limit: usize,
) -> Result<Vec<u8>, TaskError> {
    let size = match &result {
        Ok(bytes) => bytes.len(),
        Err(err) => err.args_json().len(),
    };
    if size <= limit {
        return result;
    }
    Err(TaskError::new(
        kind::REPLY_TOO_LARGE,
        vec![serde_json::json!(size), serde_json::json!(limit)],
    ))
}
