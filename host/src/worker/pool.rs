//! One plugin version served by worker processes: routing calls to the
//! least loaded worker, failing the calls of a worker that dies, restarting
//! it with backoff, and giving up on a version that keeps crashing.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde_json::json;
use taskit_plugin_api::error::kind;
use taskit_plugin_api::TaskError;

use super::channel::{self, FromWorker};
use super::limits::{Deadline, Limits, Step};
use super::spawn::{self, Launch, Started};
use super::WorkerOptions;
use crate::batch::{send_now, Batch, Corked};
use crate::call::TaskCall;
use crate::fair::{Caller, Lines};
use crate::loader::{LoadError, Prepared};
use crate::rate::Limiter;
use crate::registry::{Health, Plugin};
use crate::server::Backlog;
use crate::services::{emit_plugin_log, HostState, RunningGuard};
use taskit_plugin_api::host_side::abi::LogLevel;

/// How long the host waits for a worker whose channel closed to exit
/// before killing it.
const EXIT_GRACE: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One plugin version, served by its workers.
pub(crate) struct WorkerPlugin {
    file: Prepared,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for WorkerPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPlugin")
            .field("name", &self.pool.name)
            .field("version", &self.pool.version)
            .field("source", &self.file.source)
            .finish_non_exhaustive()
    }
}

/// What the workers of a version share.
pub(super) struct Pool {
    name: String,
    version: String,
    source: std::path::PathBuf,
    shadow: std::path::PathBuf,
    tasks: Vec<String>,
    options: WorkerOptions,
    state: Arc<HostState>,
    /// Its calls in workers, and those waiting for a task slot (never
    /// taken while `inner` is held).
    admission: Mutex<Admission>,
    /// The id of the next call: unique over the version's workers.
    next_id: AtomicU64,
    inner: Mutex<PoolState>,
    changed: Condvar,
    limits: Arc<Limits>,
    /// The plugin's warnings and errors logged lately.
    loud: Limiter,
}

/// A version's task slots (`--max-tasks`, per plugin): calls beyond them
/// wait here, in order, and go out as answers free slots.
#[derive(Default)]
struct Admission {
    /// Calls sent to workers and not yet answered.
    running: usize,
    /// In fair order (crate::fair): callers take turns.
    waiting: Lines<Call>,
}

/// A call on its way to a worker.
struct Call {
    id: u64,
    task: usize,
    /// Its CALL frame.
    frame: Vec<u8>,
    deliver: Deliver,
    cancelled: Arc<AtomicBool>,
    /// Set once its caller's connection is gone.
    caller_gone: Option<Arc<AtomicBool>>,
    caller: Caller,
    /// Its client's unwritten replies: it waits while they are too many.
    backlog: Option<Arc<Backlog>>,
}

impl Call {
    /// Its client cancelled it or went away: not worth starting.
    fn given_up(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
            || self
                .caller_gone
                .as_ref()
                .is_some_and(|gone| gone.load(Ordering::Acquire))
    }

    /// Whether it may go to a worker now: given up (to be answered), or
    /// its client's replies are not piling up.
    fn may_leave(&self) -> bool {
        self.given_up() || self.backlog.as_ref().is_none_or(|b| b.allows_start())
    }

    /// Its client gave up while it waited for a slot: answered, not run.
    fn not_run(self, batch: &mut Batch) {
        (self.deliver)(
            Err(TaskError::msg(
                kind::CANCELLED,
                "cancelled while it waited for a task slot; it did not run",
            )),
            batch,
        );
    }
}

#[derive(Default)]
struct PoolState {
    /// One entry per worker slot: the live worker, or `None` while it is
    /// being restarted.
    workers: Vec<Option<Arc<Conn>>>,
    /// Every worker not yet reaped, replaced ones included (a worker
    /// replaced after its share of calls still answers those it has).
    conns: Vec<Weak<Conn>>,
    /// When recent crashes happened (within the crash window).
    crashes: VecDeque<Instant>,
    /// Set once the version crashed too often: why.
    failed: Option<String>,
    /// The version is no longer served: nothing restarts.
    retired: bool,
    /// Workers started after a crash, over the version's life.
    restarts: u64,
    /// The cause of the last crash.
    last_cause: Option<String>,
}

/// The host's end of one worker.
struct Conn {
    pid: u32,
    socket: UnixStream,
    outbox: Mutex<Outbox>,
    flush: Condvar,
    pending: Mutex<HashMap<u64, Pending>>,
    in_flight: AtomicUsize,
    /// Set (under `pending`'s lock) once the worker is gone: no call may
    /// be added after.
    dead: AtomicBool,
    /// The host closed it on purpose: its exit is not a crash.
    retiring: AtomicBool,
    /// Why the host killed it, if it did (a task overran its time limit).
    killed: Mutex<Option<String>>,
    /// Set just before its reader thread reaps it: its pid may no longer be
    /// its own.
    reaped: AtomicBool,
    /// Its slot in the pool.
    index: usize,
    /// Calls sent to it so far.
    started: AtomicU64,
    /// It took its share of calls (`max_calls`): it gets no more, and
    /// exits once its last one is answered.
    draining: AtomicBool,
    counter_slot: Option<usize>,
}

struct Pending {
    task: usize,
    deliver: Deliver,
    /// Set when the caller gives up on the call.
    cancelled: Arc<AtomicBool>,
    deadline: Deadline,
    /// Counts it as running (from the moment it is sent).
    running: RunningGuard,
}

