//! The frontend: call tasks by id on one or many backends.
//!
//! Async (tokio) first, with [`BlockingFrontEnd`] for plain programs. Each
//! call goes to the backend with the fewest calls in flight *from this
//! client* (cheap, and what TaskIt 4.0 does); a backend that cannot be
//! reached is skipped for the next one, and when none answers the call
//! fails with [`FrontendError::BackendNotAvailable`].
//!
//! Native backends keep one persistent connection with many calls in flight;
//! TaskIt 4.0 backends get a connection per call, as they expect.
//!
//! Which calls are retried on another backend: those that provably did not
//! run — the connection could not be made, or the backend said it did not
//! run them because it is stopping. A call whose connection breaks after its request was sent is
//! *not* retried (it may have run); it fails with
//! [`FrontendError::ConnectionLost`].

mod blocking;
mod native_conn;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use blocking::BlockingFrontEnd;

use crate::args::{encode_args, EncodeArgs};
use crate::codec::{Bincode, Codec, CodecKind, Json};
use crate::error::TaskError;
use crate::wire::{self, compat, firstbytes, PluginSummary, ReloadReport};

/// Which protocol a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Ours: persistent, multiplexed, JSON or bincode.
    Native,
    /// TaskIt 4.0's: a connection per call, JSON. For original Python backends.
    Taskit4,
}

/// Where a backend is and how to talk to it. Parses from `host` (port
/// 54543) or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The codec of native calls (TaskIt 4.0 calls are always JSON).
    pub codec: CodecKind,
}

impl BackendAddr {
    /// A native backend using JSON.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            protocol: Protocol::Native,
            codec: CodecKind::Json,
        }
    }

    /// The same backend, spoken to with the TaskIt 4.0 protocol.
    pub fn taskit4(mut self) -> Self {
        self.protocol = Protocol::Taskit4;
        self.codec = CodecKind::Json;
        self
    }

    /// The same backend, with native calls encoded by `codec`.
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.codec = codec;
        self
    }

    fn endpoint(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.endpoint())
    }
}

/// A backend address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad backend address {0:?}: expected HOST or HOST:PORT")]
pub struct BadAddr(pub String);

impl FromStr for BackendAddr {
    type Err = BadAddr;

    fn from_str(s: &str) -> Result<Self, BadAddr> {
        let bad = || BadAddr(s.to_owned());
        if s.is_empty() {
            return Err(bad());
        }
        // [v6]:port, [v6], host:port, host
        if let Some(rest) = s.strip_prefix('[') {
            let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if tail.is_empty() => wire::DEFAULT_PORT,
                None => return Err(bad()),
            };
            return Ok(Self::new(host, port));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => {
                if host.is_empty() {
                    return Err(bad());
                }
                Ok(Self::new(host, port.parse().map_err(|_| bad())?))
            }
            _ => Ok(Self::new(s, wire::DEFAULT_PORT)),
        }
    }
}

impl From<&str> for BackendAddr {
    /// Parses; an address that does not parse is kept whole as a host name,
    /// which will fail to connect (use `str::parse` to see the error).
    fn from(s: &str) -> Self {
        s.parse()
            .unwrap_or_else(|_| Self::new(s, wire::DEFAULT_PORT))
    }
}

impl From<(&str, u16)> for BackendAddr {
    fn from((host, port): (&str, u16)) -> Self {
        Self::new(host, port)
    }
}

impl From<std::net::SocketAddr> for BackendAddr {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self::new(addr.ip().to_string(), addr.port())
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrontendError {
    /// No backend could be reached.
    #[error("no backend is available")]
    BackendNotAvailable,
    /// The task ran and failed (or the backend refused it): TaskIt's
    /// `BackendProcessingError`, with the remote error's type and args.
    #[error("backend error: {kind}{}", display_args(args))]
    BackendProcessing { kind: String, args: Vec<Value> },
    /// No reply within the call's timeout (the backend was asked to cancel).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The backend is stopping and did not run the call (it is retried on
    /// another backend when there is one).
    #[error("{0} is stopping; the call was not run")]
    Stopping(String),
    /// The connection broke after the request was sent: the call may or may
    /// not have run, so it is not retried.
    #[error("connection to {0} lost while the call was in flight")]
    ConnectionLost(String),
    /// The arguments could not be encoded.
    #[error("cannot encode the call: {0}")]
    Encode(String),
    /// The reply could not be decoded as the expected type.
    #[error("cannot decode the reply: {0}")]
    Decode(String),
    /// The backend broke the protocol.
    #[error("protocol error from {backend}: {message}")]
    Protocol { backend: String, message: String },
    /// The backend named is not one of this frontend's.
    #[error("{0} is not one of this frontend's backends")]
    UnknownBackend(String),
}

fn display_args(args: &[Value]) -> String {
    TaskError::new("", args.to_vec()).to_string()
}

impl FrontendError {
    /// The remote error's type, for a [`BackendProcessing`](Self::BackendProcessing) error.
    pub fn remote_type(&self) -> Option<&str> {
        match self {
            Self::BackendProcessing { kind, .. } => Some(kind),
            _ => None,
        }
    }

