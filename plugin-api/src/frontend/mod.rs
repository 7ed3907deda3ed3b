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
//! A backend given as `dns:NAME:PORT` ([`BackendAddr::dns`]) stands for
//! every address the name resolves to, followed as it changes: new
//! addresses join the routing, vanished ones take no new calls and close
//! once their calls in flight are answered (see `discovery.rs`).
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
//! | `options.rs` | [`CallOptions`], [`FrontendConfig`], [`Resolver`] |
//! | `mod.rs` | [`FrontEnd`]: routing and failing over |
//! | `discovery.rs` | backends behind DNS names |
//! | `native_conn.rs` | one persistent native connection per backend |
//! | `taskit4_conn.rs` | one TaskIt 4.0 call per connection |
//! | `admin.rs` | admin signals ([`FrontEnd::send_signal`] and friends) |
//! | `blocking.rs` | [`BlockingFrontEnd`] |

mod addr;
mod admin;
mod blocking;
mod discovery;
mod error;
mod native_conn;
mod options;
mod taskit4_conn;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use serde::de::DeserializeOwned;

pub use addr::{BackendAddr, BadAddr, Protocol};
pub use blocking::BlockingFrontEnd;
pub use error::FrontendError;
pub use options::{CallOptions, FrontendConfig, Resolver};

use crate::codec::args::EncodeArgs;
use crate::codec::CodecKind;
use crate::error::kind;

/// One backend, and what this client knows of it.
struct Backend {
    addr: BackendAddr,
    /// The name its TLS certificate must carry (unless the TLS settings
    /// name one): the host it was given by, the name for an address found
    /// behind a name.
    tls_name: String,
    /// Calls in flight from this client: what routing compares.
    in_flight: AtomicUsize,
    /// Calls it answered (with a result or a task's error).
    answered: AtomicU64,
    native: native_conn::Connector,
}

impl Backend {
    fn new(addr: BackendAddr) -> Self {
        let tls_name = addr.host.clone();
        Self::named(addr, tls_name)
    }

    fn named(addr: BackendAddr, tls_name: String) -> Self {
        Self {
            addr,
            tls_name,
            in_flight: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            native: native_conn::Connector::default(),
        }
    }
}

/// What this client sees of one backend it routes calls to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendLoad {
    /// The backend (an address found behind a name is given as an IP).
    pub addr: BackendAddr,
    /// Calls in flight to it from this client.
    pub in_flight: usize,
    /// Calls it answered, with a result or a task's error.
    pub answered: u64,
}

/// A backend as given: one address, or a name standing for many.
enum Given {
    Fixed(Arc<Backend>),
    Name(usize),
}

/// Rounds of a call over its backends: the first, then (behind names)
/// after looking the names up again, and once more if another call's
/// lookup changed them meanwhile.
const ROUNDS: usize = 3;

struct Inner {
    given: Vec<Given>,
    /// The names among them (`Given::Name` indexes this).
    names: Vec<discovery::Name>,
    /// The backends calls go to now, in the order given, without
    /// duplicates: replaced whole when a name's addresses change.
    routes: RwLock<Arc<[Arc<Backend>]>>,
    /// Counts the changes of `routes`.
    generation: AtomicU64,
    config: FrontendConfig,
    /// Round-robin start among equally loaded backends.
    turn: AtomicUsize,
    /// Time zero of the names' resolution times.
    epoch: Instant,
}

