//! The network server: one listener per address, both protocols on each
//! port (told apart by the first byte), plugin tasks run on a bounded pool of
//! blocking threads.
//!
//! - [`compat`]: TaskIt 4.0 connections (one call each).
//! - [`native`]: native connections (many calls in flight).
//! - [`dispatch`]: running a call or an admin signal.
//!
//! Shutdown is explicit: `<stop>` (or SIGTERM in the daemon) flips a watch
//! channel; listeners close, connections answer new calls with `Stopping`,
//! and the server reports itself stopped once every accepted call has been
//! answered and no task (subtasks included) is running.

mod compat;
mod dispatch;
mod native;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::registry::Registry;
use crate::watcher::PluginHost;

/// Requests up to this size are not counted against the byte budget.
pub(crate) const SMALL_REQUEST: usize = 64 << 10;

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
    /// When set, every admin signal must carry it (`{"token": …}` as its
    /// keyword arguments).
    pub admin_token: Option<String>,
    /// How long a peer may take to send its first bytes, a hello or a whole
    /// TaskIt 4.0 message.
    pub read_timeout: Duration,
    /// How long a write may make no progress before the connection is dropped
    /// (a client that stops reading its replies).
    pub write_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Calls in flight on one native connection; beyond that the server
    /// stops reading from it until replies are written.
    pub max_in_flight_per_connection: usize,
    /// How long a native connection with nothing in flight may stay silent
    /// before it is closed (clients reconnect transparently).
    pub idle_timeout: Duration,
    /// Bytes of large requests (over 64 KiB) held at once across all
    /// connections (frames being read, arguments of calls waiting or
    /// running); beyond that the server stops reading large requests until
    /// calls finish. At least `max_message`.
    pub max_buffered: usize,
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
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_in_flight_per_connection: 1024,
            idle_timeout: Duration::from_secs(300),
            max_buffered: 256 << 20,
        }
    }
}

/// How a server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `<stop>` or [`Server::stop`]: every accepted call was answered.
    Stopped,
    /// `<kill>`: ended at once.
    Killed,
}

/// State shared by every connection of one server.
pub(crate) struct Shared {
    pub(crate) registry: Arc<Registry>,
    pub(crate) plugins: Option<PluginHost>,
    pub(crate) config: ServerConfig,
    pub(crate) task_slots: Arc<Semaphore>,
    pub(crate) timings: dispatch::Timings,
    /// Request bytes held, in KiB units (see `ServerConfig::max_buffered`).
    pub(crate) budget: Arc<Semaphore>,
    /// The budget's size, in KiB.
    budget_kib: u32,
    stopping: watch::Sender<bool>,
    /// Set once a drain has answered everything: connections say `Stopping`
    /// (nothing unanswered was run) and close.
    closing: watch::Sender<bool>,
    open_connections: AtomicUsize,
    connection_closed: Notify,
    exit: watch::Sender<Option<Exit>>,
    /// Calls accepted whose reply is not yet written.
    in_flight: AtomicUsize,
    replies_written: Notify,
}

impl Shared {
    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Starts a drain: no more connections, new calls refused.
    pub(crate) fn begin_stop(&self) {
        self.stopping.send_replace(true);
    }

