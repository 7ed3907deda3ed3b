//! `--metrics`: `/metrics` in Prometheus' text format, read by the
//! reference parser (Python's `prometheus_client`), and `/healthz`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use taskit_harness::*;
use taskit_plugin_api::frontend::{BackendAddr, BlockingFrontEnd};

fn python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        venv_python(
            "metrics-venv",
            "import prometheus_client.parser",
            &["prometheus_client==0.21.1"],
        )
    })
}

/// A host serving `dir` with `--metrics` on a free port; its call and
/// metrics addresses.
fn host_with_metrics(dir: &TempDir, extra: &[&str]) -> (HostProcess, SocketAddr, SocketAddr) {
    let mut args = vec![
        "--plugins",
        dir.path().to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut host = HostProcess::start(&args);
    let metrics = metrics_addr(&mut host);
    let addr = host.ready();
    (host, addr, metrics)
}

/// `/metrics`, parsed by the reference parser: its families.
fn scrape(addr: SocketAddr) -> Vec<Value> {
    let (code, text) = http(addr, "GET", "/metrics");
    assert_eq!(code, 200, "{text}");
    let mut child = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of sample `name` with exactly `labels`, 0 if absent.
fn value(families: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .find(|s| {
            s["name"] == name
                && s["labels"].as_object().unwrap().len() == labels.len()
                && labels.iter().all(|(k, v)| s["labels"][*k] == *v)
        })
        .map_or(0.0, |s| s["value"].as_f64().unwrap())
}

fn family_type(families: &[Value], name: &str) -> String {
    families
        .iter()
        .find(|f| f["name"] == name)
        .map(|f| f["type"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn calls(families: &[Value], task: &str, plugin: &str, protocol: &str, outcome: &str) -> f64 {
    value(
        families,
        "taskit_calls_total",
        &[
            ("task", task),
            ("plugin", plugin),
            ("protocol", protocol),
            ("outcome", outcome),
        ],
    )
}

#[test]
fn metrics_parse_and_count_the_calls_made() {
    let dir = demo_dir("metrics-count");
    let (_host, addr, metrics) = host_with_metrics(&dir, &[]);
    let before = scrape(metrics);
    assert_eq!(family_type(&before, "taskit_calls"), "counter");
    assert_eq!(
        family_type(&before, "taskit_call_duration_seconds"),
        "histogram"
    );
    assert_eq!(family_type(&before, "taskit_connections"), "gauge");
    assert_eq!(family_type(&before, "taskit_build_info"), "gauge");
    assert_eq!(value(&before, "taskit_plugins_loaded", &[]), 1.0);
    assert!(
        value(
            &before,
            "taskit_plugin_events_total",
            &[("plugin", "demo"), ("event", "loaded")]
        ) >= 1.0
    );

    let native = BlockingFrontEnd::new([addr]).unwrap();
    for i in 0..5i64 {
        assert_eq!(native.work::<i64>("add", &(i, 1)).unwrap(), i + 1);
    }
    for _ in 0..2 {
        native.work::<Value>("get-error", &()).unwrap_err();
    }
    native.work::<Value>("no-such-task", &()).unwrap_err();
    let old = BlockingFrontEnd::new([BackendAddr::from(addr).taskit4()]).unwrap();
    for _ in 0..3 {
        assert_eq!(old.work::<i64>("add", &(2, 2)).unwrap(), 4);
    }

    let after = scrape(metrics);
    let moved = |task, plugin, protocol, outcome| {
        calls(&after, task, plugin, protocol, outcome)
            - calls(&before, task, plugin, protocol, outcome)
    };
    assert_eq!(moved("add", "demo", "native", "ok"), 5.0);
    assert_eq!(moved("get-error", "demo", "native", "error"), 2.0);
    // An id nothing serves counts under no task name: peers make no series.
    assert_eq!(moved("", "", "native", "KeyError"), 1.0);
    assert_eq!(moved("add", "demo", "taskit4", "ok"), 3.0);
    let count = |f: &[Value]| {
        value(
            f,
            "taskit_call_duration_seconds_count",
            &[("task", "add"), ("plugin", "demo")],
        )
    };
    assert_eq!(count(&after) - count(&before), 8.0);
    let inf = value(
        &after,
        "taskit_call_duration_seconds_bucket",
        &[("task", "add"), ("plugin", "demo"), ("le", "+Inf")],
    );
    assert_eq!(inf, count(&after));
    // The native frontend keeps its connection open.
    assert!(value(&after, "taskit_connections", &[]) >= 1.0);
    assert!(!after.iter().any(|f| f["samples"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["labels"]["task"] == "no-such-task")));

    assert_eq!(http(metrics, "GET", "/healthz"), (200, "ok\n".into()));
    assert_eq!(http(metrics, "GET", "/nothing").0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").0, 405);
}

#[test]
fn worker_restarts_are_counted_by_cause() {
    let dir = TempDir::new("metrics-crash");
    install_by_rename(&plugin("taskit_fixture_crasher"), dir.path(), "crasher.so");
    let (mut host, addr, metrics) = host_with_metrics(
        &dir,
        &["--isolation", "process", "--workers-per-plugin", "1"],
    );
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    fe.work::<Value>("segv", &()).unwrap_err();
    host.expect_line(&["plugin worker restarted", "plugin=crasher"]);
    let families = scrape(metrics);
    assert_eq!(
        value(
            &families,
            "taskit_worker_restarts_total",
            &[("plugin", "crasher"), ("cause", "signal")]
        ),
        1.0
    );
    assert_eq!(
        calls(&families, "segv", "crasher", "native", "WorkerCrashed"),
        1.0
    );
}

#[test]
fn healthz_turns_unavailable_while_the_host_drains() {
    let dir = demo_dir("metrics-health");
    let (_host, addr, metrics) = host_with_metrics(&dir, &["--max-tasks", "1"]);
    assert_eq!(http(metrics, "GET", "/healthz").0, 200);
    python(); // made before the calls, which must not end while it is made
              // Calls of a second each, one at a time: the drain takes them all.
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    for _ in 0..20 {
        fe.ignore("wait-double", (1000u64,));
    }
    wait_until("calls in flight", || {
        value(&scrape(metrics), "taskit_calls_in_flight", &[]) >= 20.0
    });
    fe.send_stop(addr).unwrap();
    assert_eq!(http(metrics, "GET", "/healthz"), (503, "stopping\n".into()));
}

#[test]
fn connections_that_send_nothing_cannot_keep_a_probe_out() {
    let dir = demo_dir("metrics-idle");
    let (_host, _, metrics) = host_with_metrics(&dir, &[]);
    let idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(metrics).unwrap())
        .collect();
    assert_eq!(http(metrics, "GET", "/healthz"), (200, "ok\n".into()));
    drop(idle);
}
