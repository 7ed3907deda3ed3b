//! `taskit-load --cluster`: hosts on 127.0.0.2, 127.0.0.3, … behind one
//! name, stopped, killed and added while calls run through shared
//! frontends. The tool checks every reply and sorts every failure; these
//! tests run it small and read its exit status and summary lines.

use std::collections::HashMap;
use std::process::Command;

use taskit_harness::built;

/// Runs `taskit-load --cluster 3` with `args`: (succeeded, everything it
/// printed).
fn cluster(args: &[&str]) -> (bool, String) {
    // The host and the demo plugin, which the tool finds beside itself.
    built();
    let out = Command::new(env!("CARGO_BIN_EXE_taskit-load"))
        .args(["--cluster", "3", "--connections", "40", "--calls", "20000"])
        .args(args)
        .output()
        .expect("run taskit-load");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// The `key=value` fields of the line starting with `prefix`, as text.
fn fields(printed: &str, prefix: &str) -> HashMap<String, String> {
    let line = printed
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in {printed}"));
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn number(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields[key]
        .parse()
        .unwrap_or_else(|_| panic!("{key}={} is not a number", fields[key]))
}

#[test]
fn hosts_replaced_and_killed_under_load_lose_no_call() {
    let (ok, printed) = cluster(&[
        "--rolling-stops",
        "2",
        "--listed-stops",
        "0",
        "--kills",
        "1",
    ]);
    assert!(ok, "{printed}");
    let load = fields(&printed, "load:");
    for key in ["wrong", "lost", "lost_idempotent", "lost_stopped"] {
        assert_eq!(number(&load, key), 0, "{key}: {printed}");
    }
    assert!(number(&load, "sent") >= 20000, "{printed}");
    assert_eq!(
        number(&load, "sent"),
        number(&load, "answered") + number(&load, "may_have_run"),
        "{printed}"
    );
    assert_eq!(
        (number(&load, "kills"), number(&load, "added")),
        (1, 3),
        "{printed}"
    );
    // Every added host answered calls: its first-call time is known.
    number(&load, "first_call_ms_max");
    let cluster = fields(&printed, "cluster:");
    assert_eq!(cluster["stopped_exit_0"], "2/2", "{printed}");
    assert_eq!(cluster["up_after_load"], "3/3", "{printed}");
    assert_eq!(cluster["rolling_stops"], "2", "{printed}");
}

#[test]
fn hosts_stopped_while_listed_lose_no_call() {
    let (ok, printed) = cluster(&[
        "--rolling-stops",
        "0",
        "--listed-stops",
        "2",
        "--kills",
        "0",
    ]);
    assert!(ok, "{printed}");
    let load = fields(&printed, "load:");
    for key in [
        "wrong",
        "lost",
        "lost_idempotent",
        "lost_stopped",
        "may_have_run",
    ] {
        assert_eq!(number(&load, key), 0, "{key}: {printed}");
    }
    assert_eq!(
        fields(&printed, "cluster:")["stopped_exit_0"],
        "2/2",
        "{printed}"
    );
}
