//! The network server: one listener per address, both protocols on each
//! port (told apart by the first byte), tasks run on a bounded pool of
//! blocking threads.
//!
//! | file | |
//! |---|---|
//! | `mod.rs` | [`Server`]: listeners, limits, accepting connections |
//! | `drain.rs` | the server's phases and the guards a drain waits on |
//! | `budget.rs` | the byte budget of requests held for peers |
//! | `native.rs` | native connections (many calls in flight) |
//! | `taskit4.rs` | TaskIt 4.0 connections (one call each) |
//! | `dispatch.rs` | running a call, inline or on the pool; admin signals |
//!
//! Shutdown is explicit: `<stop>` (or SIGTERM in the daemon) moves the
//! drain to `Stopping`; listeners close, connections answer new calls with
//! `Stopping`, and the server reports itself stopped once every accepted
//! call has been answered and no task (subtasks included) is running.

mod budget;
mod conns;
mod dispatch;
mod drain;
mod native;
mod replies;
mod taskit4;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::fair::FairSlots;
use crate::plugin_host::{PluginHost, ReloadSummary};
use crate::rate::Limiter;
use crate::registry::Registry;
pub(crate) use budget::Backlog;
use budget::{Budget, Unwritten};
use drain::{Drain, OpenConnection, Phase};

/// A connection's bytes: a TCP socket, or the clear side of a TLS
/// connection (one end of a socket pair, see `tls.rs`). Its descriptor is
/// duplicated for replies written straight from worker reader threads.
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsFd + Unpin + Send + 'static
{
    type Read: tokio::io::AsyncRead + Unpin + Send + 'static;
    type Write: tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn split(self) -> (Self::Read, Self::Write);
}

impl Stream for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Stream for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// Limits and settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on.
    pub binds: Vec<SocketAddr>,
    /// Largest message (TaskIt 4.0) or frame (native) accepted, in bytes;
    /// larger ones are refused before anything is allocated for them.
    pub max_message: usize,
    /// Tasks running at once; further calls wait for a slot.
    pub max_tasks: usize,
    /// When set, a native connection must present it (an AUTH frame)
    /// before any call, signal or task: callers without it are refused.
    /// TaskIt 4.0 connections cannot carry it: every call they make is
    /// refused `Unauthorized`.
    pub call_token: Option<String>,
    /// Serve the TaskIt 4.0 protocol on the plain-text binds (it cannot
    /// run over TLS).
    pub taskit4: bool,
    /// Addresses to listen on with TLS (native protocol only); needs `tls`.
    pub tls_binds: Vec<SocketAddr>,
    /// The certificate, key and client CA of the TLS binds.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// When set, every admin signal must carry it (`{"token": …}` as its
    /// keyword arguments), but see `open_reads`.
    pub admin_token: Option<String>,
    /// `<status>` and `<tasks>` need no token: only the signals that change
    /// something do (what TaskIt 4.0 clients may still ask of a host).
    pub open_reads: bool,
    /// How long a peer may take to send a whole TaskIt 4.0 message, or a
    /// native frame once begun.
    pub read_timeout: Duration,
    /// How long a new connection may take to send its first byte and (for
    /// the native protocol) its hello.
    pub handshake_timeout: Duration,
    /// How long a write may make no progress before the connection is dropped
    /// (a client that stops reading its replies).
    pub write_timeout: Duration,
    /// Connections served at once; past it, the one idle longest is closed
    /// to admit a new one (which is closed if every one is busy).
    pub max_connections: usize,
    /// Connections one peer address may hold; past it, its own connection
    /// idle longest is closed to admit a new one (which is closed if every
    /// one of them is busy).
    pub max_connections_per_peer: usize,
    /// Calls in flight on one native connection; beyond that the server
    /// stops reading from it until replies are written.
    pub max_in_flight_per_connection: usize,
    /// How long a native connection with nothing in flight may stay silent
    /// before it is closed (clients reconnect transparently).
    pub idle_timeout: Duration,
    /// Bytes held for peers at once across all connections: requests of
    /// every size (each counted at least 1 KiB) from the moment their
    /// length is known until their reply is written, and replies queued;
    /// beyond that the server stops reading until replies go out.
    pub max_buffered: usize,
    /// The same, for one connection.
    pub max_buffered_per_connection: usize,
    /// How long a stop waits for the calls it accepted; past it, the
    /// workers still running calls are killed (their callers get
    /// `WorkerCrashed`: the calls may have run), and the server ends with
    /// [`Exit::Abandoned`].
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            binds: vec![SocketAddr::from((
                [127, 0, 0, 1],
                taskit_plugin_api::wire::DEFAULT_PORT,
            ))],
            max_message: 16 << 20,
            max_tasks: 64,
            admin_token: None,
            call_token: None,
            taskit4: true,
            tls_binds: Vec::new(),
            tls: None,
            open_reads: false,
            read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_peer: 1024,
            max_in_flight_per_connection: 1024,
            idle_timeout: Duration::from_secs(300),
            max_buffered: 256 << 20,
            max_buffered_per_connection: 64 << 20,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// How long a stop past its drain timeout gives the `Stopping` answers to
