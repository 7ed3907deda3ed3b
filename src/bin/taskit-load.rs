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
//! `load: sent=N answered=N refused=N wrong=N lost=N …`
//!
//! and exits non-zero if any reply was wrong or lost, or (with `--stop-at`)
//! if the host did not drain and exit 0. `refused` counts calls the host
//! did not run because it was stopping; it is 0 without `--stop-at`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde_json::Value;
use taskit_harness::memory::rss_kib;
use taskit_harness::process::{built_library, SelfHost};
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
    /// The share of connections, in percent, that speak TaskIt 4.0 (one TCP
    /// connection per call) instead of the native protocol.
    #[arg(long, default_value_t = 2)]
    taskit4_percent: usize,
    /// Seconds a single call may take before it counts as lost.
    #[arg(long, default_value_t = 60.0)]
    call_timeout: f64,
    /// Faults while the load runs (needs the self-started host and the
    /// libraries taskit-demo-next, taskit-fixture-faulty and
    /// taskit-fixture-removable built): the demo plugin replaced this many
    /// times, a plugin whose task panics called by every connection, a
    /// plugin removed while calls to it run (again and again), clients
    /// vanishing mid-message, a client that stops reading its replies, and
    /// a second host, shared by one connection in ten, killed half-way.
    #[arg(long, value_name = "RELOADS")]
    faults: Option<u32>,
    /// Send `<stop>` once this percentage of the calls has been sent: calls
    /// in flight must still be answered, later ones refused, and the host
    /// must exit 0.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u64).range(1..=99))]
    stop_at: Option<u64>,
}

/// Every call's outcome, counted once.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    wrong: AtomicU64,
    lost: AtomicU64,
    errors_expected: AtomicU64,
    /// Set just before `<stop>` is sent: from then on "not run" is a
    /// correct answer.
    stop_sent: AtomicBool,
    examples: Mutex<Vec<String>>,
}

impl Tally {
    /// Counts one outcome (`Ok(true)`: the right reply); says whether the
    /// caller should go on making calls.
    fn record(&self, what: impl FnOnce() -> String, outcome: Result<bool, FrontendError>) -> bool {
        let problem = match outcome {
            Ok(true) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            // Answered, with another value or another error than expected.
            Ok(false) | Err(FrontendError::BackendProcessing { .. }) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
                self.wrong.fetch_add(1, Ordering::Relaxed);
                format!("{}: wrong reply {outcome:?}", what())
            }
            // Not run, because the host is stopping: the one correct
            // failure, and only once `<stop>` went out.
            Err(FrontendError::Stopping(_) | FrontendError::BackendNotAvailable)
                if self.stop_sent.load(Ordering::Acquire) =>
            {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Err(e) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                format!("{}: lost: {e}", what())
            }
        };
        let mut examples = self.examples.lock().unwrap_or_else(|e| e.into_inner());
        if examples.len() < 5 {
            examples.push(problem);
        }
        true
    }
}

/// One call of the mix.
enum Call {
    Add(i64, i64),
    Echo(String),
    Greet(String, bool),
    GetError,
    /// `wait-double(ms)`: a call that stays in flight a while.
    WaitDouble(u64),
    /// The faulty plugin's task that panics with this message.
    Panic(String),
}

/// The `n`th call of connection `c`: a deterministic mix (with faults, one
/// call in 20 panics on purpose, and on connections shared with the second
/// host one in 10 waits 20 ms, so that host has calls in flight when killed).
fn plan(c: usize, n: u64, faults: bool, shared: bool) -> Call {
    let i = (c as i64) * 1_000_003 + n as i64;
    if faults && n % 20 == 19 {
        return Call::Panic(format!("boom {c}-{n}"));
    }
    if shared && n % 10 == 7 {
        return Call::WaitDouble(20);
    }
    match n % 10 {
        0..=5 => Call::Add(i, 7),
        6 | 7 => Call::Echo(format!("{c}-{n}-{}", "é".repeat((n % 40) as usize))),
        8 => Call::Greet(format!("user{c}"), n.is_multiple_of(2)),
        _ => Call::GetError,
    }
}

