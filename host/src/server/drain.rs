//! A server's life in one type: its [`Phase`], and the two counts a drain
//! waits on (calls accepted but not answered, connections open). The counts
//! are kept by guards, so whatever path a call or a connection takes, its
//! end is counted when its guard drops.
//!
//! ```text
//! Serving --stop()--> Stopping --close()--> Closing --end(Stopped)--> Ended
//!    \________________________ end(Killed) _________________________/
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::Exit;

/// Where a server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepting connections and calls.
    Serving,
    /// No new connections; new calls are answered `Stopping`; accepted calls
    /// run to their end.
    Stopping,
    /// Every accepted call is answered: connections say `Stopping` and close.
    Closing,
    /// Over.
    Ended(Exit),
}

impl Phase {
    fn rank(self) -> u8 {
        match self {
            Self::Serving => 0,
            Self::Stopping => 1,
            Self::Closing => 2,
            Self::Ended(_) => 3,
        }
    }
}

/// A count whose return to zero can be awaited.
#[derive(Default)]
struct Count {
    n: AtomicUsize,
    zero: Notify,
}

impl Count {
    fn up(&self) {
        self.n.fetch_add(1, Ordering::AcqRel);
    }

    fn down(&self) {
        if self.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.zero.notify_waiters();
        }
    }

    fn get(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }

    /// Waits until the count is zero, or `limit` passes; true if it is zero.
    async fn zero_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the check, so a drop to zero in between wakes it.
            let zero = self.zero.notified();
            if self.get() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, zero).await.is_err() {
                return self.get() == 0;
            }
        }
    }
}

/// The phase of one server and what its drain waits for.
pub(crate) struct Drain {
    phase: watch::Sender<Phase>,
    calls: Count,
    connections: Count,
}

impl Drain {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: watch::Sender::new(Phase::Serving),
            calls: Count::default(),
            connections: Count::default(),
        })
    }

    fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|phase| {
            let later = to.rank() > phase.rank();
            if later {
                *phase = to;
            }
            later
        });
    }

    /// Serving → Stopping (`<stop>`, SIGTERM).
    pub(crate) fn stop(&self) {
        self.advance(Phase::Stopping);
    }

    /// Stopping → Closing, once every accepted call is answered.
    pub(crate) fn close(&self) {
        self.advance(Phase::Closing);
    }

    /// → Ended: `Stopped` after a drain, `Killed` from any phase.
    pub(crate) fn end(&self, exit: Exit) {
        self.advance(Phase::Ended(exit));
    }

    /// Whether the server has ended (been killed, or drained).
    pub(crate) fn has_ended(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Ended(_))
    }

    /// Whether new calls are refused.
    /// Calls accepted and not answered.
    pub(crate) fn calls_in_flight(&self) -> usize {
        self.calls.get()
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.phase.borrow().rank() >= Phase::Stopping.rank()
    }

    /// Waits until the phase is `at` or later.
    pub(crate) async fn reached(&self, at: Phase) {
        let mut phase = self.phase.subscribe();
        // The sender lives in `self`: the wait cannot fail.
        let _ = phase.wait_for(|p| p.rank() >= at.rank()).await;
    }

    /// Waits until the server has ended, and says how.
    pub(crate) async fn ended(&self) -> Exit {
        let mut phase = self.phase.subscribe();
        let ended = phase
            .wait_for(|p| matches!(p, Phase::Ended(_)))
            .await
            .map(|p| *p);
        match ended {
            Ok(Phase::Ended(exit)) => exit,
            _ => Exit::Killed,
        }
    }

    /// Counts a call as accepted until the guard drops: when its reply has
    /// been written, or its connection is gone.
    pub(crate) fn accept_call(self: &Arc<Self>) -> AcceptedCall {
        self.calls.up();
        AcceptedCall(Arc::clone(self))
    }

    /// Counts a connection (or a listener handing over its queue) as open
    /// until the guard drops.
    pub(crate) fn open_connection(self: &Arc<Self>) -> OpenConnection {
        self.connections.up();
        OpenConnection(Arc::clone(self))
    }

    /// Waits up to `limit` for the last accepted call to be answered.
    pub(crate) async fn calls_answered_within(&self, limit: Duration) -> bool {
        self.calls.zero_within(limit).await
    }

    /// Waits up to `limit` for the last connection to close.
    pub(crate) async fn connections_closed_within(&self, limit: Duration) -> bool {
        self.connections.zero_within(limit).await
    }
}

/// A call accepted by the server: the drain waits for it until dropped.
#[must_use = "the call counts as answered when this is dropped"]
pub(crate) struct AcceptedCall(Arc<Drain>);

impl Drop for AcceptedCall {
    fn drop(&mut self) {
        self.0.calls.down();
    }
}

/// An open connection: the drain waits for it until dropped.
#[must_use = "the connection counts as closed when this is dropped"]
pub(crate) struct OpenConnection(Arc<Drain>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward() {
        let drain = Drain::new();
        assert!(!drain.is_stopping());
        drain.close();
        drain.stop();
        assert!(drain.is_stopping());
        drain.close();
        drain.end(Exit::Stopped);
        drain.stop();
        drain.end(Exit::Killed);
        assert_eq!(drain.ended().await, Exit::Stopped);
    }

    #[tokio::test]
    async fn kill_ends_from_any_phase() {
        let drain = Drain::new();
        drain.end(Exit::Killed);
        assert!(drain.is_stopping());
        drain.reached(Phase::Closing).await;
        assert_eq!(drain.ended().await, Exit::Killed);
    }

    #[tokio::test]
    async fn guards_keep_the_counts() {
        let drain = Drain::new();
        let call = drain.accept_call();
        let conn = drain.open_connection();
        assert!(!drain.calls_answered_within(Duration::from_millis(1)).await);
        let waiter = {
            let drain = Arc::clone(&drain);
            tokio::spawn(async move { drain.calls_answered_within(Duration::from_secs(60)).await })
        };
        drop(call);
        assert!(waiter.await.unwrap());
        drop(conn);
        assert!(drain.connections_closed_within(Duration::ZERO).await);
    }
}
