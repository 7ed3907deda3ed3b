//! Task slots shared fairly among callers.
//!
//! Calls that wait for a task slot wait in their caller's own line: one line
//! per peer address, and within it one per connection. A freed slot goes to
//! the next peer address in turn, and within it to the next connection in
//! turn (round robin at both levels), so a peer with thousands of calls
//! waiting, on one connection or on many, takes one slot per turn while
//! others wait, never the whole queue's worth. Calls made in process (no
//! peer) form a line of their own.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Whose call it is: the peer address and the connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Caller {
    /// `None` for a call made in process.
    pub(crate) peer: Option<IpAddr>,
    /// Unique per connection while it lives.
    pub(crate) conn: u64,
}

impl Caller {
    /// The caller of a new connection from `peer`.
    pub(crate) fn connection(peer: IpAddr) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            peer: Some(peer_key(peer)),
            conn: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Who a peer address counts as, for shares of slots and connections: an
/// IPv4 address (also when it arrives mapped into IPv6) is one peer; an
/// IPv6 address counts as its /64, the block one site or host is usually
/// given (else any holder of a /64 would be 2^64 peers). Loopback stays
/// whole.
pub(crate) fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.is_loopback() => ip,
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// Items waiting, in fair order (see the module).
pub(crate) struct Lines<T> {
    peers: HashMap<Option<IpAddr>, PeerLines<T>>,
    /// Peers with items waiting, in turn order.
    turn: VecDeque<Option<IpAddr>>,
    len: usize,
}

struct PeerLines<T> {
    conns: HashMap<u64, VecDeque<T>>,
    turn: VecDeque<u64>,
}

impl<T> Default for Lines<T> {
    fn default() -> Self {
        Self {
            peers: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Lines<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `item` at the end of its caller's line.
    pub(crate) fn push(&mut self, caller: Caller, item: T) {
        self.put(caller, item, false);
    }

    /// Puts `item` back first in line, and its caller first in turn (a
    /// call that held a slot and must wait again).
    pub(crate) fn push_front(&mut self, caller: Caller, item: T) {
        self.put(caller, item, true);
    }

    fn put(&mut self, caller: Caller, item: T, first: bool) {
        let peer = self.peers.entry(caller.peer).or_insert_with(|| PeerLines {
            conns: HashMap::new(),
            turn: VecDeque::new(),
        });
        if peer.conns.is_empty() {
            self.turn.push_back(caller.peer);
        }
        let line = peer.conns.entry(caller.conn).or_default();
        if line.is_empty() {
            peer.turn.push_back(caller.conn);
        }
        if first {
            line.push_front(item);
            move_to_front(&mut peer.turn, &caller.conn);
            move_to_front(&mut self.turn, &caller.peer);
        } else {
            line.push_back(item);
        }
        self.len += 1;
    }

    /// The next item in fair order.
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.pop_first(|_| true)
    }

    /// The next item in fair order among those `ok` accepts: the first
    /// accepted at the head of a connection's line (a connection's items
    /// keep their order).
    pub(crate) fn pop_first(&mut self, mut ok: impl FnMut(&T) -> bool) -> Option<T> {
        for pi in 0..self.turn.len() {
            let peer_key = self.turn[pi];
            let peer = self.peers.get_mut(&peer_key)?;
            for ci in 0..peer.turn.len() {
                let conn_key = peer.turn[ci];
                let line = peer.conns.get_mut(&conn_key)?;
                if !line.front().is_some_and(&mut ok) {
                    continue;
                }
                let item = line.pop_front()?;
                let emptied = line.is_empty();
                peer.turn.remove(ci);
                if emptied {
                    peer.conns.remove(&conn_key);
                } else {
                    peer.turn.push_back(conn_key);
                }
                self.turn.remove(pi);
                if peer.conns.is_empty() {
                    self.peers.remove(&peer_key);
                } else {
                    self.turn.push_back(peer_key);
                }
                self.len -= 1;
                return Some(item);
            }
        }
        None
    }

    /// Takes out every item `drop` accepts, keeping the order of the rest.
    pub(crate) fn take_where(&mut self, mut drop: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut taken = Vec::new();
        for peer in self.peers.values_mut() {
            for line in peer.conns.values_mut() {
                let (out, kept): (VecDeque<T>, VecDeque<T>) = std::mem::take(line)
                    .into_iter()
                    .partition(|item| drop(item));
                *line = kept;
                taken.extend(out);
            }
            peer.conns.retain(|_, line| !line.is_empty());
            let conns = &peer.conns;
            peer.turn.retain(|conn| conns.contains_key(conn));
        }
        self.peers.retain(|_, peer| !peer.conns.is_empty());
        let peers = &self.peers;
        self.turn.retain(|peer| peers.contains_key(peer));
        self.len -= taken.len();
        taken
    }

    /// Whether any item is one `f` accepts.
    pub(crate) fn any(&self, mut f: impl FnMut(&T) -> bool) -> bool {
        self.peers
            .values()
            .flat_map(|peer| peer.conns.values())
            .any(|line| line.iter().any(&mut f))
    }

    /// Takes out everything.
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        self.take_where(|_| true)
    }
}

fn move_to_front<K: PartialEq>(turn: &mut VecDeque<K>, key: &K) {
    if let Some(at) = turn.iter().position(|k| k == key) {
        if let Some(k) = turn.remove(at) {
            turn.push_front(k);
        }
    }
}

/// `--max-tasks` slots for tasks run in process, given out in fair order.
pub(crate) struct FairSlots {
    inner: Mutex<SlotsInner>,
}

struct SlotsInner {
    free: usize,
    waiting: Lines<oneshot::Sender<Slot>>,
}

/// A task slot, given back when dropped (unless disarmed).
pub(crate) struct Slot {
    slots: Arc<FairSlots>,
    armed: bool,
}

impl Slot {
    fn new(slots: &Arc<FairSlots>) -> Self {
        Self {
            slots: Arc::clone(slots),
            armed: true,
        }
    }
}

impl FairSlots {
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(SlotsInner {
                free: n.max(1),
                waiting: Lines::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot now, if one is free and nobody waits for one.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut inner = self.lock();
        if inner.free > 0 && inner.waiting.is_empty() {
            inner.free -= 1;
            return Some(Slot::new(self));
        }
        None
    }

    /// A slot, when `caller`'s turn comes.
    pub(crate) async fn acquire(self: &Arc<Self>, caller: Caller) -> Slot {
        let rx = {
            let mut inner = self.lock();
            if inner.free > 0 && inner.waiting.is_empty() {
                inner.free -= 1;
                return Slot::new(self);
            }
            let (tx, rx) = oneshot::channel();
            inner.waiting.push(caller, tx);
            rx
        };
        // The sender lives in `waiting` until it is handed a slot: it is
        // never dropped unsent.
        match rx.await {
            Ok(slot) => slot,
            Err(_) => unreachable_slot(self),
        }
    }

    /// Calls waiting for a slot.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    fn release(self: &Arc<Self>) {
        let mut inner = self.lock();
        while let Some(tx) = inner.waiting.pop() {
            match tx.send(Slot::new(self)) {
                Ok(()) => return,
                // Its caller stopped waiting: the slot goes to the next one
                // (disarmed: dropping it must not release it again under the
                // lock).
                Err(mut slot) => slot.armed = false,
            }
        }
        inner.free += 1;
    }
}

/// A sender is only dropped after sending; should that ever change, a
/// fresh slot is taken rather than a call stranded.
fn unreachable_slot(slots: &Arc<FairSlots>) -> Slot {
    Slot::new(slots)
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.slots.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(peer: u8, conn: u64) -> Caller {
        Caller {
            peer: Some(IpAddr::from([127, 0, 0, peer])),
            conn,
        }
    }

    #[test]
    fn an_ipv6_peer_counts_as_its_64_and_a_mapped_ipv4_as_itself() {
        let key = |s: &str| peer_key(s.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(key("::ffff:10.0.0.7"), "10.0.0.7");
        assert_eq!(key("10.0.0.7"), "10.0.0.7");
        assert_eq!(key("::1"), "::1");
    }

    #[test]
    fn peers_take_turns_then_connections_within_a_peer() {
        let mut lines = Lines::default();
        for i in 0..4 {
            lines.push(caller(1, 1), ("a1", i));
        }
        for i in 0..2 {
            lines.push(caller(1, 2), ("a2", i));
        }
        lines.push(caller(2, 3), ("b", 0));
        let order: Vec<_> = std::iter::from_fn(|| lines.pop()).collect();
        assert_eq!(
            order,
            [
                ("a1", 0),
                ("b", 0),
                ("a2", 0),
                ("a1", 1),
                ("a2", 1),
                ("a1", 2),
                ("a1", 3)
            ]
        );
        assert!(lines.is_empty());
    }

    #[test]
    fn taking_out_keeps_the_order_of_the_rest() {
        let mut lines = Lines::default();
        for i in 0..6 {
            lines.push(caller(1 + (i % 2) as u8, 1), i);
        }
        let mut taken = lines.take_where(|i| i % 3 == 0);
        taken.sort_unstable();
        assert_eq!(taken, [0, 3]);
        assert_eq!(lines.len(), 4);
        lines.push_front(caller(2, 1), 9);
        let order: Vec<_> = std::iter::from_fn(|| lines.pop()).collect();
        assert_eq!(order, [9, 2, 1, 4, 5]);
    }

    #[test]
    fn items_not_accepted_keep_their_place() {
        let mut lines = Lines::default();
        lines.push(caller(1, 1), 10);
        lines.push(caller(1, 1), 11);
        lines.push(caller(2, 2), 20);
        lines.push(caller(3, 3), 30);
        // Peer 1 is held back: its items are passed over, in place.
        assert_eq!(lines.pop_first(|i| *i >= 20), Some(20));
        assert_eq!(lines.pop_first(|i| *i >= 20), Some(30));
        assert_eq!(lines.pop_first(|i| *i >= 20), None);
        assert_eq!(lines.pop(), Some(10));
        assert_eq!(lines.pop(), Some(11));
        assert!(lines.is_empty());
    }

    #[tokio::test]
    async fn a_slot_whose_waiter_left_goes_to_the_next() {
        let slots = FairSlots::new(1);
        let held = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none());
        let gone = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire(caller(1, 1)).await }
        });
        let next = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire(caller(2, 2)).await }
        });
        while slots.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        drop(held);
        drop(next.await.unwrap());
        assert!(slots.try_acquire().is_some());
    }
}