impl Pending {
    fn answer(self, result: CallResult, batch: &mut Batch) {
        // No longer running once its caller can see the answer.
        drop(self.running);
        (self.deliver)(result, batch);
    }
}

type CallResult = Result<Vec<u8>, TaskError>;

/// Where a worker's answer goes, called on whichever thread has it (the
/// worker's reader thread, mostly): a channel to the waiting caller, or the
/// replies of the client's connection. The batch holds back what it writes
/// while that thread has more answers to deliver.
pub(crate) type Deliver = Box<dyn FnOnce(CallResult, &mut Batch) + Send>;

/// Frames waiting for the worker's socket, and whether the writer thread is
/// writing some now (then nobody else may write: frames must not
/// interleave).
#[derive(Default)]
struct Outbox {
    frames: Vec<u8>,
    flushing: bool,
    closed: bool,
    /// A [`Batch`] holds frames here: it writes them when it is flushed.
    corked: bool,
}

/// A task of a version in workers, ready to take calls.
pub(crate) struct Ticket {
    pool: Arc<Pool>,
    task: usize,
}

impl Ticket {
    /// Submits the call (its frame queued in `batch` if it goes out now);
    /// its answer goes to `deliver`.
    pub(crate) fn dispatch(self, call: &TaskCall, deliver: Deliver, batch: &mut Batch) {
        self.pool.submit(self.task, call, deliver, batch);
    }

    /// Submits the call; its answer, to await.
    pub(crate) fn send(self, call: &TaskCall) -> Sent {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deliver = Box::new(move |result, _: &mut Batch| {
            let _ = tx.send(result);
        });
        let id = self
            .pool
            .submit(self.task, call, deliver, &mut Batch::default());
        Sent {
            rx,
            id,
            pool: self.pool,
            answered: false,
        }
    }
}

/// A call submitted to a version's workers, its answer awaited without a
/// thread.
pub(crate) struct Sent {
    rx: tokio::sync::oneshot::Receiver<CallResult>,
    id: u64,
    pool: Arc<Pool>,
    answered: bool,
}

impl Sent {
    /// The worker's answer. (Time limits and cancellations are the limits
    /// thread's: see `limits`.)
    pub(crate) async fn answer(mut self) -> CallResult {
        let answer = (&mut self.rx).await;
        self.answered = true;
        answer.unwrap_or_else(|_| Err(self.pool.crashed_error("the worker went away")))
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        // Given up on (the connection went away): no longer wanted.
        if !self.answered {
            self.pool.forget(self.id);
        }
    }
}

impl WorkerPlugin {
    /// Starts the workers of a new version and waits for every one to load
    /// it. The first refusal refuses the version.
    pub(crate) fn start(
        file: Prepared,
        options: &WorkerOptions,
        state: &Arc<HostState>,
    ) -> Result<Arc<Self>, LoadError> {
        let count = options.workers_per_plugin.max(1);
        let label = file
            .source
            .file_name()
            .map_or_else(|| "plugin".into(), |n| n.to_string_lossy().into_owned());
        // Started together, so they load in parallel.
        let mut started = Vec::with_capacity(count);
        for _ in 0..count {
            let slot = state.counters().claim();
            let launch = Launch {
                options,
                shadow: &file.shadow,
                source: &file.source,
                counters: state.counters().fd().zip(slot),
            };
            match spawn::start(&launch) {
                Ok(s) => started.push((s, slot)),
                Err(err) => {
                    state.counters().release(slot);
                    for (mut s, slot) in started {
                        spawn::kill_and_reap(&mut s.child);
                        state.counters().release(slot);
                    }
                    return Err(LoadError::Io(format!("cannot start a worker: {err}")));
                }
            }
        }
        let mut ready = Vec::with_capacity(count);
        let mut refusal = None;
        for (mut s, slot) in started {
            if refusal.is_some() {
                spawn::kill_and_reap(&mut s.child);
                state.counters().release(slot);
                continue;
            }
            match spawn::handshake(&mut s, options.init_timeout, options.max_frame, &label) {
                Ok(r) => ready.push((s, slot, r)),
                Err(err) => {
                    state.counters().release(slot);
                    refusal = Some(err);
                }
            }
        }
        if let Some(err) = refusal {
            for (mut s, slot, _) in ready {
                spawn::kill_and_reap(&mut s.child);
                state.counters().release(slot);
            }
            return Err(err);
        }
        let Some((_, _, first)) = ready.first() else {
            return Err(LoadError::Init("no worker was started".into()));
        };
        let (name, version, tasks) = (
            first.name.clone(),
            first.version.clone(),
            first.tasks.clone(),
        );
        let pool = Arc::new(Pool {
            name,
            version,
            source: file.source.clone(),
            shadow: file.shadow.clone(),
            tasks,
            options: options.clone(),
            state: Arc::clone(state),
            admission: Mutex::default(),
            next_id: AtomicU64::new(1),
            inner: Mutex::new(PoolState {
                workers: vec![None; count],
                ..PoolState::default()
            }),
            changed: Condvar::new(),
            limits: Arc::default(),
            loud: Limiter::new(),
        });
        for (index, (started, slot, _)) in ready.into_iter().enumerate() {
            Pool::serve(&pool, index, started, slot);
        }
        if let Err(err) = Limits::start(&pool) {
            // Calls still run; only time limits and cancellations are lost.
            tracing::error!(plugin = %pool.name, %err, "cannot start the time-limits thread");
        }
        Ok(Arc::new(Self { file, pool }))
    }
}

