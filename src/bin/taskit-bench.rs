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
//! this host. With the self-started host it also replaces the demo plugin
//! `--reloads` times under continuous calls (time from rename to the first
//! call answered by the new version, failed calls, memory before and
//! after). It prints a table, then one JSON line of every figure, and
//! writes two SVG plots into `--plots`: the latency distribution and
//! throughput against calls in flight.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::{json, Value};
use taskit::plot::{Chart, Series};
use taskit_harness::memory::{memory, retired_plugin_mappings, Memory};
use taskit_harness::process::{built_library, SelfHost};
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
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256,1024")]
    in_flight: Vec<usize>,
    /// Plugin replacements to time under load (needs taskit-demo-next
    /// built; 0 to skip; skipped with --host).
    #[arg(long, default_value_t = 100)]
    reloads: u32,
    /// Where to write latency.svg and throughput.svg.
    #[arg(long, default_value = "target/taskit-bench")]
    plots: PathBuf,
    /// A Python with taskit==4.0.0 installed, to time the original too.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Where the measured host runs its plugins (`process` or `none`); with
    /// `process`, a second host with `--isolation none` is measured too, as
    /// the baseline of the isolation ratios.
    #[arg(long, default_value = "process")]
    isolation: String,
    /// Keep every core busy with an idle-priority spinner (SCHED_IDLE)
    /// while measuring, so no message waits for a sleeping core to wake.
    #[arg(long)]
    awake_cores: bool,
    /// Internal: run as the echo server of the ping-pong floor.
    #[arg(long, hide = true)]
    echo_server: bool,
    /// Internal: spin at idle priority until killed.
    #[arg(long, hide = true)]
    spin: bool,
}

/// Idle-priority spinners, one per core, killed when dropped.
struct Spinners(Vec<Child>);

impl Spinners {
    fn start() -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let exe = std::env::current_exe()?;
        let children = (0..cores)
            .map(|_| {
                Command::new(&exe)
                    .arg("--spin")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(children))
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs only when nothing else wants the core, and dies with the bench.
fn spin() -> anyhow::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system calls on this process, with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            bail!("prctl: {}", std::io::Error::last_os_error());
        }
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            // At normal priority it would compete with what it measures.
            bail!("SCHED_IDLE: {}", std::io::Error::last_os_error());
        }
    }
    loop {
        std::hint::spin_loop();
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.echo_server {
        return echo_server();
    }
    if args.spin {
        return spin();
    }
    let _spinners = if args.awake_cores {
        Some(Spinners::start()?)
    } else {
        None
    };
    let mut host = None;
    let addr = match args.host {
        Some(addr) => addr,
        None => {
            let started = SelfHost::start_with(&["--isolation", &args.isolation])?;
            let addr = started.addr;
            host = Some(started);
            addr
        }
    };
    let mut figures = serde_json::Map::new();
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(host) = &host {
        // Idle: loaded, listening, nothing called yet.
        std::thread::sleep(Duration::from_millis(200));
        if let Some(m) = memory(host.pid()) {
            rows.push(("host memory, idle".into(), describe_memory(&m)));
            figures.insert("idle_rss_kib".into(), json!(m.rss_kib));
        }
    }
    let mut distributions: Vec<(String, Latency)> = Vec::new();
    let mut curves: Vec<Series> = Vec::new();

    // The floor: the same sizes as a native JSON add(4, 4) and its reply.
    let mut request = Vec::new();
    native::encode_call(&mut request, 1, "add", b"[4,4]", b"");
    let mut reply = Vec::new();
    native::encode_ok(&mut reply, 1, b"8");
    let floor = ping_pong(request.len(), reply.len(), args.calls)?;
    rows.push(("raw TCP ping-pong (2 processes)".into(), floor.describe()));
    figures.insert("floor".into(), floor.json());
    let floor_median = floor.median_us();
    distributions.push(("raw TCP ping-pong".into(), floor));

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
        distributions.push((name.to_owned(), lat));
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
        let mut curve = Series {
            name: name.to_owned(),
            points: Vec::new(),
        };
        for &depth in &args.in_flight {
            let tput = rt.block_on(throughput(backend.clone(), depth, args.seconds))?;
            rows.push((
                format!("{name}: throughput, {depth} in flight"),
                format!("{tput:.0} calls/s"),
            ));
            by_depth.insert(depth.to_string(), json!(tput));
            curve.points.push((depth as f64, tput));
        }
        figures.insert(format!("{key}_throughput"), Value::Object(by_depth));
        curves.push(curve);
    }
    let native_lat = figures["native_bincode_latency"]["median_us"]
        .as_f64()
        .unwrap_or(0.0);
    let ratio = native_lat / floor_median;
    rows.push((
        "native bincode median / floor median".into(),
        format!("{ratio:.2}x"),
    ));
    figures.insert("native_latency_over_floor".into(), json!(ratio));

    if host.is_some() && args.isolation == "process" {
        isolation_figures(&rt, &args, addr, &mut rows, &mut figures)?;
    }

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
    if let Some(host) = &host {
        if let Some(m) = memory(host.pid()) {
            rows.push((
                "host memory, after the calls above".into(),
                describe_memory(&m),
            ));
            figures.insert("after_load_rss_kib".into(), json!(m.rss_kib));
        }
        if args.reloads > 0 {
            reload_figures(host, args.reloads, &mut rows, &mut figures)?;
        }
        if args.isolation == "process" {
            crash_figures(host, &rt, &mut rows, &mut figures)?;
        }
    }
    drop(host);
    write_plots(&args.plots, distributions, curves)?;

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