impl Inner {
    fn routes(&self) -> Arc<[Arc<Backend>]> {
        Arc::clone(&self.routes.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes the routes again from the fixed backends and the names'.
    fn rebuild_routes(&self) {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<Arc<Backend>> = Vec::new();
        let mut add = |b: &Arc<Backend>| {
            if !next.iter().any(|n| Arc::ptr_eq(n, b)) {
                next.push(Arc::clone(b));
            }
        };
        for given in &self.given {
            match given {
                Given::Fixed(b) => add(b),
                Given::Name(i) => self.names[*i].members().iter().for_each(&mut add),
            }
        }
        *routes = next.into();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
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
    /// The call did not run there: try the next backend. With the error
    /// to answer if none takes it, when this one refused the client (TLS,
    /// call token).
    Skip(Option<FrontendError>),
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
        let mut names = Vec::new();
        let mut given = Vec::new();
        for addr in backends {
            let mut addr: BackendAddr = addr.into();
            if config.discover_names && !addr.is_ip() {
                addr.discover = true;
            }
            if addr.discover {
                names.push(discovery::Name::new(addr));
                given.push(Given::Name(names.len() - 1));
            } else {
                given.push(Given::Fixed(Arc::new(Backend::new(addr))));
            }
        }
        let inner = Inner {
            given,
            names,
            routes: RwLock::new(Arc::new([])),
            generation: AtomicU64::new(0),
            config,
            turn: AtomicUsize::new(0),
            epoch: Instant::now(),
        };
        inner.rebuild_routes();
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The backends, in the order given (names as given, not resolved).
    pub fn backends(&self) -> Vec<BackendAddr> {
        self.inner
            .given
            .iter()
            .map(|given| match given {
                Given::Fixed(b) => b.addr.clone(),
                Given::Name(i) => self.inner.names[*i].spec.clone(),
            })
            .collect()
    }

    /// The backends calls go to now (those behind names as last resolved;
    /// none before the first call), with this client's load on each.
    pub fn routes(&self) -> Vec<BackendLoad> {
        self.inner
            .routes()
            .iter()
            .map(|b| BackendLoad {
                addr: b.addr.clone(),
                in_flight: b.in_flight.load(Ordering::Acquire),
                answered: b.answered.load(Ordering::Acquire),
            })
            .collect()
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

    /// This client's calls in flight, per backend it routes to now.
    pub fn client_counts(&self) -> Vec<(BackendAddr, usize)> {
        self.routes()
            .into_iter()
            .map(|b| (b.addr, b.in_flight))
            .collect()
    }

    /// The backends routed to now, but those in `tried`, ordered by this
    /// client's calls in flight, fewest first (ties taken in turn).
    fn by_load(&self, tried: &[Arc<Backend>]) -> Vec<Arc<Backend>> {
        let routes = self.inner.routes();
        let n = routes.len();
        let start = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<Arc<Backend>> = (0..n)
            .map(|i| &routes[(start + i) % n])
            .filter(|b| !tried.iter().any(|t| Arc::ptr_eq(t, b)))
            .cloned()
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
        let started = Instant::now();
        self.fresh().await;
        // Where an idempotent call was lost last, if it was: the answer
        // when no backend is left to try; else why one refused the client.
        let mut lost = None;
        let mut refused = None;
        // Backends that did not take the call, when every one has failed
        // and the names were resolved again to find others.
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        for round in 0..ROUNDS {
            let generation = self.inner.generation.load(Ordering::Acquire);
            for backend in self.by_load(&tried) {
                let codec = backend.addr.codec;
                let encoded = codec
                    .encode_args(args)
                    .map_err(|e| FrontendError::Encode(e.to_string()))?;
                let counted = InFlight::new(&backend.in_flight);
                let outcome = self.attempt(&backend, task, &encoded, &kwargs).await;
                drop(counted);
                match outcome {
                    Outcome::Skip(why) => refused = why.or(refused),
                    // It may have run there; the caller said running twice is fine.
                    Outcome::Done(Err(FrontendError::ConnectionLost(at))) if options.idempotent => {
                        tracing::debug!(backend = %at, task, "connection lost in flight; idempotent call retried");
                        lost = Some(FrontendError::ConnectionLost(at));
                    }
                    // The worker process running it died: the same "may have run".
                    Outcome::Done(Err(err @ FrontendError::BackendProcessing { .. }))
                        if options.idempotent
                            && err.remote_type() == Some(kind::WORKER_CRASHED) =>
                    {
                        tracing::debug!(backend = %backend.addr, task, "worker crashed in flight; idempotent call retried");
                        lost = Some(err);
                    }
                    Outcome::Done(result) => {
                        if matches!(result, Ok(_) | Err(FrontendError::BackendProcessing { .. })) {
                            backend.answered.fetch_add(1, Ordering::Relaxed);
                        }
                        return result.map(|bytes| (codec, bytes));
                    }
                }
                if !self.inner.names.is_empty() {
                    tried.push(backend);
                }
            }
            // None took it: behind a name there may be others now (found
            // by this call's lookup or by another one's meanwhile).
            if self.inner.names.is_empty() || round + 1 == ROUNDS {
                break;
            }
            self.resolve_now(started).await;
            if self.inner.generation.load(Ordering::Acquire) == generation {
                break;
            }
        }
        // It may have run where it was lost: not "not available". With
        // nothing to route to, why the names gave nothing.
        let unresolved = || {
            let routes = self.inner.routes();
            let empty = routes.is_empty();
            drop(routes);
            empty.then(|| self.lookup_failure()).flatten()
        };
        Err(lost
            .or(refused)
            .or_else(unresolved)
            .unwrap_or(FrontendError::BackendNotAvailable))
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
                    let conn = match backend
                        .native
                        .get(&backend.addr, &backend.tls_name, config)
                        .await
                    {
                        Ok(conn) => conn,
                        Err(err) => {
                            tracing::debug!(backend = %backend.addr, %err, "cannot connect; trying the next backend");
                            return Outcome::Skip(err.refused);
                        }
                    };
                    if let Ok(result) = conn.call(task, args, kwargs).await {
                        sent = Some(result);
                        break;
                    }
                }
                match sent {
                    Some(result) => result,
                    None => return Outcome::Skip(None),
                }
            }
            Protocol::Taskit4 => {
                match taskit4_conn::call(&backend.addr, config, task, args, kwargs).await {
                    Ok(result) => result,
                    Err(taskit4_conn::ConnectFailed) => return Outcome::Skip(None),
                }
            }
        };
        match result {
            // A stopping backend ran nothing: another one may take the call
            // (the native protocol's NOT_RUN and fatal `Stopping`, or a
            // TaskIt 4.0 `Stopping` error). If none does, the caller learns
            // it was not run.
            Err(err @ FrontendError::Stopping(_)) => Outcome::Skip(Some(err)),
            Err(FrontendError::BackendProcessing { ref kind, .. }) if kind == kind::STOPPING => {
                Outcome::Skip(None)
            }
            other => Outcome::Done(other),
        }
    }

    /// The backend routed to at `addr`.
    fn backend(&self, addr: &BackendAddr) -> Result<Arc<Backend>, FrontendError> {
        self.inner
            .routes()
            .iter()
            .find(|b| !addr.discover && b.addr.same_place(addr))
            .cloned()
            .ok_or_else(|| FrontendError::UnknownBackend(addr.to_string()))
    }
}