impl Plugin for WorkerPlugin {
    fn name(&self) -> &str {
        &self.pool.name
    }

    fn version(&self) -> &str {
        &self.pool.version
    }

    fn source(&self) -> &Path {
        &self.file.source
    }

    fn generation(&self) -> u64 {
        self.file.generation
    }

    fn tasks(&self) -> &[String] {
        &self.pool.tasks
    }

    fn run(&self, index: usize, call: &TaskCall) -> Result<Vec<u8>, TaskError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let deliver = Box::new(move |result, _: &mut Batch| {
            let _ = tx.send(result);
        });
        self.pool
            .submit(index, call, deliver, &mut Batch::default());
        rx.recv()
            .unwrap_or_else(|_| Err(self.pool.crashed_error("the worker went away")))
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn ticket(&self, index: usize) -> Option<Ticket> {
        Some(Ticket {
            pool: Arc::clone(&self.pool),
            task: index,
        })
    }

    fn revive(&self) {
        self.pool.revive();
    }

    fn abandon(&self) -> Vec<String> {
        self.pool.abandon()
    }

    fn health(&self) -> Health {
        let (running, waiting) = {
            let admission = lock(&self.pool.admission);
            (admission.running, admission.waiting.len())
        };
        let inner = lock(&self.pool.inner);
        Health {
            running,
            waiting,
            isolation: "process",
            workers: inner
                .workers
                .iter()
                .flatten()
                .filter(|c| !c.dead.load(Ordering::Acquire))
                .map(|c| c.pid)
                .collect(),
            restarts: inner.restarts,
            last_crash: inner.last_cause.clone(),
            failed: inner.failed.clone(),
        }
    }
}

impl Drop for WorkerPlugin {
    /// The version is no longer served and no call holds it: its workers
    /// are told to exit (they do at once), and its copy is removed.
    fn drop(&mut self) {
        let workers: Vec<Arc<Conn>> = {
            let mut inner = lock(&self.pool.inner);
            inner.retired = true;
            inner.workers.iter().flatten().cloned().collect()
        };
        self.pool.changed.notify_all();
        self.pool.limits.wake();
        self.pool.refill(&mut Batch::default());
        for conn in workers {
            conn.retire();
        }
        self.file.remove_copy();
        tracing::debug!(
            plugin = %self.pool.name,
            version = %self.pool.version,
            generation = self.file.generation,
            "released old version; its workers exit"
        );
    }
}

impl Pool {
    /// Logs a plugin's record; its warnings and errors a few a second at
    /// most (a plugin may log in a loop).
    fn log(&self, level: LogLevel, target: &str, message: &str) {
        if level as u8 >= LogLevel::Warn as u8 {
            match self.loud.admit() {
                None => return,
                Some(0) => {}
                Some(left_out) => tracing::warn!(
                    plugin = %self.name, version = %self.version, left_out,
                    "plugin warnings and errors left out (too many)"
                ),
            }
        }
        emit_plugin_log(&self.name, &self.version, level, target, message);
    }

    pub(super) fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    pub(super) fn is_retired(&self) -> bool {
        lock(&self.inner).retired
    }

    /// Looks over the calls in flight: passes cancellations on (the
    /// client's, or the task timeout's), and kills the worker of a call
    /// that ignored its cancellation for the kill grace. Whether any call
    /// is in flight.
    pub(super) fn enforce_limits(self: &Arc<Self>, now: Instant) -> bool {
        let conns = self.conns();
        let mut batch = Batch::default();
        let mut busy = self.drop_cancelled_waiting(&mut batch);
        if busy {
            // Calls held back by their clients' unwritten replies are
            // looked at again.
            self.refill(&mut batch);
        }
        for conn in conns {
            let (mut cancel, mut overran) = (Vec::new(), Vec::new());
            let overran_calls: Vec<Pending>;
            {
                let mut pending = lock(&conn.pending);
                busy |= !pending.is_empty();
                for (&id, call) in pending.iter_mut() {
                    match call
                        .deadline
                        .step(now, call.cancelled.load(Ordering::Acquire))
                    {
                        Step::Wait => {}
                        Step::Cancel => cancel.push(id),
                        Step::Kill => overran.push(id),
                    }
                }
                overran_calls = overran
                    .into_iter()
                    .filter_map(|id| pending.remove(&id))
                    .collect();
            }
            for id in cancel {
                conn.cancel(id);
            }
            let answered = overran_calls.len();
            for call in overran_calls {
                conn.one_less();
                let err = self.overran(&conn, call.task);
                call.answer(Err(err), &mut batch);
            }
            self.release(answered, &mut batch);
        }
        busy
    }

    /// Answers the calls whose clients gave up while they waited for a
    /// slot (they did not run, and take no slot); whether calls still wait.
    fn drop_cancelled_waiting(&self, batch: &mut Batch) -> bool {
        let (dropped, waiting) = {
            let mut admission = lock(&self.admission);
            if !admission.waiting.any(Call::given_up) {
                return !admission.waiting.is_empty();
            }
            let dropped = admission.waiting.take_where(Call::given_up);
            (dropped, !admission.waiting.is_empty())
        };
        for call in dropped {
            call.not_run(batch);
        }
        waiting
    }

    fn crashed_error(&self, cause: &str) -> TaskError {
        TaskError::new(
            kind::WORKER_CRASHED,
            vec![json!(self.name), json!(self.version), json!(cause)],
        )
    }