/// be written and connections to close.
const ABANDON_GRACE: Duration = Duration::from_secs(1);

/// How a server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `<stop>` or [`Server::stop`]: every accepted call was answered.
    Stopped,
    /// `<kill>`: ended at once.
    Killed,
    /// A stop that passed its drain timeout with tasks still running (see
    /// [`ServerConfig::drain_timeout`]).
    Abandoned,
}

/// What a server serves: a plugins directory kept loaded (whose registry may
/// also hold in-process tasks), or a registry of in-process tasks alone (the
/// embedded backend).
pub enum Served {
    /// Plugins, reloadable with `<reload>` and SIGHUP.
    Plugins(PluginHost),
    /// In-process tasks only; `<reload>` has nothing to rescan.
    Registry(Arc<Registry>),
}

impl Served {
    fn registry(&self) -> &Arc<Registry> {
        match self {
            Self::Plugins(plugins) => plugins.registry(),
            Self::Registry(registry) => registry,
        }
    }
}

impl From<PluginHost> for Served {
    fn from(plugins: PluginHost) -> Self {
        Self::Plugins(plugins)
    }
}

impl From<Arc<Registry>> for Served {
    fn from(registry: Arc<Registry>) -> Self {
        Self::Registry(registry)
    }
}

/// State shared by every connection of one server.
pub(crate) struct Shared {
    pub(crate) served: Served,
    pub(crate) config: ServerConfig,
    pub(crate) task_slots: Arc<FairSlots>,
    pub(crate) timings: dispatch::Timings,
    pub(crate) budget: Arc<Budget>,
    /// Bytes of replies not yet written, server-wide.
    pub(crate) unwritten: Arc<Unwritten>,
    pub(crate) drain: Arc<Drain>,
    pub(crate) metrics: crate::metrics::Metrics,
}

impl Shared {
    pub(crate) fn registry(&self) -> &Registry {
        self.served.registry()
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
}

/// The addresses of a server bound and not yet serving (see
/// [`Server::bind`]): connections wait in the kernel's queue until it
/// serves.
pub struct Bound {
    config: ServerConfig,
    /// Each listener, and whether it speaks TLS.
    listeners: Vec<(TcpListener, bool)>,
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Binds every address of `config` and starts serving what `served`
    /// holds: a [`PluginHost`] or an `Arc<Registry>`. Must be called inside
    /// a tokio runtime.
    pub async fn start(config: ServerConfig, served: impl Into<Served>) -> std::io::Result<Self> {
        Ok(Self::bind(config).await?.serve(served))
    }

    /// Binds every address of `config`, serving nothing yet: a program
    /// finds a taken port before it loads anything.
    pub async fn bind(config: ServerConfig) -> std::io::Result<Bound> {
        if !config.tls_binds.is_empty() && config.tls.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "TLS binds need a certificate and key",
            ));
        }
        let mut listeners = Vec::new();
        let binds = config.binds.iter().map(|a| (a, false));
        for (addr, tls) in binds.chain(config.tls_binds.iter().map(|a| (a, true))) {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            listeners.push((listener, tls));
        }
        let addrs = listeners
            .iter()
            .map(|(l, _)| l.local_addr())
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Bound {
            config,
            listeners,
            addrs,
        })
    }
}

impl Bound {
    /// The addresses bound (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Starts serving what `served` holds (see [`Server::start`]). Must be
    /// called inside a tokio runtime.
    pub fn serve(self, served: impl Into<Served>) -> Server {
        let Self {
            config,
            listeners,
            addrs,
        } = self;
        let drain = Drain::new();
        let shared = Arc::new(Shared {
            served: served.into(),
            task_slots: FairSlots::new(config.max_tasks),
            timings: dispatch::Timings::default(),
            budget: Budget::new(config.max_buffered),
            unwritten: Unwritten::new(config.max_buffered),
            drain: Arc::clone(&drain),
            metrics: crate::metrics::Metrics::default(),
            config,
        });
        let connections = conns::Table::new(
            shared.config.max_connections,
            shared.config.max_connections_per_peer,
        );
        for (listener, tls) in listeners {
            // Each listener counts as a connection until it has handed over
            // the connections queued at the stop.
            let open = drain.open_connection();
            tokio::spawn(accept_loop(
                Arc::clone(&shared),
                listener,
                tls,
                Arc::clone(&connections),
                open,
            ));
        }
        tokio::spawn(drain_when_stopping(Arc::clone(&shared)));
        Server { shared, addrs }
    }
}

