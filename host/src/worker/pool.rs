//! One plugin version served by worker processes: routing calls to the
//! least loaded worker, failing the calls of a worker that dies, restarting
//! it with backoff, and giving up on a version that keeps crashing.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use taskit_plugin_api::error::kind;
use taskit_plugin_api::TaskError;

use super::channel::{self, FromWorker};
use super::spawn::{self, Launch, Started};
use super::WorkerOptions;
use crate::call::TaskCall;
use crate::loader::{LoadError, Prepared};
use crate::registry::{Health, Plugin};
use crate::services::{emit_plugin_log, HostState};

/// How often a call waiting on a worker looks at its cancellation flag.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// How long the host waits for a worker whose channel closed to exit
/// before killing it.
const EXIT_GRACE: Duration = Duration::from_millis(50);

/// The time limits of one call: cancel at the task timeout (or when the
/// client cancels), kill its worker a grace period later.
struct Deadline {
    limit: Option<Instant>,
    grace: Duration,
    cancelled_at: Option<Instant>,
}

/// What a waiting call does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Wait,
    /// Tell the worker to set the task's cancellation flag.
    Cancel,
    /// The grace is over: kill the worker.
    Kill,
}

impl Deadline {
    fn new(options: &WorkerOptions, now: Instant) -> Self {
        Self {
            limit: options.task_timeout.and_then(|t| now.checked_add(t)),
            grace: options.kill_grace,
            cancelled_at: None,
        }
    }

    fn step(&mut self, now: Instant, cancelled: bool) -> Step {
        match self.cancelled_at {
            None if cancelled || self.limit.is_some_and(|l| now >= l) => {
                self.cancelled_at = Some(now);
                Step::Cancel
            }
            None => Step::Wait,
            Some(at) if now.duration_since(at) >= self.grace => Step::Kill,
            Some(_) => Step::Wait,
        }
    }
}

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
struct Pool {
    name: String,
    version: String,
    source: std::path::PathBuf,
    shadow: std::path::PathBuf,
    tasks: Vec<String>,
    options: WorkerOptions,
    state: Arc<HostState>,
    /// The version's own task slots.
    slots: Arc<tokio::sync::Semaphore>,
    inner: Mutex<PoolState>,
    changed: Condvar,
}

#[derive(Default)]
struct PoolState {
    /// One entry per worker slot: the live worker, or `None` while it is
    /// being restarted.
    workers: Vec<Option<Arc<Conn>>>,
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
    next_id: AtomicU64,
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
    reply: Reply,
}

type CallResult = Result<Vec<u8>, TaskError>;

/// Where a worker's answer goes: a thread blocked on it, or a task
/// awaiting it.
enum Reply {
    Blocking(SyncSender<CallResult>),
    Async(tokio::sync::oneshot::Sender<CallResult>),
}