    /// A call to task `task` on `conn` overran its time limit and ignored
    /// its cancellation: kills the worker (its other calls get
    /// `WorkerCrashed`, it is replaced) and says so to this caller.
    fn overran(&self, conn: &Conn, task: usize) -> TaskError {
        let id = self.tasks.get(task).map_or("?", String::as_str);
        let grace = self.options.kill_grace.as_secs_f64();
        tracing::warn!(
            plugin = %self.name, version = %self.version, pid = conn.pid, task = id,
            "task overran its time limit and ignored its cancellation for {grace} s; killing its worker"
        );
        conn.kill(format!(
            "killed by the host: a call to `{id}` overran its time limit"
        ));
        TaskError::new(
            kind::TIME_LIMIT_EXCEEDED,
            vec![
                json!(self.name),
                json!(self.version),
                json!(id),
                json!(format!(
                    "cancelled at its time limit, still running {grace} s later: its worker was killed"
                )),
            ],
        )
    }

    fn unavailable_error(&self, why: &str) -> TaskError {
        TaskError::new(
            kind::PLUGIN_UNAVAILABLE,
            vec![json!(self.name), json!(self.version), json!(why)],
        )
    }

    /// Submits a call: sent now to the least loaded live worker if a task
    /// slot is free (queued in `batch`, if given), else kept waiting until
    /// an answer frees a slot or a worker is back. Its id.
    fn submit(
        self: &Arc<Self>,
        task: usize,
        call: &TaskCall,
        deliver: Deliver,
        batch: &mut Batch,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(32 + call.args().len() + call.kwargs().len());
        channel::encode_call(
            &mut frame,
            id,
            call.codec(),
            task,
            call.args(),
            call.kwargs(),
        );
        let call = Call {
            id,
            task,
            frame,
            deliver,
            cancelled: call.canceller(),
            caller_gone: call.caller_gone().cloned(),
            caller: call.caller(),
            backlog: call.backlog().cloned(),
        };
        let mut admission = lock(&self.admission);
        let to = match self.live_worker() {
            Err(err) => {
                drop(admission);
                (call.deliver)(Err(err), batch);
                return id;
            }
            Ok(Some(conn))
                if admission.running < self.options.max_tasks.max(1)
                    && admission.waiting.is_empty()
                    && call.may_leave() =>
            {
                conn
            }
            Ok(_) => {
                let free = admission.running < self.options.max_tasks.max(1);
                admission.waiting.push(call.caller, call);
                drop(admission);
                // Its client may give up while it waits.
                self.limits.wake();
                // A slot is free, but calls held back by their clients'
                // unwritten replies wait: the next call that may start
                // takes it now.
                if free {
                    self.refill(batch);
                }
                return id;
            }
        };
        admission.running += 1;
        drop(admission);
        self.send_to(&to, call, batch);
        id
    }

    /// Sends a call that holds a task slot to `conn`. Should the worker be
    /// dead already, the call waits again, first in line.
    fn send_to(self: &Arc<Self>, conn: &Arc<Conn>, call: Call, batch: &mut Batch) {
        match conn.start(self, call, batch) {
            // Counted once sent (counting before could retire the worker
            // under the call).
            Ok(()) => {
                self.limits.wake();
                Pool::count_call(self, conn);
            }
            Err(call) => {
                {
                    let mut admission = lock(&self.admission);
                    admission.running -= 1;
                    admission.waiting.push_front(call.caller, call);
                }
                self.refill(batch);
            }
        }
    }

    /// `answered` calls left the workers: their slots go to the calls
    /// waiting.
    fn release(self: &Arc<Self>, answered: usize, batch: &mut Batch) {
        if answered == 0 {
            return;
        }
        {
            let mut admission = lock(&self.admission);
            admission.running = admission.running.saturating_sub(answered);
        }
        self.refill(batch);
    }

    /// Sends waiting calls while slots are free and a worker is live; if the
    /// version can no longer serve, answers them with why.
    fn refill(self: &Arc<Self>, batch: &mut Batch) {
        loop {
            let mut admission = lock(&self.admission);
            if admission.waiting.is_empty() || admission.running >= self.options.max_tasks.max(1) {
                return;
            }
            match self.live_worker() {
                Ok(Some(conn)) => {
                    let Some(call) = admission.waiting.pop_first(Call::may_leave) else {
                        return;
                    };
                    if call.given_up() {
                        drop(admission);
                        call.not_run(batch);
                        continue;
                    }
                    admission.running += 1;
                    drop(admission);
                    self.send_to(&conn, call, batch);
                }
                Ok(None) => return,
                Err(err) => {
                    let waiting = admission.waiting.take_all();
                    drop(admission);
                    for call in waiting {
                        (call.deliver)(Err(err.clone()), batch);
                    }
                    return;
                }
            }
        }
    }

    /// Gives up on call `id` (its caller went away): one still waiting is
    /// dropped; one a worker has is cancelled, so its slot is freed only
    /// when the worker is done with it (or killed, past the kill grace).
    fn forget(self: &Arc<Self>, id: u64) {
        let dropped = {
            let mut admission = lock(&self.admission);
            admission.waiting.take_where(|c| c.id == id)
        };
        if dropped.is_empty() {
            for conn in self.conns() {
                if conn.cancel_pending(id) {
                    self.limits.wake();
                    return;
                }
            }
        }
    }

