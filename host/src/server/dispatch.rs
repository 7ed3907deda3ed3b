//! Running one call: a task inline or on the blocking pool, or an admin
//! signal. Both protocols come through here with a [`Job`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use taskit_plugin_api::error::kind;
use taskit_plugin_api::wire::admin::{is_reserved, Reply, Signal};
use taskit_plugin_api::TaskError;

use super::Shared;
use crate::call::TaskCall;
use crate::metrics::{Meter, Proto};
use crate::rate::Limiter;
use crate::registry::{Remote, Route};
use crate::ReloadSummary;

/// What the connection must do once a reply is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    Nothing,
    /// `<kill>` is answered first, then the server ends.
    Kill,
}

/// A call and where it goes, decided the moment it was read: a task call
/// runs on the plugin version live when it arrived, whatever it waits for.
pub(crate) struct Job {
    call: TaskCall,
    target: Target,
}

enum Target {
    Task(Route),
    /// A reserved id: a signal, or `None` for an unknown one (refused only
    /// after the token check, so it tells nothing to a caller without one).
    Signal(Option<Signal>),
    /// An unknown task: answered with this error.
    Refused(TaskError),
}

impl Job {
    /// Resolves `call` now.
    pub(crate) fn new(shared: &Shared, call: TaskCall) -> Self {
        let task = call.task();
        let target = if is_reserved(task) {
            Target::Signal(Signal::parse(task))
        } else {
            match shared.registry().resolve(task) {
                Ok(route) => Target::Task(route),
                Err(unknown) => Target::Refused(unknown),
            }
        };
        Self { call, target }
    }

    /// The call.
    pub(crate) fn call(&self) -> &TaskCall {
        &self.call
    }

    /// For a task in worker processes: where to submit the call (its
    /// plugin's own task slots and queue decide when it runs).
    pub(crate) fn remote(&self) -> Option<Remote> {
        match &self.target {
            Target::Task(route) => route.remote(),
            _ => None,
        }
    }

    /// Starts timing it, counted under its task and plugin: a signal under
    /// its name and plugin `host`, an id nothing serves under empty ones.
    pub(crate) fn meter(&self, shared: &Shared, proto: Proto) -> Meter {
        let (task, plugin) = match &self.target {
            Target::Task(route) => (self.call.task(), route.plugin_name()),
            Target::Signal(Some(signal)) => (signal.name(), "host"),
            Target::Signal(None) | Target::Refused(_) => ("", ""),
        };
        shared.metrics.meter(task, plugin, proto)
    }

    /// Whether it is `<status>`, the one call a stopping host still answers.
    pub(crate) fn is_status(&self) -> bool {
        matches!(self.target, Target::Signal(Some(Signal::Status)))
    }
}

/// How long each task id has been taking, in nanoseconds: an average that
/// decays slowly downward (1/8 of each faster call) and jumps at once to any
/// slower call.
///
/// Calls to a task that has been quick run on the connection's own thread
/// (see [`try_inline`]); anything unknown or slower runs on the blocking
/// pool. Only successful calls count: a task failing fast on bad arguments
/// says nothing about how long it takes to work.
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

/// Runs a task call on the calling thread if its task has been quick and a
/// task slot is free at once; `None` means "run it with [`execute`]".
///
/// A hand-off to the blocking pool and back costs two thread wake-ups, far
/// more than an `add`. The call runs inside `block_in_place`, which first
/// hands this thread's other work (its queue, and the I/O driver's turn) to
/// another thread: should the call turn out slow, it holds up nothing but
/// its own connection (tokio-rs/tokio#4730; docs/speed.md has the figures).
pub(crate) fn try_inline(shared: &Shared, job: &Job) -> Option<Result<Vec<u8>, TaskError>> {
    let Target::Task(route) = &job.target else {
        return None;
    };
    if route.is_remote() {
        // Nothing to gain: it is awaited, never run on a thread.
        return None;
    }
    // `block_in_place` needs the multi-thread runtime.
    let flavor = tokio::runtime::Handle::try_current().ok()?.runtime_flavor();
    if flavor != tokio::runtime::RuntimeFlavor::MultiThread {
        return None;
    }
    if !job.call.may_start() {
        return None;
    }
    let avg = shared.timings.get(job.call.task())?;
    if avg.load(Ordering::Relaxed) >= INLINE_BELOW_NS {
        return None;
    }
    let _slot = shared.task_slots.try_acquire()?;
    Some(tokio::task::block_in_place(|| {
        timed_run(shared, route, &job.call)
    }))
}

fn timed_run(shared: &Shared, route: &Route, call: &TaskCall) -> Result<Vec<u8>, TaskError> {
    let started = Instant::now();
    let result = route.run(call);
    if result.is_ok() {
        shared.timings.record(call.task(), started.elapsed());
    }
    result
}

/// How often a call held back by its client's unwritten replies looks
/// again.
const BACKLOG_POLL: Duration = Duration::from_millis(20);

