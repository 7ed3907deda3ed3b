//! Writes held back while their writer has more to add, then made in one
//! go: the calls a client's read brings, sent to a worker together; the
//! answers one read from a worker brings, written to each client together.

use std::sync::Arc;

/// Something that holds writes back for a [`Batch`].
pub(crate) trait Corked: Send + Sync {
    /// Writes what was held back, or hands it to its writer.
    fn uncork(&self);
}

/// The targets holding writes back until the batch is flushed (or dropped).
#[derive(Default)]
pub(crate) struct Batch {
    corked: Vec<Arc<dyn Corked>>,
}

impl Batch {
    /// Adds `target`, which has just started holding writes back (each
    /// target keeps track of that, so it is added once per flush).
    pub(crate) fn hold(&mut self, target: Arc<dyn Corked>) {
        self.corked.push(target);
    }

    /// Writes everything held back.
    pub(crate) fn flush(&mut self) {
        for target in self.corked.drain(..) {
            target.uncork();
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}