    fn remote(err: TaskError) -> Self {
        let (kind, args) = err.into_parts();
        Self::BackendProcessing { kind, args }
    }
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Keyword arguments, as a JSON object.
    pub kwargs: Option<Value>,
    /// Give up (and ask the backend to cancel) after this long.
    pub timeout: Option<Duration>,
    /// The task may safely run twice: a call whose connection breaks after
    /// it was sent is retried on the next backend instead of failing with
    /// [`FrontendError::ConnectionLost`].
    pub idempotent: bool,
}

impl CallOptions {
    /// Adds one keyword argument.
    pub fn kw(mut self, name: &str, value: impl Serialize) -> Self {
        let map = self
            .kwargs
            .get_or_insert_with(|| Value::Object(Default::default()));
        if let (Value::Object(map), Ok(value)) = (map, serde_json::to_value(value)) {
            map.insert(name.to_owned(), value);
        }
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks the call as safe to run twice (the [`idempotent`](CallOptions#structfield.idempotent)
    /// field): a backend dying with the call in flight sends it to the next one.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
}

/// Frontend settings.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// Sent with admin signals when the backends require one.
    pub admin_token: Option<String>,
    /// Largest reply accepted, in bytes.
    pub max_reply: usize,
    /// How long connecting (and the native hello) may take.
    pub connect_timeout: Duration,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            max_reply: 256 << 20,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

struct Backend {
    addr: BackendAddr,
    /// Calls in flight from this client: what routing compares.
    in_flight: AtomicUsize,
    native: native_conn::Slot,
}

struct Inner {
    backends: Vec<Backend>,
    config: FrontendConfig,
    /// Round-robin start among equally loaded backends.
    turn: AtomicUsize,
}

/// Calls tasks on a set of backends. Cheap to clone; clones share
/// connections and counts.
#[derive(Clone)]
pub struct FrontEnd {
    inner: Arc<Inner>,
}

/// Counts a call as in flight to a backend while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether an attempt may move on to the next backend.
enum Attempt {
    /// The call did not run there: try the next backend.
    Skip,
    Done(Result<Vec<u8>, FrontendError>),
}

impl FrontEnd {
    /// A frontend for `backends` (`"host"`, `"host:port"`, `(host, port)`,
    /// a `SocketAddr`, or a [`BackendAddr`] for other protocols and codecs).
    pub fn new<B: Into<BackendAddr>>(backends: impl IntoIterator<Item = B>) -> Self {
        Self::with_config(backends, FrontendConfig::default())
    }

    /// As [`new`](Self::new), with settings.
    pub fn with_config<B: Into<BackendAddr>>(
        backends: impl IntoIterator<Item = B>,
        config: FrontendConfig,
    ) -> Self {
        let backends = backends
            .into_iter()
            .map(|b| Backend {
                addr: b.into(),
                in_flight: AtomicUsize::new(0),
                native: native_conn::Slot::default(),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                backends,
                config,
                turn: AtomicUsize::new(0),
            }),
        }
    }

    /// The backends, in the order given.
    pub fn backends(&self) -> Vec<BackendAddr> {
        self.inner.backends.iter().map(|b| b.addr.clone()).collect()
    }

    /// Calls `task` with positional `args` and waits for its result.
    pub async fn call<R: DeserializeOwned>(
        &self,
        task: &str,
        args: &impl EncodeArgs,
    ) -> Result<R, FrontendError> {
        self.call_with(task, args, &CallOptions::default()).await
    }

    /// Calls `task` with keyword arguments and a timeout.
    pub async fn call_with<R: DeserializeOwned>(
        &self,
        task: &str,
        args: &impl EncodeArgs,
        options: &CallOptions,
    ) -> Result<R, FrontendError> {
        let work = self.route(task, args, options);
        let (codec, bytes) = match options.timeout {
            Some(t) => tokio::time::timeout(t, work)
                .await
                .map_err(|_| FrontendError::Timeout(t))??,
            None => work.await?,
        };
        codec
            .decode(&bytes)
            .map_err(|e| FrontendError::Decode(e.to_string()))
    }

    /// Backends ordered by this client's calls in flight, fewest first
    /// (ties taken in turn).
    fn by_load(&self) -> Vec<&Backend> {
        let n = self.inner.backends.len();
        let start = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<&Backend> = (0..n)
            .map(|i| &self.inner.backends[(start + i) % n.max(1)])
            .collect();
        order.sort_by_key(|b| b.in_flight.load(Ordering::Acquire));
        order
    }

    async fn route(
        &self,
        task: &str,
        args: &impl EncodeArgs,
        options: &CallOptions,
    ) -> Result<(CodecKind, Vec<u8>), FrontendError> {
        let kwargs = match &options.kwargs {
            Some(kw) => serde_json::to_vec(kw).map_err(|e| FrontendError::Encode(e.to_string()))?,
            None => Vec::new(),
        };
        // Where an idempotent call was lost last, if it was: the answer
        // when no backend is left to try.
        let mut lost = None;
        for backend in self.by_load() {
            let codec = backend.addr.codec;
            let encoded = match codec {
                CodecKind::Json => encode_args::<Json, _>(args),
                CodecKind::Bincode => encode_args::<Bincode, _>(args),
            }
            .map_err(|e| FrontendError::Encode(e.to_string()))?;
            let _counted = InFlight::new(&backend.in_flight);
            match self.attempt(backend, task, &encoded, &kwargs).await {
                Attempt::Skip => continue,
                // It may have run there; the caller said running twice is fine.
                Attempt::Done(Err(FrontendError::ConnectionLost(at))) if options.idempotent => {
                    tracing::debug!(backend = %at, task, "connection lost in flight; idempotent call retried");
                    lost = Some(at);
                    continue;
                }
                Attempt::Done(result) => return result.map(|bytes| (codec, bytes)),
            }
        }
        // It may have run where it was lost: not "not available".
        Err(lost.map_or(
            FrontendError::BackendNotAvailable,
            FrontendError::ConnectionLost,
        ))
    }

    async fn attempt(&self, backend: &Backend, task: &str, args: &[u8], kwargs: &[u8]) -> Attempt {
        let result = match backend.addr.protocol {
            Protocol::Native => {
                // A connection found dead before the request went out is
                // replaced once; the call has not run anywhere.
                let mut sent = None;
                for _ in 0..2 {
                    let conn = match backend.native.get(&backend.addr, &self.inner.config).await {
                        Ok(conn) => conn,
                        Err(err) => {
                            tracing::debug!(backend = %backend.addr, %err, "cannot connect; trying the next backend");
                            return Attempt::Skip;
                        }
                    };
                    if let Ok(result) = conn.call(task, args, kwargs).await {
                        sent = Some(result);
                        break;
                    }
                }
                match sent {
                    Some(result) => result,
                    None => return Attempt::Skip,
                }
            }
            Protocol::Taskit4 => match self.taskit4_call(&backend.addr, task, args, kwargs).await {
                Ok(result) => result,
                Err(ConnectFailed) => return Attempt::Skip,
            },
        };
        match result {
            // A stopping backend ran nothing: another one may take the call.
            Err(FrontendError::BackendProcessing { ref kind, .. })
                if kind == wire::kind::STOPPING =>
            {
                Attempt::Skip
            }
            other => Attempt::Done(other),
        }
    }

    /// One TaskIt 4.0 call: connect, send, read, close.
    async fn taskit4_call(
        &self,
        addr: &BackendAddr,
        task: &str,
        args: &[u8],
        kwargs: &[u8],
    ) -> Result<Result<Vec<u8>, FrontendError>, ConnectFailed> {
        let config = &self.inner.config;
        let mut stream =
            match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr.endpoint()))
                .await
            {
                Ok(Ok(stream)) => stream,
                _ => return Err(ConnectFailed),
            };
        let _ = stream.set_nodelay(true);
        let request = firstbytes::encode(&compat::encode_request(task, args, kwargs));
        if stream.write_all(&request).await.is_err() {
            // Nothing was answered; but the request may have reached the
            // backend, so it is not retried elsewhere.
            return Ok(Err(FrontendError::ConnectionLost(addr.to_string())));
        }
        let lost = || FrontendError::ConnectionLost(addr.to_string());
        let mut decoder = firstbytes::Decoder::new(config.max_reply);
        let mut buf = vec![0u8; 16 << 10];
        while !decoder.is_done() {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Ok(Err(lost())),
                Ok(n) => n,
            };
            if let Err(err) = decoder.feed(&buf[..n]) {
                return Ok(Err(FrontendError::Protocol {
                    backend: addr.to_string(),
                    message: err.to_string(),
                }));
            }
        }
        Ok(match compat::parse_reply(&decoder.into_message()) {
            Ok(Ok(result)) => Ok(result.get().as_bytes().to_vec()),
            Ok(Err(remote)) => Err(FrontendError::remote(remote)),
            Err(err) => Err(FrontendError::Protocol {
                backend: addr.to_string(),
                message: err.to_string(),
            }),
        })
    }

