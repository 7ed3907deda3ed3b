//! Shared by the end-to-end tests: real plugin `.so` files built by cargo
//! (once per test process), private temporary directories, and a polling
//! wait for things that happen on another thread.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use taskit_host::{HostConfig, PluginHost, Registry};
use taskit_plugin_api::{encode_args, Codec, CodecKind, EncodeArgs, Json, TaskError};

/// The crates the tests run: the host binary and the plugins it loads.
const BUILT_PACKAGES: &[&str] = &[
    "taskit-host",
    "taskitctl",
    "taskit-demo",
    "taskit-demo-next",
    "taskit-fixture-faulty",
    "taskit-fixture-removable",
    "taskit-fixture-init-panic",
    "taskit-fixture-conflict",
    "taskit-fixture-no-root",
    "taskit-fixture-bad-version",
    "taskit-fixture-bad-layout",
];

/// The target profile directory this test binary was built into
/// (`target/debug`), where the plugin libraries land too.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_owned()
}

/// Builds the host binary and every plugin crate the tests use (a no-op when they are fresh),
/// once per test process, and returns the directory holding them.
pub fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let release = profile.file_name().is_some_and(|n| n == "release");
        let cargo = |args: &[&str]| {
            let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.arg("build")
                .args(args)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build {args:?} failed");
        };
        let mut packages = Vec::new();
        for p in BUILT_PACKAGES {
            packages.extend(["-p", p]);
        }
        cargo(&packages);
        cargo(&[
            "-p",
            "taskit",
            "--example",
            "load_and_call",
            "--bin",
            "taskit-bench",
        ]);
        profile
    })
}

/// The built binary of example `name`.
pub fn example(name: &str) -> PathBuf {
    built().join("examples").join(name)
}

/// The built `taskit-host` binary.
pub fn host_binary() -> PathBuf {
    built().join("taskit-host")
}

/// The built library of a plugin crate, e.g. `plugin("taskit_demo")`.
pub fn plugin(lib_name: &str) -> PathBuf {
    let path = built().join(format!("lib{lib_name}.so"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "taskit-test-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `src` into `dir` as `name` the way an operator would replace a
/// plugin atomically: write a hidden temporary file, then rename it.
pub fn install_by_rename(src: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(src, &tmp).expect("copy plugin");
    std::fs::rename(&tmp, dir.join(name)).expect("rename plugin into place");
}

/// Overwrites `dir/name` in place, as `cp new.so dir/name` does.
pub fn install_by_overwrite(src: &Path, dir: &Path, name: &str) {
    std::fs::copy(src, dir.join(name)).expect("copy over plugin");
}

/// A plugin host on `dir` with a private shadow directory.
pub fn start_host(dir: &Path) -> PluginHost {
    PluginHost::start(HostConfig::new(dir)).expect("start plugin host")
}

/// Polls `cond` until it holds. The deadline only keeps a broken build from
/// hanging forever; it is not a speed assertion.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Calls `task` with JSON-encoded positional arguments and decodes the result.
pub fn call<T: DeserializeOwned>(
    registry: &Registry,
    task: &str,
    args: &impl EncodeArgs,
) -> Result<T, TaskError> {
    call_with::<Json, T>(registry, task, args, b"")
}

/// Calls `task` with codec `C` and keyword arguments given as JSON text.
pub fn call_with<C: Codec, T: DeserializeOwned>(
    registry: &Registry,
    task: &str,
    args: &impl EncodeArgs,
    kwargs: &[u8],
) -> Result<T, TaskError> {
    let codec = CodecKind::from_name(C::NAME).expect("built-in codec");
    let bytes = encode_args::<C, _>(args).expect("encode args");
    let not_cancelled = AtomicBool::new(false);
    let reply = registry.call(task, codec, &bytes, kwargs, &not_cancelled)?;
    Ok(C::decode(&reply).expect("decode reply"))
}

/// A line of `/proc/self/status` in KiB, e.g. `status_kib("VmRSS")`.
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// A running `taskit-host`, killed on drop, whose stderr lines arrive on a
/// channel.
pub struct HostProcess {
    pub child: Child,
    pub lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl HostProcess {
    /// Starts `taskit-host` with `args` on a free loopback port.
    pub fn start(args: &[&str]) -> Self {
        Self::start_logging(args, "info")
    }

    /// As [`start`](Self::start), with `RUST_LOG` set to `filter`.
    pub fn start_logging(args: &[&str], filter: &str) -> Self {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--bind", "127.0.0.1:0"]);
        Self::spawn(&all, filter)
    }

    /// Starts `taskit-host` with exactly `args` (which name the address).
    pub fn start_without_bind(args: &[&str]) -> Self {
        Self::spawn(args, "info")
    }

    fn spawn(args: &[&str], filter: &str) -> Self {
        let mut child = Command::new(host_binary())
            .args(args)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start taskit-host");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
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
        let listening = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listening="))
            .unwrap_or_else(|| panic!("no address in {line}"));
        listening
            .trim_end_matches(',')
            .parse()
            .expect("listening address")
    }

    /// Waits for a line containing every one of `parts`, and returns it.
    pub fn expect_line(&mut self, parts: &[&str]) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!("no line with {parts:?}; saw:\n{}", self.seen.join("\n"))
                });
            self.seen.push(line.clone());
            if parts.iter().all(|p| line.contains(p)) {
                return line;
            }
        }
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.child.wait().expect("wait for taskit-host").code()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plugins directory holding the demo plugin as `demo.so`.
pub fn demo_dir(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    dir
}

/// The first of `n` consecutive free loopback ports (free when checked).
pub fn consecutive_free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > 65535 - n {
            continue;
        }
        let held: Vec<_> = (0..n)
            .filter_map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}
