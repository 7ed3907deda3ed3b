//! `taskitctl` against real hosts.

use std::process::{Command, Output};

use serde_json::Value;
use taskit_harness::*;

fn taskitctl(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(built().join("taskitctl"))
        .args(args)
        .output()
        .expect("run taskitctl");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Hosts on `base` and `base + 2`, none on `base + 1`.
fn hosts_with_a_gap(label: &str, extra: &[&str]) -> (Vec<HostProcess>, u16, Vec<TempDir>) {
    let base = consecutive_free_ports(3);
    let mut hosts = Vec::new();
    let mut dirs = Vec::new();
    for port in [base, base + 2] {
        let dir = demo_dir(label);
        let bind = format!("127.0.0.1:{port}");
        let mut args = vec![
            "--plugins",
            dir.path().to_str().unwrap(),
            "--bind",
            bind.as_str(),
        ];
        args.extend_from_slice(extra);
        let mut host = HostProcess::start_without_bind(&args);
        host.ready();
        hosts.push(host);
        dirs.push(dir);
    }
    (hosts, base, dirs)
}

#[test]
fn status_tasks_reload_and_stop_over_a_range_with_one_port_down() {
    let (mut hosts, base, _dirs) = hosts_with_a_gap("ctl-range", &[]);
    let range = format!("{}-{}", base, base + 2);

    let (code, out, _) = taskitctl(&["status", "127.0.0.1", &range]);
    assert_eq!(code, 3, "a port down makes the exit status non-zero");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], format!("127.0.0.1:{base} --> up, 1 jobs running"));
    assert_eq!(lines[1], format!("127.0.0.1:{} --> down", base + 1));
    assert_eq!(
        lines[2],
        format!("127.0.0.1:{} --> up, 1 jobs running", base + 2)
    );

    let (code, out, _) = taskitctl(&["tasks", "127.0.0.1", &range]);
    assert_eq!(code, 3);
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains("--> up, demo 0.1.0 [add, echo, wait-double"),
        "{out}"
    );

    let (code, out, _) = taskitctl(&["reload", "127.0.0.1", &range, "--json"]);
    assert_eq!(code, 3);
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["state"], "up");
    assert_eq!(first["reload"]["unchanged"], 1);
    let second: Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["state"], "down");

    // Only the hosts that are up: all well, exit 0.
    let both = format!("{},{}", base, base + 2);
    let (code, out, _) = taskitctl(&["status", "127.0.0.1", &both, "--compat"]);
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = taskitctl(&["stop", "127.0.0.1", &range]);
    assert_eq!(code, 3);
    assert!(
        out.contains(&format!("127.0.0.1:{base} --> stopped")),
        "{out}"
    );
    for host in &mut hosts {
        assert_eq!(host.wait_exit(), Some(0));
    }
    let (code, out, _) = taskitctl(&["status", "127.0.0.1", &range]);
    assert_eq!(code, 3);
    assert_eq!(out.matches("--> down").count(), 3, "{out}");
}

#[test]
fn kill_over_a_list() {
    let (mut hosts, base, _dirs) = hosts_with_a_gap("ctl-kill", &[]);
    let list = format!("{},{},{}", base, base + 1, base + 2);
    let (code, out, _) = taskitctl(&["kill", "127.0.0.1", &list]);
    assert_eq!(code, 3);
    assert_eq!(out.matches("--> terminated").count(), 2, "{out}");
    for host in &mut hosts {
        assert_eq!(host.wait_exit(), Some(0));
    }
}

