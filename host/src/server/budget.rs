//! The byte budget: how many bytes of large requests the server holds for
//! peers at once (frames being read, arguments of calls waiting or
//! running). Beyond it, the server stops reading large requests until calls
//! finish.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests up to this size are not counted against the byte budget.
pub(crate) const SMALL_REQUEST: usize = 64 << 10;

/// A semaphore of KiB.
pub(crate) struct Budget {
    kib: Arc<Semaphore>,
    /// Its size, in KiB.
    size_kib: u32,
}

impl Budget {
    /// A budget of `bytes` (at least 1 KiB, at most what a semaphore can
    /// count and `acquire_many` can ask for).
    pub(crate) fn new(bytes: usize) -> Self {
        let size_kib =
            u32::try_from((bytes.max(1024) / 1024).min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Self {
            kib: Arc::new(Semaphore::new(size_kib as usize)),
            size_kib,
        }
    }

    /// Reserves room for a request of `bytes`, released with the permit.
    /// Requests up to [`SMALL_REQUEST`] need none (they are bounded by the
    /// connection limit instead), so large requests, even stalled ones,
    /// can never hold up ordinary calls.
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if bytes <= SMALL_REQUEST {
            return None;
        }
        self.reserve_exact(bytes).await
    }

    /// Reserves room for `bytes`, whatever their number.
    pub(crate) async fn reserve_exact(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        // Never ask for more than the whole budget, or the wait never ends.
        Arc::clone(&self.kib)
            .acquire_many_owned(kib.min(self.size_kib))
            .await
            .ok()
    }
}
