//! A native connection: a hello, then request frames read as they come and
//! run concurrently; replies are written in completion order by a writer
//! task that batches whatever is ready into one write.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use taskit_plugin_api::wire::native::{self, HelloStatus, Request};
use taskit_plugin_api::wire::{kind, WireError};
use taskit_plugin_api::CodecKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::dispatch::{execute, try_inline, After, Call};
use super::Shared;

/// One reply ready to be written.
struct Outgoing {
    frame: Vec<u8>,
    /// Whether this reply answers an accepted call (counted in flight).
    counted: bool,
    after: After,
    /// Frees a per-connection in-flight slot once written.
    _slot: Option<OwnedSemaphorePermit>,
}

type Cancels = Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>;

pub(crate) async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let Some(codec) = handshake(&shared, &mut stream, peer).await else {
        return;
    };
    let (mut reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let broken = Arc::new(Notify::new());
    let writer = tokio::spawn(write_loop(
        Arc::clone(&shared),
        writer,
        rx,
        peer,
        Arc::clone(&broken),
    ));
    let slots = Arc::new(Semaphore::new(
        shared.config.max_in_flight_per_connection.max(1),
    ));
    let cancels = Cancels::default();
    let max = shared.config.max_message;

    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    'read: loop {
        let mut used = 0;
        loop {
            let body = match native::split_frame(&buf[used..], max) {
                Ok(Some((body, n))) => {
                    used += n;
                    body
                }
                Ok(None) => break,
                Err(err) => {
                    fatal(&tx, 0, kind::MESSAGE_TOO_LARGE, &err);
                    break 'read;
                }
            };
            match native::parse_request(body) {
                Ok(Request::Call {
                    id,
                    task,
                    args,
                    kwargs,
                }) => {
                    if shared.is_stopping() && task != taskit_plugin_api::wire::STATUS {
                        reply_error(&tx, id, kind::STOPPING, task, false);
                        continue;
                    }
                    // Back-pressure: a client with too many calls in flight
                    // (or not reading its replies) is not read from.
                    let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                        break 'read;
                    };
                    shared.accept_call();
                    let call = Call {
                        task: task.to_owned(),
                        codec,
                        args: args.to_vec(),
                        kwargs: kwargs.to_vec(),
                        cancelled: Arc::new(AtomicBool::new(false)),
                    };
                    if let Some(result) = try_inline(&shared, &call) {
                        send_reply(&tx, id, result, After::Nothing, slot);
                        continue;
                    }
                    cancels
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id, Arc::clone(&call.cancelled));
                    let (shared, tx, cancels) =
                        (Arc::clone(&shared), tx.clone(), Arc::clone(&cancels));
                    tokio::spawn(async move {
                        let (result, after) = execute(&shared, call).await;
                        cancels
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&id);
                        send_reply(&tx, id, result, after, slot);
                    });
                }
                Ok(Request::Cancel { id }) => {
                    if let Some(flag) = cancels
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&id)
                    {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                Err(err) => {
                    fatal(&tx, 0, kind::PROTOCOL_ERROR, &err);
                    break 'read;
                }
            }
        }
        buf.drain(..used);
        let read = tokio::select! {
            read = reader.read_buf(&mut buf) => read,
            // Replies can no longer be written: stop taking calls.
            _ = broken.notified() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // The writer ends once every call still running has sent its reply.
    drop(tx);
    let _ = writer.await;
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
fn send_reply(
    tx: &mpsc::UnboundedSender<Outgoing>,
    id: u64,
    result: Result<Vec<u8>, taskit_plugin_api::TaskError>,
    after: After,
    slot: OwnedSemaphorePermit,
) {
    let mut frame = Vec::new();
    match result {
        Ok(bytes) => native::encode_ok(&mut frame, id, &bytes),
        Err(err) => {
            let args = serde_json::to_vec(err.args()).unwrap_or_else(|_| b"[]".to_vec());
            native::encode_error(&mut frame, id, err.kind(), &args, false);
        }
    }
    let _ = tx.send(Outgoing {
        frame,
        counted: true,
        after,
        _slot: Some(slot),
    });
}

fn reply_error(
    tx: &mpsc::UnboundedSender<Outgoing>,
    id: u64,
    kind: &str,
    message: &str,
    fatal: bool,
) {
    let args = serde_json::to_vec(&[message]).unwrap_or_else(|_| b"[]".to_vec());
    let mut frame = Vec::new();
    native::encode_error(&mut frame, id, kind, &args, fatal);
    let _ = tx.send(Outgoing {
        frame,
        counted: false,
        after: After::Nothing,
        _slot: None,
    });
}

/// A protocol error: reported, then the connection closes once the calls
/// already accepted have been answered.
fn fatal(tx: &mpsc::UnboundedSender<Outgoing>, id: u64, kind: &str, err: &WireError) {
    reply_error(tx, id, kind, &err.to_string(), true);
}

/// Writes replies as they come, as many as are ready in one write.
async fn write_loop(
    shared: Arc<Shared>,
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    peer: SocketAddr,
    broken_signal: Arc<Notify>,
) {
    const BATCH_BYTES: usize = 256 << 10;
    let mut batch = Vec::with_capacity(16 << 10);
    let mut broken = false;
    while let Some(first) = rx.recv().await {
        let mut counted = 0;
        let mut kill = false;
        let mut items = Some(first);
        while let Some(item) = items.take() {
            batch.extend_from_slice(&item.frame);
            counted += usize::from(item.counted);
            kill |= item.after == After::Kill;
            if batch.len() < BATCH_BYTES {
                items = rx.try_recv().ok();
            }
        }
        if !broken {
            match tokio::time::timeout(shared.config.write_timeout, writer.write_all(&batch)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "connection lost while writing replies");
                    broken = true;
                }
                Err(_) => {
                    tracing::warn!(%peer, "client stopped reading its replies; dropping the connection");
                    broken = true;
                }
            }
            if broken {
                broken_signal.notify_one();
            }
        }
        batch.clear();
        // Replies to a broken connection count as answered: nobody is left
        // to read them, and a drain must not wait for them.
        shared.replies_done(counted);
        if kill {
            shared.kill();
        }
    }
    let _ = writer.shutdown().await;
}
