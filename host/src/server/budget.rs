//! The byte budgets: what the server holds for peers (request frames and
//! messages of every size, and the calls made of them, charged as their
//! bytes arrive and held until their reply is written; replies queued for
//! a client), counted server-wide (`--max-buffered`) and per connection
//! (`--max-buffered-per-connection`). Past either, the server stops reading
//! (back-pressure) until replies go out. Before either, a connection draws
//! on an allowance of its own ([`OWN_ALLOWANCE`]), so a client making a few
//! ordinary calls (16 small ones) is served even while others hold all of
//! the server's budget: the host holds at most `--max-buffered` of
//! requests plus that allowance per connection.
//!
//! Every request counts at least [`MIN_CHARGE`] bytes, for what a call
//! costs besides its bytes, so floods of tiny calls are bounded too. A
//! request larger than a whole budget takes the whole of it (it waits
//! until it is the only one).
//!
//! Replies are made by tasks that have run: they cannot wait for room.
//! They are bounded where their calls start instead ([`Backlog`]): a call
//! does not start while its connection has more replies unwritten than its
//! budget, or has any while the server's unwritten replies are over the
//! server's budget. So unwritten replies pass a budget by at most the
//! replies of the calls running when it filled (each at most
//! `--max-message`), and a client with no reply unwritten is never held
//! back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// What any request is charged at least, in bytes.
pub(crate) const MIN_CHARGE: usize = 1024;

/// One budget: a semaphore of KiB.
pub(crate) struct Budget {
    kib: Arc<Semaphore>,
    /// Its size, in KiB.
    size_kib: u32,
}

impl Budget {
    /// A budget of `bytes` (at least 1 KiB, at most what a semaphore can
    /// count and `acquire_many` can ask for).
    pub(crate) fn new(bytes: usize) -> Arc<Self> {
        let size_kib =
            u32::try_from((bytes.max(1024) / 1024).min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Arc::new(Self {
            kib: Arc::new(Semaphore::new(size_kib as usize)),
            size_kib,
        })
    }

    /// Bytes charged to it now.
    pub(crate) fn used_bytes(&self) -> usize {
        (self.size_kib as usize).saturating_sub(self.kib.available_permits()) * 1024
    }

    /// The KiB `bytes` are charged (never more than the whole budget, or
    /// the wait would never end).
    fn kib(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.max(MIN_CHARGE).div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.size_kib)
    }
}

/// What a connection's requests take before they draw on the server's
/// budget: a client making a few ordinary calls (16 small ones) is served even while
/// others hold the whole of it. (So the host holds at most `--max-buffered`
/// plus this much per connection.)
pub(crate) const OWN_ALLOWANCE: usize = 16 << 10;

/// The budgets a connection draws on: its own allowance, then its budget
/// and the server's together.
/// (Shared by the connection's charges: one reference count per call.)
#[derive(Clone)]
pub(crate) struct Budgets(Arc<Parts>);

pub(crate) struct Parts {
    own: Arc<Budget>,
    conn: Arc<Budget>,
    server: Arc<Budget>,
}

impl std::ops::Deref for Budgets {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl Budgets {
    /// A new connection's: `server`'s, and one of `per_connection` bytes.
    pub(crate) fn for_connection(server: &Arc<Budget>, per_connection: usize) -> Self {
        Self(Arc::new(Parts {
            own: Budget::new(OWN_ALLOWANCE),
            conn: Budget::new(per_connection),
            server: Arc::clone(server),
        }))
    }

    /// A charge of nothing yet, to grow with [`reserve_up_to`](Self::reserve_up_to).
    pub(crate) fn empty_charge(&self) -> Charge {
        Charge {
            budgets: Some(self.clone()),
            ..Charge::default()
        }
    }

    /// Charges `bytes` if there is room now: in the connection's own
    /// allowance, or else in both budgets.
    pub(crate) fn try_reserve(&self, bytes: usize) -> Option<Charge> {
        let mut charge = self.empty_charge();
        if bytes <= OWN_ALLOWANCE && take(&self.own, self.own.kib(bytes), &mut charge.kib[OWN]) {
            return Some(charge);
        }
        for (budget, at) in [(&self.conn, CONN), (&self.server, SERVER)] {
            if !take(budget, budget.kib(bytes), &mut charge.kib[at]) {
                return None;
            }
        }
        Some(charge)
    }

    /// Charges `bytes`, waiting for room.
    pub(crate) async fn reserve(&self, bytes: usize) -> Charge {
        if let Some(charge) = self.try_reserve(bytes) {
            return charge;
        }
        let mut charge = self.empty_charge();
        self.reserve_up_to(&mut charge, bytes).await;
        charge
    }

