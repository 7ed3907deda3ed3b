//! A native connection: a hello, then request frames read as they come and
//! run concurrently; replies are written in completion order by a writer
//! task that batches whatever is ready into one write.
//!
//! Every call is accepted (counted by the drain) the moment its frame is
//! parsed, before anything can wait, so a drain never finishes with a call
//! still unanswered. Memory is bounded three ways: the frame length limit,
//! the byte budgets, server-wide and the connection's (reserved as soon as
//! a frame's length is known, held until its reply is written; see
//! `budget.rs`), and a cap on calls in flight per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use taskit_plugin_api::error::kind;
use taskit_plugin_api::wire::native::{self, ErrorStatus, HelloStatus, Request};
use taskit_plugin_api::wire::WireError;
use taskit_plugin_api::{CodecKind, TaskError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::budget::{Budgets, Charge};
use super::conns;
use super::dispatch::same_secret;
use super::dispatch::{execute, try_inline, After, Job};
use super::drain::Phase;
use super::replies::{self, Held, Replies, Writer};
use super::{Backlog, Shared, Stream};
use crate::batch::Batch;
use crate::call::{max_result, within, TaskCall};
use crate::fair::Caller;
use crate::metrics::{Meter, Proto};
use crate::rate::Limiter;

type Cancels = Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>;

pub(crate) async fn serve<S: Stream>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    slot: &Arc<conns::Slot>,
) {
    let Some(codec) = handshake(&shared, &mut stream, peer).await else {
        return;
    };
    // Answers from worker processes are written by the thread that reads
    // them, through a descriptor of its own.
    let direct = stream.as_fd().try_clone_to_owned().ok();
    let (reader, writer) = stream.split();
    let backlog = Backlog::new(&shared.unwritten, shared.config.max_buffered_per_connection);
    let (tx, replies) = replies::channel(direct, Arc::clone(&backlog));
    let broken = Arc::new(Notify::new());
    let writer = tokio::spawn(write_loop(
        Arc::clone(&shared),
        writer,
        replies,
        peer,
        Arc::clone(&broken),
    ));
    let max_in_flight = shared.config.max_in_flight_per_connection.max(1);
    let mut conn = Connection {
        shared: Arc::clone(&shared),
        codec,
        tx,
        in_flight: Arc::new(Quiet {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max: max_in_flight,
            slot: Arc::clone(slot),
        }),
        cancels: Cancels::default(),
        batch: Batch::default(),
        gone: Arc::default(),
        caller: Caller::connection(peer.ip()),
        budgets: Budgets::for_connection(&shared.budget, shared.config.max_buffered_per_connection),
        backlog,
        authenticated: shared.config.call_token.is_none(),
    };
    let mut frames = FrameReader::new(reader);
    let ended = loop {
        match frames.next(&mut conn, &broken, slot).await {
            Next::Frame { body, budget } => {
                if !conn.handle(body, budget).await {
                    break Ended::Fatal;
                }
                // Calls to workers go out together, once this read's calls
                // are all sent.
                if !frames.holds_frame(conn.shared.config.max_message) {
                    conn.batch.flush();
                }
            }
            Next::TooLarge(err) => {
                conn.fatal(kind::MESSAGE_TOO_LARGE, &err.to_string());
                break Ended::Fatal;
            }
            Next::Ended(ended) => break ended,
        }
    };
    if let Ended::Closing = ended {
        conn.send_error(
            0,
            kind::STOPPING,
            "the host is stopping; calls without a reply were not run",
            ErrorStatus::Fatal,
            Held::default(),
        );
    }
    if let Ended::TimedOut = ended {
        tracing::debug!(%peer, "closing a native connection: read timed out");
    }
    if let Ended::Evicted = ended {
        tracing::debug!(%peer, "closing an idle native connection to make room");
    }
    if matches!(ended, Ended::Peer | Ended::TimedOut | Ended::Evicted) {
        // Nobody will read their replies: the calls still waiting for a
        // task slot are dropped (the running ones finish).
        conn.gone.store(true, Ordering::Release);
    }
    // The writer ends once every call still running has sent its reply.
    drop(conn);
    let _ = writer.await;
    // The host ended it: what the peer sent meanwhile (calls it wrote
    // before it read `Stopping` or the error) is read and dropped, so the
    // close is no reset that could lose those last words.
    if matches!(ended, Ended::Closing | Ended::Fatal) {
        super::discard(frames.half).await;
    }
}