    /// The least loaded live worker (`None` while all are restarting or
    /// replaced), or why the version serves no more.
    fn live_worker(&self) -> Result<Option<Arc<Conn>>, TaskError> {
        let inner = lock(&self.inner);
        if let Some(why) = &inner.failed {
            return Err(self.unavailable_error(why));
        }
        if inner.retired {
            return Err(self.unavailable_error("this version is no longer served"));
        }
        Ok(Self::least_loaded(&inner).cloned())
    }

    /// Every worker not yet reaped.
    fn conns(&self) -> Vec<Arc<Conn>> {
        lock(&self.inner)
            .conns
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    fn least_loaded(inner: &PoolState) -> Option<&Arc<Conn>> {
        inner
            .workers
            .iter()
            .flatten()
            .filter(|c| !c.dead.load(Ordering::Acquire) && !c.draining.load(Ordering::Acquire))
            .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))
    }

    /// Counts a call sent to `conn`; at `max_calls`, starts its
    /// replacement and lets it drain.
    fn count_call(pool: &Arc<Pool>, conn: &Arc<Conn>) {
        let Some(max) = pool.options.max_calls else {
            return;
        };
        if conn.started.fetch_add(1, Ordering::AcqRel) + 1 != max.max(1) {
            return;
        }
        // SeqCst here and in `one_less`: whichever of the two comes second
        // sees the other's write, so the worker is retired either way.
        conn.draining.store(true, Ordering::SeqCst);
        if conn.in_flight.load(Ordering::SeqCst) == 0 {
            conn.retire();
        }
        tracing::debug!(plugin = %pool.name, pid = conn.pid, calls = max, "recycling a worker");
        let (pool, index) = (Arc::clone(pool), conn.index);
        let started = std::thread::Builder::new()
            .name("taskit-recycle".into())
            .spawn(move || match pool.start_one() {
                Ok((started, slot)) => Pool::serve(&pool, index, started, slot),
                Err(err) => pool.restart(index, format!("replacement failed: {err}"), true),
            });
        if let Err(err) = started {
            tracing::error!(%err, "cannot start a worker's replacement");
        }
    }

    /// The wait before the next restart, given the recent crashes.
    fn backoff(&self, inner: &PoolState) -> Duration {
        let doublings = inner.crashes.len().saturating_sub(1).min(20) as u32;
        self.options
            .backoff
            .saturating_mul(1 << doublings)
            .min(self.options.max_backoff)
    }

    /// Starts serving with a worker that has loaded the plugin: its reader
    /// and output threads.
    fn serve(pool: &Arc<Pool>, index: usize, started: Started, counter_slot: Option<usize>) {
        let Started {
            mut child,
            channel,
            output,
        } = started;
        let pid = child.id();
        // Should the worker's threads not start, it is stopped and
        // restarted like a worker that crashed.
        let give_up = |child: &mut Child, why: String| {
            tracing::error!(plugin = %pool.name, version = %pool.version, pid, "{why}");
            spawn::kill_and_reap(child);
            pool.state.counters().release(counter_slot);
            Arc::clone(pool).restart(index, why, true);
        };
        let socket = match channel.try_clone() {
            Ok(w) => w,
            Err(err) => return give_up(&mut child, format!("cannot use its channel: {err}")),
        };
        let conn = Arc::new(Conn {
            pid,
            socket,
            outbox: Mutex::new(Outbox::default()),
            flush: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            killed: Mutex::new(None),
            reaped: AtomicBool::new(false),
            index,
            started: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            counter_slot,
        });
        let writer = Arc::clone(&conn);
        if let Err(err) = std::thread::Builder::new()
            .name(format!("taskit-send-{pid}"))
            .spawn(move || writer.write_out())
        {
            return give_up(&mut child, format!("cannot start its writer thread: {err}"));
        }
        // The reader thread gets the child once it runs (until then, the
        // child is still ours to stop).
        let (hand, handed) = mpsc::sync_channel::<(Child, Output)>(1);
        let (reader_pool, reader_conn) = (Arc::clone(pool), Arc::clone(&conn));
        let reader = std::thread::Builder::new()
            .name(format!("taskit-worker-{pid}"))
            .spawn(move || {
                if let Ok((child, output)) = handed.recv() {
                    reader_pool.read(index, reader_conn, channel, child, output);
                }
            });
        if let Err(err) = reader {
            conn.close_outbox();
            return give_up(&mut child, format!("cannot start its reader thread: {err}"));
        }
        let (name, version) = (pool.name.clone(), pool.version.clone());
        let out_of_memory = Arc::new(AtomicBool::new(false));
        let oom = Arc::clone(&out_of_memory);
        let relay = std::thread::Builder::new()
            .name(format!("taskit-out-{pid}"))
            .spawn(move || spawn::relay_output(output, &name, &version, pid, &oom));
        let relay = match relay {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::warn!(%err, "cannot relay a worker's output");
                None
            }
        };
        {
            let mut inner = lock(&pool.inner);
            let taken = inner.workers[index].as_ref().is_some_and(|c| {
                !c.dead.load(Ordering::Acquire) && !c.draining.load(Ordering::Acquire)
            });
            if inner.retired || taken {
                // No longer wanted, or a restart and a replacement raced
                // for the slot and the other won: this one exits at once.
                conn.retire();
            } else {
                inner.workers[index] = Some(Arc::clone(&conn));
            }
            inner.conns.retain(|c| c.strong_count() > 0);
            inner.conns.push(Arc::downgrade(&conn));
        }
        pool.changed.notify_all();
        let output = Output {
            relay,
            out_of_memory,
        };
        // The reader thread waits for it.
        let _ = hand.send((child, output));
        // Calls waiting for a worker go to this one.
        pool.refill(&mut Batch::default());
    }

    /// The reader thread of one worker: replies and log records until the
    /// channel closes; then the worker's end, and its restart.
    fn read(
        self: Arc<Self>,
        index: usize,
        conn: Arc<Conn>,
        channel: UnixStream,
        mut child: Child,
        output: Output,
    ) {
        // Buffered: a burst of replies costs one read.
        let mut channel = std::io::BufReader::with_capacity(64 << 10, channel);
        let mut buf = Vec::new();
        let mut broken = None;
        // Calls sent in the slots these answers free go out together.
        let mut batch = Batch::default();
        loop {
            if !channel::holds_frame(channel.buffer()) {
                batch.flush();
            }
            match channel::read_frame(&mut channel, &mut buf, self.options.max_frame) {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => {
                    broken = Some(err.to_string());
                    break;
                }
            }
            match channel::parse_from_worker(&buf) {
                Ok(FromWorker::Reply { id, result }) => {
                    if conn.answer(id, result.map(<[u8]>::to_vec), &mut batch) {
                        self.release(1, &mut batch);
                    }
                }
                Ok(FromWorker::Log {
                    level,
                    target,
                    message,
                }) => self.log(level, target, message),
                Ok(FromWorker::Ready { .. } | FromWorker::Refused(_)) => {}
                Err(err) => {
                    broken = Some(err);
                    break;
                }
            }
        }
        // What the answers read so far freed goes out before the reap.
        batch.flush();
        if let Some(err) = &broken {
            // It speaks nonsense: it cannot be trusted with another call.
            tracing::error!(plugin = %self.name, pid = conn.pid, %err, "bad frame from a plugin worker; killing it");
            let _ = child.kill();
        }
        conn.reaped.store(true, Ordering::Release);
        let status = {
            // Not while a kill is being sent: the pid must still be ours.
            let _killing = lock(&conn.killed);
            spawn::reap(&mut child, EXIT_GRACE)
        };
        let cause = status.map_or_else(|| "it stopped answering".to_owned(), spawn::describe);
        let cause = if output.ran_out_of_memory() {
            "out of memory".to_owned()
        } else {
            cause
        };
        let killed = lock(&conn.killed).clone();
        let cause = match (broken, &killed) {
            (_, Some(reason)) => reason.clone(),
            (Some(_), None) => format!("sent a malformed frame and was killed ({cause})"),
            (None, None) => cause,
        };
        let lost = conn.fail_all();
        self.state.counters().release(conn.counter_slot);
        if conn.retiring.load(Ordering::Acquire) {
            tracing::debug!(plugin = %self.name, version = %self.version, pid = conn.pid, %cause, "worker exited");
            let answered = lost.len();
            for pending in lost {
                pending.answer(Err(self.crashed_error(&cause)), &mut batch);
            }
            self.release(answered, &mut batch);
            // Retired for its share of calls, but no replacement took its
            // slot (it failed to start): start one now.
            let orphaned = {
                let inner = lock(&self.inner);
                !inner.retired
                    && inner.workers[index]
                        .as_ref()
                        .is_some_and(|c| Arc::ptr_eq(c, &conn))
            };
            if orphaned {
                drop(batch);
                self.restart(index, "its replacement did not start".into(), false);
            }
            return;
        }
        let running: Vec<&str> = lost
            .iter()
            .filter_map(|p| self.tasks.get(p.task).map(String::as_str))
            .collect();
        let what = if killed.is_some() {
            "plugin worker killed"
        } else {
            "plugin worker crashed"
        };
        tracing::error!(
            plugin = %self.name,
            version = %self.version,
            file = %self.source.display(),
            pid = conn.pid,
            %cause,
            running = %running.join(","),
            "{what}"
        );
        let answered = lost.len();
        for pending in lost {
            pending.answer(Err(self.crashed_error(&cause)), &mut batch);
        }
        self.release(answered, &mut batch);
        // Out before the restart's backoff.
        drop(batch);
        self.restart(index, cause, killed.is_none());
    }

    /// Restarts worker `index` after its crash, with backoff, until one
    /// loads, the version is retired, or it crashed too often.
    /// A worker the host killed for a time limit does not count as a crash.
    fn restart(self: Arc<Self>, index: usize, mut cause: String, mut crashed: bool) {
        loop {
            let delay = {
                let mut inner = lock(&self.inner);
                if inner.workers[index].as_ref().is_some_and(|c| {
                    !c.dead.load(Ordering::Acquire) && !c.draining.load(Ordering::Acquire)
                }) {
                    // A replacement already serves this slot (a recycled
                    // worker crashed while draining): nothing to restart.
                    return;
                }
                inner.workers[index] = None;
                let now = Instant::now();
                let window = self.options.crash_window;
                while inner
                    .crashes
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > window)
                {
                    inner.crashes.pop_front();
                }
                if crashed {
                    inner.crashes.push_back(now);
                }
                crashed = true;
                inner.last_cause = Some(cause.clone());
                if inner.retired {
                    return;
                }
                if inner.crashes.len() >= self.options.crash_limit.max(1) as usize {
                    let why = format!(
                        "its workers crashed {} times within {} s (last: {cause}); it is not started again until its file changes or the host reloads",
                        inner.crashes.len(),
                        window.as_secs()
                    );
                    tracing::error!(plugin = %self.name, version = %self.version, file = %self.source.display(), "plugin marked failed: {why}");
                    inner.failed = Some(why);
                    drop(inner);
                    self.changed.notify_all();
                    // The calls waiting for a worker are answered.
                    self.refill(&mut Batch::default());
                    return;
                }
                self.backoff(&inner)
            };
            self.changed.notify_all();
            // Wait out the backoff, unless the version is retired meanwhile.
            {
                let inner = lock(&self.inner);
                let (inner, _) = self
                    .changed
                    .wait_timeout_while(inner, delay, |i| !i.retired && i.failed.is_none())
                    .unwrap_or_else(PoisonError::into_inner);
                if inner.retired || inner.failed.is_some() {
                    return;
                }
            }
            match self.start_one() {
                Ok((started, slot)) => {
                    lock(&self.inner).restarts += 1;
                    crate::metrics::worker_restarted(&self.name, &cause);
                    tracing::info!(plugin = %self.name, version = %self.version, pid = started.child.id(), "plugin worker restarted");
                    Pool::serve(&self, index, started, slot);
                    return;
                }
                Err(err) => {
                    tracing::error!(plugin = %self.name, version = %self.version, %err, "plugin worker failed to restart");
                    cause = format!("restart failed: {err}");
                }
            }
        }
    }

    /// Starts one more worker of this version and waits for it to load.
    fn start_one(&self) -> Result<(Started, Option<usize>), LoadError> {
        let slot = self.state.counters().claim();
        let launch = Launch {
            options: &self.options,
            shadow: &self.shadow,
            source: &self.source,
            counters: self.state.counters().fd().zip(slot),
        };
        let release = || self.state.counters().release(slot);
        let mut started = spawn::start(&launch).map_err(|e| {
            release();
            LoadError::Io(format!("cannot start a worker: {e}"))
        })?;
        match spawn::handshake(
            &mut started,
            self.options.init_timeout,
            self.options.max_frame,
            &self.name,
        ) {
            Ok(ready) if ready.tasks == self.tasks => Ok((started, slot)),
            Ok(_) => {
                spawn::kill_and_reap(&mut started.child);
                release();
                Err(LoadError::InvalidTasks(
                    "a restarted worker exports other tasks than the version it replaces".into(),
                ))
            }
            Err(err) => {
                release();
                Err(err)
            }
        }
    }

    /// Shutdown could wait no longer: kills the workers, answers every
    /// call they had `WorkerCrashed` (not `Stopping`, which tells a client
    /// the call never ran and may go elsewhere: these may have run), and
    /// starts none again. The task ids of the calls abandoned.
    fn abandon(self: &Arc<Self>) -> Vec<String> {
        // Retired and emptied in one step, so no call waiting slips out
        // with another answer.
        let waiting = {
            let mut admission = lock(&self.admission);
            lock(&self.inner).retired = true;
            admission.waiting.take_all()
        };
        self.changed.notify_all();
        let mut abandoned = Vec::new();
        let mut batch = Batch::default();
        // Every worker, those replaced after their share of calls included.
        for conn in self.conns() {
            conn.retiring.store(true, Ordering::Release);
            let lost = conn.fail_all();
            let answered = lost.len();
            for pending in lost {
                abandoned.extend(self.tasks.get(pending.task).cloned());
                pending.answer(
                    Err(self.crashed_error(
                        "killed at shutdown: still running after the drain timeout",
                    )),
                    &mut batch,
                );
            }
            conn.kill("abandoned at shutdown".into());
            self.release(answered, &mut batch);
        }
        for call in waiting {
            abandoned.extend(self.tasks.get(call.task).cloned());
            (call.deliver)(
                Err(TaskError::msg(
                    kind::STOPPING,
                    "the host stopped before a task slot was free; the call did not run",
                )),
                &mut batch,
            );
        }
        abandoned
    }

    /// Forgets past crashes and, if the version was given up on, restarts
    /// what is not running (`<reload>`, SIGHUP).
    fn revive(self: &Arc<Self>) {
        let dead: Vec<usize> = {
            let mut inner = lock(&self.inner);
            // A forced reload forgives past crashes, failed or not.
            inner.crashes.clear();
            if inner.failed.take().is_none() {
                return;
            }
            inner
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.as_ref().is_none_or(|c| c.dead.load(Ordering::Acquire)))
                .map(|(i, _)| i)
                .collect()
        };
        tracing::info!(plugin = %self.name, version = %self.version, "failed plugin revived by a reload");
        for index in dead {
            let pool = Arc::clone(self);
            let _ = std::thread::Builder::new()
                .name("taskit-revive".into())
                .spawn(move || match pool.start_one() {
                    Ok((started, slot)) => Pool::serve(&pool, index, started, slot),
                    Err(err) => pool.restart(index, format!("restart failed: {err}"), true),
                });
        }
    }
}

