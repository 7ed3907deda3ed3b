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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

/// How often a waiting thread looks for a signal (Ctrl-C) to handle.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Driver {
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
}

fn driver() -> &'static Driver {
    static DRIVER: OnceLock<Driver> = OnceLock::new();
    static STARTED: OnceLock<()> = OnceLock::new();
    let driver = DRIVER.get_or_init(|| Driver {
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
    });
    STARTED.get_or_init(|| {
        driver.runtime.spawn(take_batches(driver));
        std::thread::Builder::new()
            .name("taskit-native".to_owned())
            .spawn(move || drive(driver))
            .expect("cannot start the taskit_native runtime thread");
    });
    driver
}

/// The runtime, to spawn on (a spawned task runs while a thread drives).
pub fn runtime() -> &'static Runtime {
    &driver().runtime
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

/// Runs `job` on the runtime, soon; the driver thread drives it unless a
/// waiting caller does.
pub fn submit(job: impl Future<Output = ()> + Send + 'static) {
    let d = driver();
    let before = d.outstanding.fetch_add(1, Ordering::AcqRel);
    let job = async move {
        job.await;
        if d.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            d.idle.notify_one();
        }
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
/// handlers, so Ctrl-C raises `KeyboardInterrupt` (and drops the call,
/// which asks the backend to cancel it) mid-wait.
pub fn wait<T: Send>(py: Python<'_>, work: impl Future<Output = T> + Send) -> PyResult<T> {
    let mut work = std::pin::pin!(work);
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
                tokio::select! {
                    result = &mut work => Some(result),
                    () = tokio::time::sleep(SIGNAL_CHECK) => None,
                }
            })
        });
        first = false;
        match done {
            Some(result) => return Ok(result),
            None => py.check_signals()?,
        }
    }
}
