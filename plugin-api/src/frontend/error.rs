//! Why a call failed, as the frontend reports it.

use std::time::Duration;

use serde_json::Value;

use crate::error::TaskError;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrontendError {
    /// No backend could be reached.
    #[error("no backend is available")]
    BackendNotAvailable,
    /// The task ran and failed (or the backend refused it): TaskIt's
    /// `BackendProcessingError`, with the remote error's type and args.
    #[error("backend error: {kind}{}", display_args(args))]
    BackendProcessing {
        /// The remote error's type, e.g. `TypeError` (see
        /// [`crate::error::kind`] for the runtime's own).
        kind: String,
        /// The remote error's arguments.
        args: Vec<Value>,
    },
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
    Protocol {
        /// The backend's address.
        backend: String,
        /// What was wrong.
        message: String,
    },
    /// The TLS connection failed: the host's certificate was not trusted,
    /// or it refused this client's (mutual TLS).
    #[error("TLS with {backend} failed: {message}")]
    Tls {
        /// The backend's address.
        backend: String,
        /// What rustls said.
        message: String,
    },
    /// A backend name could not be resolved.
    #[error("cannot resolve {name}: {message}")]
    Resolve {
        /// The name, as given (`dns:NAME:PORT`).
        name: String,
        /// Why.
        message: String,
    },
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

    /// A remote error reply.
    pub(super) fn remote(err: TaskError) -> Self {
        let (kind, args) = err.into_parts();
        Self::BackendProcessing { kind, args }
    }
}