/// Why reading a connection ended.
enum Ended {
    /// The peer closed, the connection failed, or replies can no longer be
    /// written.
    Peer,
    /// A frame did not arrive in time, or the connection was idle too long.
    TimedOut,
    /// A protocol error was reported.
    Fatal,
    /// The host is going away: tell the peer its unanswered calls did not run.
    Closing,
    /// Idle when every connection slot was taken: closed for a new one
    /// (clients reconnect by themselves).
    Evicted,
}

/// What [`FrameReader::next`] found.
enum Next<'a> {
    /// A whole request frame, with its charge to the budgets.
    Frame { body: &'a [u8], budget: Charge },
    /// A frame declared over `--max-message`.
    TooLarge(WireError),
    /// No more frames.
    Ended(Ended),
}

/// Request frames off a native connection, each whole, with its budget
/// reserved before its body is read; and the connection's deadlines: a frame
/// must arrive within the read timeout, and a connection with nothing in
/// flight may stay silent for the idle timeout.
/// Bytes read at most at a time, besides doubling what a frame being read
/// has sent: charged before they are read. (Less than a connection's own
/// allowance: a header alone costs the server's budget nothing.)
const READ_AHEAD: usize = 15 << 10;

struct FrameReader<R> {
    half: R,
    buf: Vec<u8>,
    /// Where the next frame begins in `buf`.
    start: usize,
    /// When the frame at `start` began arriving.
    frame_started: Option<Instant>,
    /// The frame being read: its length, the bytes charged for it so far,
    /// and their charge.
    reserved: Option<(usize, usize, Charge)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(half: R) -> Self {
        Self {
            half,
            buf: Vec::with_capacity(16 << 10),
            start: 0,
            frame_started: None,
            reserved: None,
        }
    }

    /// Whether a whole frame is read already.
    fn holds_frame(&self, max: usize) -> bool {
        matches!(
            native::split_frame(&self.buf[self.start..], max),
            Ok(Some(_))
        )
    }

