//! What the end-to-end tests (`tests/`) and the measuring binaries
//! (`taskit-bench`, `taskit-load`) share, compiled once for all of them.
//!
//! | module | |
//! |---|---|
//! | [`built`] | the binaries and plugin `.so` files under test, built by cargo once per test process |
//! | [`process`] | a real `taskit-host` process: started, its log read, its address learnt, stopped |
//! | [`fs`] | private temporary directories; installing a plugin as an operator would |
//! | [`memory`] | a process's resident memory and retired plugin mappings, from `/proc` |
//! | [`in_process`] | a plugin host inside the test process, and calls into its registry |
//!
//! Waiting is done by polling a state with a deadline ([`wait_until`]), never
//! by sleeping for a time and hoping.

pub mod built;
pub mod fs;
pub mod in_process;
pub mod memory;
pub mod process;
pub mod python;

pub use built::{built, example, host_binary, plugin, profile_dir};
pub use fs::{demo_dir, install_by_overwrite, install_by_rename, private_token_file, TempDir};
pub use in_process::{call, call_with, start_host};
pub use memory::{rss_kib, status_kib};
pub use process::{HostProcess, SelfHost};
pub use python::{pip_install, venv_python};

use std::time::{Duration, Instant};

/// Polls `cond` until it holds. The deadline only keeps a broken build from
/// hanging forever; it is not a speed assertion.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The first of `n` consecutive free loopback ports (free when checked).
pub fn consecutive_free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
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

/// One HTTP/1.1 request to `addr` (the host's `--metrics` endpoint): the
/// status code and the body.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_owned())
}

/// The address a host started with `--metrics ADDR:0` serves metrics on,
/// from its log.
pub fn metrics_addr(host: &mut HostProcess) -> std::net::SocketAddr {
    let line = host.expect_line(&["metrics and health served"]);
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}
