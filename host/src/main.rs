//! `taskit-host`: loads the plugins in a directory, keeps them in step with
//! it, and (from the network server on) serves their tasks.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use taskit_host::{HostConfig, PluginHost};
use tracing_subscriber::EnvFilter;

/// Loads task plugins (*.so) from a directory and hot-reloads them as the
/// directory changes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Directory of plugin files (*.so). Files are copied before loading, so
    /// they may be replaced at any time (cp over, or rename into place).
    #[arg(long, value_name = "DIR", default_value = "plugins.d")]
    plugins: PathBuf,

    /// Where to make the private directory of plugin copies, one per run,
    /// removed at exit (default: the system temporary directory).
    #[arg(long, value_name = "DIR")]
    shadow_dir: Option<PathBuf>,

    /// Do not watch the plugins directory; load it at start and on SIGHUP
    /// only (for file systems without change notification, such as NFS).
    #[arg(long)]
    no_watch: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any thread starts, so that every thread inherits the mask and
    // only `wait_for_signals` receives these.
    let signals = signals::block(&[libc::SIGHUP, libc::SIGINT, libc::SIGTERM])?;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let mut config = HostConfig::new(&args.plugins);
    config.shadow_dir = args.shadow_dir;
    config.watch = !args.no_watch;
    let host = PluginHost::start(config)
        .with_context(|| format!("cannot start with --plugins {}", args.plugins.display()))?;
    let plugins = host.registry().plugins();
    tracing::info!(
        plugins_dir = %args.plugins.display(),
        plugins = plugins.len(),
        tasks = host.registry().task_ids().len(),
        "taskit-host ready; watching for plugin changes"
    );
    loop {
        match signals::wait(&signals)? {
            libc::SIGHUP => {
                let summary = host.reload();
                tracing::info!(
                    loaded = summary.loaded.len(),
                    refused = summary.refused.len(),
                    removed = summary.removed.len(),
                    unchanged = summary.unchanged,
                    "SIGHUP: plugins directory rescanned"
                );
            }
            signal => {
                tracing::info!(signal, "stopping");
                drop(host);
                return Ok(());
            }
        }
    }
}

/// Synchronous signal handling: the signals are blocked in every thread and
/// taken one at a time with `sigwait`, so no code runs in a signal handler.
mod signals {
    use std::io;

    pub fn block(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
        // SAFETY: plain libc calls on a local, initialised signal set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                0 => Ok(set),
                err => Err(io::Error::from_raw_os_error(err)),
            }
        }
    }

    pub fn wait(set: &libc::sigset_t) -> io::Result<libc::c_int> {
        let mut signal = 0;
        // SAFETY: `set` was built by `block`; `signal` is a valid out pointer.
        match unsafe { libc::sigwait(set, &mut signal) } {
            0 => Ok(signal),
            err => Err(io::Error::from_raw_os_error(err)),
        }
    }
}
