//! Running one call: a task on the blocking pool, or an admin signal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use taskit_plugin_api::error::kind as task_kind;
use taskit_plugin_api::wire::{self, kind, PluginSummary, ReloadReport};
use taskit_plugin_api::{CodecKind, TaskError};

use super::Shared;
use crate::registry::{Resolved, EMBEDDED};
use crate::ReloadSummary;

/// What the connection must do once a reply is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    Nothing,
    /// `<kill>` is answered first, then the server ends.
    Kill,
}

/// A call as read off the wire, owned so it can move to a blocking thread.
pub(crate) struct Call {
    pub task: String,
    pub codec: CodecKind,
    pub args: Vec<u8>,
    pub kwargs: Vec<u8>,
    pub cancelled: Arc<AtomicBool>,
    /// What serves the task, fixed when the call was read (`None` for an
    /// admin signal).
    route: Option<Result<Resolved, TaskError>>,
}

impl Call {
    /// A call read just now: its task is resolved at once, so it runs on
    /// the plugin version live when it arrived, whatever it waits for.
    pub(crate) fn new(
        shared: &Shared,
        task: String,
        codec: CodecKind,
        args: Vec<u8>,
        kwargs: Vec<u8>,
    ) -> Self {
        let route = (!wire::is_signal(&task)).then(|| shared.registry.resolve(&task));
        Self {
            task,
            codec,
            args,
            kwargs,
            cancelled: Arc::new(AtomicBool::new(false)),
            route,
        }
    }
}

/// How long each task id has been taking, in nanoseconds: an average that
/// decays slowly downward (1/8 of each faster call) and jumps at once to any
/// slower call.
///
/// Calls to a task that has been quick run on the connection's own thread:
/// a hand-off to the blocking pool and back costs two thread wake-ups, far
/// more than an `add`. It runs inside `block_in_place`, which first hands
/// that thread's other work to another thread, so even a misjudged slow call
/// holds up nothing but its own connection. Anything unknown or slower runs
/// on the blocking pool. Only successful calls count: a task failing fast on bad
/// arguments says nothing about how long it takes to work.
#[derive(Default)]
pub(crate) struct Timings {
    by_task: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

/// A task averaging less than this runs inline.
const INLINE_BELOW_NS: u64 = 50_000;
/// Task ids tracked at most (ids come from peers; unknown ones are never
/// recorded, but a host may serve many).
const MAX_TRACKED: usize = 16_384;

impl Timings {
    fn get(&self, task: &str) -> Option<Arc<AtomicU64>> {
        self.by_task
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(task)
            .cloned()
    }

    fn record(&self, task: &str, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        if let Some(avg) = self.get(task) {
            let _ = avg.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if sample > old {
                    sample
                } else {
                    old - old / 8 + sample / 8
                })
            });
            return;
        }
        let mut map = self.by_task.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() < MAX_TRACKED {
            map.entry(task.to_owned())
                .or_insert_with(|| Arc::new(AtomicU64::new(sample)));
        }
    }
}

/// Runs a call on the calling thread if its task has been quick and a task
/// slot is free at once; `None` means "run it with [`execute`]".
pub(crate) fn try_inline(shared: &Shared, call: &Call) -> Option<Result<Vec<u8>, TaskError>> {
    let Some(Ok(resolved)) = &call.route else {
        return None;
    };
    // `block_in_place` needs the multi-thread runtime.
    let flavor = tokio::runtime::Handle::try_current().ok()?.runtime_flavor();
    if flavor != tokio::runtime::RuntimeFlavor::MultiThread {
        return None;
    }
    let avg = shared.timings.get(&call.task)?;
    if avg.load(Ordering::Relaxed) >= INLINE_BELOW_NS {
        return None;
    }
    let _slot = Arc::clone(&shared.task_slots).try_acquire_owned().ok()?;
    // `block_in_place` first hands this thread's other work (its queue, and
    // the I/O driver's turn) to another thread: should the call turn out
    // slow, it holds up nothing but its own connection. Running it straight
    // on the async thread is faster (11 µs instead of 15-28 µs per waited
    // call here) but one slow call then stalls every connection, as no
    // thread may be left polling for I/O (tokio-rs/tokio#4730).
    Some(tokio::task::block_in_place(|| {
        timed_call(shared, resolved, call)
    }))
}

fn timed_call(shared: &Shared, resolved: &Resolved, call: &Call) -> Result<Vec<u8>, TaskError> {
    let started = Instant::now();
    let result = resolved.call(
        &shared.registry,
        call.codec,
        &call.args,
        &call.kwargs,
        &call.cancelled,
    );
    if result.is_ok() {
        shared.timings.record(&call.task, started.elapsed());
    }
    result
}