    async fn next(
        &mut self,
        conn: &mut Connection,
        broken: &Notify,
        slot: &conns::Slot,
    ) -> Next<'_> {
        let shared = &conn.shared;
        let max = shared.config.max_message;
        loop {
            match native::split_frame(&self.buf[self.start..], max) {
                Ok(Some((_, len))) => {
                    let begin = self.start;
                    self.start += len;
                    let budget = self.take_budget(conn, len).await;
                    let body = &self.buf[begin + native::LENGTH_LEN..begin + len];
                    return Next::Frame { body, budget };
                }
                Ok(None) => {}
                Err(err) => return Next::TooLarge(err),
            }
            // No whole frame left: keep the partial one, read more.
            self.buf.drain(..self.start);
            self.start = 0;
            self.frame_started = match (self.buf.is_empty(), self.frame_started) {
                (true, _) => None,
                (false, None) => Some(Instant::now()),
                (false, started) => started,
            };
            // Between calls, with nothing in flight: it may be closed to make
            // room for a new connection, and at the idle timeout. (It turns
            // idle too when its last reply is written while this read
            // waits: see `Quiet`.)
            let mut idle = self.buf.is_empty() && conn.is_idle();
            slot.set_idle(idle);
            if !idle && self.buf.is_empty() && conn.is_idle() {
                // Its last reply went out meanwhile, marking it idle before
                // the line above marked it busy: idle after all.
                idle = true;
                slot.set_idle(true);
            }
            let idle_timeout = shared.config.idle_timeout;
            let (deadline, busy) = match self.frame_started {
                Some(started) => (started + shared.config.read_timeout, false),
                None if idle => {
                    let since = slot
                        .idle_since()
                        .map_or_else(Instant::now, Instant::from_std);
                    (since + idle_timeout, false)
                }
                // Looked at again after the idle timeout: it may have turned
                // idle meanwhile.
                None => (Instant::now() + idle_timeout, true),
            };
            // A frame being read is charged as its bytes come, at most
            // twice what it has sent or READ_AHEAD ahead (a header alone
            // must not hold its declared length of the budget), waiting for
            // room no later than its deadline.
            // (Calls held back for workers were sent before this read: they
            // cannot wait for the room they would free.)
            let mut limit = READ_AHEAD;
            if let Some(body_len) = native::declared_len(&self.buf) {
                let len = native::LENGTH_LEN + body_len;
                if self.reserved.as_ref().map(|r| r.0) != Some(len) {
                    self.reserved = Some((len, 0, conn.budgets.empty_charge()));
                }
                if let Some((_, covered, charge)) = self.reserved.as_mut() {
                    let have = self.buf.len();
                    let want = len.min((have + READ_AHEAD).max(have * 2));
                    if *covered < want {
                        let reserve = conn.budgets.reserve_up_to(charge, want);
                        if tokio::time::timeout_at(deadline, reserve).await.is_err() {
                            return Next::Ended(Ended::TimedOut);
                        }
                        *covered = want;
                    }
                    limit = want.saturating_sub(self.buf.len()).max(1);
                }
            }
            let mut limited = (&mut self.half).take(limit as u64);
            let read = limited.read_buf(&mut self.buf);
            tokio::select! {
                read = tokio::time::timeout_at(deadline, read) => match read {
                    Ok(Ok(n)) if n > 0 => slot.set_idle(false),
                    Ok(_) => return Next::Ended(Ended::Peer),
                    Err(_) if busy => continue,
                    Err(_) => return Next::Ended(Ended::TimedOut),
                },
                () = slot.evicted() => {
                    if self.buf.is_empty() && conn.is_idle() {
                        return Next::Ended(Ended::Evicted);
                    }
                    // Busy again since it was chosen: kept.
                    slot.spare();
                }
                _ = broken.notified() => return Next::Ended(Ended::Peer),
                _ = shared.drain.reached(Phase::Closing) => return Next::Ended(Ended::Closing),
            }
        }
    }

    /// The budget for a frame of `len` bytes (with its length prefix):
    /// the one reserved while it was read, or a new reservation. Calls held
    /// back for workers go out before it waits: the room it waits for may
    /// be theirs.
    async fn take_budget(&mut self, conn: &mut Connection, len: usize) -> Charge {
        match self.reserved.take() {
            Some((reserved, _, charge)) if reserved == len => charge,
            _ => match conn.budgets.try_reserve(len) {
                Some(charge) => charge,
                None => {
                    conn.batch.flush();
                    conn.budgets.reserve(len).await
                }
            },
        }
    }
}

/// A connection's calls in flight, counted by the permits they hold.
pub(super) struct Quiet {
    permits: Arc<Semaphore>,
    max: usize,
    slot: Arc<conns::Slot>,
}

impl Quiet {
    fn is_idle(&self) -> bool {
        self.permits.available_permits() == self.max
    }
}

/// A call's place among its connection's calls in flight, given back once
/// its reply is written (or dropped). The last one given back marks the
/// connection idle, though its reader may be waiting since it was busy.
pub(super) struct InFlight {
    permit: Option<OwnedSemaphorePermit>,
    quiet: Arc<Quiet>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        drop(self.permit.take());
        if self.quiet.is_idle() {
            self.quiet.slot.set_idle(true);
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    codec: CodecKind,
    tx: Replies,
    /// Calls in flight on this connection.
    in_flight: Arc<Quiet>,
    cancels: Cancels,
    /// Calls to worker processes not yet written.
    batch: Batch,
    /// Set once the client is gone: its calls not yet started never start.
    gone: Arc<AtomicBool>,
    /// The line its calls wait in for task slots.
    caller: Caller,
    /// What its requests are charged to.
    budgets: Budgets,
    /// Its replies not yet written: its calls wait to start while there
    /// are too many.
    backlog: Arc<Backlog>,
    /// It may call: it presented the call token, or none is asked for.
    authenticated: bool,
}

impl Connection {
    /// Whether no call of this connection is in flight.
    fn is_idle(&self) -> bool {
        self.in_flight.is_idle()
    }

