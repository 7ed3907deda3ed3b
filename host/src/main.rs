//! `taskit-host`: loads the plugins in a directory, keeps them in step with
//! it, and serves their tasks over TCP (TaskIt 4.0 and native protocols on
//! the same port).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use taskit_host::{
    run_worker, Exit, HostConfig, Isolation, MetricsEndpoint, PluginHost, Server, ServerConfig,
    ServerTls, WorkerOptions, WORKER_SUBCOMMAND,
};
use taskit_plugin_api::wire::admin::{parse_seconds, read_token_file};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// Serves task plugins (*.so) from a directory over TCP, hot-reloading them
/// as the directory changes. Clients call tasks by id with the TaskIt 4.0
/// protocol or the native one, on the same port.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Directory of plugin files (*.so). Files are copied before loading, so
    /// they may be replaced at any time (cp over, or rename into place).
    #[arg(long, value_name = "DIR", default_value = "plugins.d")]
    plugins: PathBuf,

    /// Address to listen on in plain text, both protocols; repeat for
    /// several. Default: 127.0.0.1:54543, unless --tls-bind is given.
    #[arg(long = "bind", value_name = "ADDR")]
    binds: Vec<SocketAddr>,

    /// Address to listen on with TLS (native protocol only); repeat for
    /// several. Needs --tls-cert and --tls-key.
    #[arg(long = "tls-bind", value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    tls_binds: Vec<SocketAddr>,

    /// The certificate chain of the TLS binds (PEM), read again on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM), read again on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Mutual TLS: only callers presenting a certificate signed by this CA
    /// (PEM) are served on the TLS binds.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// File holding a call token every native connection must present
    /// before any call (frontends: FrontendConfig::call_token, taskitctl
    /// --call-token-file). Must not be readable by other users. TaskIt 4.0
    /// calls cannot carry it and are refused.
    #[arg(long, value_name = "FILE")]
    call_token_file: Option<PathBuf>,

    /// Serve the TaskIt 4.0 protocol on the plain-text binds (on) or the
    /// native protocol alone (off).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    taskit4: OnOff,

    /// Serve HTTP on this address: GET /metrics (Prometheus text: calls by
    /// task, plugin, protocol and outcome, latency, connections, bytes
    /// held, workers, reloads) and GET /healthz (200 once plugins are
    /// loaded and the host serves, 503 before and while it stops).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// File holding the admin token that every admin signal (<stop>,
    /// <kill>, <status>, <tasks>, <reload>) must carry. Must not be
    /// readable by other users. Without it, the host makes a token that
    /// <stop>, <kill> and <reload> must carry, and writes it (mode 0600)
    /// to $TASKIT_RUNTIME_DIR, /run/taskit for root, $XDG_RUNTIME_DIR/taskit
    /// or /tmp/taskit-UID, as admin-token-PORT: taskitctl on this machine
    /// reads it from there.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,

    /// Make no admin token: any client that can connect may stop, kill or
    /// reload the host.
    #[arg(long, conflicts_with = "admin_token_file")]
    no_admin_token: bool,

    /// Largest message or frame accepted, in bytes; larger ones are refused
    /// before anything is allocated for them.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    max_message: usize,

    /// Tasks running at once (with process isolation: per plugin); further
    /// calls wait for a free slot.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_tasks: usize,

    /// Seconds a client may take to send a whole TaskIt 4.0 message, or a
    /// whole native frame once it has begun, before it is disconnected.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    read_timeout: Duration,

    /// Seconds a new connection may take to send its first byte and, for
    /// the native protocol, its hello, before it is closed.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    handshake_timeout: Duration,

    /// Connections served at once; past it, the connection idle longest
    /// (silent, or between calls with none in flight) is closed to admit a
    /// new one, which is closed only if every connection is busy. (Each
    /// takes up to two file descriptors: the host raises its open-files
    /// limit to the hard limit at start.)
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_connections: usize,

    /// Connections one peer address may hold at once; past it, its own
    /// connection idle longest is closed to admit a new one (never another
    /// peer's), which is closed if all of them are busy.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections_per_peer: usize,

    /// Seconds a reply may wait for a client that does not read before the
    /// connection is dropped.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    write_timeout: Duration,

    /// Seconds a native connection with no call in flight may stay silent
    /// before it is closed (clients reconnect by themselves).
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_seconds)]
    idle_timeout: Duration,

    /// Bytes held for clients at once across all connections: requests of
    /// every size (each counted at least 1 KiB) until their reply is
    /// written, and replies queued; beyond it the host stops reading until
    /// replies go out.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    max_buffered: usize,

    /// The same, for one connection.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_buffered_per_connection: usize,

    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Where to make the private directory of plugin copies, one per run,
    /// removed at exit (default: the system temporary directory).
    #[arg(long, value_name = "DIR")]
    shadow_dir: Option<PathBuf>,

    /// Do not watch the plugins directory; load it at start and on SIGHUP
    /// only (for file systems without change notification, such as NFS).
    #[arg(long)]
    no_watch: bool,
    /// Load plugins even from a directory, or files, that another user owns
    /// or that its group or every user may write to (any such user could
    /// make the host run any code). Logged as INSECURE
    #[arg(long)]
    allow_insecure_plugins: bool,

    /// Where plugins run: `process` (each plugin version in worker
    /// processes of its own, so a plugin that crashes, aborts or exits
    /// takes nothing else down) or `none` (inside this process: faster, for
    /// trusted plugins only).
    #[arg(long, value_enum, default_value_t = IsolationMode::Process)]
    isolation: IsolationMode,

    /// Worker processes per plugin version (process isolation); calls go to
    /// the least loaded. Default: the number of cores.
    #[arg(long, value_name = "N")]
    workers_per_plugin: Option<usize>,

    /// Seconds a worker has to load a plugin and run its init before it is
    /// killed and the file refused (process isolation).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    init_timeout: Duration,

    /// Seconds SIGTERM, SIGINT and <stop> wait for calls already accepted;
    /// past them, the workers still running calls are killed (callers get
    /// `WorkerCrashed`) and the host exits with status 1.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    drain_timeout: Duration,

    /// Seconds a task may run before its cancellation flag is set (process
    /// isolation; default: no limit but the client's timeout).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    task_timeout: Option<Duration>,

    /// Seconds a cancelled task (its time limit, or the client gave up) may
    /// go on before its worker is killed and replaced; its caller gets
    /// `TimeLimitExceeded` (process isolation).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    kill_grace: Duration,

    /// Hard cap on each worker's address space, in MiB (RLIMIT_AS: virtual
    /// memory, so leave room for thread stacks and allocator arenas; 256 or
    /// more). A worker past it dies; its callers get `WorkerCrashed`, cause
    /// "out of memory" (process isolation).
    #[arg(long, value_name = "MIB")]
    worker_memory_limit: Option<u64>,

    /// Calls a worker takes before a fresh one replaces it (it finishes its
    /// calls, then exits, returning whatever its plugin leaked; process
    /// isolation; default: never).
    #[arg(long, value_name = "N")]
    worker_max_calls: Option<u64>,

    /// Run plugin workers as this user (and its primary group), not as the
    /// host's; the host must run as root to switch (process isolation).
    #[arg(long, value_name = "USER")]
    worker_user: Option<String>,
}