/// Rounds of the isolation comparison: each measures both hosts, one
/// after the other, so a change in the machine's load falls on both.
const ISOLATION_ROUNDS: usize = 4;

/// The price of process isolation, measured against a host running the
/// same plugin in process, in this run: waited latency and throughput at
/// 256 in flight (native JSON), as ratios. Both hosts are measured in
/// alternation ([`ISOLATION_ROUNDS`] rounds), the samples of each pooled.
fn isolation_figures(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    ours: SocketAddr,
    rows: &mut Vec<(String, String)>,
    figures: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let baseline = SelfHost::start_with(&["--isolation", "none"])?;
    let hosts = [BackendAddr::from(ours), BackendAddr::from(baseline.addr)];
    let calls = (args.calls / ISOLATION_ROUNDS).max(1);
    let seconds = args.seconds / ISOLATION_ROUNDS as f64;
    let (mut samples, mut done) = ([Vec::new(), Vec::new()], [0.0f64; 2]);
    for _ in 0..ISOLATION_ROUNDS {
        for (i, host) in hosts.iter().enumerate() {
            samples[i].extend(rt.block_on(latency_samples(host.clone(), calls))?);
            done[i] += rt.block_on(throughput(host.clone(), 256, seconds))? * seconds;
        }
    }
    drop(baseline);
    let [ours_lat, lat] = samples.map(Latency::from);
    let [ours_tput, tput] = done.map(|n| n / (seconds * ISOLATION_ROUNDS as f64));
    for (name, lat, tput) in [("process", &ours_lat, ours_tput), ("none", &lat, tput)] {
        rows.push((
            format!("--isolation {name}: waited add(4, 4), interleaved"),
            lat.describe(),
        ));
        rows.push((
            format!("--isolation {name}: throughput, 256 in flight, interleaved"),
            format!("{tput:.0} calls/s"),
        ));
    }
    let lat_ratio = ours_lat.median_us() / lat.median_us();
    let tput_ratio = ours_tput / tput;
    rows.push((
        "process / none: median latency".into(),
        format!("{lat_ratio:.2}x"),
    ));
    rows.push((
        "process / none: throughput at 256".into(),
        format!("{tput_ratio:.2}x"),
    ));
    figures.insert("process_json_latency_interleaved".into(), ours_lat.json());
    figures.insert(
        "process_json_throughput_256_interleaved".into(),
        json!(ours_tput),
    );
    figures.insert("none_json_latency".into(), lat.json());
    figures.insert("none_json_throughput_256".into(), json!(tput));
    figures.insert("isolation_latency_ratio".into(), json!(lat_ratio));
    figures.insert("isolation_throughput_ratio".into(), json!(tput_ratio));
    Ok(())
}

