//! A native connection: a hello, then request frames read as they come and
//! run concurrently; replies are written in completion order by a writer
//! task that batches whatever is ready into one write.
//!
//! Every call is counted as accepted the moment its frame is parsed, before
//! anything can wait, so a drain never finishes with a call still unanswered.
//! Memory is bounded three ways: the frame length limit, the server-wide
//! byte budget (reserved as soon as a frame's length is known, held until its
//! reply is written), and a cap on calls in flight per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use taskit_plugin_api::wire::native::{self, ErrorStatus, HelloStatus, Request};
use taskit_plugin_api::wire::{kind, STATUS};
use taskit_plugin_api::{CodecKind, TaskError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::dispatch::{execute, try_inline, After, Call};
use super::Shared;

/// One reply ready to be written.
struct Outgoing {
    frame: Vec<u8>,
    /// Whether this reply answers an accepted call (counted in flight).
    counted: bool,
    after: After,
    /// What the call held (its in-flight slot, its bytes of the budget),
    /// released once the reply is written.
    _held: Held,
}

#[derive(Default)]
struct Held {
    _slot: Option<OwnedSemaphorePermit>,
    _budget: Option<OwnedSemaphorePermit>,
}

type Cancels = Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>;
type Replies = mpsc::UnboundedSender<Outgoing>;

pub(crate) async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let Some(codec) = handshake(&shared, &mut stream, peer).await else {
        return;
    };
    let (reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let broken = Arc::new(Notify::new());
    let writer = tokio::spawn(write_loop(
        Arc::clone(&shared),
        writer,
        rx,
        peer,
        Arc::clone(&broken),
    ));
    let mut conn = Connection {
        shared: Arc::clone(&shared),
        codec,
        tx,
        slots: Arc::new(Semaphore::new(
            shared.config.max_in_flight_per_connection.max(1),
        )),
        cancels: Cancels::default(),
        budget: None,
    };
    conn.read_loop(reader, &broken, peer).await;
    // The writer ends once every call still running has sent its reply.
    drop(conn);
    let _ = writer.await;
}

struct Connection {
    shared: Arc<Shared>,
    codec: CodecKind,
    tx: Replies,
    slots: Arc<Semaphore>,
    cancels: Cancels,
    /// Budget reserved for the frame being read (its length, its permit).
    budget: Option<(usize, Option<OwnedSemaphorePermit>)>,
}

/// Why the read loop ended.
enum Ended {
    /// The peer closed, or the connection failed.
    Peer,
    /// A protocol error was reported.
    Fatal,
    /// The host is going away: tell the peer its unanswered calls did not run.
    Closing,
}

impl Connection {
    async fn read_loop(
        &mut self,
        mut reader: tokio::net::tcp::OwnedReadHalf,
        broken: &Notify,
        peer: SocketAddr,
    ) {
        let shared = Arc::clone(&self.shared);
        let mut closing = shared.closing();
        let max = shared.config.max_message;
        let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
        // When the frame at the front of `buf` began arriving.
        let mut frame_started: Option<Instant> = None;
        let ended = 'read: loop {
            let mut used = 0;
            loop {
                match native::split_frame(&buf[used..], max) {
                    Ok(Some((body, n))) => {
                        used += n;
                        let budget = self.take_budget(n).await;
                        if !self.handle(body, budget).await {
                            break 'read Ended::Fatal;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        self.fatal(kind::MESSAGE_TOO_LARGE, &err.to_string());
                        break 'read Ended::Fatal;
                    }
                }
            }
            buf.drain(..used);
            frame_started = match (buf.is_empty(), frame_started) {
                (true, _) => None,
                (false, None) => Some(Instant::now()),
                (false, started) => started,
            };
            // Reserve the budget of a frame whose length is known before
            // reading its body.
            if let Some(prefix) = buf.get(..native::LENGTH_LEN) {
                let len = native::LENGTH_LEN
                    + u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
                if self.budget.as_ref().map(|b| b.0) != Some(len) {
                    self.budget = Some((len, shared.reserve(len).await));
                }
            }
            let deadline = match frame_started {
                // A frame must arrive whole within the read timeout.
                Some(started) => Some(started + shared.config.read_timeout),
                // Idle with nothing in flight: the connection may go.
                None if self.slots.available_permits()
                    == shared.config.max_in_flight_per_connection.max(1) =>
                {
                    Some(Instant::now() + shared.config.idle_timeout)
                }
                None => None,
            };
            let read = async {
                match deadline {
                    Some(at) => tokio::time::timeout_at(at, reader.read_buf(&mut buf))
                        .await
                        .ok(),
                    None => Some(reader.read_buf(&mut buf).await),
                }
            };
            tokio::select! {
                read = read => match read {
                    Some(Ok(n)) if n > 0 => {}
                    Some(_) => break Ended::Peer,
                    None => {
                        tracing::debug!(%peer, "closing a native connection: read timed out");
                        break Ended::Peer;
                    }
                },
                // Replies can no longer be written: stop taking calls.
                _ = broken.notified() => break Ended::Peer,
                _ = closing.wait_for(|c| *c) => break Ended::Closing,
            }
        };
        if let Ended::Closing = ended {
            self.send_error(
                0,
                kind::STOPPING,
                "the host is stopping; calls without a reply were not run",
                ErrorStatus::Fatal,
                false,
                Held::default(),
            );
        }
    }

    /// The budget for a frame of `len` bytes (with its length prefix):
    /// the one reserved while it was read, or a new reservation.
    async fn take_budget(&mut self, len: usize) -> Option<OwnedSemaphorePermit> {
        match self.budget.take() {
            Some((reserved, permit)) if reserved == len => permit,
            _ => self.shared.reserve(len).await,
        }
    }

    /// Handles one request frame; false if the connection must close.
    async fn handle(&mut self, body: &[u8], budget: Option<OwnedSemaphorePermit>) -> bool {
        match native::parse_request(body) {
            Ok(Request::Call {
                id,
                task,
                args,
                kwargs,
            }) => {
                // Counted before any wait, so a drain waits for it; resolved
                // now, so it runs on the plugin version live when it was read.
                self.shared.accept_call();
                let call = Call::new(
                    &self.shared,
                    task.to_owned(),
                    self.codec,
                    args.to_vec(),
                    kwargs.to_vec(),
                );
                // Back-pressure: a client with too many calls in flight (or
                // not reading its replies) is not read from.
                let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                    self.shared.replies_done(1);
                    return false;
                };
                let held = Held {
                    _slot: Some(slot),
                    _budget: budget,
                };
                if self.shared.is_stopping() && task != STATUS {
                    self.send_error(id, kind::STOPPING, task, ErrorStatus::NotRun, true, held);
                    return true;
                }
                if let Some(result) = try_inline(&self.shared, &call) {
                    send_reply(&self.tx, id, result, After::Nothing, held);
                    return true;
                }
                self.cancels
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, Arc::clone(&call.cancelled));
                let (shared, tx, cancels) = (
                    Arc::clone(&self.shared),
                    self.tx.clone(),
                    Arc::clone(&self.cancels),
                );
                tokio::spawn(async move {
                    let (result, after) = execute(&shared, call).await;
                    cancels
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    send_reply(&tx, id, result, after, held);
                });
                true
            }
            Ok(Request::Cancel { id }) => {
                if let Some(flag) = self
                    .cancels
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&id)
                {
                    flag.store(true, Ordering::Relaxed);
                }
                true
            }
            Err(err) => {
                self.fatal(kind::PROTOCOL_ERROR, &err.to_string());
                false
            }
        }
    }

    fn send_error(
        &self,
        id: u64,
        kind: &str,
        message: &str,
        status: ErrorStatus,
        counted: bool,
        held: Held,
    ) {
        let args = serde_json::to_vec(&[message]).unwrap_or_else(|_| b"[]".to_vec());
        let mut frame = Vec::new();
        native::encode_error(&mut frame, id, kind, &args, status);
        let _ = self.tx.send(Outgoing {
            frame,
            counted,
            after: After::Nothing,
            _held: held,
        });
    }

    /// A protocol error: reported, then the connection closes once the calls
    /// already accepted have been answered.
    fn fatal(&self, kind: &str, message: &str) {
        self.send_error(0, kind, message, ErrorStatus::Fatal, false, Held::default());
    }
}