/// Makes the call (with argument and result types, as bincode needs) and
/// says whether the reply was the right one; `Err` if there was none.
async fn make(fe: &FrontEnd, call: &Call, plain: &CallOptions) -> Result<bool, FrontendError> {
    match call {
        Call::Add(x, y) => Ok(fe.call_with::<i64>("add", &(*x, *y), plain).await? == x + y),
        Call::Echo(s) => Ok(&fe
            .call_with::<String>("echo", &(s.as_str(),), plain)
            .await?
            == s),
        Call::Greet(name, excited) => {
            let options = plain.clone().kw("greeting", "Hi").kw("excited", *excited);
            let end = if *excited { "!" } else { "." };
            Ok(fe
                .call_with::<String>("greet", &(name.as_str(),), &options)
                .await?
                == format!("Hi, {name}{end}"))
        }
        Call::WaitDouble(ms) => {
            Ok(fe.call_with::<u64>("wait-double", &(*ms,), plain).await? == 2 * ms)
        }
        Call::GetError => expect_error(
            fe.call_with::<()>("get-error", &(), plain).await,
            "AssertionError",
            "this task always fails",
        ),
        Call::Panic(message) => expect_error(
            fe.call_with::<bool>("panic", &(message.as_str(),), plain)
                .await,
            "Panic",
            message,
        ),
    }
}

/// `Ok(true)` if `result` is the remote error `kind` with the single
/// argument `arg`.
fn expect_error<T>(
    result: Result<T, FrontendError>,
    kind: &str,
    arg: &str,
) -> Result<bool, FrontendError> {
    match result {
        Err(FrontendError::BackendProcessing { kind: k, args }) => {
            Ok(k == kind && args == vec![Value::from(arg)])
        }
        Err(e) => Err(e),
        Ok(_) => Ok(false),
    }
}

/// What every connection shares.
struct Shared {
    tally: Arc<Tally>,
    faults: bool,
}

