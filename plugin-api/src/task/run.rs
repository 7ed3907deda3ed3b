//! Running one task: where a task function meets its context, and where a
//! panic becomes an error reply. Plugins (through `export_plugin!`) and the
//! host's in-process tasks both run through [`run_task`], so the two paths
//! cannot drift apart.
//!
//! Counting the task as running is the host's job, not this function's: a
//! count kept by plugin code would be only as right as that code.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;

use taskit_plugin_abi::HostServices;

use super::context::TaskContext;
use super::{Invocation, TaskFn};
use crate::codec::{Bincode, CodecKind, Json};
use crate::error::{kind, TaskError};

/// A task with its function's shape erased: decodes its arguments with the
/// codec given, runs, encodes its result.
pub type TaskRunner = dyn Fn(&TaskContext<'_>, &Invocation<'_>, CodecKind) -> Result<Vec<u8>, TaskError>
    + Send
    + Sync;

/// Runs the typed task `f` with the built-in codec `codec`. Panics are the
/// caller's to catch ([`run_task`] does).
pub fn invoke<M, F: TaskFn<M>>(
    f: &F,
    ctx: &TaskContext<'_>,
    call: &Invocation<'_>,
    codec: CodecKind,
) -> Result<Vec<u8>, TaskError> {
    match codec {
        CodecKind::Json => f.invoke::<Json>(ctx, call),
        CodecKind::Bincode => f.invoke::<Bincode>(ctx, call),
    }
}

/// Runs `task` on `call`, giving it a context made of the host's services
/// and the call's cancellation flag. A panic becomes an error of type
/// `Panic` carrying its message; nothing unwinds out of here.
pub fn run_task<F>(
    task: F,
    host: HostServices,
    cancelled: &AtomicBool,
    call: &Invocation<'_>,
    codec: CodecKind,
) -> Result<Vec<u8>, TaskError>
where
    F: FnOnce(&TaskContext<'_>, &Invocation<'_>, CodecKind) -> Result<Vec<u8>, TaskError>,
{
    let ctx = TaskContext::new(host, cancelled);
    match catch_unwind(AssertUnwindSafe(|| task(&ctx, call, codec))) {
        Ok(result) => result,
        Err(payload) => Err(TaskError::msg(kind::PANIC, take_panic_message(payload))),
    }
}

/// The text of a panic, with the payload dropped safely (a payload whose
/// destructor panics must not unwind out of an `extern "C"` function).
pub(crate) fn take_panic_message(payload: Box<dyn Any + Send>) -> String {
    let message = crate::error::panic_message(payload.as_ref());
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    message
}