/// Runs `job` on the blocking pool (or, for a signal, here) and returns
/// its reply.
pub(crate) async fn execute(shared: &Arc<Shared>, job: Job) -> (Result<Vec<u8>, TaskError>, After) {
    let Job { call, target } = job;
    let route = match target {
        Target::Signal(signal) => return signal_reply(shared, signal, &call).await,
        Target::Refused(err) => return (Err(err), After::Nothing),
        Target::Task(route) => route,
    };
    // A plugin in worker processes has task slots of its own (one whose
    // tasks hang never holds another's); its call is awaited, holding no
    // thread.
    if let Some(remote) = route.remote() {
        return (remote.send(&call).await, After::Nothing);
    }
    // Slots go round the callers waiting (crate::fair). A client that does
    // not read its replies: its calls wait to start until they are written
    // (budget.rs), looked at again once a slot is had, so no more start than
    // there are slots.
    let slot = loop {
        if call.may_start() || call.is_orphaned() {
            let slot = shared.task_slots.acquire(call.caller()).await;
            if call.may_start() || call.is_orphaned() {
                break slot;
            }
        }
        tokio::time::sleep(BACKLOG_POLL).await;
    };
    if call.is_orphaned() {
        // Its client went away while it waited for a slot: not started.
        return (
            Err(TaskError::msg(
                kind::CANCELLED,
                "its client went away while it waited for a task slot; it did not run",
            )),
            After::Nothing,
        );
    }
    let shared = Arc::clone(shared);
    let task = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        timed_run(&shared, &route, &call)
    });
    let result = match task.await {
        Ok(result) => result,
        // `run_task` catches task panics; this is the pool itself failing.
        Err(err) => Err(TaskError::msg(
            kind::PANIC,
            format!("task thread failed: {err}"),
        )),
    };
    (result, After::Nothing)
}

/// Compares without an early exit, so the time taken does not tell how much
/// of a guessed token was right (the length still shows).
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The keyword arguments of an admin signal, as far as the host reads
/// them: other keys are skipped unread (nothing is built of them, so a huge
/// argument costs no memory beyond its bytes).
#[derive(serde::Deserialize)]
struct Auth {
    token: Option<String>,
}

fn token_matches(expected: &str, kwargs: &[u8]) -> bool {
    match serde_json::from_slice::<Auth>(kwargs) {
        Ok(Auth { token: Some(t) }) => same_secret(t.as_bytes(), expected.as_bytes()),
        _ => false,
    }
}

async fn signal_reply(
    shared: &Arc<Shared>,
    signal: Option<Signal>,
    call: &TaskCall,
) -> (Result<Vec<u8>, TaskError>, After) {
    if let Some(token) = &shared.config.admin_token {
        let open = shared.config.open_reads && signal.is_some_and(|s| !s.changes_host());
        if !open && !token_matches(token, call.kwargs()) {
            // The id comes from the peer: escaped, it cannot forge a line;
            // and a peer trying tokens gets a few lines a second.
            static REFUSED: Limiter = Limiter::new();
            if let Some(left_out) = REFUSED.admit() {
                tracing::warn!(signal = %crate::text::Printable(call.task()), left_out, "admin signal refused: missing or wrong token");
            }
            return (
                Err(TaskError::msg(kind::UNAUTHORIZED, call.task())),
                After::Nothing,
            );
        }
    }
    let Some(signal) = signal else {
        return (
            Err(TaskError::msg(kind::UNKNOWN_SIGNAL, call.task())),
            After::Nothing,
        );
    };
    let (reply, after) = match signal {
        // As in TaskIt 4.0, the status call counts itself: an idle host says "1".
        Signal::Status => (
            Reply::Status((shared.registry().running_tasks() + 1).to_string()),
            After::Nothing,
        ),
        Signal::Tasks => (Reply::Tasks(shared.registry().summaries()), After::Nothing),
        Signal::Reload => {
            let summary = reload(shared).await;
            if let Some(summary) = &summary {
                summary.log("<reload>");
            }
            let report = summary.map(report_of).unwrap_or_default();
            (Reply::Reload(report), After::Nothing)
        }
        Signal::Stop => {
            tracing::info!("<stop> received");
            shared.drain.stop();
            (Reply::Done, After::Nothing)
        }
        Signal::Kill => {
            tracing::warn!("<kill> received: ending now");
            (Reply::Done, After::Kill)
        }
    };
    let encoded = reply
        .encode(call.codec())
        .map_err(|e| TaskError::msg(kind::ENCODE_ERROR, e));
    (encoded, after)
}

fn report_of(summary: ReloadSummary) -> taskit_plugin_api::wire::admin::ReloadReport {
    let names = |files: Vec<std::path::PathBuf>| {
        files.into_iter().map(|f| f.display().to_string()).collect()
    };
    taskit_plugin_api::wire::admin::ReloadReport {
        loaded: names(summary.loaded),
        refused: names(summary.refused),
        removed: names(summary.removed),
        unchanged: summary.unchanged as u64,
    }
}

/// Rescans the plugins directory on a blocking thread, if there is one.
pub(crate) async fn reload(shared: &Arc<Shared>) -> Option<ReloadSummary> {
    if !matches!(shared.served, super::Served::Plugins(_)) {
        return None;
    }
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || match &shared.served {
        super::Served::Plugins(plugins) => Some(plugins.reload()),
        super::Served::Registry(_) => None,
    })
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
        assert!(token_matches(
            "s3cret",
            br#"{"other": [{"a": 0}, {"b": [1, 2]}], "token": "s3cret"}"#
        ));
    }
}