/// One client connection's calls, in order.
async fn connection(
    c: usize,
    fe: FrontEnd,
    label: String,
    calls: u64,
    options: CallOptions,
    shared: Arc<Shared>,
) {
    let tally = &shared.tally;
    for n in 0..calls {
        let call = plan(c, n, shared.faults, fe.backends().len() > 1);
        tally.sent.fetch_add(1, Ordering::Relaxed);
        if matches!(call, Call::GetError | Call::Panic(_)) {
            tally.errors_expected.fetch_add(1, Ordering::Relaxed);
        }
        let outcome = make(&fe, &call, &options).await;
        if !tally.record(|| format!("connection {c} ({label}) call {n}"), outcome) {
            // Refused: the host is stopping; nothing more will run.
            break;
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
    let shared = Arc::new(Shared {
        tally: Arc::clone(&tally),
        faults: faults.is_some(),
    });
    let timeout = Duration::try_from_secs_f64(args.call_timeout).context("--call-timeout")?;
    let connections = args.connections.max(1);
    let per_conn = args.calls / connections as u64;
    let extra = args.calls % connections as u64;
    // The frontends shared with the second host, to see its calls in flight.
    let shared_fes = Arc::new(Mutex::new(Vec::new()));
    let second = faults.as_ref().map(|f| f.second.addr);
    let mut plans = Vec::with_capacity(connections);
    for c in 0..connections {
        let pick = |addr: SocketAddr| {
            let base = BackendAddr::from(addr);
            if c * 100 / connections < args.taskit4_percent {
                base.taskit4()
            } else if c % 2 == 0 {
                base
            } else {
                base.codec(CodecKind::Bincode)
            }
        };
        let mut options = CallOptions::default().timeout(timeout);
        let mut backends = vec![pick(addr)];
        if let Some(second) = second.filter(|_| c % 10 == 5) {
            backends.push(pick(second));
            // These tasks are safe to run twice: a call caught on the
            // killed host is sent to the survivor.
            options = options.idempotent();
        }
        let label = format!(
            "{:?}/{:?} x{}",
            backends[0].protocol,
            backends[0].codec,
            backends.len()
        );
        let fe = FrontEnd::new(backends.clone());
        if backends.len() > 1 {
            shared_fes.lock().unwrap().push(fe.clone());
        }
        let calls = per_conn + u64::from((c as u64) < extra);
        plans.push((c, fe, label, calls, options));
    }

    let started = Instant::now();
    let control = Control {
        tally: Arc::clone(&tally),
        total: args.calls,
        addr,
        pid,
        stop_at: args.stop_at,
        shared_fes,
        done: Arc::clone(&done),
    };
    let (fault_threads, second_host) = match faults {
        Some(f) => {
            let (threads, second) = f.start(Arc::clone(&done), Arc::clone(&tally));
            (Some(threads), Some(second))
        }
        None => (None, None),
    };
    let controller = std::thread::spawn(move || control.run(second_host));
    runtime.block_on(async {
        let tasks: Vec<_> = plans
            .into_iter()
            .map(|(c, fe, label, calls, options)| {
                tokio::spawn(connection(
                    c,
                    fe,
                    label,
                    calls,
                    options,
                    Arc::clone(&shared),
                ))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Release);
    let fault_counts = fault_threads.map(FaultThreads::join);
    let control = controller
        .join()
        .map_err(|_| anyhow::anyhow!("the control thread panicked"))?;
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let (rss_after_label, rss_after) = match control.rss_at_stop {
        Some(rss) => ("host_rss_kib_at_stop", Some(rss)),
        None => {
            // Give the host a moment to free what the load held.
            std::thread::sleep(Duration::from_millis(500));
            ("host_rss_kib_after", pid.and_then(rss_kib))
        }
    };
    // Without a stop, the host must have come through everything running.
    let up_after = own.as_mut().map(SelfHost::is_running);
    let exit = control
        .stop_sent_at
        .is_some()
        .then(|| own.as_mut().map(|h| h.wait_exit(Duration::from_secs(60))));
    drop(own);

    for e in tally.examples.lock().unwrap().iter() {
        eprintln!("example: {e}");
    }
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (sent, answered, refused, wrong, lost) = (
        count(&tally.sent),
        count(&tally.answered),
        count(&tally.refused),
        count(&tally.wrong),
        count(&tally.lost),
    );
    if let Some(f) = fault_counts {
        println!(
            "faults: reloads={} removals={} removals_with_calls_in_flight={} vanished_clients={} \
             stalled_clients={} second_host_killed_with_calls_in_flight={} \
             (calls above include panicking and removed-plugin ones)",
            f.reloads,
            f.removals,
            f.removals_mid_call,
            f.vanished,
            f.stalled,
            control
                .in_flight_at_kill
                .map_or("no".to_owned(), |n| n.to_string()),
        );
    }
    if control.stop_sent_at.is_none() {
        if let Some(up) = up_after {
            println!("host: up_after_load={}", if up { "yes" } else { "no" });
        }
    }
    // Up after the load, or (with a stop) drained and exited 0.
    let mut healthy = up_after != Some(false) || control.stop_sent_at.is_some();
    if let Some(at) = control.stop_sent_at {
        let status = match exit.flatten() {
            Some(Some(status)) => {
                healthy = status.code() == Some(0);
                status.code().map_or("signal".to_owned(), |c| c.to_string())
            }
            Some(None) => {
                healthy = false;
                "none-within-60s".to_owned()
            }
            // Not ours to wait for.
            None => "?".to_owned(),
        };
        println!("stop: sent_after_calls={at} host_exit={status}");
    }
    // Last: the line scripts check.
    let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    println!(
        "load: sent={sent} answered={answered} refused={refused} wrong={wrong} lost={lost} expected_errors={} \
         connections={connections} seconds={seconds:.1} calls_per_second={:.0} host_rss_kib_before={} \
         host_rss_kib_peak={} {rss_after_label}={}",
        count(&tally.errors_expected),
        sent as f64 / seconds,
        kib(rss_before),
        peak.load(Ordering::Relaxed),
        kib(rss_after),
    );
    if wrong > 0 || lost > 0 || answered + refused != sent || !healthy {
        std::process::exit(1);
    }
    Ok(())
}

/// What happens at set points of the load: the second host killed half-way,
/// `<stop>` sent at `--stop-at`.
struct Control {
    tally: Arc<Tally>,
    total: u64,
    addr: SocketAddr,
    pid: Option<u32>,
    stop_at: Option<u64>,
    shared_fes: Arc<Mutex<Vec<FrontEnd>>>,
    done: Arc<AtomicBool>,
}

#[derive(Default)]
struct ControlReport {
    /// Calls the shared frontends had in flight on the second host when it
    /// was killed.
    in_flight_at_kill: Option<usize>,
    stop_sent_at: Option<u64>,
    rss_at_stop: Option<u64>,
}

impl Control {
    fn run(self, mut second: Option<SelfHost>) -> ControlReport {
        let mut report = ControlReport::default();
        let kill_at = self.total / 2;
        let stop_at = self.stop_at.map(|p| self.total * p / 100);
        while !self.done.load(Ordering::Acquire) {
            let sent = self.tally.sent.load(Ordering::Relaxed);
            if sent >= kill_at {
                if let Some(mut host) = second.take() {
                    let port = host.addr.port();
                    let in_flight = self
                        .shared_fes
                        .lock()
                        .unwrap()
                        .iter()
                        .flat_map(|fe| fe.client_counts())
                        .filter(|(b, _)| b.port == port)
                        .map(|(_, n)| n)
                        .sum();
                    if host.kill().is_ok() {
                        report.in_flight_at_kill = Some(in_flight);
                    }
                }
            }
            if stop_at.is_some_and(|at| sent >= at) && report.stop_sent_at.is_none() {
                report.rss_at_stop = self.pid.and_then(rss_kib);
                self.tally.stop_sent.store(true, Ordering::Release);
                report.stop_sent_at = Some(sent);
                if let Err(e) = send_stop(self.addr) {
                    eprintln!("could not send <stop>: {e}");
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        report
    }
}

fn send_stop(addr: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin = FrontEnd::new([BackendAddr::from(addr)]);
    Ok(rt.block_on(admin.send_stop(addr))?)
}

/// What `--faults` does while the load runs.
struct Faults {
    dir: PathBuf,
    /// The demo plugin's two builds and the version each reports.
    versions: [(PathBuf, &'static str); 2],
    removable: PathBuf,
    addr: SocketAddr,
    reloads: u32,
    /// The second host, killed half-way.
    second: SelfHost,
}

struct FaultThreads {
    reloads: std::thread::JoinHandle<u64>,
    removals: std::thread::JoinHandle<(u64, u64)>,
    vanished: std::thread::JoinHandle<u64>,
    stalled: std::thread::JoinHandle<u64>,
}

struct FaultCounts {
    reloads: u64,
    removals: u64,
    removals_mid_call: u64,
    vanished: u64,
    stalled: u64,
}

/// Copies `lib` into `dir` as `name` by rename, as a deployment would.
fn install(lib: &Path, dir: &Path, name: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(lib, &tmp)?;
    std::fs::rename(&tmp, dir.join(name))
}

impl Faults {
    /// Installs the panicking plugin beside the demo one, waits for it, and
    /// starts the second host.
    fn prepare(host: &SelfHost, addr: SocketAddr, reloads: u32) -> anyhow::Result<Self> {
        let dir = host.plugins_dir().to_owned();
        let versions = [
            (built_library("taskit_demo_next")?, "0.2.0"),
            (built_library("taskit_demo")?, "0.1.0"),
        ];
        let removable = built_library("taskit_fixture_removable")?;
        let second = SelfHost::start_with(&["--max-tasks", "64"])?;
        let faulty = built_library("taskit_fixture_faulty")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Both hosts serve the panicking task: calls go to either.
        for (dir, addr) in [
            (&dir, addr),
            (&second.plugins_dir().to_owned(), second.addr),
        ] {
            install(&faulty, dir, "faulty.so")?;
            let fe = FrontEnd::new([BackendAddr::from(addr)]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while rt.block_on(fe.call::<String>("fine", &())).is_err() {
                anyhow::ensure!(Instant::now() < deadline, "the faulty plugin never loaded");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(Self {
            dir,
            versions,
            removable,
            addr,
            reloads,
            second,
        })
    }

    /// Starts the fault threads; returns them and the second host.
    fn start(self, done: Arc<AtomicBool>, tally: Arc<Tally>) -> (FaultThreads, SelfHost) {
        let stopped = {
            let tally = Arc::clone(&tally);
            move || tally.stop_sent.load(Ordering::Acquire)
        };
        let quit = {
            let (done, stopped) = (Arc::clone(&done), stopped.clone());
            move || done.load(Ordering::Acquire) || stopped()
        };
        // Reload storm: replace demo.so, alternating versions, by rename;
        // each swap counted once a call is answered by the new version.
        // All of them are done even if the load ends first (only a <stop>
        // cuts them short), so the count does not depend on the speed of
        // the machine.
        let reloads = {
            let (dir, versions, reloads, quit, addr) = (
                self.dir.clone(),
                self.versions.clone(),
                self.reloads,
                stopped.clone(),
                self.addr,
            );
            std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return 0;
                };
                let fe = FrontEnd::new([BackendAddr::from(addr)]);
                let mut n = 0u64;
                for i in 0..reloads {
                    let (lib, version) = &versions[i as usize % 2];
                    if quit() || install(lib, &dir, "demo.so").is_err() {
                        break;
                    }
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !quit() && Instant::now() < deadline {
                        if matches!(rt.block_on(fe.call::<String>("version", &())), Ok(v) if v == *version)
                        {
                            n += 1;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                n
            })
        };
        let removals = {
            let removal = Removal {
                fe: FrontEnd::new([BackendAddr::from(self.addr)]),
                dir: self.dir.clone(),
                lib: self.removable.clone(),
                tally,
            };
            let (done, stopped) = (Arc::clone(&done), stopped.clone());
            std::thread::spawn(move || removal.run(&stopped, &|| done.load(Ordering::Acquire)))
        };
        // Clients that vanish mid-message, in both protocols.
        let vanished = {
            let (addr, quit) = (self.addr, quit.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let mut n = 0u64;
                while !quit() {
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
            })
        };
        // A client that pipelines calls and never reads a reply.
        let stalled = {
            let addr = self.addr;
            std::thread::spawn(move || {
                use std::io::Write;
                let mut n = 0u64;
                while !quit() {
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
            })
        };
        let threads = FaultThreads {
            reloads,
            removals,
            vanished,
            stalled,
        };
        (threads, self.second)
    }
}

/// Installs the `removable` plugin, starts calls to its slow task, removes
/// the file while they run, and checks they still get their own answers
/// after new calls find the task gone. Over and over.
struct Removal {
    fe: FrontEnd,
    dir: PathBuf,
    lib: PathBuf,
    tally: Arc<Tally>,
}

/// Calls to the removed plugin started in each round, and how long each holds.
const HOLDS: u64 = 4;
const HOLD_MS: u64 = 1500;
/// Rounds the removal thread may add once the load is done, to see one
/// removal outlived by its calls.
const ROUNDS_AFTER_DONE: u32 = 5;

impl Removal {
    /// Rounds until `done` once a removal was outlived by its calls (at most
    /// [`ROUNDS_AFTER_DONE`] more rounds to see one), or until `stopped`:
    /// (removals seen, removals that calls outlived).
    fn run(self, stopped: &dyn Fn() -> bool, done: &dyn Fn() -> bool) -> (u64, u64) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return (0, 0);
        };
        let (mut removals, mut mid_call) = (0, 0);
        let (mut round, mut after_done) = (0, 0);
        while !stopped() {
            if done() {
                if mid_call > 0 || after_done == ROUNDS_AFTER_DONE {
                    break;
                }
                after_done += 1;
            }
            match rt.block_on(self.round(round, stopped)) {
                Some(outlived) => {
                    removals += 1;
                    mid_call += u64::from(outlived);
                }
                None => break,
            }
            round += 1;
        }
        (removals, mid_call)
    }

    /// One round; `Some(true)` if a call answered after the removal was
    /// seen, `None` if the round was cut short by `quit`.
    async fn round(&self, round: u64, quit: &dyn Fn() -> bool) -> Option<bool> {
        install(&self.lib, &self.dir, "removable.so").ok()?;
        let probe = || self.fe.call::<String>("hold", &(0u64, "probe"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while probe().await.is_err() {
            if quit() || Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Each on a connection of its own: a quick task may run inline on
        // its connection's thread, and the host reads no further call from
        // that connection meanwhile (see docs/plugins.md); calls it has not
        // read when the plugin goes away rightly find it gone.
        let holds: Vec<_> = (0..HOLDS)
            .map(|j| {
                let fe = FrontEnd::new(self.fe.backends());
                let token = format!("hold {round}-{j}");
                self.tally.sent.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let result = fe.call::<String>("hold", &(HOLD_MS, token.as_str())).await;
                    (token, result, Instant::now())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = std::fs::remove_file(self.dir.join("removable.so"));
        let mut gone_at = None;
        while gone_at.is_none() && !quit() && Instant::now() < deadline {
            match probe().await {
                Err(FrontendError::BackendProcessing { kind, .. }) if kind == "KeyError" => {
                    gone_at = Some(Instant::now())
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let mut outlived = false;
        for hold in holds {
            let Ok((token, result, at)) = hold.await else {
                self.tally.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let right = matches!(&result, Ok(v) if *v == token);
            outlived |= right && gone_at.is_some_and(|gone| at > gone);
            self.tally.record(
                || format!("removed plugin, {token}"),
                result.map(|v| v == token),
            );
        }
        gone_at.map(|_| outlived)
    }
}

impl FaultThreads {
    fn join(self) -> FaultCounts {
        let (removals, removals_mid_call) = self.removals.join().unwrap_or((0, 0));
        FaultCounts {
            reloads: self.reloads.join().unwrap_or(0),
            removals,
            removals_mid_call,
            vanished: self.vanished.join().unwrap_or(0),
            stalled: self.stalled.join().unwrap_or(0),
        }
    }
}
