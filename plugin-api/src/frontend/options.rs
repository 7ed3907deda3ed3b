//! Settings of a frontend and of one call.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Options of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Keyword arguments, as a JSON object.
    pub kwargs: Option<Value>,
    /// Give up (and ask the backend to cancel) after this long.
    pub timeout: Option<Duration>,
    /// The task may safely run twice: a call whose connection breaks after
    /// it was sent is retried on the next backend instead of failing with
    /// [`FrontendError::ConnectionLost`](super::FrontendError::ConnectionLost).
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
    /// How often a backend given as a DNS name (`dns:NAME:PORT`) is
    /// resolved again; also at once when no backend answers a call.
    pub resolve_every: Duration,
    /// Treat every backend given by host name (not IP address) as
    /// `dns:NAME`: all its addresses are backends, followed as they change.
    pub discover_names: bool,
    /// Resolves names instead of the system resolver (`getaddrinfo`): for
    /// tests, or a service registry of your own.
    pub resolver: Option<Resolver>,
    /// Speak TLS to native backends (hosts' `--tls-bind`), checking their
    /// certificates as this says (see [`ClientTlsOptions::load`](crate::tls::ClientTlsOptions::load)).
    pub tls: Option<crate::tls::ClientTls>,
    /// The hosts' call token (`--call-token-file`), presented once per
    /// connection before any call.
    pub call_token: Option<String>,
}

/// A way to resolve a backend name and port to socket addresses. It may
/// block (it runs on a blocking thread); an empty list means the name has
/// no backends now, an error that its backends are not known (the last
/// ones found are kept).
#[derive(Clone)]
pub struct Resolver(pub Arc<ResolveFn>);

/// What a [`Resolver`] calls: name and port to addresses.
pub type ResolveFn = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

impl Resolver {
    /// A resolver calling `resolve`.
    pub fn new(
        resolve: impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(resolve))
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver(..)")
    }
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            max_reply: 256 << 20,
            connect_timeout: Duration::from_secs(5),
            resolve_every: Duration::from_secs(5),
            discover_names: false,
            resolver: None,
            tls: None,
            call_token: None,
        }
    }
}
