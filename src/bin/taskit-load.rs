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
//!
//! `--cluster N` loads many hosts behind one name instead:
//!
//! ```sh
//! cargo build --release -p taskit-host -p taskit --bins && cargo build --release -p taskit-demo
//! target/release/taskit-load --cluster 3
//! ```
//!
//! N hosts with the demo plugin listen on 127.0.0.2, 127.0.0.3, … all on
//! one port, like the pods behind a headless Service, and the callers reach
//! them through `dns:taskit-load:PORT`, which a [`Resolver`] of the tool's
//! own answers; the frontends resolve it every `--resolve-every-ms` (200).
//! Every caller of a protocol shares one frontend (native JSON, native
//! bincode, TaskIt 4.0), for the whole run. The mix is the one above, with
//! one call in ten a `wait-double(20 ms)` so that hosts hold calls when
//! they go, and `--idempotent-percent` (50) of the calls marked idempotent.
//! While the calls run, evenly spread over them, hosts are stopped with
//! `<stop>` after their removal from the name, once no frontend routes to
//! them (`--rolling-stops`, 2), stopped while still listed (`--listed-stops`,
//! 1; removed once exited), killed with SIGKILL while listed (`--kills`, 1;
//! removed a moment later), and started on a fresh address and added to
//! the name (`--adds`, as many as go); each removal takes the oldest host
//! serving, and a replacement comes up before it. Callers go on past
//! `--calls` until all of that has settled. The last line:
//!
//! `load: sent=N answered=N wrong=N lost=N lost_idempotent=N lost_stopped=N may_have_run=N … first_call_ms_min=N first_call_ms_median=N first_call_ms_max=N …`
//!
//! `may_have_run` counts calls not marked idempotent that failed because
//! their host was killed (`ConnectionLost` naming it, or `WorkerCrashed`
//! soon after a kill): allowed, when hosts were killed. Every other failure
//! is `lost`; `lost_idempotent` and `lost_stopped` (`Stopping`, or
//! `ConnectionLost` naming a stopped host) are parts of it. `first_call_ms`
//! is, for each added host, the time from its address joining the name to
//! a frontend's [`FrontEnd::routes`] counting a call it answered. The run
//! exits non-zero if a reply was wrong, a call lost, a call may have run
//! with no host killed, a stopped host did not exit 0, a host left alone
//! is not running at the end (those are then stopped too, and must exit
//! 0), or an added host answered no call.
//!
//! [`Resolver`]: taskit_plugin_api::frontend::Resolver

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
    /// Cluster mode: start this many hosts on 127.0.0.2, 127.0.0.3, … (one
    /// port), call them through the name `dns:taskit-load:PORT`, and stop,
    /// kill and add hosts while the load runs (see the module doc).
    #[arg(long, value_name = "N", help_heading = "Cluster mode",
          conflicts_with_all = ["host", "host_pid", "faults", "stop_at"],
          value_parser = clap::value_parser!(u8).range(1..=100))]
    cluster: Option<u8>,
    /// (cluster) How often the frontends resolve the name again, in ms.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 200,
        help_heading = "Cluster mode"
    )]
    resolve_every_ms: u64,
    /// (cluster) Hosts removed from the name, then sent `<stop>` once no
    /// frontend routes to them (a rolling update).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        help_heading = "Cluster mode"
    )]
    rolling_stops: u32,
    /// (cluster) Hosts sent `<stop>` while still listed (removed from the
    /// name once they exited).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        help_heading = "Cluster mode"
    )]
    listed_stops: u32,
    /// (cluster) Hosts killed (SIGKILL) while listed (removed from the name
    /// a little later).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        help_heading = "Cluster mode"
    )]
    kills: u32,
    /// (cluster) Hosts started on a fresh address and added to the name
    /// (default: as many as are stopped and killed).
    #[arg(long, value_name = "N", help_heading = "Cluster mode")]
    adds: Option<u32>,
    /// (cluster) The share of calls, in percent, marked idempotent.
    #[arg(long, value_name = "PERCENT", default_value_t = 50, help_heading = "Cluster mode",
          value_parser = clap::value_parser!(u64).range(0..=100))]
    idempotent_percent: u64,
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
    if let Some(hosts) = args.cluster {
        return cluster::run(&args, hosts);
    }
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

/// `--cluster N`: hosts behind one name that changes while the load runs.
mod cluster {
    use std::collections::HashSet;
    use std::process::ExitStatus;

