//! The plugin walk-through: build a plugin, drop it into a running host,
//! call it, change it, and see the change live.
//!
//! ```sh
//! cargo run --example plugin_walkthrough
//! ```
//!
//! It builds `plugins/demo` (version 0.1.0) and the same source as version
//! 0.2.0 (`plugins/fixtures/demo-next`) with cargo, starts a host serving an
//! empty plugins directory, and plays the operator's part.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskit_host::{HostConfig, PluginHost, Registry, Server, ServerConfig};
use taskit_plugin_api::frontend::{BackendAddr, FrontEnd};

/// `target/<profile>`, where cargo puts the plugin libraries.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/examples/<this example>
    exe.parent()
        .and_then(Path::parent)
        .expect("profile directory")
        .to_owned()
}

fn build_plugins() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let profile = profile_dir();
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "-p", "taskit-demo", "-p", "taskit-demo-next"]);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    println!("1. build the plugin: {cmd:?}");
    if !cmd.status()?.success() {
        return Err("cargo build failed".into());
    }
    Ok(profile)
}

/// Copies a library into the plugins directory the safe way: a hidden
/// temporary name, then an atomic rename.
fn drop_in(lib: &Path, dir: &Path) -> std::io::Result<()> {
    let tmp = dir.join(".demo.so.tmp");
    std::fs::copy(lib, &tmp)?;
    std::fs::rename(tmp, dir.join("demo.so"))
}

async fn wait_for_version(
    fe: &FrontEnd,
    want: &str,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let started = Instant::now();
    loop {
        if let Ok(v) = fe.call::<String>("version", &()).await {
            if v == want {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("version {want} never appeared").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let profile = build_plugins()?;
    let dir = std::env::temp_dir().join(format!("taskit-walkthrough-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let registry = Arc::new(Registry::new());
    let plugins = PluginHost::start_with(HostConfig::new(&dir), Arc::clone(&registry))?;
    let config = ServerConfig {
        binds: vec!["127.0.0.1:0".parse()?],
        ..ServerConfig::default()
    };
    let server = Server::start(config, plugins).await?;
    let addr = server.local_addrs()[0];
    println!("2. a host is running on {addr}, serving {}", dir.display());

    drop_in(&profile.join("libtaskit_demo.so"), &dir)?;
    let fe = FrontEnd::new([BackendAddr::from(addr)]);
    let took = wait_for_version(&fe, "0.1.0").await?;
    println!("3. dropped demo.so in; it answered after {took:?}");
    let sum: i64 = fe.call("add", &(4, 4)).await?;
    println!("4. add(4, 4) = {sum}");

    drop_in(&profile.join("libtaskit_demo_next.so"), &dir)?;
    let took = wait_for_version(&fe, "0.2.0").await?;
    println!("5. replaced it with version 0.2.0; live after {took:?}");
    let tasks = fe.tasks(addr).await?;
    println!(
        "6. the host now serves {} {}",
        tasks[0].name, tasks[0].version
    );

    drop(server);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
