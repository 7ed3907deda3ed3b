//! A TaskIt 4.0 connection: one FirstBytes message in, one out, then close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use taskit_plugin_api::error::kind;
use taskit_plugin_api::wire::taskit4::{self, EnvelopeError};
use taskit_plugin_api::wire::{firstbytes, WireError};
use taskit_plugin_api::{CodecKind, TaskError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::budget::{Budgets, Charge};
use super::dispatch::{execute, try_inline, After, Job};
use super::drain::AcceptedCall;
use super::Shared;
use crate::call::{max_result, within, TaskCall};
use crate::fair::Caller;
use crate::metrics::Proto;

/// The one reply of a connection, and what it answers for.
struct Answer {
    reply: Vec<u8>,
    after: After,
    /// The call it answers, if the request was one (a malformed request is
    /// not accepted, so a drain never waits for it).
    _accepted: Option<AcceptedCall>,
}

impl Answer {
    fn error(kind: &str, message: String) -> Self {
        Self {
            reply: taskit4::encode_error(kind, &[Value::String(message)]),
            after: After::Nothing,
            _accepted: None,
        }
    }
}

pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut stream: S,
    first: u8,
    peer: SocketAddr,
) {
    // `held` keeps the message's charge to the byte budgets until the
    // reply is written.
    let caller = Caller::connection(peer.ip());
    let budgets =
        Budgets::for_connection(&shared.budget, shared.config.max_buffered_per_connection);
    let (answer, mut held) = match read_message(&shared, &budgets, &mut stream, first).await {
        Ok(Some((message, held))) => (answer(&shared, &message, caller).await, held),
        Ok(None) => return,
        Err(err) => {
            tracing::debug!(%peer, %err, "bad TaskIt 4.0 message");
            let kind = match err {
                WireError::TooLarge { .. } => kind::MESSAGE_TOO_LARGE,
                _ => kind::PROTOCOL_ERROR,
            };
            (Answer::error(kind, err.to_string()), Charge::default())
        }
    };
    // A reply larger than the request is charged the difference.
    held.cover(answer.reply.len());
    if let Err(err) = write_reply(&shared, &mut stream, &answer.reply).await {
        tracing::debug!(%peer, %err, "could not write a TaskIt 4.0 reply");
    }
    if answer.after == After::Kill {
        shared.drain.end(super::Exit::Killed);
    }
}

/// Runs the request in `message` and makes its reply.
async fn answer(shared: &Arc<Shared>, message: &[u8], caller: Caller) -> Answer {
    let request = match taskit4::parse_request(message) {
        Ok(request) => request,
        Err(EnvelopeError::Json(msg)) => return Answer::error(kind::DECODE_ERROR, msg),
        Err(err @ EnvelopeError::Shape(_)) => {
            return Answer::error(kind::PROTOCOL_ERROR, err.to_string())
        }
    };
    if shared.config.call_token.is_some() {
        return Answer::error(
            kind::UNAUTHORIZED,
            "this host needs a call token, which TaskIt 4.0 calls cannot carry".into(),
        );
    }
    // Accepted before anything else, so a drain waits for its reply.
    let accepted = Some(shared.drain.accept_call());
    let call = TaskCall::new(
        request.task,
        CodecKind::Json,
        request.args.get().as_bytes().to_vec(),
        request.kwargs.get().as_bytes().to_vec(),
    )
    .made_by(caller);
    let job = Job::new(shared, call);
    let meter = job.meter(shared, Proto::Taskit4);
    let (result, after) = if shared.drain.is_stopping() && !job.is_status() {
        let task = job.call().task().to_owned();
        (Err(TaskError::msg(kind::STOPPING, task)), After::Nothing)
    } else {
        match try_inline(shared, &job) {
            Some(result) => (result, After::Nothing),
            None => execute(shared, job).await,
        }
    };
    let result = within(result, max_result(shared.config.max_message));
    meter.done(&result);
    let reply = match result {
        Ok(json) => taskit4::encode_success(&json),
        Err(err) => taskit4::encode_error(err.kind(), err.args()),
    };
    Answer {
        reply,
        after,
        _accepted: accepted,
    }
}

/// How long a peer that sent a whole continuation article may stay quiet
/// before its message is taken as whole (if it is a valid request).
const UNCLOSED_QUIET: Duration = Duration::from_millis(100);

/// Reads one message, the first byte of which was already read. `Ok(None)`
/// when the peer went away or took too long.
async fn read_message(
    shared: &Shared,
    budgets: &Budgets,
    stream: &mut (impl AsyncRead + Unpin),
    first: u8,
) -> Result<Option<(Vec<u8>, Charge)>, WireError> {
    let mut decoder = firstbytes::Decoder::new(shared.config.max_message);
    decoder.feed(&[first])?;
    // Articles are 2 KiB.
    let mut buf = vec![0u8; 4 << 10];
    // The message's bytes count against the budgets as they arrive, each
    // read's before the next.
    let mut held = budgets.reserve(1).await;
    let mut total = 1usize;
    let deadline = tokio::time::Instant::now() + shared.config.read_timeout;
    // The message length when an unclosed message was last tried.
    let mut tried = 0;
    while !decoder.is_done() {
        // The original client never closes a message whose length is a
        // multiple of 2048 bytes: once it goes quiet after a whole
        // continuation article, a message that is already a whole, valid
        // request is served (more bytes could only have made it invalid
        // JSON). Tried once per length, so a slow sender of a large message
        // costs one parse per pause, not one per article.
        let unclosed = decoder.awaits_closing_article() && decoder.message_so_far().len() != tried;
        let until = if unclosed {
            deadline.min(tokio::time::Instant::now() + UNCLOSED_QUIET)
        } else {
            deadline
        };
        let n = match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) if unclosed => {
                tried = decoder.message_so_far().len();
                if taskit4::parse_request(decoder.message_so_far()).is_ok() {
                    return Ok(Some((decoder.into_message(), held)));
                }
                continue;
            }
            // Closed for writing after a whole continuation article: the
            // same, without the wait.
            Ok(Ok(0))
                if decoder.awaits_closing_article()
                    && taskit4::parse_request(decoder.message_so_far()).is_ok() =>
            {
                return Ok(Some((decoder.into_message(), held)));
            }
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok(None),
            Ok(Ok(n)) => n,
        };
        total += n;
        // Within the message's deadline: a peer cannot hold a wait for
        // room past it.
        if tokio::time::timeout_at(deadline, budgets.reserve_up_to(&mut held, total))
            .await
            .is_err()
        {
            return Ok(None);
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

async fn write_reply(
    shared: &Shared,
    stream: &mut (impl AsyncWrite + Unpin),
    reply: &[u8],
) -> std::io::Result<()> {
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
