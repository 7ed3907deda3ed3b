//! Process isolation: each plugin version runs in worker processes of its
//! own, so nothing it does (crash, abort, exit, hang in `init`) can take the
//! host or another plugin with it.
//!
//! The host never maps the plugin: it copies and checks the file as in
//! process (`loader`), then starts workers — its own program with a hidden
//! subcommand — that map the copy, run every check and `init`, and report
//! READY or REFUSED over a socket pair (`channel`). Calls go to the least
//! loaded worker of the version ([`WorkerPlugin`], behind the same `Route`
//! as an in-process plugin). A worker that dies fails the calls it had with
//! `WorkerCrashed` and is restarted with backoff; a version whose workers
//! crash too often is marked failed and answers `PluginUnavailable` until
//! its file changes or the host reloads.

mod channel;
mod limits;
mod pool;
mod serve;
mod spawn;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use pool::{Deliver, Ticket, WorkerPlugin};
pub use serve::run_worker;

/// What a frame to or from a worker may carry beyond a message a client
/// may send or be sent (`--max-message`): the host sets a worker's
/// [`max_frame`](WorkerOptions::max_frame) to that plus this.
pub const FRAME_SLACK: usize = 64 << 10;

/// The hidden subcommand of `taskit-host` that runs a worker.
pub const WORKER_SUBCOMMAND: &str = "__worker";

/// Where plugins run.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// In this process (`--isolation none`): fastest, but a plugin that
    /// crashes, aborts or exits ends the host. For trusted plugins.
    InProcess,
    /// In worker processes (`--isolation process`).
    Process(Box<WorkerOptions>),
}

/// How worker processes are started and supervised.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The program to run as a worker, and the arguments that make it one:
    /// by default this very program with [`WORKER_SUBCOMMAND`] (a program
    /// embedding the host calls [`run_worker`] when it sees it).
    pub program: PathBuf,
    /// Arguments before the worker's own.
    pub args: Vec<OsString>,
    /// Workers per plugin version; calls go to the least loaded.
    pub workers_per_plugin: usize,
    /// Time a worker has to load the plugin and run its `init`; past it the
    /// worker is killed and the file refused.
    pub init_timeout: Duration,
    /// Wait before the first restart after a crash; doubled for each crash
    /// in [`crash_window`](Self::crash_window), up to [`max_backoff`](Self::max_backoff).
    pub backoff: Duration,
    /// The longest wait before a restart.
    pub max_backoff: Duration,
    /// Crashes within [`crash_window`](Self::crash_window) that mark a
    /// plugin version failed.
    pub crash_limit: u32,
    /// See [`crash_limit`](Self::crash_limit).
    pub crash_window: Duration,
    /// Largest frame a worker may send (a reply larger than this is
    /// answered `MessageTooLarge`).
    pub max_frame: usize,
    /// Tasks of one plugin version running at once (its own task slots,
    /// so a plugin whose tasks hang never starves another).
    pub max_tasks: usize,
    /// How long a task may run before its cancellation flag is set
    /// (`None`: no limit but the client's).
    pub task_timeout: Option<Duration>,
    /// How long a cancelled task (time limit, or the client gave up) may
    /// go on before its worker is killed and replaced.
    pub kill_grace: Duration,
    /// A hard cap on each worker's address space, in bytes (`RLIMIT_AS`;
    /// `None`: no cap). A worker that reaches it fails an allocation and
    /// dies; its calls get `WorkerCrashed` with the cause "out of memory".
    pub memory_limit: Option<u64>,
    /// Calls a worker takes before it is replaced (Celery's
    /// max-tasks-per-child): it finishes its calls, a fresh one takes over,
    /// the old one exits and returns its memory. `None`: never.
    pub max_calls: Option<u64>,
    /// Run workers as this user and group id (`--worker-user`; the host
    /// must be able to switch: root). `None`: the host's own.
    pub user: Option<(u32, u32)>,
}

impl WorkerOptions {
    /// Defaults for workers run as `program WORKER_SUBCOMMAND ...`.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: vec![WORKER_SUBCOMMAND.into()],
            workers_per_plugin: std::thread::available_parallelism().map_or(2, |n| n.get()),
            init_timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            crash_limit: 5,
            crash_window: Duration::from_secs(60),
            max_frame: 1 << 30,
            max_tasks: 64,
            task_timeout: None,
            kill_grace: Duration::from_secs(5),
            memory_limit: None,
            max_calls: None,
            user: None,
        }
    }

    /// Workers run as this very program (see [`WORKER_SUBCOMMAND`]).
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?))
    }
}
