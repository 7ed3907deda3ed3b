//! The running-task count, in memory that worker processes share.
//!
//! TaskIt's running count (`<status>`, `get_tasks`, a task's
//! `TaskContext::running_tasks`) covers every call in progress and every
//! subtask a task started, wherever the task runs. The count lives in one
//! page of shared memory (a `memfd`): word 0 counts the calls the host has
//! in progress; words `1..SLOTS` each belong to one worker process, which
//! counts there the subtasks its tasks started. The count is the sum. A
//! worker that dies cannot leave its subtasks counted: its word is cleared
//! when the host reaps it.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Words in the page: the host's, then one per worker slot.
pub(crate) const SLOTS: usize = 1024;
const BYTES: usize = SLOTS * std::mem::size_of::<u64>();

/// The counters, mapped in this process (unmapped when dropped).
pub(crate) struct Counters {
    /// Lives as long as `self`, not for `'static`: see `Drop`.
    words: &'static [AtomicU64],
    /// The memory's descriptor, passed to workers (`None`: plain heap
    /// memory, where `memfd_create` is not available).
    fd: Option<OwnedFd>,
    free: Mutex<Vec<usize>>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("running", &self.sum())
            .finish_non_exhaustive()
    }
}

impl Counters {
    /// A fresh page of zeroed counters, shareable if the system allows.
    pub(crate) fn new() -> Self {
        let (words, fd) = match shared_page() {
            Ok((words, fd)) => (words, Some(fd)),
            Err(err) => {
                tracing::debug!(%err, "no shared memory for the running count; worker subtasks are not counted");
                let words: Vec<AtomicU64> = (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
                (&*Box::leak(words.into_boxed_slice()), None)
            }
        };
        Self {
            words,
            fd,
            free: Mutex::new((1..SLOTS).rev().collect()),
        }
    }

    /// The host's own word (calls in progress, in-process subtasks).
    pub(crate) fn host(&self) -> &AtomicU64 {
        &self.words[0]
    }

    /// Everything running: the sum of every word.
    pub(crate) fn sum(&self) -> u64 {
        sum(self.words)
    }

    /// The descriptor to hand to a worker, if the page is shared.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// A word for one worker, if one is free (more than 1023 workers at once
    /// share no word: their subtasks go uncounted).
    pub(crate) fn claim(&self) -> Option<usize> {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Clears a worker's word, if it had one, and frees it for another.
    pub(crate) fn release(&self, slot: Option<usize>) {
        let Some(slot) = slot else {
            return;
        };
        if let Some(word) = self.words.get(slot).filter(|_| slot > 0) {
            word.store(0, Ordering::Release);
            self.free
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(slot);
        }
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        let ptr = self.words.as_ptr() as *mut AtomicU64;
        if self.fd.is_some() {
            // SAFETY: mapped by `shared_page` with this length; nothing
            // borrows the words beyond `self`.
            unsafe { libc::munmap(ptr.cast(), BYTES) };
        } else {
            // SAFETY: leaked from a boxed slice of `SLOTS` words in `new`.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, SLOTS)) });
        }
    }
}

/// The sum of `words`.
pub(crate) fn sum(words: &[AtomicU64]) -> u64 {
    words
        .iter()
        .fold(0u64, |n, w| n.wrapping_add(w.load(Ordering::Acquire)))
}

/// Adds one to `word`.
pub(crate) fn up(word: &AtomicU64) {
    word.fetch_add(1, Ordering::AcqRel);
}

/// Takes one from `word`, never below zero (a plugin may exit more
/// subtasks than it entered).
pub(crate) fn down(word: &AtomicU64) {
    let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

fn shared_page() -> std::io::Result<(&'static [AtomicU64], OwnedFd)> {
    // SAFETY: a plain system call; the name is a NUL-terminated literal.
    let raw = unsafe { libc::memfd_create(c"taskit-running".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: resizing a descriptor we own.
    if unsafe { libc::ftruncate(raw, BYTES as libc::off_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((map(fd.as_fd())?, fd))
}

/// Maps the shared page behind `fd` (for the life of the process, unless
/// the caller unmaps it).
pub(crate) fn map(fd: BorrowedFd<'_>) -> std::io::Result<&'static [AtomicU64]> {
    use std::os::fd::AsRawFd;
    // SAFETY: mapping `BYTES` of a descriptor at least that long, shared,
    // never unmapped: the slice lives as long as the process.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: page-aligned, `BYTES` long, zero-filled by the kernel, and
    // only ever accessed atomically by every process mapping it.
    Ok(unsafe { std::slice::from_raw_parts(ptr as *const AtomicU64, SLOTS) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_the_sum_of_the_host_and_every_worker() {
        let c = Counters::new();
        assert!(c.fd().is_some(), "memfd is available on Linux");
        up(c.host());
        let slot = c.claim().unwrap();
        // What a worker does, through its own mapping of the page.
        let theirs = map(c.fd().unwrap()).unwrap();
        up(&theirs[slot]);
        up(&theirs[slot]);
        assert_eq!(c.sum(), 3);
        down(&theirs[slot]);
        down(&theirs[slot]);
        down(&theirs[slot]);
        assert_eq!(c.sum(), 1, "never below zero");
        up(&theirs[slot]);
        c.release(Some(slot));
        assert_eq!(
            c.sum(),
            1,
            "a released worker's subtasks are no longer counted"
        );
    }

    #[test]
    fn slots_run_out_then_come_back() {
        let c = Counters::new();
        let all: Vec<usize> = std::iter::from_fn(|| c.claim()).collect();
        assert_eq!(all.len(), SLOTS - 1);
        assert!(c.claim().is_none());
        c.release(Some(all[0]));
        assert_eq!(c.claim(), Some(all[0]));
    }
}
