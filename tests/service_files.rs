//! The service files: the systemd unit, readiness notification, and the
//! init.d script driving real hosts.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use taskit_harness::*;

fn daemonizing(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("daemonizing")
        .join(file)
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        // .ci/run installs systemd where it can; say so loudly if not here.
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = TempDir::new("unit");
    let unit = std::fs::read_to_string(daemonizing("taskit-host@.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "DynamicUser=yes",
    ] {
        assert!(unit.contains(hardening), "{hardening} missing");
    }
    // Verify checks that ExecStart exists: point it at the built binary.
    let unit = unit.replace(
        "/usr/local/bin/taskit-host",
        host_binary().to_str().unwrap(),
    );
    let path = dir.join("taskit-host@54543.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("taskit-host@"),
        "warnings about the unit:\n{stderr}"
    );
}

#[test]
fn the_host_tells_systemd_when_it_is_ready_reloading_and_stopping() {
    let dir = demo_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new(host_binary())
        .args([
            "--plugins",
            dir.path().to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
        ])
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving 10 tasks on 127.0.0.1:"),
        "{ready}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(next(), "STOPPING=1");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn the_init_script_starts_stops_kills_and_restarts_hosts() {
    let dir = demo_dir("initd");
    let logs = TempDir::new("initd-logs");
    let base = consecutive_free_ports(2);
    let ports = format!("{}-{}", base, base + 1);
    let script = |verb: &str| {
        let out = Command::new("bash")
            .arg(daemonizing("taskit.init"))
            .arg(verb)
            .env("PORTS", &ports)
            .env("PLUGINS_DIR", dir.path())
            .env("TASKIT_HOST", host_binary())
            .env("TASKITCTL", built().join("taskitctl"))
            .env("LOG_DIR", logs.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let up = |out: &str| out.matches("--> up").count();

    let (code, out) = script("start");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches("--> started").count(), 2, "{out}");
    let (code, out) = script("status");
    assert_eq!((code, up(&out)), (Some(0), 2), "{out}");
    let (_, out) = script("start");
    assert_eq!(out.matches("--> already up").count(), 2, "{out}");

    let (code, out) = script("restart");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        (
            out.matches("--> stopped").count(),
            out.matches("--> started").count()
        ),
        (2, 2),
        "{out}"
    );

    let (code, out) = script("hard-restart");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        (
            out.matches("--> terminated").count(),
            out.matches("--> started").count()
        ),
        (2, 2),
        "{out}"
    );

    let (code, out) = script("stop");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches("--> stopped").count(), 2, "{out}");
    let (code, out) = script("status");
    assert_ne!(code, Some(0));
    assert_eq!(out.matches("--> down").count(), 2, "{out}");

    let (code, out) = script("start");
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = script("kill");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches("--> terminated").count(), 2, "{out}");
    let (code, _) = script("bogus");
    assert_eq!(code, Some(2));
}

/// The README's first command, as a newcomer runs it: it builds what it
/// needs (release) and serves the demo plugin; `taskitctl call … add 4 4`
/// then prints 8. (On a free port here, not 54543, to run beside anything.)
#[test]
fn the_readme_demo_command_serves_add() {
    use std::io::{BufRead, BufReader};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("sh")
        .arg(root.join("scripts/demo-host.sh"))
        .args(["--bind", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut addr = None;
    let mut seen = Vec::new();
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("taskit-host ready") {
            addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listening="))
                .map(str::to_owned);
            break;
        }
        seen.push(line);
    }
    std::thread::spawn(move || for _ in lines {});
    let addr =
        addr.unwrap_or_else(|| panic!("the demo host never got ready:\n{}", seen.join("\n")));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let out = Command::new(target.join("release/taskitctl"))
        .args(["call", &addr, "add", "4", "4"])
        .output()
        .unwrap();
    // SAFETY: signalling our own child (the script exec'd into the host).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "8");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn the_init_script_refuses_bad_ports_and_a_missing_taskitctl() {
    let run = |ports: &str, ctl: &str| {
        let out = Command::new("bash")
            .arg(daemonizing("taskit.init"))
            .arg("start")
            .env("PORTS", ports)
            .env("TASKITCTL", ctl)
            .env("TASKIT_HOST", "/nonexistent")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ctl = built().join("taskitctl");
    let ctl = ctl.to_str().unwrap();
    for bad in [
        "54546-54543",
        "abc",
        "70000",
        "54543 54544",
        "1,,2",
        "$(touch /tmp/x)",
    ] {
        let (code, err) = run(bad, ctl);
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(err.contains("bad PORTS"), "{bad}: {err}");
    }
    let (code, err) = run("54543", "/nonexistent/taskitctl");
    assert_eq!(code, Some(2));
    assert!(err.contains("taskitctl not found"), "{err}");
}
