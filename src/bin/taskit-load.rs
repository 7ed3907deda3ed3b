//! `taskit-load`: many connections and many calls against one host, every
//! reply checked, the host's memory sampled throughout.
//!
//! ```sh
//! cargo build --release -p taskit-host -p taskit-demo
//! cargo run --release --bin taskit-load            # 1,000 connections, 1,000,000 calls
//! ```
//!
//! Connections are split between the native protocol in JSON and in
//! bincode, and TaskIt 4.0 (a new connection per call). Calls mix `add`,
//! `echo` of varied strings, `greet` with keyword arguments, and `get-error`
//! (an error on purpose, whose type and args are checked too). It ends with
//! one summary line a script can check:
//!
//! `load: sent=N answered=N wrong=N lost=N …`
//!
//! and exits non-zero if any reply was wrong or lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde_json::Value;
use taskit::harness::{rss_kib, SelfHost};
use taskit_plugin_api::frontend::{BackendAddr, CallOptions, FrontEnd, FrontendError};
use taskit_plugin_api::CodecKind;

#[derive(Debug, Parser)]
#[command(about = "Load test: many connections, many calls, every reply checked")]
struct Args {
    /// A running host to load (default: start one with the demo plugin).
    #[arg(long)]
    host: Option<SocketAddr>,
    /// PID of that host, to sample its memory.
    #[arg(long)]
    host_pid: Option<u32>,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Calls in all.
    #[arg(long, default_value_t = 1_000_000)]
    calls: u64,
    /// Out of every 100 connections, how many speak TaskIt 4.0 (one TCP
    /// connection per call) instead of the native protocol.
    #[arg(long, default_value_t = 2)]
    taskit4_percent: usize,
    /// Seconds a single call may take before it counts as lost.
    #[arg(long, default_value_t = 60.0)]
    call_timeout: f64,
    /// Faults while the load runs (needs the self-started host and the
    /// libraries taskit-demo-next and taskit-fixture-faulty built): the demo
    /// plugin replaced this many times, a plugin whose task panics called
    /// by every connection, clients vanishing mid-message, and a client that
    /// stops reading its replies.
    #[arg(long, value_name = "RELOADS")]
    faults: Option<u32>,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    wrong: AtomicU64,
    lost: AtomicU64,
    errors_expected: AtomicU64,
}

/// One call of the mix.
enum Call {
    Add(i64, i64),
    Echo(String),
    Greet(String, bool),
    GetError,
    /// The faulty plugin's task that panics with this message.
    Panic(String),
}

/// The `n`th call of connection `c`: a deterministic mix (with faults, one
/// call in 20 panics on purpose).
fn plan(c: usize, n: u64, faults: bool) -> Call {
    let i = (c as i64) * 1_000_003 + n as i64;
    if faults && n % 20 == 19 {
        return Call::Panic(format!("boom {c}-{n}"));
    }
    match n % 10 {
        0..=5 => Call::Add(i, 7),
        6 | 7 => Call::Echo(format!("{c}-{n}-{}", "é".repeat((n % 40) as usize))),
        8 => Call::Greet(format!("user{c}"), n.is_multiple_of(2)),
        _ => Call::GetError,
    }
}

/// Makes the call (with argument and result types, as bincode needs) and
/// says whether the reply was the right one; `Err` if it was lost.
async fn make(fe: &FrontEnd, call: &Call, timeout: Duration) -> Result<bool, FrontendError> {
    let plain = CallOptions::default().timeout(timeout);
    match call {
        Call::Add(x, y) => Ok(fe.call_with::<i64>("add", &(*x, *y), &plain).await? == x + y),
        Call::Echo(s) => Ok(&fe
            .call_with::<String>("echo", &(s.as_str(),), &plain)
            .await?
            == s),
        Call::Greet(name, excited) => {
            let options = plain.kw("greeting", "Hi").kw("excited", *excited);
            let end = if *excited { "!" } else { "." };
            Ok(fe
                .call_with::<String>("greet", &(name.as_str(),), &options)
                .await?
                == format!("Hi, {name}{end}"))
        }
        Call::GetError => match fe.call_with::<()>("get-error", &(), &plain).await {
            Err(FrontendError::BackendProcessing { kind, args }) => {
                Ok(kind == "AssertionError" && args == vec![Value::from("this task always fails")])
            }
            Err(e) => Err(e),
            Ok(()) => Ok(false),
        },
        Call::Panic(message) => match fe
            .call_with::<bool>("panic", &(message.as_str(),), &plain)
            .await
        {
            Err(FrontendError::BackendProcessing { kind, args }) => {
                Ok(kind == "Panic" && args == vec![Value::from(message.as_str())])
            }
            Err(e) => Err(e),
            Ok(_) => Ok(false),
        },
    }
}

