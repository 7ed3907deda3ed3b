//! Where `callback`'s callbacks run: Python threads of their own, as
//! TaskIt 4.0 ran each callback on a thread. A pool that grows while every
//! thread is busy (up to `MAX_THREADS`; past that, callbacks queue) and
//! keeps idle threads for a while.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Most threads running callbacks at once.
pub const MAX_THREADS: usize = 64;
/// How long an idle thread waits for work before it ends.
const IDLE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    static ON_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is one of the pool's (running a callback).
pub fn on_pool_thread() -> bool {
    ON_POOL.with(Cell::get)
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

#[derive(Default)]
pub struct Pool {
    state: Mutex<State>,
    ready: Condvar,
}

impl Pool {
    /// Runs `job` on a pool thread.
    pub fn run(&'static self, job: Job) {
        let mut state = self.lock();
        state.jobs.push_back(job);
        if state.idle >= state.jobs.len() {
            drop(state);
            self.ready.notify_one();
            return;
        }
        if state.threads >= MAX_THREADS {
            return;
        }
        state.threads += 1;
        drop(state);
        let spawned = std::thread::Builder::new()
            .name("taskit-callback".to_owned())
            .spawn(move || self.work());
        if spawned.is_err() {
            // No thread now: the queued job waits for a running one (there
            // is none only if none could ever be made).
            self.lock().threads -= 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn work(&self) {
        ON_POOL.with(|on| on.set(true));
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                // A job that panics must not take the thread (and the
                // pool's count of its threads) with it.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                state = self.lock();
                continue;
            }
            state.idle += 1;
            let (next, waited) = self
                .ready
                .wait_timeout(state, IDLE)
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            state.idle -= 1;
            if waited.timed_out() && state.jobs.is_empty() {
                state.threads -= 1;
                return;
            }
        }
    }
}
