//! Time limits of the calls sent to workers: one thread per plugin version
//! looks over its calls in flight every [`POLL`], passes cancellations on
//! (the client's, or the task timeout's) and kills a worker whose task
//! ignored its cancellation for the kill grace. No call needs a timer or a
//! thread of its own; the thread sleeps while no call is in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::pool::Pool;
use super::WorkerOptions;

/// How often calls in flight are looked over: the delay before a
/// cancellation reaches the worker.
pub(super) const POLL: Duration = Duration::from_millis(20);

/// The time limits of one call: cancel at the task timeout (or when the
/// client cancels), kill its worker a grace period later.
#[derive(Debug)]
pub(super) struct Deadline {
    limit: Option<Instant>,
    grace: Duration,
    cancelled_at: Option<Instant>,
}

/// What is done next about a call in flight.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Wait,
    /// Tell the worker to set the task's cancellation flag.
    Cancel,
    /// The grace is over: kill the worker.
    Kill,
}

impl Deadline {
    pub(super) fn new(options: &WorkerOptions, now: Instant) -> Self {
        Self {
            limit: options.task_timeout.and_then(|t| now.checked_add(t)),
            grace: options.kill_grace,
            cancelled_at: None,
        }
    }

    pub(super) fn step(&mut self, now: Instant, cancelled: bool) -> Step {
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

/// The sleep of a version's limits thread while it has no call in flight.
#[derive(Default)]
pub(super) struct Limits {
    parked: AtomicBool,
    lock: Mutex<()>,
    woken: Condvar,
}

impl Limits {
    /// Starts the limits thread of `pool`; it ends once the pool is gone,
    /// or retired with no call left.
    pub(super) fn start(pool: &Arc<Pool>) -> std::io::Result<()> {
        let (limits, pool) = (Arc::clone(pool.limits()), Arc::downgrade(pool));
        std::thread::Builder::new()
            .name("taskit-limits".into())
            .spawn(move || limits.watch(&pool))
            .map(drop)
    }

    /// A call was just sent (or the pool retired): wakes the thread if it
    /// sleeps. Costs one atomic operation when it does not.
    pub(super) fn wake(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            let _lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.woken.notify_one();
        }
    }

    fn watch(&self, pool: &Weak<Pool>) {
        loop {
            std::thread::sleep(POLL);
            let Some(strong) = pool.upgrade() else {
                return;
            };
            if strong.enforce_limits(Instant::now()) {
                continue;
            }
            if strong.is_retired() {
                return;
            }
            self.parked.store(true, Ordering::SeqCst);
            // Looked at again after `parked` is set: a call sent since the
            // last look either shows here or wakes this thread. (No lock is
            // held while calls are answered.)
            if strong.enforce_limits(Instant::now()) || strong.is_retired() {
                self.parked.store(false, Ordering::SeqCst);
                continue;
            }
            // Not holding the pool while asleep: it may go away meanwhile.
            drop(strong);
            let mut lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            while self.parked.load(Ordering::SeqCst) {
                lock = self
                    .woken
                    .wait(lock)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(timeout: Option<u64>, grace: u64) -> WorkerOptions {
        WorkerOptions {
            task_timeout: timeout.map(Duration::from_secs),
            kill_grace: Duration::from_secs(grace),
            ..WorkerOptions::new("taskit-host")
        }
    }

    #[test]
    fn a_call_is_cancelled_at_its_limit_then_killed_after_the_grace() {
        let start = Instant::now();
        let mut deadline = Deadline::new(&options(Some(10), 5), start);
        assert_eq!(
            deadline.step(start + Duration::from_secs(9), false),
            Step::Wait
        );
        assert_eq!(
            deadline.step(start + Duration::from_secs(10), false),
            Step::Cancel
        );
        assert_eq!(
            deadline.step(start + Duration::from_secs(14), false),
            Step::Wait
        );
        assert_eq!(
            deadline.step(start + Duration::from_secs(15), false),
            Step::Kill
        );
    }

    #[test]
    fn a_cancelled_call_is_killed_after_the_grace_even_without_a_limit() {
        let start = Instant::now();
        let mut deadline = Deadline::new(&options(None, 2), start);
        assert_eq!(
            deadline.step(start + Duration::from_secs(100), false),
            Step::Wait
        );
        assert_eq!(
            deadline.step(start + Duration::from_secs(101), true),
            Step::Cancel
        );
        assert_eq!(
            deadline.step(start + Duration::from_secs(103), true),
            Step::Kill
        );
    }
}
