//! One persistent native connection: a writer task batching request frames,
//! a reader task matching replies to waiting calls by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::{BackendAddr, FrontendConfig, FrontendError};
use crate::error::{kind, TaskError};
use crate::wire::native::{self, ErrorStatus, HelloStatus, Response};

type Waiter = oneshot::Sender<Result<Vec<u8>, FrontendError>>;

/// The connection to one backend, made on first use and replaced when it
/// breaks.
#[derive(Default)]
pub(super) struct Connector {
    current: Mutex<Option<Arc<NativeConn>>>,
    connecting: tokio::sync::Mutex<()>,
    /// The last failed attempt: calls arriving within [`RETRY_AFTER`] of it
    /// fail over at once instead of each waiting for a connect of their own.
    failed: Mutex<Option<(Instant, ConnectFailed)>>,
}

/// Why a connection could not be made.
#[derive(Debug, Clone)]
pub(super) struct ConnectFailed {
    pub(super) message: String,
    /// The backend was reached and refused this client, or TLS failed: what
    /// to answer if no other backend takes the call.
    pub(super) refused: Option<FrontendError>,
}

impl ConnectFailed {
    fn unreachable(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            refused: None,
        }
    }

    /// An I/O error, which is a TLS failure if rustls made it.
    fn io(backend: &str, err: std::io::Error) -> Self {
        let tls = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<crate::tls::rustls::Error>())
            .map(ToString::to_string);
        match tls {
            Some(message) => Self {
                message: message.clone(),
                refused: Some(FrontendError::Tls {
                    backend: backend.to_owned(),
                    message,
                }),
            },
            None => Self::unreachable(err),
        }
    }
}

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How long calls sent on a connection whose writes failed wait for the
/// reader to answer or fail them, before they fail as lost.
const ORPHAN_WAIT: Duration = Duration::from_secs(5);

/// How long a failed connection attempt is remembered.
const RETRY_AFTER: Duration = Duration::from_millis(500);

