//! The connection slots (`--max-connections`), and making room: when every
//! slot is taken, the connection idle longest (saying nothing: before its
//! first bytes, or a native connection with no call in flight between
//! calls) is closed to admit the new one. Connections that say nothing can
//! so never lock out a client that speaks.
//!
//! One peer address may hold `--max-connections-per-peer` of them: past it,
//! its own connection idle longest makes room (never another peer's), and
//! a new one is closed if all of its connections are busy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a new connection waits for the slot of the one closed for it.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Every connection served, with whether and since when it is idle.
pub(crate) struct Table {
    slots: Arc<Semaphore>,
    per_peer: usize,
    /// Told whenever a connection's slot is freed.
    released: Notify,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    entries: HashMap<u64, Entry>,
    /// Connections of each peer address (none kept at zero).
    by_peer: HashMap<IpAddr, usize>,
}

struct Entry {
    peer: IpAddr,
    idle_since: Option<Instant>,
    /// Asked to close already.
    closing: bool,
    close: Arc<Notify>,
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every connection slot is busy.
    Host,
    /// Every connection of its peer address is busy.
    Peer,
}

impl Inner {
    /// The connection idle longest among those `of` accepts, asked to
    /// close: no longer a candidate for another newcomer.
    fn evict(&mut self, of: impl Fn(&Entry) -> bool) -> bool {
        let victim = self
            .entries
            .values_mut()
            .filter(|e| e.idle_since.is_some() && !e.closing && of(e))
            .min_by_key(|e| e.idle_since);
        match victim {
            Some(entry) => {
                entry.closing = true;
                // Kept until the connection looks: it closes at its next wait.
                entry.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection's slot: freed when dropped.
pub(crate) struct Slot {
    table: Arc<Table>,
    id: u64,
    close: Arc<Notify>,
    /// What the table last heard from [`Slot::set_idle`].
    idle: AtomicBool,
    _permit: OwnedSemaphorePermit,
}

impl Table {
    pub(crate) fn new(max: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
            per_peer: per_peer.max(1),
            released: Notify::new(),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection from `peer`: a free one, or the one of
    /// the connection idle longest (of that peer, if it holds its share),
    /// closed for it.
    pub(crate) async fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Full> {
        // A peer at its share makes room among its own connections, and
        // waits until it is made (the one it closes frees a host slot too).
        let deadline = tokio::time::Instant::now() + EVICTION_WAIT;
        let mut asked = false;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut inner = self.lock();
                if inner.by_peer.get(&peer).copied().unwrap_or(0) < self.per_peer {
                    break;
                }
                if !asked && !inner.evict(|e| e.peer == peer) {
                    return Err(Full::Peer);
                }
                asked = true;
            }
            // One that turned busy when asked stays: then this one is closed.
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(Full::Peer);
            }
        }
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(self.register(permit, peer));
        }
        if !self.lock().evict(|_| true) {
            return Err(Full::Host);
        }
        match tokio::time::timeout(EVICTION_WAIT, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.register(permit, peer)),
            _ => Err(Full::Host),
        }
    }

    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit, peer: IpAddr) -> Slot {
        let close = Arc::new(Notify::new());
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        *inner.by_peer.entry(peer).or_default() += 1;
        inner.entries.insert(
            id,
            Entry {
                peer,
                closing: false,
                // Nothing said yet.
                idle_since: Some(Instant::now()),
                close: Arc::clone(&close),
            },
        );
        Slot {
            table: Arc::clone(self),
            id,
            close,
            idle: AtomicBool::new(true),
            _permit: permit,
        }
    }
}

impl Slot {
    /// The connection waits for its next call (`true`), or has work
    /// (`false`): only an idle one may be closed to make room.
    pub(crate) fn set_idle(&self, idle: bool) {
        if self.idle.load(Ordering::Relaxed) == idle {
            return;
        }
        // The flag changes with the table, under its lock: both always say
        // the same.
        let mut table = self.table.lock();
        self.idle.store(idle, Ordering::Relaxed);
        if let Some(entry) = table.entries.get_mut(&self.id) {
            match (idle, entry.idle_since) {
                (true, None) => entry.idle_since = Some(Instant::now()),
                (false, Some(_)) => entry.idle_since = None,
                _ => {}
            }
        }
    }

    /// Since when the connection has been idle, if it is.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        self.table.lock().entries.get(&self.id)?.idle_since
    }

    /// The connection was asked to close while it turned busy again: it
    /// stays, and may be asked again.
    pub(crate) fn spare(&self) {
        if let Some(entry) = self.table.lock().entries.get_mut(&self.id) {
            entry.closing = false;
        }
    }

    /// Completes when the connection is asked to close to make room.
    pub(crate) async fn evicted(&self) {
        self.close.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        if let Some(entry) = inner.entries.remove(&self.id) {
            if let Some(n) = inner.by_peer.get_mut(&entry.peer) {
                *n -= 1;
                if *n == 0 {
                    inner.by_peer.remove(&entry.peer);
                }
            }
        }
        drop(inner);
        self.table.released.notify_waiters();
    }
}