impl Reply {
    fn send(self, result: CallResult) {
        match self {
            Self::Blocking(tx) => {
                let _ = tx.send(result);
            }
            Self::Async(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// Frames waiting for the worker's socket, and whether the writer thread is
/// writing some now (then nobody else may write: frames must not
/// interleave).
#[derive(Default)]
struct Outbox {
    frames: Vec<u8>,
    flushing: bool,
    closed: bool,
}

/// A call sent to a worker, its answer awaited without a thread.
pub(crate) struct Sent {
    rx: tokio::sync::oneshot::Receiver<CallResult>,
    conn: Arc<Conn>,
    id: u64,
    task: usize,
    cancelled: Arc<AtomicBool>,
    pool: Arc<Pool>,
}

impl Sent {
    /// The worker's answer; passes a cancellation on to the worker.
    pub(crate) async fn answer(mut self) -> CallResult {
        let mut deadline = Deadline::new(&self.pool.options, Instant::now());
        loop {
            tokio::select! {
                result = &mut self.rx => {
                    return result.unwrap_or_else(|_| Err(self.pool.crashed_error("the worker went away")))
                }
                () = tokio::time::sleep(CANCEL_POLL) => {
                    let cancelled = self.cancelled.load(Ordering::Acquire);
                    match deadline.step(Instant::now(), cancelled) {
                        Step::Wait => {}
                        Step::Cancel => self.conn.cancel(self.id),
                        Step::Kill => return Err(self.pool.overran(&self.conn, self.task)),
                    }
                }
            }
        }
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        // Answered, or given up on (the connection went away): either way
        // no longer pending here.
        self.conn.forget(self.id);
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
            slots: Arc::new(tokio::sync::Semaphore::new(options.max_tasks.max(1))),
            inner: Mutex::new(PoolState {
                workers: vec![None; count],
                ..PoolState::default()
            }),
            changed: Condvar::new(),
        });
        for (index, (started, slot, _)) in ready.into_iter().enumerate() {
            Pool::serve(&pool, index, started, slot);
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
        let conn = self.pool.pick()?;
        let result = conn.call(&self.pool, index, call);
        // Counted once sent and answered (counting before it is sent could
        // retire the worker under it).
        Pool::count_call(&self.pool, &conn);
        result
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn slots(&self) -> Option<Arc<tokio::sync::Semaphore>> {
        Some(Arc::clone(&self.pool.slots))
    }

    fn send(&self, index: usize, call: &TaskCall) -> Option<Sent> {
        let conn = self.pool.pick_now()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = conn.start(&self.pool, index, call, Reply::Async(tx)).ok()?;
        Pool::count_call(&self.pool, &conn);
        Some(Sent {
            rx,
            id,
            task: index,
            conn,
            cancelled: call.canceller(),
            pool: Arc::clone(&self.pool),
        })
    }

    fn revive(&self) {
        self.pool.revive();
    }

    fn abandon(&self) -> Vec<String> {
        self.pool.abandon()
    }

    fn health(&self) -> Health {
        let inner = lock(&self.pool.inner);
        Health {
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

    /// The least loaded live worker. While none is live (all restarting),
    /// waits for one as long as a restart may take.
    fn pick(&self) -> Result<Arc<Conn>, TaskError> {
        let mut inner = lock(&self.inner);
        let deadline = Instant::now() + self.backoff(&inner) + self.options.init_timeout;
        loop {
            if let Some(why) = &inner.failed {
                return Err(self.unavailable_error(why));
            }
            if inner.retired {
                return Err(self.unavailable_error("this version is no longer served"));
            }
            if let Some(conn) = Self::least_loaded(&inner) {
                return Ok(Arc::clone(conn));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let cause = inner.last_cause.clone().unwrap_or_default();
                return Err(self.unavailable_error(&format!(
                    "no worker is running (restarting after: {cause})"
                )));
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The least loaded live worker, if one is live now and the version is
    /// serving.
    fn pick_now(&self) -> Option<Arc<Conn>> {
        let inner = lock(&self.inner);
        if inner.failed.is_some() || inner.retired {
            return None;
        }
        Self::least_loaded(&inner).cloned()
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
            child,
            channel,
            output,
        } = started;
        let pid = child.id();
        let socket = match channel.try_clone() {
            Ok(w) => w,
            Err(err) => {
                tracing::error!(plugin = %pool.name, %err, "cannot use a worker's channel");
                return;
            }
        };
        let conn = Arc::new(Conn {
            pid,
            socket,
            outbox: Mutex::new(Outbox::default()),
            flush: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            dead: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            killed: Mutex::new(None),
            reaped: AtomicBool::new(false),
            index,
            started: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            counter_slot,
        });
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
        }
        pool.changed.notify_all();
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
        let writer = Arc::clone(&conn);
        if let Err(err) = std::thread::Builder::new()
            .name(format!("taskit-send-{pid}"))
            .spawn(move || writer.write_out())
        {
            tracing::error!(%err, "cannot start a worker's writer thread");
        }
        let reader_pool = Arc::clone(pool);
        let reader = std::thread::Builder::new()
            .name(format!("taskit-worker-{pid}"))
            .spawn(move || {
                let output = Output {
                    relay,
                    out_of_memory,
                };
                reader_pool.read(index, conn, channel, child, output)
            });
        if let Err(err) = reader {
            tracing::error!(%err, "cannot start a worker's reader thread");
        }
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
        loop {
            match channel::read_frame(&mut channel, &mut buf, self.options.max_frame) {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => {
                    broken = Some(err.to_string());
                    break;
                }
            }
            match channel::parse_from_worker(&buf) {
                Ok(FromWorker::Reply { id, result }) => conn.answer(id, result.map(<[u8]>::to_vec)),
                Ok(FromWorker::Log {
                    level,
                    target,
                    message,
                }) => emit_plugin_log(&self.name, &self.version, level, target, message),
                Ok(FromWorker::Ready { .. } | FromWorker::Refused(_)) => {}
                Err(err) => {
                    broken = Some(err);
                    break;
                }
            }
        }
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
            for pending in lost {
                pending.reply.send(Err(self.crashed_error(&cause)));
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
        for pending in lost {
            pending.reply.send(Err(self.crashed_error(&cause)));
        }
        self.restart(index, cause, killed.is_none());
    }

    /// Restarts worker `index` after its crash, with backoff, until one
    /// loads, the version is retired, or it crashed too often.
    /// A worker the host killed for a time limit does not count as a crash.
    fn restart(self: Arc<Self>, index: usize, mut cause: String, mut crashed: bool) {
        loop {
            let delay = {
                let mut inner = lock(&self.inner);
                if inner.workers[index]
                    .as_ref()
                    .is_some_and(|c| !c.dead.load(Ordering::Acquire))
                {
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
    fn abandon(&self) -> Vec<String> {
        let workers: Vec<Arc<Conn>> = {
            let mut inner = lock(&self.inner);
            inner.retired = true;
            inner.workers.iter().flatten().cloned().collect()
        };
        self.changed.notify_all();
        let mut abandoned = Vec::new();
        for conn in workers {
            conn.retiring.store(true, Ordering::Release);
            for pending in conn.fail_all() {
                let task = self.tasks.get(pending.task).cloned().unwrap_or_default();
                pending.reply.send(Err(self.crashed_error(
                    "killed at shutdown: still running after the drain timeout",
                )));
                abandoned.push(task);
            }
            conn.kill("abandoned at shutdown".into());
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
    /// Registers a call and sends it; its id.
    fn start(
        &self,
        pool: &Pool,
        task: usize,
        call: &TaskCall,
        reply: Reply,
    ) -> Result<u64, TaskError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = lock(&self.pending);
            if self.dead.load(Ordering::Acquire) {
                return Err(pool.crashed_error("the worker died as the call was sent"));
            }
            pending.insert(id, Pending { task, reply });
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(32 + call.args().len() + call.kwargs().len());
        channel::encode_call(
            &mut frame,
            id,
            call.codec(),
            task,
            call.args(),
            call.kwargs(),
        );
        self.send_frame(&frame);
        Ok(id)
    }

    /// Sends `call` to the worker and waits for its answer on this thread,
    /// passing on a cancellation.
    fn call(&self, pool: &Pool, task: usize, call: &TaskCall) -> CallResult {
        let (tx, rx) = mpsc::sync_channel(1);
        let id = self.start(pool, task, call, Reply::Blocking(tx))?;
        let _forget = Forget(self, id);
        let mut deadline = Deadline::new(&pool.options, Instant::now());
        loop {
            match rx.recv_timeout(CANCEL_POLL) {
                Ok(result) => return result,
                Err(RecvTimeoutError::Timeout) => {
                    let cancelled = call.cancelled().load(Ordering::Acquire);
                    match deadline.step(Instant::now(), cancelled) {
                        Step::Wait => {}
                        Step::Cancel => self.cancel(id),
                        Step::Kill => return Err(pool.overran(self, task)),
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(pool.crashed_error("the worker went away"));
                }
            }
        }
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

    /// Queues whole frames for the worker. Written here at once when the
    /// socket takes them without blocking and nothing is queued; otherwise
    /// the writer thread writes them, so no caller ever blocks on a worker
    /// that does not read.
    fn send_frame(&self, frame: &[u8]) {
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            return;
        }
        if outbox.frames.is_empty() && !outbox.flushing {
            match send_now(&self.socket, frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => outbox.frames.extend_from_slice(&frame[n..]),
                Err(_) => {
                    // Gone: the reader thread answers the calls.
                    outbox.closed = true;
                    return;
                }
            }
        } else {
            outbox.frames.extend_from_slice(frame);
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

    fn answer(&self, id: u64, result: CallResult) {
        let pending = lock(&self.pending).remove(&id);
        if let Some(pending) = pending {
            pending.reply.send(result);
            self.one_less();
        }
    }

    /// Drops call `id` if it is still pending (its caller gave up).
    fn forget(&self, id: u64) {
        let pending = lock(&self.pending).remove(&id);
        if pending.is_some() {
            self.one_less();
        }
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

/// Writes what the socket takes without blocking.
fn send_now(socket: &UnixStream, frame: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: a plain system call on a socket we own, with a valid buffer.
        let n = unsafe {
            libc::send(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(err),
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

/// Drops a blocking call's pending entry however its wait ends.
struct Forget<'a>(&'a Conn, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}