    /// Grows `charge` to cover `bytes` in all: from the connection's own
    /// allowance as far as it goes, then waiting for room in both budgets,
    /// the connection's first (a connection waiting for its own holds
    /// nothing more of the server's).
    pub(crate) async fn reserve_up_to(&self, charge: &mut Charge, bytes: usize) {
        let short = [(&self.conn, CONN), (&self.server, SERVER)]
            .into_iter()
            .map(|(budget, at)| {
                budget
                    .kib(bytes)
                    .saturating_sub(charge.kib[OWN] + charge.kib[at])
            })
            .max()
            .unwrap_or(0);
        charge.kib[OWN] += take_up_to(&self.own, short);
        for (budget, at) in [(&self.conn, CONN), (&self.server, SERVER)] {
            let want = budget.kib(bytes).saturating_sub(charge.kib[OWN]);
            if want <= charge.kib[at] {
                continue;
            }
            let more = want - charge.kib[at];
            // Closed never: the semaphore lives as long as the budget.
            if let Ok(permit) = budget.kib.acquire_many(more).await {
                permit.forget();
                charge.kib[at] += more;
            }
        }
    }
}

/// Takes as much of `kib` as `budget` has now; how much.
fn take_up_to(budget: &Budget, kib: u32) -> u32 {
    loop {
        let free = u32::try_from(budget.kib.available_permits())
            .unwrap_or(u32::MAX)
            .min(kib);
        if free == 0 {
            return 0;
        }
        if let Ok(permit) = budget.kib.try_acquire_many(free) {
            permit.forget();
            return free;
        }
    }
}

/// Takes `kib` of `budget` now if it has them, adding them to `held`.
fn take(budget: &Budget, kib: u32, held: &mut u32) -> bool {
    match budget.kib.try_acquire_many(kib) {
        Ok(permit) => {
            permit.forget();
            *held += kib;
            true
        }
        Err(_) => false,
    }
}

const OWN: usize = 0;
const CONN: usize = 1;
const SERVER: usize = 2;

/// Bytes charged to a connection's budgets (KiB of each), given back when
/// dropped.
#[derive(Default)]
pub(crate) struct Charge {
    budgets: Option<Budgets>,
    kib: [u32; 3],
}

impl Charge {
    /// Charges a reply of `bytes` that is its connection's only one (a
    /// TaskIt 4.0 reply): what it takes beyond the request's charge comes
    /// from what is left of both budgets, without waiting.
    pub(crate) fn cover(&mut self, bytes: usize) {
        let Some(budgets) = &self.budgets else {
            return;
        };
        for (budget, at) in [(&budgets.conn, CONN), (&budgets.server, SERVER)] {
            let want = budget.kib(bytes).saturating_sub(self.kib[OWN]);
            if want > self.kib[at] {
                let got = budget.kib.forget_permits((want - self.kib[at]) as usize);
                self.kib[at] += u32::try_from(got).unwrap_or(u32::MAX);
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(budgets) = &self.budgets {
            for (budget, at) in [
                (&budgets.own, OWN),
                (&budgets.conn, CONN),
                (&budgets.server, SERVER),
            ] {
                if self.kib[at] > 0 {
                    budget.kib.add_permits(self.kib[at] as usize);
                }
            }
        }
    }
}

/// Bytes of replies queued and not yet written, against a limit.
#[derive(Debug)]
pub(crate) struct Unwritten {
    limit: usize,
    bytes: AtomicUsize,
}

impl Unwritten {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            bytes: AtomicUsize::new(0),
        })
    }

    /// Bytes queued and not written.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// A connection's unwritten replies, and the server's: whether its calls
/// may start (see the module).
#[derive(Debug)]
pub(crate) struct Backlog {
    conn: Unwritten,
    server: Arc<Unwritten>,
}

impl Backlog {
    pub(crate) fn new(server: &Arc<Unwritten>, per_connection: usize) -> Arc<Self> {
        Arc::new(Self {
            conn: Unwritten {
                limit: per_connection,
                bytes: AtomicUsize::new(0),
            },
            server: Arc::clone(server),
        })
    }

    /// Whether a call of this connection may start now.
    pub(crate) fn allows_start(&self) -> bool {
        let mine = self.conn.bytes.load(Ordering::Relaxed);
        mine == 0
            || (mine < self.conn.limit
                && self.server.bytes.load(Ordering::Relaxed) < self.server.limit)
    }

    /// `n` bytes of replies queued.
    pub(crate) fn queued(&self, n: usize) {
        self.conn.bytes.fetch_add(n, Ordering::Relaxed);
        self.server.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes of replies written (or dropped).
    pub(crate) fn written(&self, n: usize) {
        self.conn.bytes.fetch_sub(n, Ordering::Relaxed);
        self.server.bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_wait_for_room_and_replies_take_what_is_left() {
        let server = Budget::new(100 << 10);
        let a = Budgets::for_connection(&server, 4 << 10);
        let b = Budgets::for_connection(&server, 64 << 10);
        // Tiny requests are charged 1 KiB each: the first 16 to the
        // connection's own allowance, then to its budget and the server's.
        let tiny: Vec<Charge> = futures_of(&a, 16 + 4, 10).await;
        assert_eq!(a.own.kib.available_permits(), 0);
        assert_eq!(a.conn.kib.available_permits(), 0);
        assert_eq!(server.kib.available_permits(), 96);
        // `a` is at its own limit; `b` is not.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), a.reserve(10))
                .await
                .is_err()
        );
        let mut big = b.reserve(95 << 10).await;
        assert_eq!(server.kib.available_permits(), 1);
        // Its reply is larger: it takes the last KiB, and more cannot be had.
        big.cover(200 << 10);
        assert_eq!(server.kib.available_permits(), 0);
        assert_eq!(big.kib[SERVER], 96);
        drop(tiny);
        drop(big);
        assert_eq!(server.kib.available_permits(), 100);
        assert_eq!(a.conn.kib.available_permits(), 4);
        // Larger than a whole budget: takes all of it.
        let all = b.reserve(1 << 30).await;
        assert_eq!(server.kib.available_permits(), 0);
        assert_eq!(b.own.kib.available_permits(), 16);
        drop(all);
        assert_eq!(server.kib.available_permits(), 100);
    }

    async fn futures_of(budgets: &Budgets, n: usize, bytes: usize) -> Vec<Charge> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(budgets.reserve(bytes).await);
        }
        out
    }
}