    use taskit_plugin_api::error::kind;
    use taskit_plugin_api::frontend::{FrontendConfig, Resolver};
    use taskit_plugin_api::wire::admin::local_token_file;

    use super::*;

    /// The name the hosts stand behind: `dns:taskit-load:PORT`.
    const NAME: &str = "taskit-load";
    /// Flags of every host.
    const HOST_FLAGS: &[&str] = &["--max-tasks", "64"];
    /// How long a killed host, or one that exited after a `<stop>` while
    /// listed, stays in the name afterwards, in resolve periods: calls find
    /// it dead for a while, as when a name's records lag a pod's death.
    const LINGER_PERIODS: u32 = 5;
    /// How long the schedule waits for what it expects (the frontends
    /// dropping a host, a stopped host exiting, an added host's first call)
    /// before it counts it as not seen.
    const PATIENCE: Duration = Duration::from_secs(60);
    /// How recent a kill must be for a `WorkerCrashed` answer (which names
    /// no host) to be put down to it.
    const KILL_ECHO: Duration = Duration::from_secs(5);
    /// The last address hosts are started on: 127.0.0.254.
    const LAST_IP: u32 = 254;

    /// What the resolver answers for the name, and how often it was asked.
    struct Zone {
        addrs: Mutex<Vec<SocketAddr>>,
        lookups: AtomicU64,
    }

    impl Zone {
        fn edit(&self, change: impl FnOnce(&mut Vec<SocketAddr>)) {
            change(&mut self.addrs.lock().unwrap_or_else(|e| e.into_inner()));
        }

        fn resolver(self: &Arc<Self>, port: u16) -> Resolver {
            let zone = Arc::clone(self);
            Resolver::new(move |name, asked| {
                zone.lookups.fetch_add(1, Ordering::Relaxed);
                if (name, asked) != (NAME, port) {
                    return Err(std::io::Error::other(format!(
                        "no such name {name}:{asked}"
                    )));
                }
                Ok(zone.addrs.lock().unwrap_or_else(|e| e.into_inner()).clone())
            })
        }
    }

