//! TLS on the native protocol: the host's certificate and key (reloaded
//! on SIGHUP), the client CA of mutual TLS, and the connection's clear
//! side.
//!
//! A TLS connection is handshaken here, then served as any other through
//! one end of a Unix socket pair, while a pump task carries bytes between
//! the other end and the TLS stream. The server's code (budgets, direct
//! reply writes from worker threads, deadlines) stays the same for both;
//! the price is one more copy through the kernel per read and write.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use taskit_plugin_api::tls::{provider, read_certs, read_key, roots, rustls, TlsError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The TLS settings of a host: where its files are, and the acceptor
/// made of them.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    acceptor: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate chain and key (PEM), and the CA whose
    /// certificates callers must present, if any (mutual TLS).
    pub fn load(
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        let acceptor = acceptor(&cert, &key, client_ca.as_ref())?;
        Ok(Arc::new(Self {
            cert,
            key,
            client_ca,
            acceptor: RwLock::new(acceptor),
        }))
    }

    /// Reads the files again: new connections get the new certificate. On
    /// an error the one loaded before stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.cert, &self.key, self.client_ca.as_ref())?;
        *self
            .acceptor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Whether callers must present a certificate.
    pub fn checks_callers(&self) -> bool {
        self.client_ca.is_some()
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn acceptor(cert: &Path, key: &Path, client_ca: Option<&PathBuf>) -> Result<TlsAcceptor, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = roots(std::slice::from_ref(ca), false)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| TlsError::Config(format!("{} and {}: {e}", cert.display(), key.display())))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Handshakes `stream` within `limit`; its clear side and the pump to run
/// beside it (the connection lasts until the pump ends), or why not.
pub(crate) async fn accept(
    tls: &ServerTls,
    stream: TcpStream,
    limit: Duration,
    write_timeout: Duration,
) -> std::io::Result<(
    UnixStream,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let stream = tokio::time::timeout(limit, tls.acceptor().accept(stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    let (ours, theirs) = UnixStream::pair()?;
    Ok((ours, pump(stream, theirs, write_timeout)))
}

/// How long a TLS client has to close once the host closed its side.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Carries bytes both ways between a TLS connection and the server's side
/// of its socket pair, until the server closes its side (and the client
/// has had [`CLOSE_GRACE`] to finish) or the client goes away. A client
/// that does not read for `write_timeout` is dropped.
async fn pump(tls: TlsStream<TcpStream>, inner: UnixStream, write_timeout: Duration) {
    let (mut tls_read, mut tls_write) = tokio::io::split(tls);
    let (mut inner_read, mut inner_write) = inner.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut tls_read, &mut inner_write).await;
        let _ = inner_write.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match inner_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let sent = tokio::time::timeout(write_timeout, async {
                tls_write.write_all(&buf[..n]).await?;
                tls_write.flush().await
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, tls_write.shutdown()).await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {
            let _ = tokio::time::timeout(CLOSE_GRACE, up).await;
        }
        () = &mut up => down.await,
    }
}
