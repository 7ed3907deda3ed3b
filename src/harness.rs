//! What the measuring binaries share: a `taskit-host` started for the run,
//! and reading a process's resident memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};

/// A `taskit-host` started for the run, with the demo plugin, found next
/// to the running executable.
pub struct SelfHost {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl SelfHost {
    /// Starts it on a free loopback port; extra flags go to the host.
    pub fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let bin_dir = std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("bench directory")?;
        let host_bin = bin_dir.join("taskit-host");
        let demo = bin_dir.join("libtaskit_demo.so");
        if !host_bin.is_file() || !demo.is_file() {
            bail!(
                "{} or {} is missing: run `cargo build --release -p taskit-host -p taskit-demo` first (or pass --host)",
                host_bin.display(),
                demo.display()
            );
        }
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("taskit-bench-{}-{nth}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&demo, dir.join("demo.so"))?;
        let mut child = Command::new(host_bin)
            .args([
                "--plugins",
                dir.to_str().context("utf-8 path")?,
                "--bind",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "warn,taskit_host=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stderr = child.stderr.take().context("host stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .context("the host exited before it was ready")??;
            if let Some(rest) = line.split("listening=").nth(1) {
                break rest.split_whitespace().next().context("address")?.parse()?;
            }
        };
        // Keep draining its log so it never blocks on a full pipe; keep it
        // in the file TASKIT_HOST_LOG names, if any.
        let mut keep = std::env::var_os("TASKIT_HOST_LOG").and_then(|path| {
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(file) = keep.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        Ok(Self { child, addr, dir })
    }
}

impl Drop for SelfHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SelfHost {
    /// Starts it with default flags.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its plugins directory (holding `demo.so`).
    pub fn plugins_dir(&self) -> &Path {
        &self.dir
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(drop)
    }

    /// Waits up to `limit` for it to exit by itself; `None` if it did not
    /// (it is then killed when dropped).
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }
}

/// A library built next to the running executable, e.g.
/// `built_library("taskit_demo_next")`.
pub fn built_library(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("executable directory")?;
    let lib = dir.join(format!("lib{name}.so"));
    if !lib.is_file() {
        bail!(
            "{} is missing: build it first (cargo build -p ...)",
            lib.display()
        );
    }
    Ok(lib)
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A process's memory, in KiB: resident in all, and the anonymous part
/// (heap, stacks); the rest is file-backed pages (code, mapped libraries).
pub struct Memory {
    pub rss_kib: u64,
    pub anonymous_kib: u64,
}

/// Reads `/proc/<pid>/smaps_rollup`.
pub fn memory(pid: u32) -> Option<Memory> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("Rss:")?,
        anonymous_kib: field("Anonymous:")?,
    })
}

/// How many distinct deleted files ending in `.so` process `pid` still maps:
/// retired plugin copies whose file is gone.
pub fn retired_plugin_mappings(pid: u32) -> Option<usize> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut paths: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.strip_suffix(" (deleted)"))
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.ends_with(".so"))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    Some(paths.len())
}