    fn backend(&self, addr: &BackendAddr) -> Result<&Backend, FrontendError> {
        self.inner
            .backends
            .iter()
            .find(|b| b.addr.host == addr.host && b.addr.port == addr.port)
            .ok_or_else(|| FrontendError::UnknownBackend(addr.to_string()))
    }

    /// Sends an admin signal to one backend and decodes its reply.
    pub async fn send_signal<R: DeserializeOwned>(
        &self,
        backend: impl Into<BackendAddr>,
        signal: &str,
    ) -> Result<R, FrontendError> {
        let backend = self.backend(&backend.into())?;
        let kwargs = match &self.inner.config.admin_token {
            Some(token) => {
                serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let codec = backend.addr.codec;
        let args = match codec {
            CodecKind::Json => Json::encode(&Vec::<()>::new()),
            CodecKind::Bincode => Bincode::encode(&Vec::<()>::new()),
        }
        .map_err(|e| FrontendError::Encode(e.to_string()))?;
        let _counted = InFlight::new(&backend.in_flight);
        match self.attempt(backend, signal, &args, &kwargs).await {
            Attempt::Skip => Err(FrontendError::BackendNotAvailable),
            Attempt::Done(result) => {
                let bytes = result?;
                codec
                    .decode(&bytes)
                    .map_err(|e| FrontendError::Decode(e.to_string()))
            }
        }
    }

    /// The backend's running-task count as a string (it counts this call:
    /// an idle backend says `"1"`), or `"down"` if it cannot be reached.
    pub async fn get_tasks(
        &self,
        backend: impl Into<BackendAddr>,
    ) -> Result<String, FrontendError> {
        match self.send_signal::<String>(backend, wire::STATUS).await {
            Err(FrontendError::BackendNotAvailable) | Err(FrontendError::ConnectionLost(_)) => {
                Ok("down".to_owned())
            }
            other => other,
        }
    }

    /// Asks a backend to stop: it answers every call it accepted, then exits.
    pub async fn send_stop(&self, backend: impl Into<BackendAddr>) -> Result<(), FrontendError> {
        self.send_signal::<Option<()>>(backend, wire::STOP)
            .await
            .map(drop)
    }

    /// Asks a backend to exit now.
    pub async fn send_kill(&self, backend: impl Into<BackendAddr>) -> Result<(), FrontendError> {
        self.send_signal::<Option<()>>(backend, wire::KILL)
            .await
            .map(drop)
    }

    /// The plugins a backend serves, with their task ids.
    pub async fn tasks(
        &self,
        backend: impl Into<BackendAddr>,
    ) -> Result<Vec<PluginSummary>, FrontendError> {
        self.send_signal(backend, wire::TASKS).await
    }

    /// Asks a backend to rescan its plugins directory now.
    pub async fn reload(
        &self,
        backend: impl Into<BackendAddr>,
    ) -> Result<ReloadReport, FrontendError> {
        self.send_signal(backend, wire::RELOAD).await
    }

    /// This client's calls in flight, per backend.
    pub fn client_counts(&self) -> Vec<(BackendAddr, usize)> {
        self.inner
            .backends
            .iter()
            .map(|b| (b.addr.clone(), b.in_flight.load(Ordering::Acquire)))
            .collect()
    }
}

/// The backend could not be reached: safe to try another.
struct ConnectFailed;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let a: BackendAddr = "example.org".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("example.org", 54543));
        let a: BackendAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 6000));
        let a: BackendAddr = "[::1]:7000".parse().unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.endpoint().as_str()),
            ("::1", 7000, "[::1]:7000")
        );
        let a: BackendAddr = "::1".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 54543));
        assert!("host:notaport".parse::<BackendAddr>().is_err());
        assert!("host:70000".parse::<BackendAddr>().is_err());
        assert!(":80".parse::<BackendAddr>().is_err());
        assert!("".parse::<BackendAddr>().is_err());
    }
}