impl Server {
    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The registry served.
    pub fn registry(&self) -> &Arc<Registry> {
        self.shared.served.registry()
    }

    /// Rescans the plugins directory (SIGHUP), if there is one.
    pub async fn reload(&self) -> Option<ReloadSummary> {
        self.handle().reload().await
    }

    /// Starts a drain, as `<stop>` does.
    pub fn stop(&self) {
        self.shared.drain.stop();
    }

    /// A handle for reloading and stopping from another task.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Waits until the server has stopped or been killed.
    pub async fn wait(&mut self) -> Exit {
        self.shared.drain.ended().await
    }
}

/// Reloads and stops a [`Server`] from anywhere.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Whether it serves calls: not yet stopping.
    pub fn is_serving(&self) -> bool {
        !self.shared.drain.is_stopping()
    }

    /// See [`Server::reload`].
    pub async fn reload(&self) -> Option<ReloadSummary> {
        dispatch::reload(&self.shared).await
    }

    /// See [`Server::stop`].
    pub fn stop(&self) {
        self.shared.drain.stop();
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: bool,
    connections: Arc<conns::Table>,
    _open: OpenConnection,
) {
    // Out of descriptors, `accept` fails every try: said once per window.
    let failures = Limiter::with_burst(1);
    loop {
        let accepted = tokio::select! {
            _ = shared.drain.reached(Phase::Stopping) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => spawn_connection(&shared, &connections, stream, peer, tls).await,
            Err(err) => {
                // Out of file descriptors, most likely: pause rather than
                // spin.
                if let Some(left_out) = failures.admit() {
                    tracing::warn!(%err, left_out, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Connections the kernel completed before the stop are still queued:
    // take them (they are told `Stopping`) rather than reset them unanswered
    // when the listener closes.
    let addr = listener.local_addr().ok();
    if let Ok(listener) = listener.into_std() {
        let mut queued = 0;
        while let Ok((stream, peer)) = listener.accept() {
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            if let Ok(stream) = stream {
                spawn_connection(&shared, &connections, stream, peer, tls).await;
                queued += 1;
            }
        }
        // Closed at once: a connection arriving from now on is refused.
        drop(listener);
        tracing::debug!(?addr, queued, "stopped accepting");
    }
}

/// Serves one accepted connection on its own task, within the limit (the
/// connection idle longest closed to make room, if need be).
async fn spawn_connection(
    shared: &Arc<Shared>,
    connections: &Arc<conns::Table>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
) {
    let slot = match connections.admit(crate::fair::peer_key(peer.ip())).await {
        Ok(slot) => Arc::new(slot),
        Err(conns::Full::Host) => {
            shared.metrics.connections_refused[crate::metrics::HOST_FULL]
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            static FULL: Limiter = Limiter::new();
            if let Some(left_out) = FULL.admit() {
                tracing::warn!(%peer, limit = shared.config.max_connections, left_out, "too many connections; closing a new one");
            }
            return;
        }
        Err(conns::Full::Peer) => {
            shared.metrics.connections_refused[crate::metrics::PEER_FULL]
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            static PEER_FULL: Limiter = Limiter::new();
            if let Some(left_out) = PEER_FULL.admit() {
                tracing::warn!(%peer, limit = shared.config.max_connections_per_peer, left_out, "too many connections from one address; closing a new one");
            }
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let open = shared.drain.open_connection();
    let shared = Arc::clone(shared);
    let connections = &shared.metrics.connections;
    connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        match shared.config.tls.as_ref().filter(|_| tls) {
            None => {
                let taskit4 = shared.config.taskit4;
                serve_connection(Arc::clone(&shared), stream, peer, &slot, taskit4).await
            }
            Some(config) => {
                let (limit, write) = (shared.config.handshake_timeout, shared.config.write_timeout);
                // A handshake in progress is a connection that has said
                // nothing yet: it gives way to a new one, and to the close.
                let accepted = tokio::select! {
                    accepted = crate::tls::accept(config, stream, limit, write) => Some(accepted),
                    () = slot.evicted() => None,
                    () = shared.drain.reached(Phase::Closing) => None,
                };
                match accepted {
                    None => {
                        tracing::debug!(%peer, "closing a TLS connection still in its handshake")
                    }
                    Some(Ok((clear, pump))) => {
                        // The connection holds its slot, and the drain waits,
                        // until the pump has carried its last bytes.
                        let pump = tokio::spawn(pump);
                        serve_connection(Arc::clone(&shared), clear, peer, &slot, false).await;
                        let _ = pump.await;
                    }
                    Some(Err(err)) => {
                        shared.metrics.connections_refused[crate::metrics::TLS_FAILED]
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(%peer, %err, "TLS handshake failed")
                    }
                }
            }
        }
        shared
            .metrics
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        drop(slot);
        drop(open);
    });
}

/// How long a silent connection may still send its first byte once the
/// host is closing.
const CLOSING_GRACE: Duration = Duration::from_millis(250);

/// Reads the first byte and hands the connection to its protocol.
async fn serve_connection<S: Stream>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    slot: &Arc<conns::Slot>,
    taskit4: bool,
) {
    let mut first = [0u8; 1];
    // A connection that has said nothing when the host closes holds no call
    // yet: it gets a moment to send one (to be told `Stopping`), not the
    // whole read timeout.
    let read = tokio::time::timeout(shared.config.handshake_timeout, stream.read(&mut first));
    tokio::pin!(read);
    let before_closing = tokio::select! {
        read = &mut read => Some(read),
        _ = shared.drain.reached(Phase::Closing) => None,
        () = slot.evicted() => {
            tracing::debug!(%peer, "closing a connection that sent nothing, to make room");
            return;
        }
    };
    let read = match before_closing {
        Some(read) => read,
        None => match tokio::time::timeout(CLOSING_GRACE, &mut read).await {
            Ok(read) => read,
            Err(_) => return,
        },
    };
    match read {
        Ok(Ok(1)) => {}
        Ok(Ok(_)) => return,
        Ok(Err(err)) => {
            tracing::debug!(%peer, %err, "connection failed before its first byte");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "closing a connection that sent nothing");
            return;
        }
    }
    // It speaks: busy until it waits for its next call.
    slot.set_idle(false);
    match first[0] {
        b'0' | b'1' if taskit4 => taskit4::serve(shared, stream, first[0], peer).await,
        b'T' => native::serve(shared, stream, peer, slot).await,
        other => {
            tracing::debug!(%peer, byte = other, "closing a connection that speaks neither protocol");
            close_cleanly(stream).await;
        }
    }
}

/// Bytes that are no protocol read and dropped at most, before the close.
const DISCARD_LIMIT: usize = 64 << 10;
/// How long they are read at most.
const DISCARD_TIME: Duration = Duration::from_secs(1);

/// Closes a connection that speaks no protocol with a FIN, not a reset: the
/// host says it sends nothing more, then reads and drops what the peer
/// sent (a bounded amount, for a bounded time) so that closing with unread
/// bytes does not reset it.
async fn close_cleanly(mut stream: impl Stream) {
    let _ = stream.shutdown().await;
    discard(stream).await;
}

/// Reads and drops what the peer still sends, up to [`DISCARD_LIMIT`]
/// bytes for [`DISCARD_TIME`], once the host has said its last: closing a
/// socket with unread bytes resets it, and a reset can make the peer's
/// system drop the host's last words before the peer reads them.
pub(crate) async fn discard(mut reader: impl tokio::io::AsyncRead + Unpin) {
    let deadline = tokio::time::Instant::now() + DISCARD_TIME;
    let mut buf = [0u8; 4096];
    let mut left = DISCARD_LIMIT;
    while left > 0 {
        match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// How often a drain looks at the running count: subtasks end without a
/// notification.
const RUNNING_POLL: Duration = Duration::from_millis(20);

/// Once stopping, waits for every accepted call to be answered and every
/// task (subtasks included) to end; then tells the connections to close
/// (each answers what it accepted meanwhile, then says `Stopping`), waits
/// for them, and reports the server stopped.
async fn drain_when_stopping(shared: Arc<Shared>) {
    let drain = &shared.drain;
    drain.reached(Phase::Stopping).await;
    if drain.has_ended() {
        // Killed: nothing to drain.
        return;
    }
    tracing::info!("stopping: answering accepted calls, accepting no new ones");
    let drained = tokio::time::timeout(shared.config.drain_timeout, async {
        loop {
            if drain.calls_answered_within(RUNNING_POLL).await {
                if shared.registry().running_tasks() == 0 {
                    break;
                }
                tokio::time::sleep(RUNNING_POLL).await;
            }
        }
    })
    .await
    .is_ok();
    if !drained {
        let running = shared.registry().running_tasks();
        let abandoned = shared.registry().abandon_running();
        tracing::error!(
            running,
            abandoned = %abandoned.join(","),
            "stopping: tasks still running after the drain timeout; their workers killed (callers told WorkerCrashed), calls running in this process abandoned"
        );
        // A moment for those answers to be written.
        let _ = drain.calls_answered_within(ABANDON_GRACE).await;
        drain.close();
        let _ = drain.connections_closed_within(ABANDON_GRACE).await;
        drain.end(Exit::Abandoned);
        return;
    }
    drain.close();
    // Each connection ends within its read or write timeout at worst.
    let limit = shared.config.read_timeout + shared.config.write_timeout;
    if !drain.connections_closed_within(limit).await {
        tracing::warn!("stopping: some connections did not close in time");
    }
    drain.end(Exit::Stopped);
}
