//! Writes held back while their writer has more to add, then made in one
//! go: the calls a client's read brings, sent to a worker together; the
//! answers one read from a worker brings, written to each client together.

use std::os::fd::{AsFd, AsRawFd};
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

/// Writes what `socket` takes without blocking (0 when it takes nothing
/// now): how a flush writes on the caller's thread, leaving the rest to a
/// writer that may block.
pub(crate) fn send_now(socket: &impl AsFd, bytes: &[u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: a plain system call on an open descriptor, with a valid
        // buffer.
        let n = unsafe {
            libc::send(
                socket.as_fd().as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
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
