//! Admin signals sent to one backend, with their replies decoded as
//! [`Signal`] declares them.

use super::{BackendAddr, FrontEnd, FrontendError, InFlight, Outcome};
use crate::wire::admin::{local_token, PluginSummary, ReloadReport, Reply, Signal};

impl FrontEnd {
    /// Sends `signal` to one backend (with the admin token, if configured)
    /// and decodes its reply.
    pub async fn send_signal(
        &self,
        backend: impl Into<BackendAddr>,
        signal: Signal,
    ) -> Result<Reply, FrontendError> {
        let backend = self.backend(&backend.into())?;
        // Without a token of its own, a signal that changes a host on this
        // machine carries the token the host made
        // (crate::wire::admin::local_token), if any; the others need none
        // (and an original TaskIt 4.0 backend refuses arguments it does not
        // expect).
        let token = match &self.inner.config.admin_token {
            Some(token) => Some(token.clone()),
            None if backend.addr.is_loopback() && signal.changes_host() => backend
                .addr
                .host
                .parse::<std::net::IpAddr>()
                .ok()
                .and_then(|ip| local_token((ip, backend.addr.port).into())),
            None => None,
        };
        let kwargs = match token {
            Some(token) => {
                serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let codec = backend.addr.codec;
        let args = codec
            .encode_args(&[(); 0])
            .map_err(|e| FrontendError::Encode(e.to_string()))?;
        let _counted = InFlight::new(&backend.in_flight);
        match self.attempt(&backend, signal.name(), &args, &kwargs).await {
            Outcome::Skip(why) => Err(why.unwrap_or(FrontendError::BackendNotAvailable)),
            Outcome::Done(result) => signal
                .decode_reply(codec, &result?)
                .map_err(|e| FrontendError::Decode(e.to_string())),
        }
    }

    /// TaskIt's `get_tasks`: the backend's running-task count as a string
    /// (the status call counts itself, so an idle backend says `"1"`), or
    /// `"down"` if it cannot be reached. For the plugins and task ids a
    /// backend serves, see [`tasks`](Self::tasks).
    pub async fn get_tasks(
        &self,
        backend: impl Into<BackendAddr>,
    ) -> Result<String, FrontendError> {
        match self.send_signal(backend, Signal::Status).await {
            Ok(Reply::Status(count)) => Ok(count),
            Ok(other) => Err(unexpected(Signal::Status, other)),
            Err(FrontendError::BackendNotAvailable) | Err(FrontendError::ConnectionLost(_)) => {
                Ok("down".to_owned())
            }
            Err(err) => Err(err),
        }
    }

    /// Asks a backend to stop: it answers every call it accepted, then exits.
    pub async fn send_stop(&self, backend: impl Into<BackendAddr>) -> Result<(), FrontendError> {
        self.send_signal(backend, Signal::Stop).await.map(drop)
    }

    /// Asks a backend to exit now.
    pub async fn send_kill(&self, backend: impl Into<BackendAddr>) -> Result<(), FrontendError> {
        self.send_signal(backend, Signal::Kill).await.map(drop)
    }

    /// The plugins a backend serves, with their task ids.
    pub async fn tasks(
        &self,
        backend: impl Into<BackendAddr>,
    ) -> Result<Vec<PluginSummary>, FrontendError> {
        match self.send_signal(backend, Signal::Tasks).await? {
            Reply::Tasks(plugins) => Ok(plugins),
            other => Err(unexpected(Signal::Tasks, other)),
        }
    }

    /// Asks a backend to rescan its plugins directory now.
    pub async fn reload(
        &self,
        backend: impl Into<BackendAddr>,
    ) -> Result<ReloadReport, FrontendError> {
        match self.send_signal(backend, Signal::Reload).await? {
            Reply::Reload(report) => Ok(report),
            other => Err(unexpected(Signal::Reload, other)),
        }
    }
}

/// A reply of another signal's type: `decode_reply` never makes one.
fn unexpected(signal: Signal, reply: Reply) -> FrontendError {
    FrontendError::Decode(format!("{signal} answered with {reply:?}"))
}