    /// Handles one request frame; false if the connection must close.
    async fn handle(&mut self, body: &[u8], budget: Charge) -> bool {
        let (id, task, args, kwargs) = match native::parse_request(body) {
            Ok(Request::Call {
                id,
                task,
                args,
                kwargs,
            }) => (id, task, args, kwargs),
            Ok(Request::Cancel { id }) => {
                self.cancel(id);
                return true;
            }
            Ok(Request::Auth { id, token }) => return self.authenticate(id, token),
            Err(err) => {
                self.fatal(kind::PROTOCOL_ERROR, &err.to_string());
                return false;
            }
        };
        if !self.authenticated {
            self.send_error(
                id,
                kind::UNAUTHORIZED,
                "this host needs its call token before any call",
                ErrorStatus::Error,
                Held::default(),
            );
            return true;
        }
        // Accepted before any wait, so a drain waits for it; resolved now,
        // so it runs on the plugin version live when it was read.
        let accepted = self.shared.drain.accept_call();
        let call = TaskCall::new(task, self.codec, args.to_vec(), kwargs.to_vec())
            .tied_to_caller(&self.gone)
            .made_by(self.caller)
            .held_back_by(&self.backlog);
        let job = Job::new(&self.shared, call);
        let meter = job.meter(&self.shared, Proto::Native);
        // Back-pressure: a client with too many calls in flight (or not
        // reading its replies) is not read from.
        let permit = match Arc::clone(&self.in_flight.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Calls queued for workers must not wait with this one.
                self.batch.flush();
                let Ok(permit) = Arc::clone(&self.in_flight.permits).acquire_owned().await else {
                    return false;
                };
                permit
            }
        };
        let permit = InFlight {
            permit: Some(permit),
            quiet: Arc::clone(&self.in_flight),
        };
        let held = Held::new(accepted, permit, budget);
        if self.shared.drain.is_stopping() && !job.is_status() {
            meter.done::<()>(&Err(TaskError::msg(kind::STOPPING, task)));
            self.send_error(id, kind::STOPPING, task, ErrorStatus::NotRun, held);
            return true;
        }
        // A task in worker processes: submitted from here (sent with the
        // other calls of this read, or queued for a task slot), its answer
        // queued for the client by the thread that has it, with no task
        // awaiting it.
        if let Some(remote) = job.remote() {
            self.cancels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, job.call().canceller());
            let (tx, cancels) = (self.tx.clone(), Arc::clone(&self.cancels));
            let max_message = self.shared.config.max_message;
            let deliver = Box::new(move |result, batch: &mut Batch| {
                cancels
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                tx.push_held_back(&encode_reply(id, result, max_message, meter), held, batch);
            });
            remote.dispatch(job.call(), deliver, &mut self.batch);
            return true;
        }
        // Calls held back for workers do not wait for a task run here.
        self.batch.flush();
        if let Some(result) = try_inline(&self.shared, &job) {
            self.tx.push(
                &encode_reply(id, result, self.shared.config.max_message, meter),
                After::Nothing,
                held,
            );
            return true;
        }
        self.cancels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, job.call().canceller());
        let (shared, tx, cancels) = (
            Arc::clone(&self.shared),
            self.tx.clone(),
            Arc::clone(&self.cancels),
        );
        tokio::spawn(async move {
            let (result, after) = execute(&shared, job).await;
            cancels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            tx.push(
                &encode_reply(id, result, shared.config.max_message, meter),
                after,
                held,
            );
        });
        true
    }

    /// Checks the call token of an AUTH frame: accepted (or no token asked
    /// for), the connection may call; a wrong one closes it.
    fn authenticate(&mut self, id: u64, token: &[u8]) -> bool {
        match &self.shared.config.call_token {
            Some(expected) if !same_secret(token, expected.as_bytes()) => {
                self.shared.metrics.connections_refused[crate::metrics::WRONG_TOKEN]
                    .fetch_add(1, Ordering::Relaxed);
                static REFUSED: Limiter = Limiter::new();
                if let Some(left_out) = REFUSED.admit() {
                    tracing::warn!(peer = ?self.caller.peer, left_out, "connection refused: wrong call token");
                }
                self.fatal(kind::UNAUTHORIZED, "wrong call token");
                false
            }
            _ => {
                self.authenticated = true;
                let mut frame = Vec::new();
                native::encode_ok(&mut frame, id, b"");
                self.tx.push(&frame, After::Nothing, Held::default());
                true
            }
        }
    }

    /// Sets the cancellation flag of call `id`, if it is in flight.
    fn cancel(&self, id: u64) {
        let cancels = self.cancels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flag) = cancels.get(&id) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    fn send_error(&self, id: u64, kind: &str, message: &str, status: ErrorStatus, held: Held) {
        let args = TaskError::msg(kind, message).args_json();
        let mut frame = Vec::new();
        native::encode_error(&mut frame, id, kind, &args, status);
        self.tx.push(&frame, After::Nothing, held);
    }

    /// A protocol error: reported, then the connection closes once the calls
    /// already accepted have been answered.
    fn fatal(&self, kind: &str, message: &str) {
        self.send_error(0, kind, message, ErrorStatus::Fatal, Held::default());
    }
}