/// Crashes a worker 4 times (one fewer than marks a plugin failed) with
/// the crasher fixture's `segv`: how long its caller waits for the
/// `WorkerCrashed` answer, and how long until a fresh worker answers.
/// Skipped if the fixture is not built.
fn crash_figures(
    host: &SelfHost,
    rt: &tokio::runtime::Runtime,
    rows: &mut Vec<(String, String)>,
    figures: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let Ok(crasher) = built_library("taskit_fixture_crasher") else {
        rows.push((
            "worker crashes".into(),
            "skipped: taskit-fixture-crasher not built".into(),
        ));
        return Ok(());
    };
    let dir = host.plugins_dir();
    let tmp = dir.join(".crasher.so.tmp");
    std::fs::copy(&crasher, &tmp)?;
    std::fs::rename(&tmp, dir.join("crasher.so"))?;
    let fe = FrontEnd::new([BackendAddr::from(host.addr)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.block_on(fe.call::<String>("crasher-fine", &())).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the crasher plugin never loaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut answered, mut restarted) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let sent = Instant::now();
        match rt.block_on(fe.call::<Value>("segv", &())) {
            Err(taskit_plugin_api::frontend::FrontendError::BackendProcessing { kind, .. })
                if kind == "WorkerCrashed" => {}
            other => anyhow::bail!("segv answered {other:?}"),
        }
        answered.push(sent.elapsed().as_secs_f64() * 1000.0);
        rt.block_on(fe.call::<String>("crasher-fine", &()))?;
        restarted.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    rows.push((
        "worker crash: call to WorkerCrashed answer (4 crashes)".into(),
        format!("max {:.1} ms", max(&answered)),
    ));
    rows.push((
        "worker crash: call to a fresh worker's answer (backoff included)".into(),
        format!("max {:.0} ms", max(&restarted)),
    ));
    figures.insert(
        "crash".into(),
        json!({"answer_ms": answered, "fresh_worker_ms": restarted}),
    );
    Ok(())
}

fn describe_memory(m: &Memory) -> String {
    format!(
        "RSS {:.1} MB ({:.1} MB anonymous, {:.1} MB file-backed)",
        m.rss_kib as f64 / 1024.0,
        m.anonymous_kib as f64 / 1024.0,
        m.rss_kib.saturating_sub(m.anonymous_kib) as f64 / 1024.0
    )
}

/// Replaces the demo plugin `reloads` times, alternating 0.2.0 and 0.1.0 by
/// rename, while a thread calls `add` without pause: the time from each
/// rename to the first call answered by the new version, calls failed, and
/// memory before and after.
fn reload_figures(
    host: &SelfHost,
    reloads: u32,
    rows: &mut Vec<(String, String)>,
    figures: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let versions = [
        (built_library("taskit_demo_next")?, "0.2.0"),
        (built_library("taskit_demo")?, "0.1.0"),
    ];
    let before = memory(host.pid()).context("host memory")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let addr = host.addr;
    let load = {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let fe = FrontEnd::new([BackendAddr::from(addr)]);
            rt.block_on(async {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    match fe.call::<i64>("add", &(i, 1i64)).await {
                        Ok(v) if v == i + 1 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            });
            Ok(())
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fe = FrontEnd::new([BackendAddr::from(addr)]);
    let dir = host.plugins_dir();
    let mut times = Vec::with_capacity(reloads as usize);
    for i in 0..reloads {
        let (lib, version) = &versions[i as usize % 2];
        let tmp = dir.join(".demo.so.tmp");
        std::fs::copy(lib, &tmp)?;
        let renamed = Instant::now();
        std::fs::rename(&tmp, dir.join("demo.so"))?;
        loop {
            if rt.block_on(fe.call::<String>("version", &()))? == *version {
                break;
            }
            if renamed.elapsed() > Duration::from_secs(30) {
                bail!("reload {i} to {version} not live after 30 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(renamed.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    load.join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    // Retired copies' shadow files are deleted once their calls end.
    std::thread::sleep(Duration::from_millis(500));
    let after = memory(host.pid()).context("host memory")?;
    let times = Latency::from(times);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    rows.push((
        format!("hot reload: rename to first call on the new version ({reloads} reloads)"),
        format!(
            "median {:.1} ms, max {:.1} ms",
            times.median_us() / 1e3,
            times.pct(1.0) / 1e3
        ),
    ));
    rows.push((
        "calls during the reloads".into(),
        format!("{ok} answered, {failed} failed"),
    ));
    rows.push((
        "host memory, before the reloads".into(),
        describe_memory(&before),
    ));
    rows.push((
        format!("host memory, after {reloads} reloads"),
        describe_memory(&after),
    ));
    let grow = |a: u64, b: u64| (a as f64 - b as f64) / f64::from(reloads);
    let per_rss = grow(after.rss_kib, before.rss_kib);
    let per_anon = grow(after.anonymous_kib, before.anonymous_kib);
    let mapped = retired_plugin_mappings(host.pid());
    rows.push((
        "memory growth per reload".into(),
        format!(
            "{per_rss:.0} KiB RSS ({per_anon:.0} KiB anonymous); retired copies still mapped: {}",
            mapped.map_or("?".into(), |n| n.to_string())
        ),
    ));
    figures.insert(
        "reload".into(),
        json!({
            "reloads": reloads,
            "median_ms": times.median_us() / 1e3,
            "max_ms": times.pct(1.0) / 1e3,
            "calls_answered": ok,
            "calls_failed": failed,
            "rss_kib_before": before.rss_kib,
            "rss_kib_after": after.rss_kib,
            "anonymous_kib_before": before.anonymous_kib,
            "anonymous_kib_after": after.anonymous_kib,
            "rss_kib_per_reload": per_rss,
            "anonymous_kib_per_reload": per_anon,
            "retired_copies_mapped": mapped,
        }),
    );
    Ok(())
}

/// Writes latency.svg (distribution of waited-call latency, the floor
/// included) and throughput.svg (calls per second against calls in flight).
fn write_plots(
    dir: &Path,
    distributions: Vec<(String, Latency)>,
    curves: Vec<Series>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let latency = Chart {
        title: "Waited add(4, 4): latency distribution".into(),
        x_label: "latency (µs, log scale)".into(),
        y_label: "fraction of calls at most this slow".into(),
        x_log: true,
        series: distributions
            .into_iter()
            .map(|(name, lat)| Series {
                name,
                points: lat.cdf(200),
            })
            .collect(),
        references: Vec::new(),
    };
    let throughput = Chart {
        title: "add throughput from one client process".into(),
        x_label: "calls in flight (log scale)".into(),
        y_label: "calls per second".into(),
        x_log: true,
        series: curves,
        references: vec![("target 200k/s".into(), 200_000.0)],
    };
    for (name, chart) in [("latency.svg", latency), ("throughput.svg", throughput)] {
        let path = dir.join(name);
        std::fs::write(&path, chart.svg()).with_context(|| format!("write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
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
    /// The distribution at `steps + 1` evenly spaced fractions:
    /// `(latency, fraction of calls at most that slow)`.
    fn cdf(&self, steps: usize) -> Vec<(f64, f64)> {
        (0..=steps)
            .map(|i| {
                let p = i as f64 / steps as f64;
                (self.pct(p), p)
            })
            .collect()
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
    latency_samples(backend, calls).await.map(Latency::from)
}

/// The time of each of `calls` waited calls, after a tenth as many to warm
/// up.
async fn latency_samples(backend: BackendAddr, calls: usize) -> anyhow::Result<Vec<Duration>> {
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
    Ok(samples)
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
