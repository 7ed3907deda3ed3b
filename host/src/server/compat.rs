//! A TaskIt 4.0 connection: one FirstBytes message in, one out, then close.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use taskit_plugin_api::error::kind as task_kind;
use taskit_plugin_api::wire::compat::{self, EnvelopeError};
use taskit_plugin_api::wire::{self, firstbytes, kind, WireError};
use taskit_plugin_api::CodecKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::dispatch::{execute, try_inline, After, Call};
use super::{Shared, SMALL_REQUEST};

pub(crate) async fn serve(shared: Arc<Shared>, mut stream: TcpStream, first: u8, peer: SocketAddr) {
    // `_held` keeps the message's share of the byte budget until the reply
    // is written.
    let (message, _held) = match read_message(&shared, &mut stream, first).await {
        Ok(Some(read)) => read,
        Ok(None) => return,
        Err(err) => {
            tracing::debug!(%peer, %err, "bad TaskIt 4.0 message");
            let kind = match err {
                WireError::TooLarge { .. } => kind::MESSAGE_TOO_LARGE,
                _ => kind::PROTOCOL_ERROR,
            };
            let reply = compat::encode_error(kind, &[Value::String(err.to_string())]);
            let _ = write_reply(&shared, &mut stream, &reply).await;
            return;
        }
    };
    let (reply, after) = match compat::parse_request(&message) {
        Err(EnvelopeError::Json(msg)) => (
            compat::encode_error(task_kind::DECODE_ERROR, &[Value::String(msg)]),
            After::Nothing,
        ),
        Err(err @ EnvelopeError::Shape(_)) => (
            compat::encode_error(kind::PROTOCOL_ERROR, &[Value::String(err.to_string())]),
            After::Nothing,
        ),
        Ok(request) => {
            // Counted before anything else, so a drain waits for its reply.
            shared.accept_call();
            if shared.is_stopping() && request.task != wire::STATUS {
                let reply = compat::encode_error(kind::STOPPING, &[Value::String(request.task)]);
                let _ = write_reply(&shared, &mut stream, &reply).await;
                shared.replies_done(1);
                return;
            }
            let call = Call::new(
                &shared,
                request.task,
                CodecKind::Json,
                request.args.get().as_bytes().to_vec(),
                request.kwargs.get().as_bytes().to_vec(),
            );
            let (result, after) = match try_inline(&shared, &call) {
                Some(result) => (result, After::Nothing),
                None => execute(&shared, call).await,
            };
            let reply = match result {
                Ok(json) => compat::encode_success(&json),
                Err(err) => compat::encode_error(err.kind(), err.args()),
            };
            let written = write_reply(&shared, &mut stream, &reply).await;
            shared.replies_done(1);
            if let Err(err) = written {
                tracing::debug!(%peer, %err, "could not write a TaskIt 4.0 reply");
            }
            if after == After::Kill {
                shared.kill();
            }
            return;
        }
    };
    let _ = write_reply(&shared, &mut stream, &reply).await;
    if after == After::Kill {
        shared.kill();
    }
}

/// Reads one message, the first byte of which was already read. `Ok(None)`
/// when the peer went away or took too long.
async fn read_message(
    shared: &Shared,
    stream: &mut TcpStream,
    first: u8,
) -> Result<Option<(Vec<u8>, Option<OwnedSemaphorePermit>)>, WireError> {
    let mut decoder = firstbytes::Decoder::new(shared.config.max_message);
    decoder.feed(&[first])?;
    let mut buf = vec![0u8; 16 << 10];
    // Past the first 64 KiB, the message's bytes count against the
    // server's budget as they arrive.
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut total = 1usize;
    let deadline = tokio::time::Instant::now() + shared.config.read_timeout;
    while !decoder.is_done() {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok(None),
            Ok(Ok(n)) => n,
        };
        total += n;
        if total > SMALL_REQUEST {
            if let Some(permit) = shared.reserve_exact(n).await {
                match held.as_mut() {
                    Some(all) => all.merge(permit),
                    None => held = Some(permit),
                }
            }
        }
        let used = decoder.feed(&buf[..n])?;
        if used < n {
            // Bytes after the message: TaskIt 4.0 sends one message per
            // connection, so they are ignored.
            break;
        }
    }
    Ok(Some((decoder.into_message(), held)))
}

async fn write_reply(shared: &Shared, stream: &mut TcpStream, reply: &[u8]) -> std::io::Result<()> {
    let framed = firstbytes::encode(reply);
    match tokio::time::timeout(shared.config.write_timeout, async {
        stream.write_all(&framed).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}
