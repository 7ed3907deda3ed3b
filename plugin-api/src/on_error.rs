//! What to do with the error of a call nobody waits for: TaskIt's three
//! error-callback behaviours.

use std::fmt::Display;

/// The error half of a callback call.
pub enum OnError<E> {
    /// Call this with the error (TaskIt: an error callback).
    Handle(Box<dyn FnOnce(E) + Send>),
    /// Log it at ERROR through `tracing`, or print it to standard error if
    /// no subscriber is installed (TaskIt: `error_cb=None`).
    Print,
    /// Drop it (TaskIt: `error_cb=False`).
    Silence,
}

impl<E: Display> OnError<E> {
    /// Handles `err` as configured; `what` names the call in printed errors.
    pub fn deliver(self, what: &str, err: E) {
        match self {
            Self::Handle(f) => f(err),
            Self::Print => {
                if tracing::dispatcher::has_been_set() {
                    tracing::error!("{what} failed: {err}");
                } else {
                    eprintln!("{what} failed: {err}");
                }
            }
            Self::Silence => {}
        }
    }
}

impl<E> OnError<E> {
    /// `Handle` from a closure.
    pub fn handle(f: impl FnOnce(E) + Send + 'static) -> Self {
        Self::Handle(Box::new(f))
    }
}
