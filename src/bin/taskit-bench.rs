//! `taskit-bench`: latency and throughput of calls to a host, beside a raw
//! TCP ping-pong between two processes (the floor), all in one run.
//!
//! ```sh
//! cargo build --release -p taskit-host -p taskit-demo
//! cargo run --release --bin taskit-bench
//! ```
//!
//! It starts its own `taskit-host` (found next to its own executable) with
//! the demo plugin, unless `--host ADDR` names a running one. With
//! `--python PY` (a Python with `taskit==4.0.0`), it also times the
//! original TaskIt 4.0 client against the original backend and against
//! this host. It prints a table, then one JSON line of every figure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::{json, Value};
use taskit_plugin_api::frontend::{BackendAddr, FrontEnd};
use taskit_plugin_api::wire::native;
use taskit_plugin_api::CodecKind;

#[derive(Debug, Parser)]
#[command(about = "Measures TaskIt call latency and throughput against a raw TCP floor")]
struct Args {
    /// A running host to measure (default: start one with the demo plugin).
    #[arg(long)]
    host: Option<SocketAddr>,
    /// Waited calls per latency measurement.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Calls in flight for the throughput measurements (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    in_flight: Vec<usize>,
    /// A Python with taskit==4.0.0 installed, to time the original too.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Internal: run as the echo server of the ping-pong floor.
    #[arg(long, hide = true)]
    echo_server: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.echo_server {
        return echo_server();
    }
    let mut host = None;
    let addr = match args.host {
        Some(addr) => addr,
        None => {
            let started = taskit::harness::SelfHost::start()?;
            let addr = started.addr;
            host = Some(started);
            addr
        }
    };
    let mut figures = serde_json::Map::new();
    let mut rows: Vec<(String, String)> = Vec::new();

    // The floor: the same sizes as a native JSON add(4, 4) and its reply.
    let mut request = Vec::new();
    native::encode_call(&mut request, 1, "add", b"[4,4]", b"");
    let mut reply = Vec::new();
    native::encode_ok(&mut reply, 1, b"8");
    let floor = ping_pong(request.len(), reply.len(), args.calls)?;
    rows.push(("raw TCP ping-pong (2 processes)".into(), floor.describe()));
    figures.insert("floor".into(), floor.json());

    // One thread for the client: no cross-thread wake-ups on its side.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (name, backend) in [
        ("native json", BackendAddr::from(addr)),
        (
            "native bincode",
            BackendAddr::from(addr).codec(CodecKind::Bincode),
        ),
        ("taskit4", BackendAddr::from(addr).taskit4()),
    ] {
        let calls = if backend.protocol == taskit_plugin_api::frontend::Protocol::Taskit4 {
            args.calls / 4
        } else {
            args.calls
        };
        let lat = rt.block_on(latency(backend.clone(), calls))?;
        rows.push((format!("{name}: waited add(4, 4)"), lat.describe()));
        let key = name.replace(' ', "_");
        figures.insert(format!("{key}_latency"), lat.json());
        if name != "native json" && name != "native bincode" {
            // TaskIt 4.0 opens a connection per call: one measurement at 16.
            let tput = rt.block_on(throughput(backend, 16, args.seconds))?;
            rows.push((
                format!("{name}: throughput, 16 in flight"),
                format!("{tput:.0} calls/s"),
            ));
            figures.insert(format!("{key}_throughput"), json!({"16": tput}));
            continue;
        }
        let mut by_depth = serde_json::Map::new();
        for &depth in &args.in_flight {
            let tput = rt.block_on(throughput(backend.clone(), depth, args.seconds))?;
            rows.push((
                format!("{name}: throughput, {depth} in flight"),
                format!("{tput:.0} calls/s"),
            ));
            by_depth.insert(depth.to_string(), json!(tput));
        }
        figures.insert(format!("{key}_throughput"), Value::Object(by_depth));
    }
    let native_lat = figures["native_bincode_latency"]["median_us"]
        .as_f64()
        .unwrap_or(0.0);
    let ratio = native_lat / floor.median_us();
    rows.push((
        "native bincode median / floor median".into(),
        format!("{ratio:.2}x"),
    ));
    figures.insert("native_latency_over_floor".into(), json!(ratio));

    if let Some(python) = &args.python {
        let ours = python_client(python, addr, 2000)?;
        let theirs = {
            let backend = PythonBackend::start(python)?;
            python_client(python, backend.addr, 2000)?
        };
        rows.push((
            "TaskIt 4.0 Python client -> this host".into(),
            format!("{ours:.1} µs/call"),
        ));
        rows.push((
            "TaskIt 4.0 Python client -> Python backend".into(),
            format!("{theirs:.1} µs/call"),
        ));
        figures.insert("python_client_our_host_us".into(), json!(ours));
        figures.insert("python_client_python_backend_us".into(), json!(theirs));
        figures.insert(
            "native_speedup_over_python".into(),
            json!(theirs / native_lat),
        );
    }
    drop(host);

    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    println!("{:width$}  result", "measurement");
    for (k, v) in &rows {
        println!("{k:width$}  {v}");
    }
    println!("{}", Value::Object(figures));
    Ok(())
}