impl Conn {
    /// Registers a call and sends it (queued in `batch`, if given); gives
    /// it back if the worker is dead already.
    fn start(self: &Arc<Self>, pool: &Pool, call: Call, batch: &mut Batch) -> Result<(), Call> {
        let mut pending = lock(&self.pending);
        if self.dead.load(Ordering::Acquire) {
            return Err(call);
        }
        let Call {
            id,
            task,
            frame,
            deliver,
            cancelled,
            caller_gone,
            caller,
            backlog,
        } = call;
        pending.insert(
            id,
            Pending {
                task,
                deliver,
                cancelled,
                deadline: Deadline::new(&pool.options, Instant::now()),
                running: pool.state.enter(),
            },
        );
        drop(pending);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            // Retired or gone meanwhile, the call unsent: it goes back to
            // wait for another worker (unless the reader answered it
            // already).
            drop(outbox);
            let Some(pending) = lock(&self.pending).remove(&id) else {
                return Ok(());
            };
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(Call {
                id,
                task: pending.task,
                frame,
                deliver: pending.deliver,
                cancelled: pending.cancelled,
                caller_gone,
                caller,
                backlog,
            });
        }
        outbox.frames.extend_from_slice(&frame);
        if !outbox.corked {
            outbox.corked = true;
            batch.hold(Arc::clone(self) as Arc<dyn Corked>);
        }
        Ok(())
    }

    /// Asks the worker to set call `id`'s cancellation flag.
    fn cancel(&self, id: u64) {
        let mut frame = Vec::with_capacity(16);
        channel::encode_cancel(&mut frame, id);
        self.send_frame(&frame);
    }

    /// Kills the worker (once) for `reason`. From now on no call is sent
    /// to it.
    fn kill(&self, reason: String) {
        // Held throughout: the reader thread takes it before reaping.
        let mut killed = lock(&self.killed);
        if killed.is_some() || self.reaped.load(Ordering::Acquire) {
            return;
        }
        *killed = Some(reason);
        {
            let _pending = lock(&self.pending);
            self.dead.store(true, Ordering::Release);
        }
        // SAFETY: a plain system call on our child, which its reader thread
        // has not reaped (it sets `reaped`, then takes `killed` to reap), so
        // the pid is still its own.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
    }

    /// Queues a whole frame for the worker and writes what is queued.
    fn send_frame(&self, frame: &[u8]) {
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            return;
        }
        outbox.frames.extend_from_slice(frame);
        self.write_queued(outbox);
    }

    /// Writes the queued frames here at once when the socket takes them
    /// without blocking and the writer thread is not writing; whatever is
    /// left, the writer thread writes, so no caller ever blocks on a worker
    /// that does not read.
    fn write_queued(&self, mut outbox: MutexGuard<'_, Outbox>) {
        if !outbox.flushing {
            match send_now(&self.socket, &outbox.frames) {
                Ok(n) if n == outbox.frames.len() => {
                    outbox.frames.clear();
                    return;
                }
                Ok(n) => {
                    outbox.frames.drain(..n);
                }
                Err(_) => {
                    // Gone: the reader thread answers the calls.
                    outbox.closed = true;
                    outbox.frames = Vec::new();
                    return;
                }
            }
        }
        drop(outbox);
        self.flush.notify_one();
    }

    /// The writer thread: writes what callers could not, until the worker
    /// is gone.
    fn write_out(&self) {
        let mut outbox = lock(&self.outbox);
        loop {
            while outbox.frames.is_empty() && !outbox.closed {
                outbox = self
                    .flush
                    .wait(outbox)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if outbox.closed {
                return;
            }
            let frames = std::mem::take(&mut outbox.frames);
            outbox.flushing = true;
            drop(outbox);
            let written = (&self.socket).write_all(&frames);
            outbox = lock(&self.outbox);
            outbox.flushing = false;
            if written.is_err() {
                outbox.closed = true;
                return;
            }
        }
    }

    /// Delivers the answer to call `id`; whether it was pending.
    fn answer(&self, id: u64, result: CallResult, batch: &mut Batch) -> bool {
        let pending = lock(&self.pending).remove(&id);
        let Some(pending) = pending else {
            return false;
        };
        pending.answer(result, batch);
        self.one_less();
        true
    }

    /// Marks call `id` cancelled if it is pending here; whether it was.
    fn cancel_pending(&self, id: u64) -> bool {
        let pending = lock(&self.pending);
        let call = pending.get(&id);
        if let Some(call) = call {
            call.cancelled.store(true, Ordering::Release);
        }
        call.is_some()
    }

    /// One call fewer in flight; a draining worker with none left exits.
    fn one_less(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.draining.load(Ordering::SeqCst)
        {
            self.retire();
        }
    }

    /// Marks the worker gone and takes every call it had.
    fn fail_all(&self) -> Vec<Pending> {
        let mut pending = lock(&self.pending);
        self.dead.store(true, Ordering::Release);
        self.in_flight.store(0, Ordering::Relaxed);
        self.close_outbox();
        pending.drain().map(|(_, p)| p).collect()
    }

    fn close_outbox(&self) {
        lock(&self.outbox).closed = true;
        self.flush.notify_all();
    }

    /// Tells the worker to exit: it does as soon as its channel closes.
    fn retire(&self) {
        self.retiring.store(true, Ordering::Release);
        self.close_outbox();
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Corked for Conn {
    /// Writes the calls a batch held back.
    fn uncork(&self) {
        let mut outbox = lock(&self.outbox);
        outbox.corked = false;
        if !outbox.closed && !outbox.frames.is_empty() {
            self.write_queued(outbox);
        }
    }
}

/// The thread relaying a worker's output, and what it saw.
struct Output {
    relay: Option<std::thread::JoinHandle<()>>,
    out_of_memory: Arc<AtomicBool>,
}

impl Output {
    /// Whether the worker reported an allocation failure before it died
    /// (its last lines are read first, for a moment at most).
    fn ran_out_of_memory(self) -> bool {
        if let Some(relay) = self.relay {
            let deadline = Instant::now() + Duration::from_millis(200);
            while !relay.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.out_of_memory.load(Ordering::Acquire)
    }
}