async fn connection(
    c: usize,
    backend: BackendAddr,
    calls: u64,
    tally: Arc<Tally>,
    timeout: Duration,
    examples: Arc<std::sync::Mutex<Vec<String>>>,
    faults: bool,
) {
    let fe = FrontEnd::new([backend.clone()]);
    for n in 0..calls {
        let call = plan(c, n, faults);
        tally.sent.fetch_add(1, Ordering::Relaxed);
        if matches!(call, Call::GetError | Call::Panic(_)) {
            tally.errors_expected.fetch_add(1, Ordering::Relaxed);
        }
        let outcome = make(&fe, &call, timeout).await;
        let problem = match outcome {
            Ok(true) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Answered, with another value or another error than expected.
            Ok(false) | Err(FrontendError::BackendProcessing { .. }) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
                tally.wrong.fetch_add(1, Ordering::Relaxed);
                format!(
                    "connection {c} ({:?}/{:?}) call {n}: wrong reply {outcome:?}",
                    backend.protocol, backend.codec
                )
            }
            Err(e) => {
                tally.lost.fetch_add(1, Ordering::Relaxed);
                format!(
                    "connection {c} ({:?}/{:?}) call {n}: lost: {e}",
                    backend.protocol, backend.codec
                )
            }
        };
        let mut ex = examples.lock().unwrap();
        if ex.len() < 5 {
            ex.push(problem);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut own = None;
    let (addr, pid) = match args.host {
        Some(addr) => (addr, args.host_pid),
        None => {
            let host = SelfHost::start_with(&["--max-tasks", "64"])?;
            let (addr, pid) = (host.addr, host.pid());
            own = Some(host);
            (addr, Some(pid))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let faults = match (args.faults, &own) {
        (None, _) => None,
        (Some(reloads), Some(host)) => Some(Faults::prepare(host, addr, reloads)?),
        (Some(_), None) => anyhow::bail!("--faults needs the self-started host (no --host)"),
    };
    let rss_before = pid.and_then(rss_kib);
    let peak = Arc::new(AtomicU64::new(rss_before.unwrap_or(0)));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = pid.map(|pid| {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });

    let tally = Arc::new(Tally::default());
    let examples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let timeout = Duration::try_from_secs_f64(args.call_timeout).context("--call-timeout")?;
    let per_conn = args.calls / args.connections.max(1) as u64;
    let extra = args.calls % args.connections.max(1) as u64;
    let started = Instant::now();
    let fault_threads = faults.map(|f| f.start(Arc::clone(&done)));
    runtime.block_on(async {
        let mut tasks = Vec::with_capacity(args.connections);
        for c in 0..args.connections {
            let base = BackendAddr::from(addr);
            let backend = if c % 100 < args.taskit4_percent {
                base.taskit4()
            } else if c % 2 == 0 {
                base
            } else {
                base.codec(CodecKind::Bincode)
            };
            let calls = per_conn + u64::from((c as u64) < extra);
            tasks.push(tokio::spawn(connection(
                c,
                backend,
                calls,
                Arc::clone(&tally),
                timeout,
                Arc::clone(&examples),
                args.faults.is_some(),
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let fault_counts = fault_threads.map(FaultThreads::join);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    // Give the host a moment to free what the load held.
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = pid.and_then(rss_kib);
    drop(own);

    for e in examples.lock().unwrap().iter() {
        eprintln!("example: {e}");
    }
    let (sent, answered, wrong, lost) = (
        tally.sent.load(Ordering::Relaxed),
        tally.answered.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
    );
    let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    println!(
        "load: sent={sent} answered={answered} wrong={wrong} lost={lost} expected_errors={} connections={} \
         seconds={seconds:.1} calls_per_second={:.0} host_rss_kib_before={} host_rss_kib_peak={} host_rss_kib_after={}",
        tally.errors_expected.load(Ordering::Relaxed),
        args.connections,
        sent as f64 / seconds,
        kib(rss_before),
        peak.load(Ordering::Relaxed),
        kib(rss_after),
    );
    if let Some(f) = fault_counts {
        println!(
            "faults: reloads={} vanished_clients={} stalled_clients={} (calls above include panicking ones)",
            f.reloads, f.vanished, f.stalled
        );
    }
    if wrong > 0 || lost > 0 || answered != sent {
        std::process::exit(1);
    }
    Ok(())
}

/// What `--faults` does while the load runs.
struct Faults {
    dir: std::path::PathBuf,
    versions: [std::path::PathBuf; 2],
    addr: SocketAddr,
    reloads: u32,
}

struct FaultThreads {
    threads: Vec<std::thread::JoinHandle<u64>>,
}

struct FaultCounts {
    reloads: u64,
    vanished: u64,
    stalled: u64,
}

impl Faults {
    /// Installs the panicking plugin beside the demo one and waits for it.
    fn prepare(host: &SelfHost, addr: SocketAddr, reloads: u32) -> anyhow::Result<Self> {
        let dir = host.plugins_dir().to_owned();
        let versions = [
            taskit::harness::built_library("taskit_demo_next")?,
            taskit::harness::built_library("taskit_demo")?,
        ];
        let faulty = taskit::harness::built_library("taskit_fixture_faulty")?;
        std::fs::copy(&faulty, dir.join(".faulty.so.tmp"))?;
        std::fs::rename(dir.join(".faulty.so.tmp"), dir.join("faulty.so"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let fe = FrontEnd::new([BackendAddr::from(addr)]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while rt.block_on(fe.call::<String>("fine", &())).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the faulty plugin never loaded");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            dir,
            versions,
            addr,
            reloads,
        })
    }

    fn start(self, done: Arc<AtomicBool>) -> FaultThreads {
        let mut threads = Vec::new();
        // Reload storm: replace demo.so, alternating versions, by rename.
        {
            let (dir, versions, reloads) = (self.dir.clone(), self.versions.clone(), self.reloads);
            threads.push(std::thread::spawn(move || {
                let mut n = 0u64;
                for i in 0..reloads {
                    let tmp = dir.join(".demo.so.tmp");
                    if std::fs::copy(&versions[i as usize % 2], &tmp).is_ok()
                        && std::fs::rename(&tmp, dir.join("demo.so")).is_ok()
                    {
                        n += 1;
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
                n
            }));
        }
        // Clients that vanish mid-message, in both protocols.
        {
            let (addr, done) = (self.addr, Arc::clone(&done));
            threads.push(std::thread::spawn(move || {
                use std::io::Write;
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let partial: &[u8] = if n.is_multiple_of(2) {
                        b"TKIT\x01\x00\x00\x00\x00\x00\x01\x00\x00\x00"
                    } else {
                        b"00100[\"add\", [1,"
                    };
                    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                        let _ = s.write_all(partial);
                        n += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                n
            }));
        }
        // A client that pipelines calls and never reads a reply.
        {
            let (addr, done) = (self.addr, done);
            threads.push(std::thread::spawn(move || {
                use std::io::Write;
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        let mut out =
                            taskit_plugin_api::wire::native::client_hello(CodecKind::Json).to_vec();
                        let payload = format!("[\"{}\"]", "z".repeat(4000));
                        for id in 0..500 {
                            taskit_plugin_api::wire::native::encode_call(
                                &mut out,
                                id,
                                "echo",
                                payload.as_bytes(),
                                b"",
                            );
                        }
                        let _ = s.write_all(&out);
                        n += 1;
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                n
            }));
        }
        FaultThreads { threads }
    }
}

impl FaultThreads {
    fn join(self) -> FaultCounts {
        let mut counts = self.threads.into_iter().map(|t| t.join().unwrap_or(0));
        FaultCounts {
            reloads: counts.next().unwrap_or(0),
            vanished: counts.next().unwrap_or(0),
            stalled: counts.next().unwrap_or(0),
        }
    }
}
