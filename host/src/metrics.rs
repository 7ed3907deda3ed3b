//! What the host has done and is doing, in Prometheus' text format, and
//! whether it is ready: `GET /metrics` and `GET /healthz` on the address of
//! `--metrics` ([`MetricsEndpoint`]).
//!
//! Counting is done on the call path with plain atomics: a call finds its
//! task's series once, when it is read (one read lock and a hash lookup,
//! beside the registry's own), and adds to it once when it is answered.
//! Gauges (connections, bytes held, workers) are read from the server when
//! scraped. The text is written here, not by a metrics crate: the format is
//! small (counters, gauges, histograms, escaped label values), and a
//! crate's label-set lookup per call would cost more than the call's own
//! bookkeeping.
//!
//! Every label value comes from the host or its plugins, never from a peer:
//! a call of an unknown id counts under `task=""`, so a peer cannot make
//! series. Series are capped at [`MAX_SERIES`]; past it, calls of further
//! tasks count under `task="_other"`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use taskit_plugin_api::error::kind;
use taskit_plugin_api::TaskError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::ServerHandle;

/// Most call series (task and plugin pairs) kept.
pub(crate) const MAX_SERIES: usize = 4096;

/// Which protocol a call came by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Proto {
    Native = 0,
    Taskit4 = 1,
}

const PROTOS: [&str; 2] = ["native", "taskit4"];

/// A call's outcome: `ok`, the runtime's own error kinds by name, or
/// `error` for any error a task raised (its kinds are the plugin's, any
/// number of them).
const OUTCOMES: [&str; 18] = [
    "ok",
    "error",
    kind::PANIC,
    kind::TYPE_ERROR,
    kind::UNKNOWN_TASK,
    kind::DECODE_ERROR,
    kind::ENCODE_ERROR,
    kind::UNSUPPORTED_CODEC,
    kind::PROTOCOL_ERROR,
    kind::MESSAGE_TOO_LARGE,
    kind::UNAUTHORIZED,
    kind::STOPPING,
    kind::UNKNOWN_SIGNAL,
    kind::WORKER_CRASHED,
    kind::PLUGIN_UNAVAILABLE,
    kind::TIME_LIMIT_EXCEEDED,
    kind::REPLY_TOO_LARGE,
    kind::CANCELLED,
];

