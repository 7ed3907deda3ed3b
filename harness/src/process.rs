//! A real `taskit-host` process: started on a free loopback port, its log
//! read line by line, its address learnt from its ready line, killed when
//! dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::fs::TempDir;

/// A running `taskit-host`, killed on drop, whose stderr lines arrive on a
/// channel (and are appended to the file `TASKIT_HOST_LOG` names, if set).
pub struct HostProcess {
    /// The process.
    pub child: Child,
    /// Its log lines not yet read.
    pub lines: Receiver<String>,
    /// Log lines already read by [`expect_line`](Self::expect_line).
    pub seen: Vec<String>,
}

impl HostProcess {
    /// Starts `binary` with exactly `args`, `RUST_LOG` set to `filter`.
    pub fn spawn(binary: &Path, args: &[&str], filter: &str) -> Self {
        Self::try_spawn(binary, args, filter).expect("start taskit-host")
    }

    /// As [`spawn`](Self::spawn), reporting a failure to start.
    ///
    /// With `TASKIT_TEST_ISOLATION` set (`none` or `process`), a host whose
    /// arguments do not choose its isolation gets `--isolation` with that
    /// value: CI runs the end-to-end tests once more with
    /// `TASKIT_TEST_ISOLATION=none`.
    pub fn try_spawn(binary: &Path, args: &[&str], filter: &str) -> std::io::Result<Self> {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Ok(mode) = std::env::var("TASKIT_TEST_ISOLATION") {
            if !args.iter().any(|a| a == "--isolation") {
                args.extend(["--isolation".to_owned(), mode]);
            }
        }
        let mut child = Command::new(binary)
            .args(&args)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let mut keep = std::env::var_os("TASKIT_HOST_LOG").and_then(|path| {
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        // Read to the end whether or not anyone listens, so the host never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = keep.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
                let _ = tx.send(line);
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Starts the built `taskit-host` with `args` on a free loopback port.
    pub fn start(args: &[&str]) -> Self {
        Self::start_logging(args, "info")
    }

    /// As [`start`](Self::start), with `RUST_LOG` set to `filter`.
    pub fn start_logging(args: &[&str], filter: &str) -> Self {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--bind", "127.0.0.1:0"]);
        Self::spawn(&crate::built::host_binary(), &all, filter)
    }

    /// Starts the built `taskit-host` with exactly `args` (which name the
    /// address).
    pub fn start_without_bind(args: &[&str]) -> Self {
        Self::spawn(&crate::built::host_binary(), args, "info")
    }

    /// Starts a host serving the plugins in `dir` and waits until it is
    /// ready; returns it and its address.
    pub fn serving(dir: &Path, extra: &[&str]) -> (Self, SocketAddr) {
        let mut args = vec!["--plugins", dir.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let mut host = Self::start(&args);
        let addr = host.ready();
        (host, addr)
    }

    /// Waits for the ready line and returns the address it listens on.
    pub fn ready(&mut self) -> SocketAddr {
        let line = self.expect_line(&["taskit-host ready"]);
        listening_addr(&line).unwrap_or_else(|| panic!("no address in {line}"))
    }

    /// Waits for a line containing every one of `parts`, and returns it.
    pub fn expect_line(&mut self, parts: &[&str]) -> String {
        self.try_expect_line(parts, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no line with {parts:?}; saw:\n{}", self.seen.join("\n")))
    }

    /// Waits up to `limit` for a line containing every one of `parts`;
    /// `None` if the log ends or the time passes first.
    pub fn try_expect_line(&mut self, parts: &[&str], limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if parts.iter().all(|p| line.contains(p)) {
                return Some(line);
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.child.wait().expect("wait for taskit-host").code()
    }

    /// Waits up to `limit` for it to exit by itself; `None` if it did not
    /// (it is then killed when dropped).
    pub fn wait_exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(drop)
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a `taskit-host ready` line (`listening=ADDR[, ADDR…]`).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let listening = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listening="))?;
    listening.trim_end_matches(',').parse().ok()
}

/// A `taskit-host` started by a measuring binary, with the demo plugin, both
/// found next to the running executable (`cargo build --release` puts them
/// there).
pub struct SelfHost {
    /// The process.
    pub process: HostProcess,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: TempDir,
}

impl SelfHost {
    /// Starts it on a free loopback port with default flags.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts it on a free loopback port; extra flags go to the host.
    pub fn start_with(extra: &[&str]) -> std::io::Result<Self> {
        Self::start_bound("127.0.0.1:0", extra)
    }

    /// As [`start_with`](Self::start_with), listening on `bind` instead of
    /// a free port of 127.0.0.1: e.g. `127.0.0.3:40000`, or `127.0.0.2:0`
    /// for a free port of that address. Hosts on 127.0.0.2, 127.0.0.3, …
    /// sharing one port stand for the addresses behind one name.
    pub fn start_bound(bind: &str, extra: &[&str]) -> std::io::Result<Self> {
        let host_bin = beside_executable("taskit-host")?;
        let demo = built_library("taskit_demo")?;
        let dir = TempDir::new("bench");
        std::fs::copy(&demo, dir.join("demo.so"))?;
        let plugins = dir.path().display().to_string();
        let mut args = vec!["--plugins", &plugins, "--bind", bind];
        args.extend_from_slice(extra);
        let mut process = HostProcess::try_spawn(&host_bin, &args, "warn,taskit_host=info")?;
        let line = process
            .try_expect_line(&["taskit-host ready"], Duration::from_secs(60))
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "the host on {bind} was not ready:\n{}",
                    process.seen.join("\n")
                ))
            })?;
        let addr = listening_addr(&line)
            .ok_or_else(|| std::io::Error::other(format!("no address in {line}")))?;
        Ok(Self { process, addr, dir })
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its plugins directory (holding `demo.so`).
    pub fn plugins_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.process.kill()
    }

    /// Waits up to `limit` for it to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.process.wait_exit_within(limit)
    }
}

/// A file next to the running executable, which must exist.
fn beside_executable(name: &str) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| std::io::Error::other("the executable has no directory"))?;
    let path = dir.join(name);
    if !path.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is missing: run `cargo build --release -p taskit-host -p taskit-demo -p taskit-demo-next` first (or pass --host)",
            path.display()
        )));
    }
    Ok(path)
}

/// A plugin library built next to the running executable, e.g.
/// `built_library("taskit_demo_next")`.
pub fn built_library(name: &str) -> std::io::Result<PathBuf> {
    beside_executable(&format!("lib{name}.so"))
}