/// Latency samples, in microseconds.
struct Latency(Vec<f64>);

impl Latency {
    fn from(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self(samples.iter().map(|d| d.as_secs_f64() * 1e6).collect())
    }
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i]
    }
    fn median_us(&self) -> f64 {
        self.pct(0.5)
    }
    fn describe(&self) -> String {
        format!(
            "median {:.1} µs, p99 {:.1} µs ({} calls)",
            self.pct(0.5),
            self.pct(0.99),
            self.0.len()
        )
    }
    fn json(&self) -> Value {
        json!({"median_us": self.pct(0.5), "p99_us": self.pct(0.99), "calls": self.0.len()})
    }
}

/// A child process echoing fixed-size messages back, over loopback TCP.
fn echo_server() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let (mut s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    let mut sizes = [0u8; 8];
    s.read_exact(&mut sizes)?;
    let req = u32::from_be_bytes(sizes[..4].try_into()?) as usize;
    let rep = u32::from_be_bytes(sizes[4..].try_into()?) as usize;
    let (mut inb, outb) = (vec![0u8; req], vec![7u8; rep]);
    while s.read_exact(&mut inb).is_ok() {
        if s.write_all(&outb).is_err() {
            break;
        }
    }
    Ok(())
}

fn ping_pong(request: usize, reply: usize, rounds: usize) -> anyhow::Result<Latency> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--echo-server")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("echo server stdout")?).read_line(&mut line)?;
    let addr: SocketAddr = line.trim().parse().context("echo server address")?;
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut sizes = (request as u32).to_be_bytes().to_vec();
    sizes.extend_from_slice(&(reply as u32).to_be_bytes());
    s.write_all(&sizes)?;
    let (out, mut back) = (vec![1u8; request], vec![0u8; reply]);
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let t = Instant::now();
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        if i >= rounds / 10 {
            samples.push(t.elapsed());
        }
    }
    drop(s);
    let _ = child.wait();
    Ok(Latency::from(samples))
}

async fn latency(backend: BackendAddr, calls: usize) -> anyhow::Result<Latency> {
    let fe = FrontEnd::new([backend]);
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls + calls / 10 {
        let t = Instant::now();
        let v: i64 = fe.call("add", &(4i64, 4i64)).await?;
        if v != 8 {
            bail!("add(4, 4) answered {v}");
        }
        if i >= calls / 10 {
            samples.push(t.elapsed());
        }
    }
    Ok(Latency::from(samples))
}

async fn throughput(backend: BackendAddr, in_flight: usize, seconds: f64) -> anyhow::Result<f64> {
    let fe = FrontEnd::new([backend]);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut workers = Vec::new();
    let started = Instant::now();
    for w in 0..in_flight {
        let fe = fe.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut i = w as i64;
            while Instant::now() < deadline {
                let v: i64 = fe.call("add", &(i, 1i64)).await?;
                if v != i + 1 {
                    bail!("add({i}, 1) answered {v}");
                }
                i += 1;
                n += 1;
            }
            Ok(n)
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Times `calls` waited `add(4, 4)` calls of the original Python client;
/// returns microseconds per call.
fn python_client(python: &Path, addr: SocketAddr, calls: usize) -> anyhow::Result<f64> {
    let script = format!(
        "import time\nfrom taskit.frontend import FrontEnd\nfe = FrontEnd([('{}', {})])\n\
         for _ in range(200): fe.work('add', 4, 4)\nt = time.perf_counter()\n\
         for _ in range({calls}): assert fe.work('add', 4, 4) == 8\n\
         print((time.perf_counter() - t) / {calls} * 1e6)\n",
        addr.ip(),
        addr.port()
    );
    let out = Command::new(python).args(["-c", &script]).output()?;
    if !out.status.success() {
        bail!(
            "python client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The original TaskIt 4.0 backend serving `add`.
struct PythonBackend {
    child: Child,
    addr: SocketAddr,
}

impl PythonBackend {
    fn start(python: &Path) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let script = format!(
            "from taskit.backend import BackEnd, ADMIN_TASKS\nt = {{'add': lambda x, y: x + y}}\n\
             t.update(ADMIN_TASKS)\nBackEnd(t, '127.0.0.1', {port}).main()\n"
        );
        let child = Command::new(python)
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("the Python backend did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, addr })
    }
}

impl Drop for PythonBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