/// Runs `call` on the blocking pool (or, for a signal, here) and returns
/// its reply.
pub(crate) async fn execute(
    shared: &Arc<Shared>,
    mut call: Call,
) -> (Result<Vec<u8>, TaskError>, After) {
    let resolved = match call.route.take() {
        None => return signal(shared, &call).await,
        Some(Err(unknown)) => return (Err(unknown), After::Nothing),
        Some(Ok(resolved)) => resolved,
    };
    let Ok(slot) = Arc::clone(&shared.task_slots).acquire_owned().await else {
        return (
            Err(TaskError::msg(kind::STOPPING, &call.task)),
            After::Nothing,
        );
    };
    let shared = Arc::clone(shared);
    let task = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        timed_call(&shared, &resolved, &call)
    });
    let result = match task.await {
        Ok(result) => result,
        // The registry catches task panics; this is the pool itself failing.
        Err(err) => Err(TaskError::msg(
            task_kind::PANIC,
            format!("task thread failed: {err}"),
        )),
    };
    (result, After::Nothing)
}

fn encode<T: Serialize + ?Sized>(codec: CodecKind, value: &T) -> Result<Vec<u8>, TaskError> {
    codec
        .encode(value)
        .map_err(|e| TaskError::msg(task_kind::ENCODE_ERROR, e))
}

/// Compares without an early exit, so the time taken does not tell how much
/// of a guessed token was right (the length still shows).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn token_matches(expected: &str, kwargs: &[u8]) -> bool {
    let Ok(map) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(kwargs)
    else {
        return false;
    };
    matches!(map.get("token"), Some(serde_json::Value::String(t)) if same_secret(t.as_bytes(), expected.as_bytes()))
}

async fn signal(shared: &Arc<Shared>, call: &Call) -> (Result<Vec<u8>, TaskError>, After) {
    if let Some(token) = &shared.config.admin_token {
        if !token_matches(token, &call.kwargs) {
            tracing::warn!(signal = %call.task, "admin signal refused: missing or wrong token");
            return (
                Err(TaskError::msg(kind::UNAUTHORIZED, &call.task)),
                After::Nothing,
            );
        }
    }
    let codec = call.codec;
    let reply = match call.task.as_str() {
        // As in TaskIt 4.0, the status call counts itself: an idle host says "1".
        wire::STATUS => encode(
            codec,
            &(shared.registry.state().running_tasks() + 1).to_string(),
        ),
        wire::TASKS => encode(codec, &summaries(shared)),
        wire::RELOAD => {
            let report = reload(shared).await.map(report_of).unwrap_or_default();
            encode(codec, &report)
        }
        wire::STOP => {
            tracing::info!("<stop> received");
            shared.begin_stop();
            encode(codec, &())
        }
        wire::KILL => {
            tracing::warn!("<kill> received: ending now");
            return (encode(codec, &()), After::Kill);
        }
        other => Err(TaskError::msg(kind::UNKNOWN_SIGNAL, other)),
    };
    (reply, After::Nothing)
}

fn summaries(shared: &Shared) -> Vec<PluginSummary> {
    let mut out = Vec::new();
    let local = shared.registry.local_tasks();
    if !local.is_empty() {
        out.push(PluginSummary {
            name: EMBEDDED.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            file: String::new(),
            tasks: local,
        });
    }
    out.extend(
        shared
            .registry
            .plugins()
            .into_iter()
            .map(|p| PluginSummary {
                name: p.name,
                version: p.version,
                file: p.file.display().to_string(),
                tasks: p.tasks,
            }),
    );
    out
}

fn report_of(summary: ReloadSummary) -> ReloadReport {
    let names = |files: Vec<std::path::PathBuf>| {
        files.into_iter().map(|f| f.display().to_string()).collect()
    };
    ReloadReport {
        loaded: names(summary.loaded),
        refused: names(summary.refused),
        removed: names(summary.removed),
        unchanged: summary.unchanged as u64,
    }
}

/// Rescans the plugins directory on a blocking thread.
pub(crate) async fn reload(shared: &Arc<Shared>) -> Option<ReloadSummary> {
    shared.plugins.as_ref()?;
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || shared.plugins.as_ref().map(|p| p.reload()))
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("s3cret", br#"{"token": "s3cret"}"#));
        assert!(!token_matches("s3cret", br#"{"token": "s3creT"}"#));
        assert!(!token_matches("s3cret", br#"{"token": "s3cret "}"#));
        assert!(!token_matches("s3cret", br#"{}"#));
        assert!(!token_matches("s3cret", b""));
        assert!(!token_matches("s3cret", br#"{"token": 1}"#));
    }
}
