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

    /// Where private copies of loaded plugins go (default: a fresh
    /// directory under the system temporary directory).
    #[arg(long, value_name = "DIR")]
    shadow_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let mut config = HostConfig::new(&args.plugins);
    config.shadow_dir = args.shadow_dir;
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
        std::thread::park();
    }
}
