//! The replies of one native connection on their way to its client.
//!
//! Replies made on the async runtime (a task run inline, a signal, an
//! error) are queued for the connection's writer task, which writes all
//! that are queued in one go. An answer from a worker process arrives on
//! the worker's reader thread instead: it is held back in that thread's
//! [`Batch`] while the thread has more answers to deliver, then written by
//! that thread at once if the writer is not writing, without waking the
//! writer task (a wake-up costs tens of microseconds on a small VM).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::budget::{Backlog, Charge};
use super::dispatch::After;
use super::drain::AcceptedCall;
use super::native::InFlight;
use crate::batch::{send_now, Batch, Corked};

/// What a call holds until its reply is written: its place in the drain,
/// its in-flight permit on the connection, its bytes of the budgets.
#[derive(Default)]
pub(super) struct Held {
    _accepted: Option<AcceptedCall>,
    _in_flight: Option<InFlight>,
    _budget: Charge,
}

impl Held {
    pub(super) fn new(accepted: AcceptedCall, in_flight: InFlight, budget: Charge) -> Self {
        Self {
            _accepted: Some(accepted),
            _in_flight: Some(in_flight),
            _budget: budget,
        }
    }
}

/// A handle that can queue replies; the writer ends once every handle is
/// gone and what they queued is written.
pub(super) struct Replies(Arc<Outbox>);

/// The writer task's end.
pub(super) struct Writer(Arc<Outbox>);

/// Replies taken by the writer, to write.
pub(super) struct Taken {
    pub(super) frames: Vec<u8>,
    /// Dropped once the frames are written (or found unwritable).
    pub(super) held: Vec<Held>,
    /// `<kill>` was answered among them.
    pub(super) kill: bool,
}

struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer.
    wake: Notify,
    /// The connection's socket (a duplicate descriptor), written directly
    /// by threads outside the runtime; `None` if it could not be
    /// duplicated.
    direct: Option<OwnedFd>,
    /// Counts the bytes of replies not yet written.
    backlog: Arc<Backlog>,
}

#[derive(Default)]
struct State {
    frames: Vec<u8>,
    held: Vec<Held>,
    kill: bool,
    /// The writer has taken frames and is writing them: nobody else may
    /// write (frames must not interleave).
    writing: bool,
    /// A batch holds frames here: it writes them when it is flushed.
    corked: bool,
    /// Handles alive.
    senders: usize,
    /// The client can take no more: replies are dropped as they come
    /// (they count as answered; nobody is left to read them).
    closed: bool,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The replies of a connection whose socket is `direct` (a duplicate of
/// its descriptor): the first handle, and the writer's end.
pub(super) fn channel(direct: Option<OwnedFd>, backlog: Arc<Backlog>) -> (Replies, Writer) {
    let outbox = Arc::new(Outbox {
        state: Mutex::new(State {
            senders: 1,
            ..State::default()
        }),
        wake: Notify::new(),
        direct,
        backlog,
    });
    (Replies(Arc::clone(&outbox)), Writer(outbox))
}

impl Replies {
    /// Queues a reply for the writer task: replies queued together are
    /// written together.
    pub(super) fn push(&self, frame: &[u8], after: After, held: Held) {
        if let Some(mut state) = self.append(frame, held) {
            state.kill |= after == After::Kill;
            drop(state);
            self.0.wake.notify_one();
        }
    }

    /// Queues a reply delivered off the runtime, held back in `batch`
    /// until the delivering thread has no more.
    pub(super) fn push_held_back(&self, frame: &[u8], held: Held, batch: &mut Batch) {
        if let Some(mut state) = self.append(frame, held) {
            if !state.corked {
                state.corked = true;
                batch.hold(Arc::clone(&self.0) as Arc<dyn Corked>);
            }
        }
    }

    /// Appends a reply, unless the client can take no more (then it is
    /// dropped: answered, as nobody is left to read it).
    fn append(&self, frame: &[u8], held: Held) -> Option<MutexGuard<'_, State>> {
        let mut state = lock(&self.0.state);
        if state.closed {
            drop(state);
            drop(held);
            return None;
        }
        state.frames.extend_from_slice(frame);
        state.held.push(held);
        self.0.backlog.queued(frame.len());
        Some(state)
    }
}

impl Clone for Replies {
    fn clone(&self) -> Self {
        lock(&self.0.state).senders += 1;
        Self(Arc::clone(&self.0))
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        let last = {
            let mut state = lock(&self.0.state);
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.0.wake.notify_one();
        }
    }
}

impl Corked for Outbox {
    /// Writes the held-back replies here if the socket takes them all
    /// without blocking and the writer is not writing; otherwise the writer
    /// writes what is left.
    fn uncork(&self) {
        let mut state = lock(&self.state);
        state.corked = false;
        if state.frames.is_empty() {
            return;
        }
        if let (Some(socket), false, false) = (&self.direct, state.writing, state.kill) {
            match send_now(socket, &state.frames) {
                Ok(n) if n == state.frames.len() => {
                    self.backlog.written(n);
                    state.frames.clear();
                    let answered = std::mem::take(&mut state.held);
                    drop(state);
                    drop(answered);
                    return;
                }
                Ok(n) => {
                    self.backlog.written(n);
                    state.frames.drain(..n);
                }
                // The writer finds out why, and drops the connection.
                Err(_) => {}
            }
        }
        drop(state);
        self.wake.notify_one();
    }
}

impl Writer {
    /// All replies queued, once there are any; `None` once every handle is
    /// gone and nothing is left.
    pub(super) async fn take(&self) -> Option<Taken> {
        loop {
            {
                let mut state = lock(&self.0.state);
                if !state.frames.is_empty() {
                    state.writing = true;
                    return Some(Taken {
                        frames: std::mem::take(&mut state.frames),
                        held: std::mem::take(&mut state.held),
                        kill: std::mem::take(&mut state.kill),
                    });
                }
                if state.senders == 0 {
                    return None;
                }
            }
            // A wake-up sent since the look above is kept, not lost.
            self.0.wake.notified().await;
        }
    }

    /// The frames taken are written; `broken`: the client can take no
    /// more, so replies are dropped from now on. `buffer` (the frames'
    /// buffer) is kept for the next replies.
    pub(super) fn written(&self, mut buffer: Vec<u8>, broken: bool) {
        let mut state = lock(&self.0.state);
        state.writing = false;
        self.0.backlog.written(buffer.len());
        if broken {
            state.closed = true;
            self.0.backlog.written(state.frames.len());
            state.frames = Vec::new();
            let dropped = std::mem::take(&mut state.held);
            drop(state);
            drop(dropped);
            return;
        }
        if state.frames.is_empty() {
            buffer.clear();
            state.frames = buffer;
        }
    }
}
