//! The runtime every call of this process runs on, and who drives it.
//!
//! One current-thread tokio runtime: its connections' tasks and the calls
//! run on whichever thread holds it, one at a time. A waiting `work`
//! holds it while nothing else needs it, so the caller itself sends the
//! request and sleeps in `epoll_wait` until the reply, with no thread to
//! wake on either side (what a single-threaded Rust client does). While
//! calls started by `call`, `callback` and `ignore` are outstanding, the
//! driver thread (`taskit-native`) holds it instead, and waiting callers
//! are woken by it.
//!
//! Not a thread pool: on tokio's two-thread pool the calls' tasks woke one
//! another across threads, and `starmap` ran 4x fewer calls per second.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::callbacks;

/// How often a waiting thread looks for a signal (Ctrl-C) to handle.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Driver {
    /// The process it belongs to (see `generation`): a forked child makes
    /// its own.
    generation: u64,
    runtime: Runtime,
    /// Calls started without a waiting caller, not finished.
    outstanding: AtomicUsize,
    /// Wakes the driver thread when `outstanding` leaves zero.
    lock: Mutex<()>,
    busy: Condvar,
    /// Wakes the driver's future when `outstanding` reaches zero.
    idle: Notify,
    /// Calls handed over, taken in batches by a task on the runtime: one
    /// wake-up per batch, not per call.
    queue: Mutex<Vec<Job>>,
    ready: Notify,
    /// The threads `callback`'s callbacks run on.
    callbacks: callbacks::Pool,
}

/// This process's driver. A child forked from a process that had one
/// starts its own: the parent's runtime (its epoll instance, its threads)
/// is not the child's to use. The parent's is leaked there, never touched.
static CURRENT: AtomicPtr<Driver> = AtomicPtr::new(std::ptr::null_mut());

/// Counts the forks this process came through: a value of its own in each
/// process, read without a system call (a `getpid` per call cost more than
/// the check is worth).
pub fn generation() -> u64 {
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static WATCH: std::sync::Once = std::sync::Once::new();
    extern "C" fn forked() {
        FORKS.fetch_add(1, Ordering::AcqRel);
    }
    WATCH.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic, which is
        // async-signal-safe as a fork child handler must be.
        unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
    FORKS.load(Ordering::Acquire)
}

fn driver() -> &'static Driver {
    let generation = generation();
    let current = CURRENT.load(Ordering::Acquire);
    // SAFETY: CURRENT only ever holds null or a leaked, never freed Driver.
    if let Some(d) = unsafe { current.as_ref() } {
        if d.generation == generation {
            return d;
        }
    }
    let made: &'static Driver = Box::leak(Box::new(Driver {
        generation,
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start the taskit_native runtime"),
        outstanding: AtomicUsize::new(0),
        lock: Mutex::new(()),
        busy: Condvar::new(),
        idle: Notify::new(),
        queue: Mutex::new(Vec::new()),
        ready: Notify::new(),
        callbacks: callbacks::Pool::default(),
    }));
    let made_ptr = std::ptr::from_ref(made).cast_mut();
    match CURRENT.compare_exchange(current, made_ptr, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            made.runtime.spawn(take_batches(made));
            std::thread::Builder::new()
                .name("taskit-native".to_owned())
                .spawn(move || drive(made))
                .expect("cannot start the taskit_native runtime thread");
            made
        }
        // Another thread made one first: use it (this one stays unused).
        // SAFETY: as above.
        Err(winner) => unsafe { &*winner },
    }
}

/// The runtime, to spawn on (a spawned task runs while a thread drives).
pub fn runtime() -> &'static Runtime {
    &driver().runtime
}

/// The threads `callback`'s callbacks run on.
pub fn callback_pool() -> &'static callbacks::Pool {
    &driver().callbacks
}

