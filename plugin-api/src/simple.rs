//! Local tasks: wrap a function, then run it three ways, as TaskIt's
//! `simple` module does: [`Task::work`] waits for the result,
//! [`Task::callback`] runs it on another thread and hands the result or the
//! error to callbacks, [`Task::ignore`] runs it on another thread and drops
//! both. The frontend's `callback` and `ignore` use the same [`OnError`].

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

pub use crate::on_error::OnError;

/// Why a local task gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFailure<E> {
    /// The function returned this error.
    Error(E),
    /// The function panicked with this message.
    Panic(String),
}

impl<E: fmt::Display> fmt::Display for TaskFailure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(e) => write!(f, "{e}"),
            Self::Panic(m) => write!(f, "panicked: {m}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for TaskFailure<E> {}

/// Runs `f`, turning a panic into [`TaskFailure::Panic`].
pub(crate) fn run_caught<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<T, TaskFailure<E>> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(TaskFailure::Error(e)),
        Err(payload) => Err(TaskFailure::Panic(crate::error::panic_message(
            payload.as_ref(),
        ))),
    }
}

type Func<A, R, E> = dyn Fn(A) -> Result<R, E> + Send + Sync;

/// A function made into a task. Cheap to clone.
pub struct Task<A, R, E = std::convert::Infallible> {
    name: Arc<str>,
    f: Arc<Func<A, R, E>>,
}

impl<A, R, E> Clone for Task<A, R, E> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            f: Arc::clone(&self.f),
        }
    }
}

impl<A, R, E> Task<A, R, E>
where
    A: Send + 'static,
    R: Send + 'static,
    E: Send + 'static,
{
    /// A task from a function that can fail. `name` appears in printed
    /// errors.
    pub fn new(name: &str, f: impl Fn(A) -> Result<R, E> + Send + Sync + 'static) -> Self {
        Self {
            name: name.into(),
            f: Arc::new(f),
        }
    }

    /// Runs it here and waits for the result.
    pub fn work(&self, args: A) -> Result<R, TaskFailure<E>> {
        run_caught(|| (self.f)(args))
    }

    /// Runs it on a new thread: `on_ok` gets the result; `on_error` decides
    /// what happens to an error (handle it, print it, or silence it). Both
    /// callbacks run on that thread.
    pub fn callback(
        &self,
        args: A,
        on_ok: impl FnOnce(R) + Send + 'static,
        on_error: OnError<TaskFailure<E>>,
    ) -> JoinHandle<()>
    where
        E: fmt::Display,
    {
        let task = self.clone();
        std::thread::spawn(move || match task.work(args) {
            Ok(value) => on_ok(value),
            Err(err) => on_error.deliver(&task.name, err),
        })
    }

    /// Runs it on a new thread and drops its result and any error.
    pub fn ignore(&self, args: A) -> JoinHandle<()> {
        let task = self.clone();
        std::thread::spawn(move || {
            let _ = task.work(args);
        })
    }

    /// Runs it on a new thread; fetch the result later, from a thread or
    /// async code.
    pub fn start(&self, args: A) -> crate::resync::Resyncer<R, E> {
        let f = Arc::clone(&self.f);
        crate::resync::Resyncer::start(move || f(args))
    }
}

impl<A, R> Task<A, R, std::convert::Infallible>
where
    A: Send + 'static,
    R: Send + 'static,
{
    /// A task from a function that cannot fail (it may still panic).
    pub fn infallible(name: &str, f: impl Fn(A) -> R + Send + Sync + 'static) -> Self {
        Self::new(name, move |a| Ok(f(a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::{Arc as StdArc, Mutex};

    #[test]
    fn work_waits_and_reports_errors_and_panics() {
        let half = Task::new("half", |n: u32| {
            if n.is_multiple_of(2) {
                Ok(n / 2)
            } else {
                Err(format!("{n} is odd"))
            }
        });
        assert_eq!(half.work(8), Ok(4));
        assert_eq!(half.work(3), Err(TaskFailure::Error("3 is odd".into())));
        let boom = Task::infallible("boom", |_: ()| -> u32 { panic!("boom") });
        assert_eq!(boom.work(()), Err(TaskFailure::Panic("boom".into())));
    }

    #[test]
    fn callbacks_run_on_another_thread_with_each_error_behaviour() {
        let half = Task::new("half", |n: u32| {
            if n.is_multiple_of(2) {
                Ok(n / 2)
            } else {
                Err(format!("{n} is odd"))
            }
        });
        let me = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        half.callback(
            10,
            move |v| tx.send((v, std::thread::current().id() != me)).unwrap(),
            OnError::Print,
        )
        .join()
        .unwrap();
        assert_eq!(rx.recv().unwrap(), (5, true));

        let seen = StdArc::new(Mutex::new(None));
        let sink = StdArc::clone(&seen);
        half.callback(
            3,
            |_| panic!("no result expected"),
            OnError::handle(move |e| *sink.lock().unwrap() = Some(e)),
        )
        .join()
        .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            Some(TaskFailure::Error("3 is odd".into()))
        );

        // Printed and silenced errors do not reach any callback.
        half.callback(5, |_| panic!("no result expected"), OnError::Print)
            .join()
            .unwrap();
        half.callback(7, |_| panic!("no result expected"), OnError::Silence)
            .join()
            .unwrap();
        // `ignore` swallows errors and panics alike.
        half.ignore(9).join().unwrap();
        Task::infallible("boom", |_: ()| -> u32 { panic!("boom") })
            .ignore(())
            .join()
            .unwrap();
    }
}