/// The user and group ids of `name`.
fn user_ids(name: &str) -> anyhow::Result<(u32, u32)> {
    let c_name = std::ffi::CString::new(name).context("a user name without NUL bytes")?;
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives its use.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    anyhow::ensure!(
        rc == 0 && !found.is_null(),
        "--worker-user: no user named {name:?}"
    );
    // SAFETY: a plain system call.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0 || entry.pw_uid == unsafe { libc::geteuid() },
        "--worker-user {name}: only a host running as root can run workers as another user"
    );
    Ok((entry.pw_uid, entry.pw_gid))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IsolationMode {
    Process,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Warns of each bind beyond loopback that serves calls in clear text, or
/// to any caller (no client certificate asked, no call token).
fn warn_of_open_binds(
    binds: &[SocketAddr],
    tls_binds: &[SocketAddr],
    tls: Option<&ServerTls>,
    call_token: bool,
) {
    let checks_callers =
        |tls_bind: bool| call_token || (tls_bind && tls.is_some_and(ServerTls::checks_callers));
    for (addr, tls_bind) in binds
        .iter()
        .map(|a| (a, false))
        .chain(tls_binds.iter().map(|a| (a, true)))
    {
        if addr.ip().is_loopback() {
            continue;
        }
        if !tls_bind {
            tracing::warn!(%addr, "serving calls in clear text beyond loopback: use --tls-bind with --tls-cert and --tls-key");
        }
        if !checks_callers(tls_bind) {
            tracing::warn!(%addr, "serving calls to anyone who can connect: use --call-token-file, or --tls-client-ca on a TLS bind");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == WORKER_SUBCOMMAND) {
        std::process::exit(run_worker(argv));
    }
    // Why it could not start, on one line with its causes: never a
    // backtrace, whatever RUST_BACKTRACE says.
    match host_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("taskit-host: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn host_main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let admin_token = args
        .admin_token_file
        .as_deref()
        .map(|path| read_token_file(path, true))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(args.max_tasks.max(1) + 16)
        .build()
        .context("cannot start the async runtime")?;
    let exit = runtime.block_on(run(args, admin_token))?;
    match exit {
        // Do not wait for tasks still running: that is what <kill> is for.
        Exit::Killed => taskit_host::exit_now(0),
        // Tasks that outlived the drain timeout are left behind (a thread
        // still in a plugin cannot be stopped): not a clean stop.
        Exit::Abandoned => taskit_host::exit_now(1),
        Exit::Stopped => Ok(()),
    }
}

/// Raises the soft limit on open files to the hard limit: each connection
/// and each worker takes descriptors, and the default soft limit (often
/// 1024) is far below `--max-connections`.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain system call with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur >= limit.rlim_max
    {
        return;
    }
    let from = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        tracing::debug!(from, to = limit.rlim_max, "raised the open-files limit");
    }
}

async fn run(args: Args, admin_token: Option<String>) -> anyhow::Result<Exit> {
    // Handlers first: a signal that arrives while plugins load, or right
    // after readiness is announced, must not kill the process.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    raise_open_files_limit();

    let mut host_config = HostConfig::new(&args.plugins);
    host_config.shadow_dir = args.shadow_dir.clone();
    host_config.watch = !args.no_watch;
    host_config.allow_insecure = args.allow_insecure_plugins;
    host_config.isolation = match args.isolation {
        IsolationMode::None => Isolation::InProcess,
        IsolationMode::Process => {
            let mut options = WorkerOptions::current_exe()
                .context("cannot find this program to start plugin workers")?;
            if let Some(n) = args.workers_per_plugin {
                options.workers_per_plugin = n.max(1);
            }
            options.init_timeout = args.init_timeout;
            options.task_timeout = args.task_timeout;
            options.kill_grace = args.kill_grace;
            options.max_tasks = args.max_tasks;
            options.max_calls = args.worker_max_calls;
            options.user = args.worker_user.as_deref().map(user_ids).transpose()?;
            options.memory_limit = args
                .worker_memory_limit
                .map(|mib| mib.saturating_mul(1 << 20));
            // A worker's answer too large for a client is refused in the
            // worker: the host never holds more than this of one.
            options.max_frame = args.max_message.saturating_add(taskit_host::FRAME_SLACK);
            Isolation::Process(Box::new(options))
        }
    };

    // Without a token of the user's, one of the host's own guards the
    // signals that change something.
    let made_token = admin_token.is_none() && !args.no_admin_token;
    let open_reads = made_token;
    let admin_token = match admin_token {
        Some(token) => Some(token),
        None if made_token => Some(local_token::make()?),
        None => None,
    };
    let call_token = args
        .call_token_file
        .as_deref()
        .map(|path| read_token_file(path, true))
        .transpose()?;
    let binds = if args.binds.is_empty() && args.tls_binds.is_empty() {
        vec![SocketAddr::from((
            [127, 0, 0, 1],
            taskit_plugin_api::wire::DEFAULT_PORT,
        ))]
    } else {
        args.binds.clone()
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            ServerTls::load(cert.clone(), key.clone(), args.tls_client_ca.clone())
                .context("cannot set up TLS")?,
        ),
        _ => None,
    };
    if tls.is_some() && args.tls_binds.is_empty() {
        tracing::warn!("--tls-cert given without --tls-bind: no address serves TLS");
    }
    warn_of_open_binds(
        &binds,
        &args.tls_binds,
        tls.as_deref(),
        call_token.is_some(),
    );
    if admin_token.is_none()
        && binds
            .iter()
            .chain(&args.tls_binds)
            .any(|a| !a.ip().is_loopback())
    {
        tracing::warn!("listening beyond loopback with --no-admin-token: anyone who can connect can stop this host");
    }
    let config = ServerConfig {
        binds,
        tls_binds: args.tls_binds.clone(),
        tls: tls.clone(),
        call_token,
        taskit4: args.taskit4 == OnOff::On,
        max_message: args.max_message,
        max_tasks: args.max_tasks,
        admin_token: admin_token.clone(),
        open_reads,
        read_timeout: args.read_timeout,
        handshake_timeout: args.handshake_timeout,
        max_connections: args.max_connections,
        max_connections_per_peer: args.max_connections_per_peer,
        write_timeout: args.write_timeout,
        idle_timeout: args.idle_timeout,
        max_buffered: args.max_buffered,
        max_buffered_per_connection: args.max_buffered_per_connection,
        drain_timeout: args.drain_timeout,
        ..ServerConfig::default()
    };
    // The port first: a taken one is said before plugins load.
    let bound = Server::bind(config).await?;
    let endpoint = MetricsEndpoint::new();
    if let Some(addr) = args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics and health served over HTTP");
        tokio::spawn(std::sync::Arc::clone(&endpoint).serve(listener));
    }
    let plugins = tokio::task::spawn_blocking(move || PluginHost::start(host_config))
        .await?
        .with_context(|| format!("cannot start with --plugins {}", args.plugins.display()))?;
    let registry = std::sync::Arc::clone(plugins.registry());
    let mut server = bound.serve(plugins);
    endpoint.attach(server.handle());
    let plain = server.local_addrs().len() - args.tls_binds.len();
    let addrs: Vec<String> = server.local_addrs()[..plain]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let tls_addrs: Vec<String> = server.local_addrs()[plain..]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let token_files = match (&admin_token, made_token) {
        (Some(token), true) => local_token::write(token, server.local_addrs())?,
        _ => local_token::Files::default(),
    };
    tracing::info!(
        listening = %addrs.join(", "),
        tls = %tls_addrs.join(", "),
        plugins = registry.plugins().len(),
        tasks = registry.task_ids().len(),
        plugins_dir = %args.plugins.display(),
        "taskit-host ready"
    );

    sd_notify::notify(&format!(
        "READY=1\nSTATUS=serving {} tasks on {}",
        registry.task_ids().len(),
        addrs.join(", ")
    ));

    let handle = server.handle();
    loop {
        tokio::select! {
            exit = server.wait() => {
                drop(token_files);
                tracing::info!(?exit, "taskit-host exiting");
                return Ok(exit);
            }
            _ = hangup.recv() => {
                // In a task of its own: a slow rescan must not hold up SIGTERM.
                let handle = handle.clone();
                if let Some(tls) = &tls {
                    match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate and key read again"),
                        Err(err) => tracing::error!(%err, "SIGHUP: cannot read the TLS files again; the ones loaded before stay"),
                    }
                }
                tokio::spawn(async move {
                    sd_notify::notify("RELOADING=1");
                    let summary = handle.reload().await;
                    sd_notify::notify("READY=1");
                    if let Some(summary) = summary {
                        summary.log("SIGHUP");
                    }
                });
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping");
                sd_notify::notify("STOPPING=1");
                server.stop();
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: stopping");
                sd_notify::notify("STOPPING=1");
                server.stop();
            }
        }
    }
}

