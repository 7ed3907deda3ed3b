//! Resynchronisation: hand a result from one thread (or task) to another.
//!
//! - [`Mediator`]: a one-shot rendezvous. A producer completes it once with
//!   a result or an error; a consumer waits for it, from a thread
//!   ([`Mediator::get`], with an optional timeout) or from async code
//!   ([`Mediator::wait`]).
//! - [`Resyncer`]: runs a function on its own thread; its result is fetched
//!   later the same two ways.
//!
//! Uses: producer/consumer hand-off, turning a callback API back into a
//! blocking call, overlapping other work with a running call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::simple::TaskFailure;

/// Why a [`Mediator`] gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncError<E> {
    /// The producer completed it with this error.
    Failed(E),
    /// Nothing arrived within the timeout. The mediator is unchanged: a
    /// result that arrives later is kept for the next `get`.
    Timeout(Duration),
    /// The value was already taken by an earlier `get` or `wait`.
    Taken,
}

impl<E: fmt::Display> fmt::Display for ResyncError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(e) => write!(f, "{e}"),
            Self::Timeout(t) => write!(f, "no result within {t:?}"),
            Self::Taken => write!(f, "the result was already taken"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ResyncError<E> {}

/// A second completion of a [`Mediator`]; it keeps the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyCompleted;

impl fmt::Display for AlreadyCompleted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the mediator was already completed")
    }
}

impl std::error::Error for AlreadyCompleted {}

enum Slot<T, E> {
    Empty,
    Ready(Result<T, E>),
    Taken,
}

struct State<T, E> {
    slot: Slot<T, E>,
    /// Wakers of pending `wait` futures, by the key each future holds (a
    /// future dropped before completion removes its own).
    wakers: Vec<(u64, Waker)>,
    next_key: u64,
}

struct Inner<T, E> {
    state: Mutex<State<T, E>>,
    ready: Condvar,
}

/// A one-shot rendezvous between a producer and a consumer. Clones share
/// the same slot: give one to the producer, keep one to wait on.
pub struct Mediator<T, E> {
    inner: Arc<Inner<T, E>>,
}

impl<T, E> Clone for Mediator<T, E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T, E> Default for Mediator<T, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, E> Mediator<T, E> {
    /// An empty mediator.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    slot: Slot::Empty,
                    wakers: Vec::new(),
                    next_key: 0,
                }),
                ready: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T, E>> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn complete(&self, value: Result<T, E>) -> Result<(), AlreadyCompleted> {
        let wakers = {
            let mut state = self.lock();
            if !matches!(state.slot, Slot::Empty) {
                return Err(AlreadyCompleted);
            }
            state.slot = Slot::Ready(value);
            std::mem::take(&mut state.wakers)
        };
        self.inner.ready.notify_all();
        wakers.into_iter().for_each(|(_, w)| w.wake());
        Ok(())
    }

    /// Completes it with a result. A second completion is refused, and the
    /// first one kept.
    pub fn set_result(&self, value: T) -> Result<(), AlreadyCompleted> {
        self.complete(Ok(value))
    }

    /// Completes it with an error. A second completion is refused.
    pub fn set_error(&self, error: E) -> Result<(), AlreadyCompleted> {
        self.complete(Err(error))
    }

    /// Whether it has been completed.
    pub fn is_complete(&self) -> bool {
        !matches!(self.lock().slot, Slot::Empty)
    }

    fn take(state: &mut State<T, E>) -> Option<Result<T, ResyncError<E>>> {
        match std::mem::replace(&mut state.slot, Slot::Taken) {
            Slot::Ready(Ok(v)) => Some(Ok(v)),
            Slot::Ready(Err(e)) => Some(Err(ResyncError::Failed(e))),
            Slot::Taken => Some(Err(ResyncError::Taken)),
            Slot::Empty => {
                state.slot = Slot::Empty;
                None
            }
        }
    }

    /// Blocks until it is completed, or until `timeout` passes (then
    /// [`ResyncError::Timeout`]; a later result is not lost). Takes the value.
    pub fn get(&self, timeout: Option<Duration>) -> Result<T, ResyncError<E>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.lock();
        loop {
            if let Some(result) = Self::take(&mut state) {
                return result;
            }
            state = match deadline {
                None => self
                    .inner
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ResyncError::Timeout(timeout.unwrap_or_default()));
                    }
                    self.inner
                        .ready
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Waits from async code (any executor). Takes the value. Wrap it in
    /// your runtime's timeout for a deadline.
    pub fn wait(&self) -> Wait<'_, T, E> {
        Wait {
            mediator: self,
            key: None,
        }
    }
}

/// The future of [`Mediator::wait`].
pub struct Wait<'a, T, E> {
    mediator: &'a Mediator<T, E>,
    /// Its entry among the mediator's wakers, once it has waited.
    key: Option<u64>,
}