    /// One step of the schedule.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Event {
        /// A host started on a fresh address, then added to the name.
        Add,
        /// The oldest serving host removed from the name, then sent
        /// `<stop>` once no frontend routes to it.
        RollingStop,
        /// The oldest serving host sent `<stop>` while listed.
        ListedStop,
        /// The oldest serving host killed (SIGKILL) while listed.
        Kill,
    }

    /// The events in order: removals interleaved by kind, each preceded by
    /// an add while there are adds left (a replacement comes up before the
    /// host it replaces goes), the remaining adds last. Refused if a
    /// removal would leave no serving host.
    fn schedule(
        hosts: u32,
        rolling: u32,
        listed: u32,
        kills: u32,
        adds: u32,
    ) -> anyhow::Result<Vec<Event>> {
        let mut left = [
            (rolling, Event::RollingStop),
            (kills, Event::Kill),
            (listed, Event::ListedStop),
        ];
        let mut removals = Vec::new();
        while left.iter().any(|(n, _)| *n > 0) {
            for (n, event) in &mut left {
                if *n > 0 {
                    *n -= 1;
                    removals.push(*event);
                }
            }
        }
        let (mut events, mut adds_left, mut serving) = (Vec::new(), adds, hosts);
        for removal in removals {
            if adds_left > 0 {
                adds_left -= 1;
                serving += 1;
                events.push(Event::Add);
            }
            anyhow::ensure!(
                serving >= 2,
                "{hosts} hosts and {adds} adds cannot take {rolling} rolling stops, {listed} listed \
                 stops and {kills} kills with a host always serving: raise --cluster or --adds"
            );
            serving -= 1;
            events.push(removal);
        }
        events.extend(std::iter::repeat_n(Event::Add, adds_left as usize));
        Ok(events)
    }

    /// Hosts stopped and killed, to put failures down to the right cause.
    #[derive(Default)]
    struct Gone {
        /// `IP:PORT` of each, as a lost connection names its backend.
        killed: Mutex<HashSet<String>>,
        stopped: Mutex<HashSet<String>>,
        last_kill: Mutex<Option<Instant>>,
    }

    impl Gone {
        fn killed(&self, at: &str) -> bool {
            self.killed.lock().unwrap().contains(at)
        }

        fn stopped(&self, at: &str) -> bool {
            self.stopped.lock().unwrap().contains(at)
        }

        fn killed_lately(&self) -> bool {
            self.last_kill
                .lock()
                .unwrap()
                .is_some_and(|at| at.elapsed() < KILL_ECHO)
        }

        /// A failure a kill explains: the call may have run on the killed
        /// host (allowed for calls not marked idempotent).
        fn may_have_run(&self, err: &FrontendError) -> bool {
            match err {
                FrontendError::ConnectionLost(at) => self.killed(at),
                FrontendError::BackendProcessing { kind: k, .. } => {
                    k == kind::WORKER_CRASHED && self.killed_lately()
                }
                _ => false,
            }
        }

        /// A failure a `<stop>` caused: a stopping host must answer what it
        /// accepted and refuse the rest as not run, which the frontend then
        /// sends elsewhere.
        fn caused_by_stop(&self, err: &FrontendError) -> bool {
            match err {
                FrontendError::Stopping(_) => true,
                FrontendError::ConnectionLost(at) => self.stopped(at),
                FrontendError::BackendProcessing { kind: k, .. } => {
                    k == kind::WORKER_CRASHED
                        && !self.killed_lately()
                        && !self.stopped.lock().unwrap().is_empty()
                }
                _ => false,
            }
        }
    }

    /// Every call's outcome, counted once: `sent = answered + lost +
    /// may_have_run`; `lost_idempotent` and `lost_stopped` are parts of
    /// `lost`.
    #[derive(Default)]
    struct Tally {
        sent: AtomicU64,
        idempotent: AtomicU64,
        answered: AtomicU64,
        wrong: AtomicU64,
        lost: AtomicU64,
        lost_idempotent: AtomicU64,
        lost_stopped: AtomicU64,
        may_have_run: AtomicU64,
        errors_expected: AtomicU64,
        examples: Mutex<Vec<String>>,
        /// Lost calls by error and whether they were idempotent.
        lost_by: Mutex<std::collections::BTreeMap<String, u64>>,
    }

    impl Tally {
        fn record(
            &self,
            what: impl FnOnce() -> String,
            idempotent: bool,
            outcome: Result<bool, FrontendError>,
            gone: &Gone,
        ) {
            let add = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
            let problem = match outcome {
                Ok(true) => {
                    add(&self.answered);
                    return;
                }
                Err(e) if !idempotent && gone.may_have_run(&e) => {
                    add(&self.may_have_run);
                    return;
                }
                Err(FrontendError::BackendProcessing { kind: ref k, .. })
                    if k != kind::WORKER_CRASHED =>
                {
                    add(&self.answered);
                    add(&self.wrong);
                    format!("{}: wrong reply {outcome:?}", what())
                }
                Ok(false) => {
                    add(&self.answered);
                    add(&self.wrong);
                    format!("{}: wrong reply {outcome:?}", what())
                }
                Err(e) => {
                    add(&self.lost);
                    if idempotent {
                        add(&self.lost_idempotent);
                    }
                    let stop = gone.caused_by_stop(&e);
                    if stop {
                        add(&self.lost_stopped);
                    }
                    let mut by = self.lost_by.lock().unwrap_or_else(|e| e.into_inner());
                    let name = format!("{e:?}");
                    let name = name.split(['(', ' ']).next().unwrap_or_default();
                    let which = if idempotent { "idempotent" } else { "plain" };
                    *by.entry(format!("{name}/{which}")).or_default() += 1;
                    drop(by);
                    format!(
                        "{}: lost ({}, {}): {e:?}",
                        what(),
                        if idempotent {
                            "idempotent"
                        } else {
                            "not idempotent"
                        },
                        if stop { "a stop" } else { "no stop to blame" },
                    )
                }
            };
            let mut examples = self.examples.lock().unwrap_or_else(|e| e.into_inner());
            if examples.len() < 10 {
                examples.push(problem);
            }
        }
    }

    /// A host added to the name, and when it answered its first call.
    struct Joined {
        addr: SocketAddr,
        at: Instant,
        first: Option<Duration>,
    }

    /// Calls the frontends had answered by the host at `addr`, and whether
    /// any of them routes to it.
    fn seen(fes: &[FrontEnd], addr: SocketAddr) -> (u64, bool) {
        let (ip, port) = (addr.ip().to_string(), addr.port());
        let mut answered = 0;
        let mut routed = false;
        for load in fes.iter().flat_map(FrontEnd::routes) {
            if load.addr.host == ip && load.addr.port == port {
                answered += load.answered;
                routed = true;
            }
        }
        (answered, routed)
    }

    /// Polls the frontends' routes until `stop`, noting when each added
    /// host answered its first call.
    fn watch_joins(fes: Vec<FrontEnd>, joined: Arc<Mutex<Vec<Joined>>>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Acquire) {
            for j in joined.lock().unwrap().iter_mut() {
                if j.first.is_none() && seen(&fes, j.addr).0 > 0 {
                    j.first = Some(j.at.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// What became of a host.
    enum Fate {
        Serving,
        /// Sent `<stop>`; `listed` if it still was in the name.
        Stopping {
            listed: bool,
            since: Instant,
        },
        /// Exited after `<stop>` (`None`: not within [`PATIENCE`]).
        Stopped(Option<ExitStatus>),
        Killed,
    }

    struct Member {
        host: SelfHost,
        fate: Fate,
    }

    /// Starts a host on the next free loopback address, on `port`; an
    /// address where the host cannot listen (taken by something else) is
    /// skipped, three times at most.
    fn start_host(next_ip: &mut u32, port: u16) -> anyhow::Result<SelfHost> {
        let mut failures = Vec::new();
        for _ in 0..3 {
            anyhow::ensure!(*next_ip <= LAST_IP, "no loopback address left for a host");
            let bind = format!("127.0.0.{next_ip}:{port}");
            *next_ip += 1;
            match SelfHost::start_bound(&bind, HOST_FLAGS) {
                Ok(host) => return Ok(host),
                Err(e) => {
                    eprintln!("note: no host on {bind}, trying the next address: {e}");
                    failures.push(format!("{bind}: {e}"));
                }
            }
        }
        anyhow::bail!("could not start a host: {}", failures.join("; "))
    }

    /// What the schedule did.
    #[derive(Default)]
    struct Report {
        adds: u32,
        rolling_stops: u32,
        listed_stops: u32,
        kills: u32,
        /// From removal from the name to no frontend routing to the host,
        /// for each rolling stop.
        left_routes: Vec<Duration>,
        problems: Vec<String>,
    }

    /// What the callers and the schedule share.
    #[derive(Default)]
    struct Shared {
        tally: Tally,
        gone: Gone,
        /// The schedule is done and what it started has settled: callers
        /// past their count of calls stop.
        settled: AtomicBool,
    }

    /// Runs the schedule as the calls go out, then waits for everything it
    /// started to settle.
    struct Chaos {
        events: Vec<Event>,
        total: u64,
        members: Vec<Member>,
        port: u16,
        next_ip: u32,
        zone: Arc<Zone>,
        joined: Arc<Mutex<Vec<Joined>>>,
        fes: Vec<FrontEnd>,
        shared: Arc<Shared>,
        linger: Duration,
        report: Report,
    }

    impl Chaos {
        fn run(mut self) -> (Report, Vec<Member>) {
            let mut next = 0;
            let mut unlist: Vec<(Instant, SocketAddr)> = Vec::new();
            loop {
                let sent = self.shared.tally.sent.load(Ordering::Relaxed);
                let due = self.total * (next as u64 + 1) / (self.events.len() as u64 + 1);
                if next < self.events.len() && sent >= due {
                    let event = self.events[next];
                    next += 1;
                    if let Some(addr) = self.apply(event) {
                        unlist.push((Instant::now() + self.linger, addr));
                    }
                    continue;
                }
                let mut stopping = false;
                for m in &mut self.members {
                    if let Fate::Stopping { listed, since } = m.fate {
                        let exit = m.host.wait_exit(Duration::ZERO);
                        if exit.is_some() || since.elapsed() > PATIENCE {
                            m.fate = Fate::Stopped(exit);
                            if listed {
                                unlist.push((Instant::now() + self.linger, m.host.addr));
                            }
                        } else {
                            stopping = true;
                        }
                    }
                }
                let now = Instant::now();
                unlist.retain(|(at, addr)| {
                    let due = now >= *at;
                    if due {
                        self.zone.edit(|addrs| addrs.retain(|a| a != addr));
                    }
                    !due
                });
                let joins_settled = self
                    .joined
                    .lock()
                    .unwrap()
                    .iter()
                    .all(|j| j.first.is_some() || j.at.elapsed() > PATIENCE);
                if next == self.events.len() && unlist.is_empty() && !stopping && joins_settled {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            self.shared.settled.store(true, Ordering::Release);
            (self.report, self.members)
        }

        /// Does `event`; returns a killed host's address, to remove from
        /// the name a little later.
        fn apply(&mut self, event: Event) -> Option<SocketAddr> {
            if event == Event::Add {
                match start_host(&mut self.next_ip, self.port) {
                    Ok(host) => {
                        let addr = host.addr;
                        let mut joined = self.joined.lock().unwrap();
                        self.zone.edit(|addrs| addrs.push(addr));
                        joined.push(Joined {
                            addr,
                            at: Instant::now(),
                            first: None,
                        });
                        self.members.push(Member {
                            host,
                            fate: Fate::Serving,
                        });
                        self.report.adds += 1;
                    }
                    Err(e) => self.report.problems.push(format!("add: {e}")),
                }
                return None;
            }
            // The oldest host still serving.
            let Some(i) = self
                .members
                .iter()
                .position(|m| matches!(m.fate, Fate::Serving))
            else {
                self.report
                    .problems
                    .push(format!("{event:?}: no host serving"));
                return None;
            };
            let addr = self.members[i].host.addr;
            let gone = &self.shared.gone;
            if event == Event::Kill {
                gone.killed.lock().unwrap().insert(addr.to_string());
                *gone.last_kill.lock().unwrap() = Some(Instant::now());
                if let Err(e) = self.members[i].host.kill() {
                    self.report.problems.push(format!("kill {addr}: {e}"));
                }
                // A killed host cannot remove its admin token file.
                let _ = std::fs::remove_file(local_token_file(addr));
                self.members[i].fate = Fate::Killed;
                self.report.kills += 1;
                return Some(addr);
            }
            let listed = event == Event::ListedStop;
            if !listed {
                self.zone.edit(|addrs| addrs.retain(|a| *a != addr));
                let removed = Instant::now();
                while seen(&self.fes, addr).1 && removed.elapsed() < PATIENCE {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let took = removed.elapsed();
                if took >= PATIENCE {
                    self.report.problems.push(format!(
                        "{addr} still routed to {PATIENCE:?} after its removal"
                    ));
                }
                self.report.left_routes.push(took);
            }
            gone.stopped.lock().unwrap().insert(addr.to_string());
            if let Err(e) = send_stop(addr) {
                self.report
                    .problems
                    .push(format!("could not send <stop> to {addr}: {e}"));
            }
            self.members[i].fate = Fate::Stopping {
                listed,
                since: Instant::now(),
            };
            if listed {
                self.report.listed_stops += 1;
            } else {
                self.report.rolling_stops += 1;
            }
            None
        }
    }

    /// One caller's calls, in order: at least `calls`, and on until the
    /// schedule has settled.
    async fn caller(
        c: usize,
        fe: FrontEnd,
        label: &'static str,
        calls: u64,
        options: Arc<[CallOptions; 2]>,
        idempotent_percent: u64,
        shared: Arc<Shared>,
    ) {
        let Shared {
            tally,
            gone,
            settled,
        } = &*shared;
        let mut n = 0u64;
        while n < calls || !settled.load(Ordering::Acquire) {
            // One call in ten waits 20 ms: hosts have calls in flight when
            // they are stopped or killed.
            let call = plan(c, n, false, true);
            let idempotent = ((c as u64) * 37 + n) % 100 < idempotent_percent;
            tally.sent.fetch_add(1, Ordering::Relaxed);
            if idempotent {
                tally.idempotent.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(call, Call::GetError) {
                tally.errors_expected.fetch_add(1, Ordering::Relaxed);
            }
            let outcome = make(&fe, &call, &options[usize::from(idempotent)]).await;
            tally.record(
                || format!("caller {c} ({label}) call {n}"),
                idempotent,
                outcome,
                gone,
            );
            n += 1;
        }
    }

    /// `min/median/max` in ms, or `-` for none.
    fn spread(mut values: Vec<Duration>) -> [String; 3] {
        values.sort();
        let ms = |d: Option<&Duration>| {
            d.map_or("-".to_owned(), |d| {
                format!("{:.0}", d.as_secs_f64() * 1000.0)
            })
        };
        [
            ms(values.first()),
            ms(values.get(values.len() / 2)),
            ms(values.last()),
        ]
    }

    pub(super) fn run(args: &Args, hosts: u8) -> anyhow::Result<()> {
        let adds = args
            .adds
            .unwrap_or(args.rolling_stops + args.listed_stops + args.kills);
        let events = schedule(
            u32::from(hosts),
            args.rolling_stops,
            args.listed_stops,
            args.kills,
            adds,
        )?;
        anyhow::ensure!(
            u32::from(hosts) + adds <= 200,
            "at most 200 hosts in all (--cluster plus --adds)"
        );
        let every = Duration::from_millis(args.resolve_every_ms.max(1));
        let timeout = Duration::try_from_secs_f64(args.call_timeout).context("--call-timeout")?;
        let mut problems = Vec::new();

        // The hosts, on 127.0.0.2, 127.0.0.3, … on the first one's port.
        let first = SelfHost::start_bound("127.0.0.2:0", HOST_FLAGS)?;
        let port = first.addr.port();
        let mut next_ip = 3;
        let mut started = vec![first];
        for _ in 1..hosts {
            started.push(start_host(&mut next_ip, port)?);
        }
        let zone = Arc::new(Zone {
            addrs: Mutex::new(started.iter().map(|h| h.addr).collect()),
            lookups: AtomicU64::new(0),
        });
        let members: Vec<Member> = started
            .into_iter()
            .map(|host| Member {
                host,
                fate: Fate::Serving,
            })
            .collect();

        // One frontend per protocol, shared by every caller speaking it.
        let config = FrontendConfig {
            resolve_every: every,
            resolver: Some(zone.resolver(port)),
            ..FrontendConfig::default()
        };
        let name = BackendAddr::dns(NAME, port);
        let kinds: [(&'static str, BackendAddr); 3] = [
            ("native/json", name.clone()),
            ("native/bincode", name.clone().codec(CodecKind::Bincode)),
            ("taskit4", name.taskit4()),
        ];
        let fes: Vec<FrontEnd> = kinds
            .iter()
            .map(|(_, b)| FrontEnd::with_config([b.clone()], config.clone()))
            .collect();
        let callers = args.connections.max(1);
        let which = |c: usize| {
            if c * 100 / callers < args.taskit4_percent {
                2
            } else {
                c % 2
            }
        };
        let in_use: HashSet<usize> = (0..callers).map(which).collect();

        let shared = Arc::new(Shared::default());
        let joined = Arc::new(Mutex::new(Vec::new()));
        let watching_done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (fes, joined, done) =
                (fes.clone(), Arc::clone(&joined), Arc::clone(&watching_done));
            std::thread::spawn(move || watch_joins(fes, joined, done))
        };
        let chaos = Chaos {
            events,
            total: args.calls,
            members,
            port,
            next_ip,
            zone: Arc::clone(&zone),
            joined: Arc::clone(&joined),
            // Only frontends with callers refresh their routes.
            fes: in_use.iter().map(|&i| fes[i].clone()).collect(),
            shared: Arc::clone(&shared),
            linger: every * LINGER_PERIODS,
            report: Report::default(),
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let plain = CallOptions::default().timeout(timeout);
        let options = Arc::new([plain.clone(), plain.idempotent()]);
        let per_caller = args.calls / callers as u64;
        let extra = args.calls % callers as u64;
        let began = Instant::now();
        let schedule = std::thread::spawn(move || chaos.run());
        runtime.block_on(async {
            let tasks: Vec<_> = (0..callers)
                .map(|c| {
                    let i = which(c);
                    tokio::spawn(caller(
                        c,
                        fes[i].clone(),
                        kinds[i].0,
                        per_caller + u64::from((c as u64) < extra),
                        Arc::clone(&options),
                        args.idempotent_percent,
                        Arc::clone(&shared),
                    ))
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        });
        let seconds = began.elapsed().as_secs_f64();
        let (report, mut members) = schedule
            .join()
            .map_err(|_| anyhow::anyhow!("the schedule's thread panicked"))?;
        watching_done.store(true, Ordering::Release);
        let _ = watcher.join();
        problems.extend(report.problems.iter().cloned());

        // Hosts never stopped or killed must have come through; then they
        // are stopped too, and must exit 0.
        let mut serving: Vec<&mut Member> = members
            .iter_mut()
            .filter(|m| matches!(m.fate, Fate::Serving))
            .collect();
        let serving_count = serving.len();
        let mut up = 0;
        for m in &mut serving {
            if m.host.is_running() {
                up += 1;
                if let Err(e) = send_stop(m.host.addr) {
                    problems.push(format!("could not send <stop> to {}: {e}", m.host.addr));
                }
            } else {
                problems.push(format!("{} is not running after the load", m.host.addr));
            }
        }
        let mut left_exit_0 = 0;
        for m in &mut serving {
            match m.host.wait_exit(PATIENCE).and_then(|s| s.code()) {
                Some(0) => left_exit_0 += 1,
                other => problems.push(format!(
                    "{} did not exit 0 after the final <stop>: {other:?}",
                    m.host.addr
                )),
            }
        }
        let mut stopped = 0;
        let mut stopped_ok = 0;
        for m in &members {
            if let Fate::Stopped(exit) = &m.fate {
                stopped += 1;
                match exit.and_then(|s| s.code()) {
                    Some(0) => stopped_ok += 1,
                    other => problems.push(format!(
                        "{} did not exit 0 after <stop>: {}",
                        m.host.addr,
                        other.map_or("no exit code (signal, or none in time)".to_owned(), |c| c
                            .to_string())
                    )),
                }
            }
        }
        let started_all = members.len();
        drop(members);

        let joined = std::mem::take(&mut *joined.lock().unwrap());
        let firsts: Vec<Duration> = joined.iter().filter_map(|j| j.first).collect();
        for j in joined.iter().filter(|j| j.first.is_none()) {
            problems.push(format!(
                "{} was added to the name but answered no call within {PATIENCE:?}",
                j.addr
            ));
        }
        let [first_min, first_median, first_max] = spread(firsts.clone());
        let [_, _, left_max] = spread(report.left_routes.clone());

        let tally = &shared.tally;
        for e in tally.examples.lock().unwrap().iter() {
            eprintln!("example: {e}");
        }
        for p in &problems {
            eprintln!("problem: {p}");
        }
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (sent, answered, wrong, lost, lost_idempotent, lost_stopped, may_have_run) = (
            count(&tally.sent),
            count(&tally.answered),
            count(&tally.wrong),
            count(&tally.lost),
            count(&tally.lost_idempotent),
            count(&tally.lost_stopped),
            count(&tally.may_have_run),
        );
        let firsts_ms: Vec<String> = joined
            .iter()
            .map(|j| {
                j.first.map_or("none".to_owned(), |d| {
                    format!("{:.0}", d.as_secs_f64() * 1000.0)
                })
            })
            .collect();
        let lost_by = tally.lost_by.lock().unwrap();
        if !lost_by.is_empty() {
            let by: Vec<String> = lost_by.iter().map(|(k, n)| format!("{k}={n}")).collect();
            println!("lost_by: {}", by.join(" "));
        }
        drop(lost_by);
        println!(
            "cluster: name=dns:{NAME}:{port} hosts_started={started_all} rolling_stops={} \
             listed_stops={} kills={} adds={} stopped_exit_0={stopped_ok}/{stopped} \
             up_after_load={up}/{serving_count} final_stop_exit_0={left_exit_0}/{serving_count} \
             lookups={} left_routes_ms_max={left_max} \
             first_call_ms=[{}]",
            report.rolling_stops,
            report.listed_stops,
            report.kills,
            report.adds,
            count(&zone.lookups),
            firsts_ms.join(","),
        );
        // Last: the line scripts check.
        println!(
            "load: sent={sent} answered={answered} wrong={wrong} lost={lost} \
             lost_idempotent={lost_idempotent} lost_stopped={lost_stopped} \
             may_have_run={may_have_run} idempotent={} expected_errors={} callers={callers} \
             frontends={} hosts={hosts} kills={} added={} first_call_ms_min={first_min} \
             first_call_ms_median={first_median} first_call_ms_max={first_max} \
             seconds={seconds:.1} calls_per_second={:.0}",
            count(&tally.idempotent),
            count(&tally.errors_expected),
            in_use.len(),
            report.kills,
            report.adds,
            sent as f64 / seconds,
        );
        let failed = wrong > 0
            || lost > 0
            || (may_have_run > 0 && report.kills == 0)
            || answered + lost + may_have_run != sent
            || !problems.is_empty();
        if failed {
            std::process::exit(1);
        }
        Ok(())
    }
}
