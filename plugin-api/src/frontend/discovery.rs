//! Backends behind DNS names (`dns:NAME:PORT`): every address a name
//! resolves to is a backend, and the name is resolved again every
//! [`FrontendConfig::resolve_every`], and at once when no backend answers a
//! call.
//!
//! Routing reads one snapshot of the backends (`Inner::routes`), rebuilt
//! whenever a name's addresses change. An address that stays keeps its
//! [`Backend`] (its connection and counts); a new one joins the next
//! snapshot; one that vanished leaves it, while calls already on it keep
//! their reference and finish there. The connection closes when the last
//! of them lets go (see `native_conn`). A failed resolution keeps the
//! addresses found before: a resolver that is down for a moment does not
//! empty the routes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Backend, BackendAddr, FrontEnd, FrontendConfig, FrontendError};

/// Most addresses taken from one name; the rest are ignored (and logged).
pub(super) const MAX_ADDRESSES: usize = 1024;

/// A forced resolution (no backend answered) is not repeated sooner than
/// this after the last forced one, so a flood of failing calls makes few
/// lookups.
const FORCED_GAP: Duration = Duration::from_millis(250);

/// `resolved_us` before the first resolution.
const NEVER: u64 = u64::MAX;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Clears a name's `refreshing` flag when dropped.
struct Refreshed<'a>(&'a AtomicBool);

impl Drop for Refreshed<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Why a name is resolved.
#[derive(Clone, Copy)]
enum Why {
    /// It never was.
    First,
    /// `resolve_every` has passed.
    Due,
    /// No backend answered a call that started at this time (µs).
    Forced(u64),
}

/// One name and the backends found behind it.
pub(super) struct Name {
    pub(super) spec: BackendAddr,
    pub(super) members: Mutex<Vec<Arc<Backend>>>,
    /// When the last resolution ended (microseconds since `Inner::epoch`),
    /// whether it succeeded or not.
    resolved_us: AtomicU64,
    /// When the last forced resolution ended, likewise.
    forced_us: AtomicU64,
    /// One resolution at a time.
    resolving: tokio::sync::Mutex<()>,
    /// A background resolution is under way.
    refreshing: AtomicBool,
    /// Why the last lookup failed, if it did.
    failure: Mutex<Option<FrontendError>>,
}

