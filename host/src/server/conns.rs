//! The connection slots (`--max-connections`), and making room: when every
//! slot is taken, the connection idle longest (saying nothing: before its
//! first bytes, or a native connection with no call in flight between
//! calls) is closed to admit the new one. Connections that say nothing can
//! so never lock out a client that speaks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a new connection waits for the slot of the one closed for it.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Every connection served, with whether and since when it is idle.
pub(crate) struct Table {
    slots: Arc<Semaphore>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    entries: HashMap<u64, Entry>,
}

struct Entry {
    idle_since: Option<Instant>,
    close: Arc<Notify>,
}

/// A connection's slot: freed when dropped.
pub(crate) struct Slot {
    table: Arc<Table>,
    id: u64,
    close: Arc<Notify>,
    _permit: OwnedSemaphorePermit,
}

impl Table {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection: a free one, or the one of the
    /// connection idle longest, closed for it. `None` when every
    /// connection is busy.
    pub(crate) async fn admit(self: &Arc<Self>) -> Option<Slot> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(self.register(permit));
        }
        let victim = {
            let inner = self.lock();
            inner
                .entries
                .values()
                .filter_map(|e| e.idle_since.map(|since| (since, Arc::clone(&e.close))))
                .min_by_key(|(since, _)| *since)
                .map(|(_, close)| close)
        }?;
        // Kept until the connection looks: it closes at its next wait.
        victim.notify_one();
        let permit = tokio::time::timeout(EVICTION_WAIT, Arc::clone(&self.slots).acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(self.register(permit))
    }

    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let close = Arc::new(Notify::new());
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        inner.entries.insert(
            id,
            Entry {
                // Nothing said yet.
                idle_since: Some(Instant::now()),
                close: Arc::clone(&close),
            },
        );
        Slot {
            table: Arc::clone(self),
            id,
            close,
            _permit: permit,
        }
    }
}

impl Slot {
    /// The connection waits for its next call (`true`), or has work
    /// (`false`): only an idle one may be closed to make room.
    pub(crate) fn set_idle(&self, idle: bool) {
        if let Some(entry) = self.table.lock().entries.get_mut(&self.id) {
            match (idle, entry.idle_since) {
                (true, None) => entry.idle_since = Some(Instant::now()),
                (false, Some(_)) => entry.idle_since = None,
                _ => {}
            }
        }
    }

    /// Completes when the connection is asked to close to make room.
    pub(crate) async fn evicted(&self) {
        self.close.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().entries.remove(&self.id);
    }
}