    /// A watch that turns true when connections must close.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Reserves room for a request of `bytes`, released with the permit.
    /// Requests up to [`SMALL_REQUEST`] need none (they are bounded by the
    /// connection limit instead), so large requests, even stalled ones,
    /// can never hold up ordinary calls.
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if bytes <= SMALL_REQUEST {
            return None;
        }
        self.reserve_exact(bytes).await
    }

    /// Reserves room for `bytes`, whatever their number.
    pub(crate) async fn reserve_exact(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        // Never ask for more than the whole budget, or the wait never ends.
        Arc::clone(&self.budget)
            .acquire_many_owned(kib.min(self.budget_kib))
            .await
            .ok()
    }

    pub(crate) fn kill(&self) {
        self.exit.send_replace(Some(Exit::Killed));
    }

    pub(crate) fn accept_call(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// `n` accepted calls have been answered (or their connection died).
    pub(crate) fn replies_done(&self, n: usize) {
        if n > 0 && self.in_flight.fetch_sub(n, Ordering::AcqRel) == n {
            self.replies_written.notify_waiters();
        }
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Server {
    /// Binds every address of `config` and starts serving `registry` (and
    /// reloading through `plugins`, if given). Must be called inside a tokio
    /// runtime.
    pub async fn start(
        config: ServerConfig,
        registry: Arc<Registry>,
        plugins: Option<PluginHost>,
    ) -> std::io::Result<Self> {
        let mut listeners = Vec::new();
        for addr in &config.binds {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            listeners.push(listener);
        }
        let addrs = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<std::io::Result<Vec<_>>>()?;
        let (stopping, _) = watch::channel(false);
        let (closing, _) = watch::channel(false);
        let (exit_tx, exit) = watch::channel(None);
        // The budget in KiB: at least one largest message, at most what a
        // semaphore can count and `acquire_many` can ask for.
        let budget_bytes = config.max_buffered.max(config.max_message).max(1024);
        let budget_kib =
            u32::try_from((budget_bytes / 1024).min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        let shared = Arc::new(Shared {
            registry,
            plugins,
            task_slots: Arc::new(Semaphore::new(config.max_tasks.max(1))),

            timings: dispatch::Timings::default(),
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            config,
            stopping,
            closing,
            // Each listener counts as one until it has handed over the
            // connections queued at the stop.
            open_connections: AtomicUsize::new(listeners.len()),
            connection_closed: Notify::new(),
            exit: exit_tx,
            in_flight: AtomicUsize::new(0),
            replies_written: Notify::new(),
        });
        let connections = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
        for listener in listeners {
            tokio::spawn(accept_loop(
                Arc::clone(&shared),
                listener,
                Arc::clone(&connections),
            ));
        }
        tokio::spawn(drain_when_stopping(Arc::clone(&shared)));
        Ok(Self {
            shared,
            addrs,
            exit,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The registry served.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }

    /// Rescans the plugins directory (SIGHUP), if there is one.
    pub async fn reload(&self) -> Option<crate::ReloadSummary> {
        dispatch::reload(&self.shared).await
    }

    /// Starts a drain, as `<stop>` does.
    pub fn stop(&self) {
        self.shared.begin_stop();
    }

    /// A handle for reloading and stopping from another task.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Waits until the server has stopped or been killed.
    pub async fn wait(&mut self) -> Exit {
        loop {
            if let Some(exit) = *self.exit.borrow_and_update() {
                return exit;
            }
            if self.exit.changed().await.is_err() {
                return Exit::Killed;
            }
        }
    }
}

/// Reloads and stops a [`Server`] from anywhere.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// See [`Server::reload`].
    pub async fn reload(&self) -> Option<crate::ReloadSummary> {
        dispatch::reload(&self.shared).await
    }

    /// See [`Server::stop`].
    pub fn stop(&self) {
        self.shared.begin_stop();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, connections: Arc<Semaphore>) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => spawn_connection(&shared, &connections, stream, peer),
            Err(err) => {
                // Out of file descriptors, most likely: pause rather than spin.
                tracing::warn!(%err, "accept failed");
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
                spawn_connection(&shared, &connections, stream, peer);
                queued += 1;
            }
        }
        // Closed at once: a connection arriving from now on is refused.
        drop(listener);
        tracing::debug!(?addr, queued, "stopped accepting");
    }
    shared.open_connections.fetch_sub(1, Ordering::AcqRel);
    shared.connection_closed.notify_waiters();
}

/// Serves one accepted connection on its own task, within the limit.
fn spawn_connection(
    shared: &Arc<Shared>,
    connections: &Arc<Semaphore>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Ok(permit) = Arc::clone(connections).try_acquire_owned() else {
        tracing::warn!(%peer, limit = shared.config.max_connections, "too many connections; closing a new one");
        return;
    };
    let _ = stream.set_nodelay(true);
    let shared = Arc::clone(shared);
    shared.open_connections.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        serve_connection(Arc::clone(&shared), stream, peer).await;
        drop(permit);
        shared.open_connections.fetch_sub(1, Ordering::AcqRel);
        shared.connection_closed.notify_waiters();
    });
}

/// How long a silent connection may still send its first byte once the
/// host is closing.
const CLOSING_GRACE: Duration = Duration::from_millis(250);

/// Reads the first byte and hands the connection to its protocol.
async fn serve_connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let mut first = [0u8; 1];
    // A connection that has said nothing when the host closes holds no call
    // yet: it gets a moment to send one (to be told `Stopping`), not the
    // whole read timeout.
    let mut closing = shared.closing();
    let read = tokio::time::timeout(shared.config.read_timeout, stream.read(&mut first));
    tokio::pin!(read);
    let before_closing = tokio::select! {
        read = &mut read => Some(read),
        _ = async { let _ = closing.wait_for(|c| *c).await; } => None,
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
    match first[0] {
        b'0' | b'1' => compat::serve(shared, stream, first[0], peer).await,
        b'T' => native::serve(shared, stream, peer).await,
        other => {
            tracing::debug!(%peer, byte = other, "closing a connection that speaks neither protocol")
        }
    }
}

/// Once stopping, waits for every accepted call to be answered and every
/// task (subtasks included) to end; then tells the connections to close
/// (each answers what it accepted meanwhile, then says `Stopping`), waits
/// for them, and reports the server stopped.
async fn drain_when_stopping(shared: Arc<Shared>) {
    let mut stopping = shared.stopping.subscribe();
    if stopping.wait_for(|s| *s).await.is_err() {
        return;
    }
    tracing::info!("stopping: answering accepted calls, accepting no new ones");
    loop {
        let written = shared.replies_written.notified();
        let pending = shared.in_flight.load(Ordering::Acquire);
        let running = shared.registry.state().running_tasks();
        if pending == 0 && running == 0 {
            break;
        }
        // Subtasks end without a notification: poll, but wake at once when
        // the last reply is written.
        let _ = tokio::time::timeout(Duration::from_millis(20), written).await;
    }
    shared.closing.send_replace(true);
    // Each connection ends within its read or write timeout at worst.
    let limit =
        tokio::time::Instant::now() + shared.config.read_timeout + shared.config.write_timeout;
    loop {
        let closed = shared.connection_closed.notified();
        if shared.open_connections.load(Ordering::Acquire) == 0 {
            break;
        }
        if tokio::time::timeout_at(limit, closed).await.is_err() {
            tracing::warn!("stopping: some connections did not close in time");
            break;
        }
    }
    shared.exit.send_replace(Some(Exit::Stopped));
}