impl Name {
    pub(super) fn new(spec: BackendAddr) -> Self {
        Self {
            spec,
            members: Mutex::default(),
            resolved_us: AtomicU64::new(NEVER),
            forced_us: AtomicU64::new(NEVER),
            resolving: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    pub(super) fn members(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Backend>>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Resolves `addr`'s name with the configured resolver or the system's:
/// its addresses, without duplicates, in a stable order.
pub(super) async fn lookup(
    addr: &BackendAddr,
    config: &FrontendConfig,
) -> Result<Vec<SocketAddr>, FrontendError> {
    let failed = |message: String| FrontendError::Resolve {
        name: addr.to_string(),
        message,
    };
    let (host, port) = (addr.host.clone(), addr.port);
    let work = async {
        match &config.resolver {
            Some(resolver) => {
                let resolver = resolver.clone();
                tokio::task::spawn_blocking(move || (resolver.0)(&host, port))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?
            }
            None => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(Iterator::collect),
        }
    };
    let mut found = tokio::time::timeout(config.connect_timeout, work)
        .await
        .map_err(|_| failed(format!("no answer within {:?}", config.connect_timeout)))?
        .map_err(|e| failed(e.to_string()))?;
    found.sort_unstable();
    found.dedup();
    if found.len() > MAX_ADDRESSES {
        tracing::warn!(name = %addr, found = found.len(), kept = MAX_ADDRESSES, "a name resolved to too many addresses; the rest are ignored");
        found.truncate(MAX_ADDRESSES);
    }
    Ok(found)
}

impl FrontEnd {
    fn now_us(&self) -> u64 {
        self.inner.epoch.elapsed().as_micros() as u64
    }

    /// Makes the routes current enough for a call: a name never resolved is
    /// resolved now (the call waits); one older than `resolve_every` is
    /// resolved in the background while the call goes on with what is known.
    pub(super) async fn fresh(&self) {
        let every = self.inner.config.resolve_every.as_micros() as u64;
        for (i, name) in self.inner.names.iter().enumerate() {
            let at = name.resolved_us.load(Ordering::Acquire);
            if at == NEVER {
                self.resolve(i, Why::First).await;
            } else if self.now_us().saturating_sub(at) >= every
                && !name.refreshing.swap(true, Ordering::AcqRel)
            {
                let frontend = self.clone();
                tokio::spawn(async move {
                    // Cleared however the task ends (a runtime shutting
                    // down drops it unfinished).
                    let _refreshed = Refreshed(&frontend.inner.names[i].refreshing);
                    frontend.resolve(i, Why::Due).await;
                });
            }
        }
    }

    /// Resolves every name now, unless it was resolved since `since` or
    /// within the last [`FORCED_GAP`]: when no backend answered a call.
    /// True if the routes changed.
    pub(super) async fn resolve_now(&self, since: Instant) -> bool {
        let since_us = since
            .saturating_duration_since(self.inner.epoch)
            .as_micros() as u64;
        let mut changed = false;
        for i in 0..self.inner.names.len() {
            changed |= self.resolve(i, Why::Forced(since_us)).await;
        }
        changed
    }

    /// Resolves name `i` and updates the routes, unless, once it is this
    /// caller's turn, a resolution done meanwhile makes it needless. True if
    /// its addresses changed.
    async fn resolve(&self, i: usize, why: Why) -> bool {
        let name = &self.inner.names[i];
        let _one_at_a_time = name.resolving.lock().await;
        let at = name.resolved_us.load(Ordering::Acquire);
        let now = self.now_us();
        let forced_at = name.forced_us.load(Ordering::Acquire);
        let needless = at != NEVER
            && match why {
                Why::First => true,
                Why::Due => {
                    now.saturating_sub(at) < self.inner.config.resolve_every.as_micros() as u64
                }
                Why::Forced(since) => {
                    at >= since
                        || (forced_at != NEVER
                            && now.saturating_sub(forced_at) < FORCED_GAP.as_micros() as u64)
                }
            };
        if needless {
            return false;
        }
        let found = lookup(&name.spec, &self.inner.config).await;
        let changed = match found {
            Ok(found) => {
                *lock(&name.failure) = None;
                self.follow(name, found)
            }
            Err(err) => {
                tracing::warn!(%err, kept = name.members().len(), "cannot resolve a backend name; keeping the addresses found before");
                *lock(&name.failure) = Some(err);
                false
            }
        };
        // Marked done once the routes show what was found: a call that
        // sees the name resolved finds its backends.
        let now = self.now_us();
        name.resolved_us.store(now, Ordering::Release);
        if let Why::Forced(_) = why {
            name.forced_us.store(now, Ordering::Release);
        }
        changed
    }

    /// Makes `found` the name's backends; true if they changed.
    fn follow(&self, name: &Name, found: Vec<SocketAddr>) -> bool {
        let current = self.inner.routes();
        let next: Vec<Arc<Backend>> = found
            .into_iter()
            .map(|at| {
                let addr = name.spec.at(at);
                current
                    .iter()
                    .find(|b| b.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::named(addr, name.spec.host.clone())))
            })
            .collect();
        {
            let mut members = name.members();
            let same = members.len() == next.len()
                && members.iter().zip(&next).all(|(a, b)| Arc::ptr_eq(a, b));
            if same {
                return false;
            }
            let joined = next
                .iter()
                .filter(|b| !members.iter().any(|m| Arc::ptr_eq(m, b)));
            let left = members
                .iter()
                .filter(|m| !next.iter().any(|b| Arc::ptr_eq(m, b)));
            let joined: Vec<String> = joined.map(|b| b.addr.to_string()).collect();
            let left: Vec<String> = left.map(|b| b.addr.to_string()).collect();
            tracing::info!(name = %name.spec, ?joined, ?left, "backends behind a name changed");
            *members = next;
        }
        self.inner.rebuild_routes();
        true
    }

    /// Why a name's last lookup failed, for a call that found nothing to
    /// route to.
    pub(super) fn lookup_failure(&self) -> Option<FrontendError> {
        self.inner
            .names
            .iter()
            .find_map(|name| lock(&name.failure).clone())
    }

    /// The backends behind `addr` now: itself, or for a `dns:` name every
    /// address it resolves to (resolved now, whatever this frontend has
    /// found before; the routes are not changed).
    pub async fn resolve_backends(
        &self,
        addr: impl Into<BackendAddr>,
    ) -> Result<Vec<BackendAddr>, FrontendError> {
        let addr = addr.into();
        if !addr.discover {
            return Ok(vec![addr]);
        }
        let found = lookup(&addr, &self.inner.config).await?;
        Ok(found.into_iter().map(|at| addr.at(at)).collect())
    }
}
