//! TLS settings read from PEM files, for the host (`--tls-cert`,
//! `--tls-key`, `--tls-client-ca`) and clients (a CA file and the system's
//! roots, a client certificate for mutual TLS). rustls with the `ring`
//! provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
pub use tokio_rustls::rustls;

/// A TLS file or setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds nothing usable.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The certificates and key do not make a configuration.
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The crypto provider every configuration here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in it (expected PEM)"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("no private key in it (expected PEM): {e}")))
}

/// A store of the CA certificates in `ca_files`, and the system's own
/// roots if `system`.
pub fn roots(ca_files: &[PathBuf], system: bool) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for path in ca_files {
        for cert in read_certs(path)? {
            store.add(cert).map_err(|e| file_error(path, e))?;
        }
    }
    if system {
        let found = rustls_native_certs::load_native_certs();
        if store.is_empty() && found.certs.is_empty() {
            let why = found.errors.first().map(ToString::to_string);
            return Err(TlsError::Config(format!(
                "no system root certificates found{}",
                why.map(|w| format!(": {w}")).unwrap_or_default()
            )));
        }
        store.add_parsable_certificates(found.certs);
    }
    if store.is_empty() {
        return Err(TlsError::Config(
            "no CA to trust: give a CA file or use the system's roots".into(),
        ));
    }
    Ok(store)
}

/// How a client checks the hosts it connects to over TLS, and proves
/// itself if they ask (mutual TLS).
#[derive(Debug, Clone, Default)]
pub struct ClientTlsOptions {
    /// PEM files of the CAs whose certificates are trusted.
    pub ca_files: Vec<PathBuf>,
    /// Trust the system's root certificates too.
    pub system_roots: bool,
    /// A client certificate chain and its key, for hosts that require
    /// one (`--tls-client-ca`).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name every host's certificate must carry; default: the host
    /// name the backend was given by (for a `dns:` name, that name, not
    /// the addresses it resolves to).
    pub server_name: Option<String>,
}

impl ClientTlsOptions {
    /// Reads the files and makes the client's TLS configuration.
    pub fn load(&self) -> Result<ClientTls, TlsError> {
        let roots = roots(&self.ca_files, self.system_roots)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match &self.identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?,
            None => builder.with_no_client_auth(),
        };
        if let Some(name) = &self.server_name {
            ServerName::try_from(name.clone())
                .map_err(|e| TlsError::Config(format!("server name {name:?}: {e}")))?;
        }
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: self.server_name.clone(),
        })
    }
}

/// A client's TLS configuration, made by [`ClientTlsOptions::load`].
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The connector.
    pub fn connector(&self) -> &tokio_rustls::TlsConnector {
        &self.connector
    }

    /// The same, checking every host's certificate against `name`, unless
    /// a name was set already.
    pub fn or_server_name(mut self, name: &str) -> Result<Self, TlsError> {
        if self.server_name.is_none() {
            ServerName::try_from(name.to_owned())
                .map_err(|e| TlsError::Config(format!("server name {name:?}: {e}")))?;
            self.server_name = Some(name.to_owned());
        }
        Ok(self)
    }

    /// The name to check a host's certificate against, when it was given
    /// by `host`.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_owned())
            .map_err(|e| TlsError::Config(format!("server name {name:?}: {e}")))
    }
}