/// Reads the client's hello (its first byte, `T`, is already read) and
/// answers it; returns the codec agreed on.
async fn handshake(shared: &Shared, stream: &mut TcpStream, peer: SocketAddr) -> Option<CodecKind> {
    let mut hello = [0u8; native::HELLO_LEN];
    hello[0] = b'T';
    match tokio::time::timeout(
        shared.config.read_timeout,
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

/// Queues the reply to call `id` for the writer.
fn send_reply(tx: &Replies, id: u64, result: Result<Vec<u8>, TaskError>, after: After, held: Held) {
    let mut frame = Vec::new();
    match result {
        Ok(bytes) => native::encode_ok(&mut frame, id, &bytes),
        Err(err) => {
            let args = serde_json::to_vec(err.args()).unwrap_or_else(|_| b"[]".to_vec());
            native::encode_error(&mut frame, id, err.kind(), &args, ErrorStatus::Error);
        }
    }
    let _ = tx.send(Outgoing {
        frame,
        counted: true,
        after,
        _held: held,
    });
}

/// Writes replies as they come, as many as are ready in one write. A write
/// that makes no progress for the write timeout drops the connection.
async fn write_loop(
    shared: Arc<Shared>,
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    peer: SocketAddr,
    broken_signal: Arc<Notify>,
) {
    const BATCH_BYTES: usize = 256 << 10;
    const CHUNK: usize = 64 << 10;
    let mut batch = Vec::with_capacity(16 << 10);
    let mut broken = false;
    while let Some(first) = rx.recv().await {
        let mut counted = 0;
        let mut kill = false;
        let mut held = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            batch.extend_from_slice(&item.frame);
            counted += usize::from(item.counted);
            kill |= item.after == After::Kill;
            held.push(item._held);
            if batch.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !broken {
            for chunk in batch.chunks(CHUNK) {
                match tokio::time::timeout(shared.config.write_timeout, writer.write_all(chunk))
                    .await
                {
                    Ok(Ok(())) => continue,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, %err, "connection lost while writing replies")
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "client stopped reading its replies; dropping the connection")
                    }
                }
                broken = true;
                broken_signal.notify_one();
                break;
            }
        }
        batch.clear();
        drop(held);
        // Replies to a broken connection count as answered: nobody is left
        // to read them, and a drain must not wait for them.
        shared.replies_done(counted);
        if kill {
            shared.kill();
        }
    }
    let _ = writer.shutdown().await;
}