#[test]
fn call_prints_results_and_remote_errors() {
    let dir = demo_dir("ctl-call");
    let (_host, addr) = HostProcess::serving(dir.path(), &[]);
    let target = addr.to_string();

    let (code, out, _) = taskitctl(&["call", &target, "add", "4", "4"]);
    assert_eq!((code, out.trim()), (0, "8"));
    let (code, out, _) = taskitctl(&["call", &target, "add", "4", "4", "--compat"]);
    assert_eq!((code, out.trim()), (0, "8"));
    let (code, out, _) = taskitctl(&[
        "call",
        &target,
        "greet",
        "\"Ada\"",
        "--kw",
        "greeting=\"Hi\"",
        "--kw",
        "excited=true",
    ]);
    assert_eq!((code, out.trim()), (0, "\"Hi, Ada!\""));
    let (code, out, _) = taskitctl(&["call", &target, "echo", "\"héllo\"", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap()["ok"],
        "héllo"
    );

    let (code, _, err) = taskitctl(&["call", &target, "get-error"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        r#"error: AssertionError ["this task always fails"]"#
    );
    let (code, out, _) = taskitctl(&["call", &target, "get-error", "--compat", "--json"]);
    assert_eq!(code, 1);
    let reply: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(reply["error"]["type"], "AssertionError");
    let (code, _, err) = taskitctl(&["call", &target, "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("KeyError"), "{err}");

    // A call with a timeout shorter than the task.
    let (code, _, err) = taskitctl(&["call", &target, "wait-double", "1000", "--timeout", "0.1"]);
    assert_ne!(code, 0);
    assert!(err.contains("no reply within"), "{err}");
}

#[test]
fn bad_ports_and_bad_json_get_clear_errors() {
    for (spec, message) in [
        ("10-5", "runs backwards"),
        ("abc", "is not a port number"),
        ("70000", "out of range"),
    ] {
        let (code, _, err) = taskitctl(&["status", "127.0.0.1", spec]);
        assert_eq!(code, 2, "{spec}");
        assert!(err.contains(message), "{spec}: {err}");
    }
    let (code, _, err) = taskitctl(&["call", "127.0.0.1:1", "echo", "hello"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("argument \"hello\" is not JSON") && err.contains("'\"hello\"'"),
        "{err}"
    );
    let (code, _, err) = taskitctl(&["call", "127.0.0.1:1", "add", "--kw", "novalue"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not KEY=JSON"), "{err}");
    let (code, _, err) = taskitctl(&["call", "127.0.0.1:99999", "add"]);
    assert_eq!(code, 2);
    assert!(err.contains("bad HOST[:PORT]"), "{err}");
    let (code, _, err) = taskitctl(&["call", "127.0.0.1:1", "add", "1", "2"]);
    assert_eq!(code, 3);
    assert!(err.contains("is down"), "{err}");
}

#[test]
fn the_token_file_is_sent_with_admin_commands() {
    let dir = demo_dir("ctl-token");
    let token = private_token_file(&dir, "sesame\n");
    let (mut host, addr) =
        HostProcess::serving(dir.path(), &["--admin-token-file", token.to_str().unwrap()]);
    let port = addr.port().to_string();

    let (code, out, _) = taskitctl(&["status", "127.0.0.1", &port]);
    assert_eq!(code, 1);
    assert!(out.contains("error: Unauthorized"), "{out}");
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "open").unwrap();
    let (code, out, _) = taskitctl(&[
        "stop",
        "127.0.0.1",
        &port,
        "--token-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("Unauthorized"), "{out}");
    let (code, out, _) = taskitctl(&[
        "status",
        "127.0.0.1",
        &port,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(
        (code, out.trim().ends_with("--> up, 1 jobs running")),
        (0, true),
        "{out}"
    );
    let (code, _, _) = taskitctl(&[
        "stop",
        "127.0.0.1",
        &port,
        "--token-file",
        token.to_str().unwrap(),
        "--compat",
    ]);
    assert_eq!(code, 0);
    assert_eq!(host.wait_exit(), Some(0));
}

#[test]
fn every_argument_is_described_in_help() {
    for command in ["status", "stop", "kill", "tasks", "reload"] {
        let (code, out, _) = taskitctl(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(
            out.contains("<HOST>   The hosts' address"),
            "{command}: {out}"
        );
        assert!(
            out.contains("<PORTS>  Their ports: N, N,M,K or N-M"),
            "{command}: {out}"
        );
    }
    let (_, out, _) = taskitctl(&["status", "--help"]);
    assert!(
        out.contains("counts the status call itself (an idle host says 1)"),
        "{out}"
    );
    let (_, out, _) = taskitctl(&["call", "--help"]);
    assert!(
        out.contains("<TASK>") && out.contains("The task id"),
        "{out}"
    );
}

#[test]
fn a_dns_name_stands_for_every_address_it_resolves_to() {
    let (mut hosts, base, _dirs) = hosts_with_a_gap("ctl-dns", &[]);
    let range = format!("{}-{}", base, base + 2);
    // What this machine's resolver gives for localhost; the hosts listen
    // on 127.0.0.1 only, so any other address (::1) is down.
    let mut system: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&("localhost", base))
            .unwrap()
            .collect();
    system.sort();
    system.dedup();
    let (code, out, _) = taskitctl(&["status", "dns:localhost", &range]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(out.lines().count(), 3 * system.len(), "{out}");
    for (port, state) in [(base, "up, 1 jobs running"), (base + 1, "down")] {
        let line = format!("127.0.0.1:{port} --> {state}");
        assert!(out.lines().any(|l| l == line), "no {line:?} in {out}");
    }

    let target = format!("dns:localhost:{base}");
    let (code, out, _) = taskitctl(&["call", &target, "add", "4", "4"]);
    assert_eq!((code, out.trim()), (0, "8"));

    let (code, _, err) = taskitctl(&["status", "dns:10.0.0.1", "1"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = taskitctl(&["status", "dns:name.invalid", "1", "--timeout", "2"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with("dns:name.invalid:1 --> failed: cannot resolve"),
        "{out}"
    );

    let (code, out, _) = taskitctl(&["stop", "dns:localhost", &format!("{base},{}", base + 2)]);
    assert!(
        out.contains(&format!("127.0.0.1:{base} --> stopped")),
        "{out}"
    );
    assert_eq!(code, if system.len() == 1 { 0 } else { 3 }, "{out}");
    for host in &mut hosts {
        assert_eq!(host.wait_exit(), Some(0));
    }
}