fn outcome<T>(result: &Result<T, TaskError>) -> usize {
    match result {
        Ok(_) => 0,
        Err(err) => OUTCOMES[2..]
            .iter()
            .position(|k| *k == err.kind())
            .map_or(1, |i| i + 2),
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The calls of one task of one plugin.
pub(crate) struct Series {
    task: Box<str>,
    plugin: Box<str>,
    calls: [[AtomicU64; OUTCOMES.len()]; PROTOS.len()],
    /// Calls by latency bucket (not cumulative; the last is +Inf).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    nanos: AtomicU64,
}

impl Series {
    fn new(task: &str, plugin: &str) -> Self {
        Self {
            task: task.into(),
            plugin: plugin.into(),
            calls: Default::default(),
            buckets: Default::default(),
            nanos: AtomicU64::new(0),
        }
    }
}

/// One call being timed: counted in its series when [`done`](Self::done).
pub(crate) struct Meter {
    series: Arc<Series>,
    proto: Proto,
    started: Instant,
}

impl Meter {
    /// Counts the call answered with `result`.
    pub(crate) fn done<T>(self, result: &Result<T, TaskError>) {
        let took = self.started.elapsed();
        let s = &self.series;
        s.calls[self.proto as usize][outcome(result)].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        s.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        s.nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Counters of one server.
pub(crate) struct Metrics {
    /// Series by task id, then plugin.
    series: RwLock<HashMap<Box<str>, Vec<Arc<Series>>>>,
    /// Calls past [`MAX_SERIES`].
    other: Arc<Series>,
    pub(crate) connections_refused: [AtomicU64; REFUSALS.len()],
    /// Client connections admitted and open.
    pub(crate) connections: AtomicU64,
}

/// Why a connection was refused (`connections_refused` index, and the
/// `reason` label).
pub(crate) const HOST_FULL: usize = 0;
pub(crate) const PEER_FULL: usize = 1;
pub(crate) const TLS_FAILED: usize = 2;
pub(crate) const WRONG_TOKEN: usize = 3;
const REFUSALS: [&str; 4] = ["host_full", "peer_full", "tls_handshake", "call_token"];

impl Default for Metrics {
    fn default() -> Self {
        Self {
            series: RwLock::default(),
            other: Arc::new(Series::new("_other", "_other")),
            connections_refused: Default::default(),
            connections: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Starts timing a call of `task` served by `plugin` (both empty for an
    /// id nothing serves).
    pub(crate) fn meter(&self, task: &str, plugin: &str, proto: Proto) -> Meter {
        Meter {
            series: self.series(task, plugin),
            proto,
            started: Instant::now(),
        }
    }

    fn series(&self, task: &str, plugin: &str) -> Arc<Series> {
        let find = |map: &HashMap<Box<str>, Vec<Arc<Series>>>| {
            map.get(task)
                .and_then(|v| v.iter().find(|s| &*s.plugin == plugin))
                .cloned()
        };
        if let Some(s) = find(&self.series.read().unwrap_or_else(PoisonError::into_inner)) {
            return s;
        }
        let mut map = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = find(&map) {
            return s;
        }
        if map.values().map(Vec::len).sum::<usize>() >= MAX_SERIES {
            return Arc::clone(&self.other);
        }
        let s = Arc::new(Series::new(task, plugin));
        map.entry(task.into()).or_default().push(Arc::clone(&s));
        s
    }

    fn all_series(&self) -> Vec<Arc<Series>> {
        let map = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Arc<Series>> = map.values().flatten().cloned().collect();
        all.push(Arc::clone(&self.other));
        all.sort_by(|a, b| (&a.task, &a.plugin).cmp(&(&b.task, &b.plugin)));
        all
    }
}

/// Process-wide counters of what the plugin hosts and worker pools of this
/// process did: a host process runs one of each.
#[derive(Default)]
struct Events {
    /// (plugin, event) → count; event is `loaded`, `refused`, `removed`.
    plugin_events: HashMap<(String, &'static str), u64>,
    /// (plugin, cause) → workers started again.
    worker_restarts: HashMap<(String, &'static str), u64>,
}

/// Most distinct plugin labels in [`Events`]; past it, `_other`.
const MAX_PLUGIN_LABELS: usize = 1024;

fn events() -> std::sync::MutexGuard<'static, Events> {
    static EVENTS: OnceLock<Mutex<Events>> = OnceLock::new();
    EVENTS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn bump(map: &mut HashMap<(String, &'static str), u64>, plugin: &str, what: &'static str) {
    let known = map.keys().any(|(p, _)| p == plugin);
    let plugin = if known || map.len() < MAX_PLUGIN_LABELS {
        plugin
    } else {
        "_other"
    };
    *map.entry((plugin.to_owned(), what)).or_default() += 1;
}

/// Counts a plugin file loaded, refused or removed (`plugin` is its name,
/// or the file's name when it was refused before one was known).
pub(crate) fn plugin_event(plugin: &str, event: &'static str) {
    bump(&mut events().plugin_events, plugin, event);
}

/// Counts a worker of `plugin` started again after it ended for `cause`
/// (the words the pool logs), sorted into a few classes.
pub(crate) fn worker_restarted(plugin: &str, cause: &str) {
    let class = if cause.contains("time limit") {
        "time_limit"
    } else if cause.contains("memory") {
        "memory_limit"
    } else if cause.starts_with("killed by SIG") || cause.contains("signal") {
        "signal"
    } else if cause.contains("exit") {
        "exit"
    } else {
        "other"
    };
    bump(&mut events().worker_restarts, plugin, class);
}

/// Escapes a label value: backslash, double quote and line feed.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole text of `/metrics`.
pub(crate) fn render(server: &ServerHandle) -> String {
    let shared = server.shared();
    let metrics = &shared.metrics;
    let mut out = String::with_capacity(16 << 10);
    head(
        &mut out,
        "taskit_build_info",
        "gauge",
        "The host's version and the plugin ABI version it loads.",
    );
    let _ = writeln!(
        out,
        "taskit_build_info{{version=\"{}\",abi=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        label(&taskit_plugin_api::host_side::abi::ABI_VERSION.to_string()),
    );

    let series = metrics.all_series();
    head(
        &mut out,
        "taskit_calls_total",
        "counter",
        "Calls answered, by task, plugin, protocol and outcome (ok, error for a task's own error, or the runtime's error kind).",
    );
    for s in &series {
        for (p, proto) in PROTOS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let n = s.calls[p][o].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "taskit_calls_total{{task=\"{}\",plugin=\"{}\",protocol=\"{proto}\",outcome=\"{outcome}\"}} {n}",
                        label(&s.task),
                        label(&s.plugin)
                    );
                }
            }
        }
    }
    head(
        &mut out,
        "taskit_call_duration_seconds",
        "histogram",
        "Time from reading a call to its answer, by task and plugin.",
    );
    for s in &series {
        let counts: Vec<u64> = s
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            continue;
        }
        let labels = format!(
            "task=\"{}\",plugin=\"{}\"",
            label(&s.task),
            label(&s.plugin)
        );
        let mut cumulative = 0;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "taskit_call_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = s.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "taskit_call_duration_seconds_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "taskit_call_duration_seconds_count{{{labels}}} {count}"
        );
    }

    let calls = shared.drain.calls_in_flight();
    let connections = metrics.connections.load(Ordering::Relaxed);
    let gauges: [(&str, &str, u64); 6] = [
        (
            "taskit_calls_in_flight",
            "Calls accepted and not yet answered.",
            calls as u64,
        ),
        (
            "taskit_tasks_running",
            "Tasks running now, subtasks included (what <status> counts).",
            shared.registry().running_tasks(),
        ),
        (
            "taskit_connections",
            "Client connections open.",
            connections,
        ),
        (
            "taskit_buffered_bytes",
            "Bytes of requests held against the server's --max-buffered budget.",
            shared.budget.used_bytes() as u64,
        ),
        (
            "taskit_buffered_limit_bytes",
            "The server's --max-buffered budget.",
            shared.config.max_buffered as u64,
        ),
        (
            "taskit_unwritten_reply_bytes",
            "Bytes of replies queued and not yet written to their clients.",
            shared.unwritten.bytes() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        head(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    head(
        &mut out,
        "taskit_connections_refused_total",
        "counter",
        "Connections closed at once: for want of room (host_full: --max-connections, peer_full: --max-connections-per-peer), a failed TLS handshake, or a wrong call token.",
    );
    for (i, reason) in REFUSALS.iter().enumerate() {
        let n = metrics.connections_refused[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "taskit_connections_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }

    let summaries = shared.registry().summaries();
    head(
        &mut out,
        "taskit_plugins_loaded",
        "gauge",
        "Plugin versions serving tasks.",
    );
    let _ = writeln!(out, "taskit_plugins_loaded {}", summaries.len());
    head(
        &mut out,
        "taskit_plugin_workers",
        "gauge",
        "Worker processes running, by plugin (process isolation).",
    );
    for p in &summaries {
        let _ = writeln!(
            out,
            "taskit_plugin_workers{{plugin=\"{}\",version=\"{}\"}} {}",
            label(&p.name),
            label(&p.version),
            p.workers.len()
        );
    }
    head(
        &mut out,
        "taskit_plugin_calls_waiting",
        "gauge",
        "Calls waiting for a task slot or a worker, by plugin (process isolation).",
    );
    for p in &summaries {
        let _ = writeln!(
            out,
            "taskit_plugin_calls_waiting{{plugin=\"{}\",version=\"{}\"}} {}",
            label(&p.name),
            label(&p.version),
            p.waiting
        );
    }

    let events = events();
    by_plugin(
        &mut out,
        ("taskit_plugin_events_total", "event"),
        "Plugin files loaded, refused or removed, by plugin (a refused file by its file name).",
        &events.plugin_events,
    );
    by_plugin(
        &mut out,
        ("taskit_worker_restarts_total", "cause"),
        "Worker processes started again after one ended, by plugin and cause (signal, exit, time_limit, memory_limit, other).",
        &events.worker_restarts,
    );
    out
}

/// A counter family of `(plugin, what)` pairs, the second labelled
/// `name.1`, in order.
fn by_plugin(
    out: &mut String,
    name: (&str, &str),
    help: &str,
    counts: &HashMap<(String, &'static str), u64>,
) {
    let (name, what) = name;
    let mut sorted: Vec<_> = counts.iter().collect();
    sorted.sort();
    head(out, name, "counter", help);
    for ((plugin, value), n) in sorted {
        let _ = writeln!(
            out,
            "{name}{{plugin=\"{}\",{what}=\"{value}\"}} {n}",
            label(plugin)
        );
    }
}

/// The HTTP endpoint of `--metrics`: `/metrics`, and `/healthz` (200 once
/// a server is attached and serving, 503 before and once it stops).
#[derive(Default)]
pub struct MetricsEndpoint {
    server: OnceLock<ServerHandle>,
}

/// Requests served at once; past it, the oldest is dropped for the new
/// one, so connections that send nothing cannot keep a probe out.
const MAX_SCRAPES: usize = 16;
/// The most a request's head may take, in bytes and in time (a probe
/// sends it at once), and the whole request.
const MAX_HEAD: usize = 8 << 10;
const HEAD_TIME: Duration = Duration::from_secs(1);
const REQUEST_TIME: Duration = Duration::from_secs(5);

impl MetricsEndpoint {
    /// An endpoint with no server yet: `/healthz` answers 503.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The server whose state it reports (the first one attached).
    pub fn attach(&self, server: ServerHandle) {
        let _ = self.server.set(server);
    }

    /// Serves HTTP on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut serving: std::collections::VecDeque<tokio::task::JoinHandle<()>> =
            std::collections::VecDeque::new();
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            serving.retain(|task| !task.is_finished());
            if serving.len() >= MAX_SCRAPES {
                if let Some(oldest) = serving.pop_front() {
                    oldest.abort();
                }
            }
            let endpoint = Arc::clone(&self);
            serving.push_back(tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIME, endpoint.answer(stream)).await;
                tracing::trace!(%peer, "metrics request served");
            }));
        }
    }

    async fn answer(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + HEAD_TIME;
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.ends_with(b"\n\n") {
            let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if n == 0 || head.len() + n > MAX_HEAD {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let path = path.split('?').next().unwrap_or("");
        let (status, content_type, body) = match (method, path) {
            ("GET" | "HEAD", "/metrics") => match self.server.get() {
                Some(server) => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    render(server),
                ),
                None => ("503 Service Unavailable", "text/plain", "starting\n".into()),
            },
            ("GET" | "HEAD", "/healthz") => match self.server.get() {
                Some(server) if server.is_serving() => ("200 OK", "text/plain", "ok\n".into()),
                Some(_) => ("503 Service Unavailable", "text/plain", "stopping\n".into()),
                None => ("503 Service Unavailable", "text/plain", "starting\n".into()),
            },
            ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
            _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
        };
        let mut reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if method != "HEAD" {
            reply.extend_from_slice(body.as_bytes());
        }
        stream.write_all(&reply).await?;
        stream.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_labels() {
        assert_eq!(outcome::<()>(&Ok(())), 0);
        assert_eq!(
            OUTCOMES[outcome::<()>(&Err(TaskError::msg("ValueError", "x")))],
            "error"
        );
        assert_eq!(
            OUTCOMES[outcome::<()>(&Err(TaskError::msg(kind::WORKER_CRASHED, "x")))],
            kind::WORKER_CRASHED
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn series_are_capped() {
        let m = Metrics::default();
        for i in 0..MAX_SERIES + 10 {
            m.meter(&format!("t{i}"), "p", Proto::Native)
                .done::<()>(&Ok(()));
        }
        let all = m.all_series();
        assert_eq!(all.len(), MAX_SERIES + 1);
        let other = all.iter().find(|s| &*s.task == "_other").unwrap();
        assert_eq!(other.calls[0][0].load(Ordering::Relaxed), 10);
    }
}