impl Connector {
    fn live(&self) -> Option<Arc<NativeConn>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .cloned()
    }

    fn recent_failure(&self) -> Option<ConnectFailed> {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RETRY_AFTER)
            .map(|(_, err)| err.clone())
    }

    /// The live connection, connecting first if there is none. One attempt
    /// at a time; callers that waited for a failed one share its failure.
    pub(super) async fn get(
        &self,
        addr: &BackendAddr,
        tls_name: &str,
        config: &FrontendConfig,
    ) -> Result<Arc<NativeConn>, ConnectFailed> {
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        if let Some(err) = self.recent_failure() {
            return Err(err);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        if let Some(err) = self.recent_failure() {
            return Err(err);
        }
        match NativeConn::connect(addr, tls_name, config).await {
            Ok(conn) => {
                *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = None;
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::clone(&conn));
                Ok(conn)
            }
            Err(err) => {
                *self.failed.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }
}

/// The request never left: safe to send elsewhere.
pub(super) struct NotSent;

pub(super) struct NativeConn {
    backend: String,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl NativeConn {
    async fn connect(
        addr: &BackendAddr,
        tls_name: &str,
        config: &FrontendConfig,
    ) -> Result<Arc<Self>, ConnectFailed> {
        let backend = addr.to_string();
        let connect = async {
            let stream = TcpStream::connect(addr.endpoint())
                .await
                .map_err(ConnectFailed::unreachable)?;
            let _ = stream.set_nodelay(true);
            match &config.tls {
                None => {
                    let mut stream = stream;
                    open(&mut stream, addr, config).await?;
                    let (reader, writer) = stream.into_split();
                    Ok(Self::start(addr, config, reader, writer))
                }
                Some(tls) => {
                    let name = tls.server_name(tls_name).map_err(|e| ConnectFailed {
                        message: e.to_string(),
                        refused: Some(FrontendError::Tls {
                            backend: backend.clone(),
                            message: e.to_string(),
                        }),
                    })?;
                    let mut stream = tls
                        .connector()
                        .connect(name, stream)
                        .await
                        .map_err(|e| ConnectFailed::io(&backend, e))?;
                    open(&mut stream, addr, config).await?;
                    let (reader, writer) = tokio::io::split(stream);
                    Ok(Self::start(addr, config, reader, writer))
                }
            }
        };
        tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| ConnectFailed::unreachable("connect timed out"))?
    }

    /// The connection over `reader` and `writer`, its tasks started.
    fn start(
        addr: &BackendAddr,
        config: &FrontendConfig,
        reader: impl AsyncRead + Unpin + Send + 'static,
        writer: impl AsyncWrite + Unpin + Send + 'static,
    ) -> Arc<Self> {
        let (frames, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Self {
            backend: addr.to_string(),
            frames,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        // The tasks hold only weak references: once the frontend lets go of
        // the connection, the writer's channel closes and both tasks end.
        // The reader says when the connection has ended, so the writer
        // closes it then, not when the frontend lets go of it.
        let ended = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(write_loop(
            Arc::downgrade(&conn),
            writer,
            rx,
            Arc::clone(&ended),
        ));
        let (weak, max_reply) = (Arc::downgrade(&conn), config.max_reply);
        tokio::spawn(async move {
            read_loop(weak, reader, max_reply).await;
            ended.notify_one();
        });
        conn
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes no new call (they are sent on a new connection).
    fn close_to_new_calls(&self) {
        let _waiters = self.waiters();
        self.closed.store(true, Ordering::Release);
    }

    /// Marks the connection dead and fails every waiting call with `err`.
    /// Done under the waiters' lock, which `call` also takes to check the
    /// flag and register: no call can slip in after the last failure.
    fn fail_all(&self, err: FrontendError) {
        let mut waiters = self.waiters();
        self.closed.store(true, Ordering::Release);
        for (_, waiter) in waiters.drain() {
            let _ = waiter.send(Err(err.clone()));
        }
    }

    /// Sends one call and waits for its reply. If the wait is abandoned
    /// (a timeout), the backend is asked to cancel the call.
    pub(super) async fn call(
        &self,
        task: &str,
        args: &[u8],
        kwargs: &[u8],
    ) -> Result<Result<Vec<u8>, FrontendError>, NotSent> {
        if task.len() > u16::MAX as usize || args.len() > u32::MAX as usize {
            return Ok(Err(FrontendError::Encode(
                "task id or arguments too long for a frame".into(),
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.waiters();
            if self.closed.load(Ordering::Acquire) {
                return Err(NotSent);
            }
            waiters.insert(id, tx);
        }
        let mut frame = Vec::with_capacity(32 + task.len() + args.len() + kwargs.len());
        native::encode_call(&mut frame, id, task, args, kwargs);
        if self.frames.send(frame).is_err() {
            self.waiters().remove(&id);
            return Err(NotSent);
        }
        let mut guard = CancelOnDrop {
            conn: self,
            id,
            armed: true,
        };
        let result = rx
            .await
            .unwrap_or_else(|_| Err(FrontendError::ConnectionLost(self.backend.clone())));
        guard.armed = false;
        Ok(result)
    }
}

/// Cancels a call whose caller stopped waiting.
struct CancelOnDrop<'a> {
    conn: &'a NativeConn,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed && self.conn.waiters().remove(&self.id).is_some() {
            let mut frame = Vec::new();
            native::encode_cancel(&mut frame, self.id);
            let _ = self.conn.frames.send(frame);
        }
    }
}

async fn write_loop(
    conn: Weak<NativeConn>,
    mut writer: impl AsyncWrite + Unpin,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    ended: Arc<tokio::sync::Notify>,
) {
    let mut batch = Vec::new();
    loop {
        let frame = tokio::select! {
            frame = rx.recv() => frame,
            () = ended.notified() => None,
        };
        let Some(frame) = frame else { break };
        batch.extend_from_slice(&frame);
        while batch.len() < (256 << 10) {
            match rx.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if let Err(err) = writer.write_all(&batch).await {
            let Some(strong) = conn.upgrade() else { return };
            tracing::debug!(backend = %strong.backend, %err, "write failed");
            // No new call goes out on it; the calls sent are left to the
            // reader, which still reads their answers (or a `Stopping`
            // that says they did not run) and fails the rest when the
            // connection ends. Should it not end, they fail after a while.
            strong.close_to_new_calls();
            drop(strong);
            tokio::time::sleep(ORPHAN_WAIT).await;
            if let Some(conn) = conn.upgrade() {
                let lost = FrontendError::ConnectionLost(conn.backend.clone());
                conn.fail_all(lost);
            }
            return;
        }
        batch.clear();
    }
    let _ = writer.shutdown().await;
}

async fn read_loop(conn: Weak<NativeConn>, mut reader: impl AsyncRead + Unpin, max_reply: usize) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let failure = loop {
        let mut used = 0;
        let mut fatal = None;
        {
            let Some(conn) = conn.upgrade() else { return };
            while let Some(outcome) = next_reply(&buf[used..], max_reply, &conn.backend).transpose()
            {
                let (n, reply) = match outcome {
                    Ok(pair) => pair,
                    Err(message) => {
                        fatal = Some(FrontendError::Protocol {
                            backend: conn.backend.clone(),
                            message,
                        });
                        break;
                    }
                };
                used += n;
                let (id, result, is_fatal) = reply;
                if is_fatal {
                    fatal = Some(match result {
                        Err(err) => err,
                        Ok(_) => FrontendError::Protocol {
                            backend: conn.backend.clone(),
                            message: "fatal reply without an error".into(),
                        },
                    });
                    break;
                }
                match conn.waiters().remove(&id) {
                    Some(waiter) => {
                        let _ = waiter.send(result);
                    }
                    // A reply to a call that timed out, or an id we never
                    // sent: nobody is waiting for it.
                    None => {
                        tracing::debug!(backend = %conn.backend, id, "reply with no waiting call; dropped")
                    }
                }
            }
        }
        if let Some(err) = fatal {
            break Some(err);
        }
        buf.drain(..used);
        match reader.read_buf(&mut buf).await {
            Ok(0) => break None,
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(%err, "connection failed");
                break None;
            }
        }
    };
    if let Some(conn) = conn.upgrade() {
        let err = failure.unwrap_or_else(|| FrontendError::ConnectionLost(conn.backend.clone()));
        conn.fail_all(err);
    }
}

/// The hellos, then the call token if there is one: the connection is
/// ready for calls.
async fn open(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    addr: &BackendAddr,
    config: &FrontendConfig,
) -> Result<(), ConnectFailed> {
    let backend = addr.to_string();
    let io = |e| ConnectFailed::io(&backend, e);
    let mut hello = native::client_hello(addr.codec).to_vec();
    if let Some(token) = &config.call_token {
        native::encode_auth(&mut hello, AUTH_ID, token.as_bytes());
    }
    stream.write_all(&hello).await.map_err(io)?;
    let mut reply = [0u8; native::HELLO_LEN];
    stream.read_exact(&mut reply).await.map_err(io)?;
    match native::parse_server_hello(&reply).map_err(ConnectFailed::unreachable)? {
        HelloStatus::Ok => {}
        other => {
            return Err(ConnectFailed::unreachable(format!(
                "the backend refused the hello: {other:?}"
            )))
        }
    }
    if config.call_token.is_none() {
        return Ok(());
    }
    // The answer to the token: one small frame.
    let mut buf = Vec::with_capacity(256);
    loop {
        let frame = native::split_frame(&buf, 64 << 10).map_err(ConnectFailed::unreachable)?;
        if let Some((body, _)) = frame {
            return match native::parse_response(body).map_err(ConnectFailed::unreachable)? {
                Response::Ok { id: AUTH_ID, .. } => Ok(()),
                Response::Ok { .. } => Err(ConnectFailed::unreachable(
                    "an answer to no call before the call token's",
                )),
                Response::Error {
                    kind, args_json, ..
                } => {
                    let err = FrontendError::remote(TaskError::from_args_json(kind, args_json));
                    Err(ConnectFailed {
                        message: err.to_string(),
                        refused: Some(err),
                    })
                }
            };
        }
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(ConnectFailed::unreachable(
                "closed before answering the call token",
            ));
        }
    }
}

/// The id of the call token's frame (calls count up from 1).
const AUTH_ID: u64 = 0;

type Reply = (u64, Result<Vec<u8>, FrontendError>, bool);

/// The next whole reply in `buf`: bytes used and `(id, result, fatal)`.
/// A `Stopping` error (fatal or for one call) becomes
/// [`FrontendError::Stopping`]: the calls it covers did not run.
fn next_reply(buf: &[u8], max: usize, backend: &str) -> Result<Option<(usize, Reply)>, String> {
    let Some((body, used)) = native::split_frame(buf, max).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let reply = match native::parse_response(body).map_err(|e| e.to_string())? {
        Response::Ok { id, result } => (id, Ok(result.to_vec()), false),
        Response::Error {
            id,
            kind: error_kind,
            args_json,
            status,
        } => {
            let fatal = status == ErrorStatus::Fatal;
            let err = if status == ErrorStatus::NotRun || (fatal && error_kind == kind::STOPPING) {
                FrontendError::Stopping(backend.to_owned())
            } else if fatal {
                FrontendError::Protocol {
                    backend: backend.to_owned(),
                    message: format!("{error_kind}: {}", String::from_utf8_lossy(args_json)),
                }
            } else {
                FrontendError::remote(TaskError::from_args_json(error_kind, args_json))
            };
            (id, Err(err), fatal)
        }
    };
    Ok(Some((used, reply)))
}