/// Reads the client's hello (its first byte, `T`, is already read) and
/// answers it; returns the codec agreed on.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    peer: SocketAddr,
) -> Option<CodecKind> {
    let mut hello = [0u8; native::HELLO_LEN];
    hello[0] = b'T';
    match tokio::time::timeout(
        shared.config.handshake_timeout,
        stream.read_exact(&mut hello[1..]),
    )
    .await
    {
        Ok(Ok(_)) => {}
        _ => {
            tracing::debug!(%peer, "no complete native hello");
            return None;
        }
    }
    let (status, codec) = match native::parse_client_hello(&hello) {
        Err(err) => {
            tracing::debug!(%peer, %err, "bad native hello");
            return None;
        }
        Ok((version, _)) if version != native::VERSION => (HelloStatus::UnsupportedVersion, None),
        Ok((_, codec)) => match native::codec_from_id(codec) {
            Some(codec) => (HelloStatus::Ok, Some(codec)),
            None => (HelloStatus::UnsupportedCodec, None),
        },
    };
    let written = tokio::time::timeout(
        shared.config.write_timeout,
        stream.write_all(&native::server_hello(status)),
    )
    .await;
    match (written, codec) {
        (Ok(Ok(())), Some(codec)) => Some(codec),
        _ => None,
    }
}

/// The reply frame to call `id`, counted by `meter`; a result over the
/// reply limit (see [`max_result`]) becomes `ReplyTooLarge`.
fn encode_reply(
    id: u64,
    result: Result<Vec<u8>, TaskError>,
    max_message: usize,
    meter: Meter,
) -> Vec<u8> {
    let mut frame = Vec::new();
    let result = within(result, max_result(max_message));
    meter.done(&result);
    match result {
        Ok(bytes) => native::encode_ok(&mut frame, id, &bytes),
        Err(err) => native::encode_error(
            &mut frame,
            id,
            err.kind(),
            &err.args_json(),
            // `Stopping` always means the task did not run.
            if err.kind() == kind::STOPPING {
                ErrorStatus::NotRun
            } else {
                ErrorStatus::Error
            },
        ),
    }
    frame
}

/// Writes replies as they come, all that are queued in one write. A write
/// that makes no progress for the write timeout drops the connection.
///
/// Replies to a broken connection count as answered when they are dropped:
/// nobody is left to read them, and a drain must not wait for them.
async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut writer: W,
    replies: Writer,
    peer: SocketAddr,
    broken_signal: Arc<Notify>,
) {
    const CHUNK: usize = 64 << 10;
    let mut broken = false;
    while let Some(taken) = replies.take().await {
        if !broken {
            for chunk in taken.frames.chunks(CHUNK) {
                match tokio::time::timeout(shared.config.write_timeout, writer.write_all(chunk))
                    .await
                {
                    Ok(Ok(())) => continue,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, %err, "connection lost while writing replies")
                    }
                    Err(_) => {
                        static STALLED: Limiter = Limiter::new();
                        if let Some(left_out) = STALLED.admit() {
                            tracing::warn!(%peer, left_out, "client stopped reading its replies; dropping the connection")
                        }
                    }
                }
                broken = true;
                broken_signal.notify_one();
                break;
            }
        }
        replies.written(taken.frames, broken);
        // Answered: the calls leave the drain's count, their permits free.
        drop(taken.held);
        if taken.kill {
            shared.drain.end(super::Exit::Killed);
        }
    }
    let _ = writer.shutdown().await;
}
