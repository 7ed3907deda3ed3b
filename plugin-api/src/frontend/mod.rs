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
//! run them because it is stopping. A call whose connection breaks after its
//! request was sent is *not* retried (it may have run) unless it is marked
//! [`idempotent`](CallOptions::idempotent); it fails with
//! [`FrontendError::ConnectionLost`].
//!
//! | file | |
//! |---|---|
//! | `addr.rs` | [`BackendAddr`], [`Protocol`] |
//! | `error.rs` | [`FrontendError`] |
//! | `options.rs` | [`CallOptions`], [`FrontendConfig`] |
//! | `mod.rs` | [`FrontEnd`]: routing and failing over |
//! | `native_conn.rs` | one persistent native connection per backend |
//! | `taskit4_conn.rs` | one TaskIt 4.0 call per connection |
//! | `admin.rs` | admin signals ([`FrontEnd::send_signal`] and friends) |
//! | `blocking.rs` | [`BlockingFrontEnd`] |

mod addr;
mod admin;
mod blocking;
mod error;
mod native_conn;
mod options;
mod taskit4_conn;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;

pub use addr::{BackendAddr, BadAddr, Protocol};
pub use blocking::BlockingFrontEnd;
pub use error::FrontendError;
pub use options::{CallOptions, FrontendConfig};

use crate::codec::args::EncodeArgs;
use crate::codec::CodecKind;
use crate::error::kind;

/// One backend, and what this client knows of it.
struct Backend {
    addr: BackendAddr,
    /// Calls in flight from this client: what routing compares.
    in_flight: AtomicUsize,
    native: native_conn::Connector,
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

/// How a call fared on one backend.
enum Outcome {
    /// The call did not run there: try the next backend.
    Skip,
    /// An answer (or a failure that may have followed a run).
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
                native: native_conn::Connector::default(),
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

    /// This client's calls in flight, per backend.
    pub fn client_counts(&self) -> Vec<(BackendAddr, usize)> {
        self.inner
            .backends
            .iter()
            .map(|b| (b.addr.clone(), b.in_flight.load(Ordering::Acquire)))
            .collect()
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
            let encoded = codec
                .encode_args(args)
                .map_err(|e| FrontendError::Encode(e.to_string()))?;
            let _counted = InFlight::new(&backend.in_flight);
            match self.attempt(backend, task, &encoded, &kwargs).await {
                Outcome::Skip => continue,
                // It may have run there; the caller said running twice is fine.
                Outcome::Done(Err(FrontendError::ConnectionLost(at))) if options.idempotent => {
                    tracing::debug!(backend = %at, task, "connection lost in flight; idempotent call retried");
                    lost = Some(FrontendError::ConnectionLost(at));
                    continue;
                }
                // The worker process running it died: the same "may have run".
                Outcome::Done(Err(err @ FrontendError::BackendProcessing { .. }))
                    if options.idempotent && err.remote_type() == Some(kind::WORKER_CRASHED) =>
                {
                    tracing::debug!(backend = %backend.addr, task, "worker crashed in flight; idempotent call retried");
                    lost = Some(err);
                    continue;
                }
                Outcome::Done(result) => return result.map(|bytes| (codec, bytes)),
            }
        }
        // It may have run where it was lost: not "not available".
        Err(lost.unwrap_or(FrontendError::BackendNotAvailable))
    }

    /// One try of a call on one backend.
    async fn attempt(&self, backend: &Backend, task: &str, args: &[u8], kwargs: &[u8]) -> Outcome {
        let config = &self.inner.config;
        let result = match backend.addr.protocol {
            Protocol::Native => {
                // A connection found dead before the request went out is
                // replaced once; the call has not run anywhere.
                let mut sent = None;
                for _ in 0..2 {
                    let conn = match backend.native.get(&backend.addr, config).await {
                        Ok(conn) => conn,
                        Err(err) => {
                            tracing::debug!(backend = %backend.addr, %err, "cannot connect; trying the next backend");
                            return Outcome::Skip;
                        }
                    };
                    if let Ok(result) = conn.call(task, args, kwargs).await {
                        sent = Some(result);
                        break;
                    }
                }
                match sent {
                    Some(result) => result,
                    None => return Outcome::Skip,
                }
            }
            Protocol::Taskit4 => {
                match taskit4_conn::call(&backend.addr, config, task, args, kwargs).await {
                    Ok(result) => result,
                    Err(taskit4_conn::ConnectFailed) => return Outcome::Skip,
                }
            }
        };
        match result {
            // A stopping backend ran nothing: another one may take the call.
            Err(FrontendError::BackendProcessing { ref kind, .. }) if kind == kind::STOPPING => {
                Outcome::Skip
            }
            other => Outcome::Done(other),
        }
    }

    fn backend(&self, addr: &BackendAddr) -> Result<&Backend, FrontendError> {
        self.inner
            .backends
            .iter()
            .find(|b| b.addr.same_place(addr))
            .ok_or_else(|| FrontendError::UnknownBackend(addr.to_string()))
    }
}