impl<T, E> Future for Wait<'_, T, E> {
    type Output = Result<T, ResyncError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mediator = self.mediator;
        let mut state = mediator.lock();
        if let Some(result) = Mediator::take(&mut state) {
            drop(state);
            self.key = None;
            return Poll::Ready(result);
        }
        match self.key {
            Some(key) => {
                if let Some(entry) = state.wakers.iter_mut().find(|(k, _)| *k == key) {
                    if !entry.1.will_wake(cx.waker()) {
                        entry.1 = cx.waker().clone();
                    }
                }
            }
            None => {
                let key = state.next_key;
                state.next_key += 1;
                state.wakers.push((key, cx.waker().clone()));
                drop(state);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl<T, E> Drop for Wait<'_, T, E> {
    /// A future given up on (a timeout, a cancelled task) takes its waker
    /// away, so abandoned waits do not pile up.
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.mediator.lock().wakers.retain(|(k, _)| *k != key);
        }
    }
}

/// A function running on its own thread, whose result is fetched later.
pub struct Resyncer<T, E> {
    mediator: Mediator<T, TaskFailure<E>>,
}

impl<T: Send + 'static, E: Send + 'static> Resyncer<T, E> {
    /// Starts `f` on a new thread. A panic in `f` arrives as
    /// [`TaskFailure::Panic`].
    pub fn start(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Self {
        let mediator = Mediator::new();
        let producer = mediator.clone();
        std::thread::spawn(move || {
            let outcome = crate::simple::run_caught(f);
            let _ = match outcome {
                Ok(v) => producer.set_result(v),
                Err(e) => producer.set_error(e),
            };
        });
        Self { mediator }
    }
}

impl<T, E> Resyncer<T, E> {
    /// Waits for the result (see [`Mediator::get`]).
    pub fn get(&self, timeout: Option<Duration>) -> Result<T, ResyncError<TaskFailure<E>>> {
        self.mediator.get(timeout)
    }

    /// Waits from async code.
    pub fn wait(&self) -> Wait<'_, T, TaskFailure<E>> {
        self.mediator.wait()
    }

    /// Whether the function has finished.
    pub fn is_done(&self) -> bool {
        self.mediator.is_complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_crosses_threads_once() {
        let m: Mediator<u32, String> = Mediator::new();
        let p = m.clone();
        std::thread::spawn(move || p.set_result(7).unwrap());
        assert_eq!(m.get(None), Ok(7));
        assert_eq!(m.get(None), Err(ResyncError::Taken));
    }

    #[test]
    fn a_second_completion_is_refused_and_the_first_kept() {
        let m: Mediator<u32, String> = Mediator::new();
        m.set_error("first".into()).unwrap();
        assert_eq!(m.set_result(2), Err(AlreadyCompleted));
        assert_eq!(m.set_error("second".into()), Err(AlreadyCompleted));
        assert_eq!(m.get(None), Err(ResyncError::Failed("first".into())));
    }

    #[test]
    fn a_timeout_fires_and_a_late_result_is_kept_for_the_next_get() {
        let m: Mediator<&str, ()> = Mediator::new();
        let started = Instant::now();
        assert_eq!(
            m.get(Some(Duration::from_millis(50))),
            Err(ResyncError::Timeout(Duration::from_millis(50)))
        );
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "it waited the whole timeout"
        );
        let p = m.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            p.set_result("late").unwrap();
        });
        assert_eq!(m.get(None), Ok("late"));
    }

    #[test]
    fn abandoned_waits_leave_no_wakers_behind() {
        use std::task::Wake;
        struct Nop;
        impl Wake for Nop {
            fn wake(self: Arc<Self>) {}
        }
        let m: Mediator<u8, ()> = Mediator::new();
        let waker = Waker::from(Arc::new(Nop));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100 {
            let mut w = m.wait();
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        }
        assert_eq!(m.lock().wakers.len(), 0);
        let mut w = m.wait();
        assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        m.set_result(3).unwrap();
        assert_eq!(Pin::new(&mut w).poll(&mut cx), Poll::Ready(Ok(3)));
    }

    #[test]
    fn resyncer_returns_results_errors_and_panics() {
        let ok: Resyncer<u32, String> = Resyncer::start(|| Ok(6 * 7));
        assert_eq!(ok.get(None), Ok(42));
        let err: Resyncer<u32, String> = Resyncer::start(|| Err("no".into()));
        assert_eq!(
            err.get(None),
            Err(ResyncError::Failed(TaskFailure::Error("no".into())))
        );
        let boom: Resyncer<u32, String> = Resyncer::start(|| panic!("boom"));
        assert_eq!(
            boom.get(None),
            Err(ResyncError::Failed(TaskFailure::Panic("boom".into())))
        );
    }
}