/// The admin token a host makes when given none: random, written to a
/// private file per port in the runtime directory, removed at exit.
mod local_token {
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    use std::path::PathBuf;

    use anyhow::Context as _;
    use taskit_plugin_api::wire::admin::{local_token_file, local_token_text, runtime_dir};

    /// 32 random bytes, as hex.
    pub fn make() -> anyhow::Result<String> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("cannot read /dev/urandom to make an admin token")?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The files written: removed when dropped, unless another host has
    /// written its own there since (one started on the port while this
    /// one drained).
    #[derive(Default)]
    pub struct Files(Vec<PathBuf>, String);

    impl Drop for Files {
        fn drop(&mut self) {
            for file in &self.0 {
                if std::fs::read_to_string(file).is_ok_and(|text| text == self.1) {
                    let _ = std::fs::remove_file(file);
                }
            }
        }
    }

    /// Removes the token files in `dir` of this user's hosts that are gone
    /// (killed hosts leave theirs; clients ignore them, but nothing else
    /// would remove them).
    fn sweep(dir: &std::path::Path, me: u32) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let named = entry
                .file_name()
                .to_string_lossy()
                .starts_with("admin-token-");
            let ours = path
                .symlink_metadata()
                .is_ok_and(|m| m.is_file() && m.uid() == me);
            if !named || !ours {
                continue;
            }
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.lines().nth(1).and_then(|l| l.parse::<u32>().ok()));
            if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Writes `token` for each of `addrs` (one file per port, or per
    /// address and port: `local_token_file`), readable by this user alone, in
    /// a directory nobody else may write to.
    pub fn write(token: &str, addrs: &[SocketAddr]) -> anyhow::Result<Files> {
        let dir = runtime_dir();
        let fail = || {
            format!(
                "cannot write the admin token to {}; give one with --admin-token-file, or run with --no-admin-token",
                dir.display()
            )
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(fail)?;
        let meta = std::fs::metadata(&dir).with_context(fail)?;
        // SAFETY: a plain system call.
        let me = unsafe { libc::geteuid() };
        anyhow::ensure!(
            (meta.uid() == me || meta.uid() == 0) && meta.mode() & 0o022 == 0,
            "{}: it must belong to this user (or root) and be writable by nobody else",
            fail()
        );
        sweep(&dir, me);
        let text = local_token_text(token, addrs);
        let mut files = Files(Vec::new(), text.clone());
        for (i, addr) in addrs.iter().enumerate() {
            let path = local_token_file(*addr);
            if files.0.contains(&path) {
                continue;
            }
            let staging = dir.join(format!(".admin-token-{i}.{}", std::process::id()));
            let _ = std::fs::remove_file(&staging);
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&staging)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .and_then(|()| std::fs::rename(&staging, &path));
            if let Err(err) = written {
                let _ = std::fs::remove_file(&staging);
                return Err(err).with_context(fail);
            }
            tracing::info!(file = %path.display(), "admin token written: <stop>, <kill> and <reload> need it (taskitctl on this machine reads it)");
            files.0.push(path);
        }
        Ok(files)
    }
}

/// systemd's readiness protocol (`Type=notify`): one datagram to
/// `$NOTIFY_SOCKET` per state change. Without that variable, nothing.
mod sd_notify {
    use std::os::unix::net::UnixDatagram;

    pub fn notify(state: &str) {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        if let Err(err) = send(&path, state) {
            tracing::warn!(%err, "cannot notify the service manager");
        }
    }

    fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket name.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), path)?;
        }
        Ok(())
    }
}