/// The driver thread: holds the runtime while calls without a waiting
/// caller are outstanding.
fn drive(d: &'static Driver) {
    loop {
        let mut guard = d.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while d.outstanding.load(Ordering::Acquire) == 0 {
            guard = d.busy.wait(guard).unwrap_or_else(PoisonError::into_inner);
        }
        drop(guard);
        d.runtime.block_on(async {
            loop {
                let idle = d.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if d.outstanding.load(Ordering::Acquire) == 0 {
                    break;
                }
                idle.await;
            }
        });
    }
}

async fn take_batches(d: &'static Driver) {
    loop {
        d.ready.notified().await;
        // As in `wait`: let connections that changed while nobody drove the
        // runtime be read before the calls pick one.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let jobs = std::mem::take(&mut *d.queue.lock().unwrap_or_else(PoisonError::into_inner));
        for job in jobs {
            tokio::spawn(job);
        }
    }
}

/// A job counted in `Driver::outstanding` while alive.
struct Outstanding(&'static Driver);

impl Drop for Outstanding {
    fn drop(&mut self) {
        if self.0.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// Runs `job` on the runtime, soon; the driver thread drives it unless a
/// waiting caller does.
pub fn submit(job: impl Future<Output = ()> + Send + 'static) {
    let d = driver();
    let before = d.outstanding.fetch_add(1, Ordering::AcqRel);
    let job = async move {
        // Counted out however the job ends: done, panicked, or dropped.
        let _counted = Outstanding(d);
        job.await;
    };
    let mut queue = d.queue.lock().unwrap_or_else(PoisonError::into_inner);
    let first = queue.is_empty();
    queue.push(Box::pin(job));
    drop(queue);
    if first {
        d.ready.notify_one();
    }
    if before == 0 {
        let _guard = d.lock.lock().unwrap_or_else(PoisonError::into_inner);
        d.busy.notify_one();
    }
}

/// Runs `work` to its end without the GIL, driving the runtime if no other
/// thread does. Every `SIGNAL_CHECK` it takes the GIL back to run signal
/// handlers, so Ctrl-C raises `KeyboardInterrupt` mid-wait; the call is
/// dropped, which asks the backend to cancel it.
///
/// `queued(&result)` tells whether ending the call may have queued frames
/// (a cancel after a timeout): they are written before this thread lets
/// go of the runtime, which may then stay idle.
pub fn wait<T: Send + 'static>(
    py: Python<'_>,
    work: impl Future<Output = T> + Send + 'static,
    queued: fn(&T) -> bool,
) -> PyResult<T> {
    let mut work = Some(Box::pin(work));
    let mut first = true;
    loop {
        let done = py.detach(|| {
            runtime().block_on(async {
                if first {
                    // Let the runtime read what idle connections received
                    // while nobody drove it (a closed connection, a
                    // stopping host) before the call picks one: the first
                    // yield lets the I/O driver wake their readers, the
                    // second lets those run (this future is polled before
                    // the tasks woken with it).
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                }
                let running = work.as_mut()?;
                let result = tokio::select! {
                    result = running => Some(result),
                    () = tokio::time::sleep(SIGNAL_CHECK) => None,
                };
                if result.as_ref().is_some_and(queued) {
                    drop(work.take());
                    tokio::task::yield_now().await;
                }
                result
            })
        });
        first = false;
        match done {
            Some(result) => {
                if queued(&result) {
                    // The yield above wrote them if this thread held the
                    // runtime; if another did and has let go, the driver
                    // thread makes sure.
                    submit(flush());
                }
                return Ok(result);
            }
            None => {
                if let Err(interrupted) = py.check_signals() {
                    abandon(work.take());
                    return Err(interrupted);
                }
            }
        }
    }
}

/// Drops an abandoned call on the runtime and has the driver thread run
/// what that sets off (the cancel frames, `map`'s calls being aborted).
fn abandon<F: Future + Send + 'static>(work: Option<Pin<Box<F>>>) {
    submit(async move {
        drop(work);
        flush().await;
    });
}

/// Lets the tasks that dropped calls woke run to the end of their writes
/// (`map`'s aborted calls, then the writer: a few rounds; 8 with room).
async fn flush() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}
