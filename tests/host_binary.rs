//! The `taskit-host` binary itself: what it says about loading, refusing,
//! reloading and removing plugins, and how it refuses to start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use taskit_harness::*;

#[test]
fn the_host_logs_what_it_loads_refuses_reloads_and_removes() {
    let dir = TempDir::new("binary");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    std::fs::write(dir.join("broken.so"), "not a library").unwrap();
    let mut host = HostProcess::start(&["--plugins", dir.path().to_str().unwrap()]);

    host.expect_line(&["refused plugin file", "broken.so", "not an ELF file"]);
    host.expect_line(&["loaded plugin", "plugin=demo", "version=0.1.0", "tasks=10"]);
    host.expect_line(&["taskit-host ready", "plugins=1", "tasks=10"]);

    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "demo.so");
    host.expect_line(&["reloaded plugin", "plugin=demo", "from=0.1.0", "to=0.2.0"]);

    std::fs::copy(plugin("taskit_fixture_bad_version"), dir.join("demo.so")).unwrap();
    host.expect_line(&[
        "refused plugin file",
        "demo.so",
        "99.0.0",
        "keeps_serving=demo 0.2.0",
    ]);

    // A plugin whose ABI layout differs: one short line that says what
    // differs and what to do (the layout comparison is at debug level).
    std::fs::copy(plugin("taskit_fixture_bad_layout"), dir.join("demo.so")).unwrap();
    let line = host.expect_line(&["refused plugin file", "demo.so", "layout differs"]);
    assert!(line.contains("rebuild"), "{line}");
    assert!(line.len() < 400, "{} bytes: {line}", line.len());

    std::fs::remove_file(dir.join("demo.so")).unwrap();
    host.expect_line(&["removed plugin", "plugin=demo"]);
    assert!(
        host.child.try_wait().unwrap().is_none(),
        "the host is still running"
    );
}

#[test]
fn the_host_refuses_to_start_without_its_plugins_directory() {
    let dir = TempDir::new("missing");
    let missing = dir.join("nope");
    let out = Command::new(host_binary())
        .args(["--plugins", missing.to_str().unwrap()])
        .output()
        .expect("run taskit-host");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist or is not a directory"),
        "{stderr}"
    );
}

fn signal(host: &HostProcess, signal: libc::c_int) {
    // SAFETY: sending a signal to a child process we own.
    let rc = unsafe { libc::kill(host.child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill failed");
}

#[test]
fn sighup_rescans_and_sigterm_exits_cleanly() {
    let dir = TempDir::new("signals");
    let mut host = HostProcess::start(&["--plugins", dir.path().to_str().unwrap(), "--no-watch"]);
    host.expect_line(&["taskit-host ready", "plugins=0"]);

    // Not watched: nothing is loaded until SIGHUP (a watching host loads a
    // renamed file within tens of milliseconds).
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    std::thread::sleep(Duration::from_millis(500));
    let early: Vec<String> = host.lines.try_iter().collect();
    assert!(
        !early.iter().any(|l| l.contains("loaded plugin")),
        "{early:?}"
    );
    signal(&host, libc::SIGHUP);
    host.expect_line(&["loaded plugin", "plugin=demo", "version=0.1.0"]);
    host.expect_line(&["SIGHUP: plugins directory rescanned", "loaded=1"]);

    signal(&host, libc::SIGTERM);
    host.expect_line(&["stopping"]);
    let status = host.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn a_relative_plugins_dir_is_watched() {
    let dir = TempDir::new("relative");
    std::fs::create_dir(dir.join("plugins.d")).unwrap();
    let mut child = Command::new(host_binary())
        .args(["--plugins", "plugins.d", "--bind", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut host = HostProcess {
        child,
        lines,
        seen: Vec::new(),
    };
    host.expect_line(&["taskit-host ready"]);
    install_by_rename(&plugin("taskit_demo"), &dir.join("plugins.d"), "demo.so");
    host.expect_line(&["loaded plugin", "plugin=demo"]);
}

#[test]
fn the_bench_runs_and_ends_with_a_json_line_of_figures() {
    let plots = TempDir::new("bench-plots");
    let stdout = run_successfully(
        "taskit-bench",
        &[
            "--calls",
            "200",
            "--seconds",
            "0.2",
            "--in-flight",
            "1,8",
            "--reloads",
            "4",
            "--plots",
            plots.path().to_str().unwrap(),
            "--awake-cores",
        ],
    );
    assert_eq!(
        spinners_left(&built().join("taskit-bench")),
        0,
        "the core-waking spinners outlived the bench"
    );
    assert!(stdout.contains("raw TCP ping-pong"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    let figures: serde_json::Value = serde_json::from_str(last).expect("a JSON line last");
    for key in [
        "floor",
        "native_json_latency",
        "native_bincode_throughput",
        "taskit4_latency",
    ] {
        assert!(figures.get(key).is_some(), "{key} missing from {last}");
    }
    assert!(figures["native_bincode_throughput"]["8"].as_f64().unwrap() > 0.0);
    let reload = &figures["reload"];
    assert_eq!(reload["reloads"], 4, "{reload}");
    assert_eq!(reload["calls_failed"], 0, "{reload}");
    assert!(reload["calls_answered"].as_u64().unwrap() > 0, "{reload}");
    assert!(figures["idle_rss_kib"].as_u64().unwrap() > 0);
    for (plot, lines) in [("latency.svg", 4), ("throughput.svg", 2)] {
        let svg = std::fs::read_to_string(plots.join(plot)).expect(plot);
        assert_eq!(svg.matches("<polyline").count(), lines, "{plot}");
    }
}

#[test]
fn a_plugin_log_line_reaches_the_host_output_and_obeys_rust_log() {
    use taskit_plugin_api::frontend::BlockingFrontEnd;
    let dir = demo_dir("plugin-log-e2e");

    let mut host = HostProcess::start_logging(&["--plugins", dir.path().to_str().unwrap()], "info");
    let addr = host.ready();
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    fe.work::<()>("log", &("hello from the e2e test",)).unwrap();
    let line = host.expect_line(&["demo task says", "hello from the e2e test"]);
    for part in [" INFO ", "taskit::plugin", "plugin=demo", "version=0.1.0"] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }

    // Filtered out by RUST_LOG: nothing of it reaches the output.
    let mut quiet = HostProcess::start_logging(
        &["--plugins", dir.path().to_str().unwrap()],
        "info,taskit::plugin=warn",
    );
    let addr = quiet.ready();
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    fe.work::<()>("log", &("should stay quiet",)).unwrap();
    fe.send_stop(addr).unwrap();
    quiet.expect_line(&["taskit-host exiting"]);
    assert!(
        !quiet.seen.iter().any(|l| l.contains("should stay quiet")),
        "{:?}",
        quiet.seen
    );
}

#[test]
fn the_host_refuses_to_start_on_a_port_in_use() {
    let dir = demo_dir("port-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(host_binary())
        .args(["--plugins", dir.path().to_str().unwrap(), "--bind", &addr])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    // Said before any plugin is loaded, and without a backtrace.
    assert!(!stderr.contains("loaded plugin"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("address") && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn sigterm_with_calls_in_flight_answers_them_all_then_exits_0() {
    use taskit_plugin_api::frontend::FrontEnd;
    let dir = demo_dir("sigterm-drain");
    let (mut host, addr) = HostProcess::serving(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fe = FrontEnd::new([addr]);
        let calls: Vec<_> = (0..10u64)
            .map(|i| {
                let fe = fe.clone();
                tokio::spawn(async move { fe.call::<u64>("wait-double", &(400 + i,)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        signal(&host, libc::SIGTERM);
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), 2 * (400 + i as u64));
        }
    });
    assert_eq!(host.wait_exit(), Some(0));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = demo_dir("json-logs");
    let mut host = HostProcess::start(&[
        "--plugins",
        dir.path().to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    let line = host.expect_line(&["taskit-host ready"]);
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(record["level"], "INFO");
    assert_eq!(record["fields"]["plugins"], 1);
}

#[test]
fn the_load_test_runs_and_ends_with_a_summary_line() {
    let stdout = run_successfully(
        "taskit-load",
        &[
            "--connections",
            "20",
            "--calls",
            "2000",
            "--taskit4-percent",
            "10",
        ],
    );
    let summary = stdout.lines().last().unwrap_or_default();
    for part in [
        "load: sent=2000 answered=2000 refused=0 wrong=0 lost=0",
        "expected_errors=200",
        "host_rss_kib_peak=",
    ] {
        assert!(summary.contains(part), "{part:?} missing from {summary}");
    }
}

#[test]
fn the_load_test_with_faults_loses_nothing() {
    let stdout = run_successfully(
        "taskit-load",
        &["--connections", "20", "--calls", "12000", "--faults", "5"],
    );
    let load = summary(&stdout, "load:");
    assert_eq!(load["sent"], load["answered"], "{stdout}");
    assert!(load["sent"] >= 12000, "{stdout}");
    assert_eq!(
        (load["wrong"], load["lost"], load["refused"]),
        (0, 0, 0),
        "{stdout}"
    );
    let faults = summary(&stdout, "faults:");
    assert_eq!(faults["reloads"], 5, "{stdout}");
    // The removed plugin's calls outlived its removal at least once.
    assert!(faults["removals_with_calls_in_flight"] >= 1, "{stdout}");
    assert!(stdout.contains("host: up_after_load=yes"), "{stdout}");
}

#[test]
fn the_load_test_drains_on_stop_and_the_host_exits_0() {
    let stdout = run_successfully(
        "taskit-load",
        &[
            "--connections",
            "20",
            "--calls",
            "4000",
            "--taskit4-percent",
            "30",
            "--stop-at",
            "50",
        ],
    );
    let load = summary(&stdout, "load:");
    assert_eq!(load["sent"], load["answered"] + load["refused"], "{stdout}");
    assert_eq!((load["wrong"], load["lost"]), (0, 0), "{stdout}");
    assert!(
        load["refused"] > 0,
        "nothing was refused after <stop>: {stdout}"
    );
    assert!(stdout.contains("host_exit=0"), "{stdout}");
}

/// Processes still running `<bench> --spin`.
fn spinners_left(bench: &std::path::Path) -> usize {
    let bench = bench.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first() == Some(&bench) && args.contains(&&b"--spin"[..])
        })
        .count()
}

/// The numeric `key=value` fields of the line starting with `prefix`.
fn summary(stdout: &str, prefix: &str) -> std::collections::HashMap<String, u64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in {stdout}"));
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// Runs one of the built binaries with `args`, checks it succeeded, and
/// returns what it printed.
fn run_successfully(binary: &str, args: &[&str]) -> String {
    let path = built().join(binary);
    let out = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_call_waiting_for_a_task_slot_runs_on_the_plugin_live_when_it_arrived() {
    use taskit_plugin_api::frontend::{BlockingFrontEnd, FrontendError};
    let dir = demo_dir("queued-removal");
    install_by_rename(
        &plugin("taskit_fixture_removable"),
        dir.path(),
        "removable.so",
    );
    let (mut host, addr) = HostProcess::serving(dir.path(), &["--max-tasks", "1"]);
    let fe = std::sync::Arc::new(BlockingFrontEnd::new([addr]).unwrap());
    // The only task slot, busy for three seconds.
    let busy = {
        let fe = std::sync::Arc::clone(&fe);
        std::thread::spawn(move || fe.work::<String>("hold", &(3000u64, "busy")))
    };
    std::thread::sleep(Duration::from_millis(200));
    // Accepted now, but waiting for the slot when its plugin goes away.
    let queued = {
        let fe = std::sync::Arc::clone(&fe);
        std::thread::spawn(move || fe.work::<String>("hold", &(0u64, "kept")))
    };
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_file(dir.join("removable.so")).unwrap();
    host.expect_line(&["removed plugin", "plugin=removable"]);
    assert!(
        !busy.is_finished(),
        "the slot was still taken at the removal"
    );
    assert_eq!(queued.join().unwrap().unwrap(), "kept");
    assert_eq!(busy.join().unwrap().unwrap(), "busy");
    // Calls arriving after the removal find the task gone.
    match fe.work::<String>("hold", &(0u64, "late")) {
        Err(FrontendError::BackendProcessing { kind, .. }) => assert_eq!(kind, "KeyError"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_quick_plugin_task_turning_slow_does_not_hold_up_other_connections() {
    use taskit_plugin_api::frontend::BlockingFrontEnd;
    let dir = demo_dir("quick-turns-slow");
    let (_host, addr) = HostProcess::serving(dir.path(), &[]);
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    // Learned as quick...
    for _ in 0..50 {
        assert_eq!(fe.work::<u64>("wait-double", &(0u64,)).unwrap(), 0);
    }
    // ...then slow on as many connections as the host has async threads
    // (one per core of this machine, where it runs).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // A connection made before, and one made while they run.
    let early = BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(early.work::<i64>("add", &(1i64, 2i64)).unwrap(), 3);
    let slow: Vec<_> = (0..cores)
        .map(|_| {
            std::thread::spawn(move || {
                let fe = BlockingFrontEnd::new([addr]).unwrap();
                fe.work::<u64>("wait-double", &(1000u64,))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Other connections are still served while they all run.
    assert_eq!(early.work::<i64>("add", &(1i64, 2i64)).unwrap(), 3);
    let other = BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(other.work::<i64>("add", &(2i64, 2i64)).unwrap(), 4);
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "answered only after the slow calls"
    );
    for s in slow {
        assert_eq!(s.join().unwrap().unwrap(), 2000);
    }
}

/// A plugin built against the next minor version of `taskit-plugin-api`
/// (same plugin ABI) loads and serves: the ABI is versioned on its own, not
/// with the workspace. Builds a copy of plugin-api and the demo plugin in a
/// workspace of their own whose version is one minor ahead of this one;
/// then the same against the next major ABI version, which is refused.
#[test]
fn a_plugin_built_against_a_newer_plugin_api_minor_loads() {
    use taskit_plugin_api::frontend::BlockingFrontEnd;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = TempDir::new("newer-api");
    let next = {
        let mut parts = env!("CARGO_PKG_VERSION").split('.');
        let major = parts.next().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        format!("{major}.{}.0", minor + 1)
    };

    copy_tree(&root.join("plugin-api"), &work.join("plugin-api"));
    copy_tree(&root.join("plugins/demo"), &work.join("demo"));
    // Another package name: its library must not replace this workspace's
    // libtaskit_demo.so in the shared target directory.
    let demo_manifest = work.join("demo/Cargo.toml");
    let manifest = std::fs::read_to_string(&demo_manifest).unwrap();
    let renamed = manifest.replacen(
        "name = \"taskit-demo\"",
        "name = \"taskit-demo-newer-api\"",
        1,
    );
    assert_ne!(manifest, renamed, "the demo plugin's package name moved");
    std::fs::write(&demo_manifest, renamed).unwrap();

    // This workspace's manifest, its version bumped, its members the copies.
    let ours = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut theirs = String::from(
        "[workspace]\nmembers = [\"plugin-api\", \"plugin-api/abi\", \"demo\"]\nresolver = \"2\"\n",
    );
    let mut in_workspace_tables = false;
    for line in ours.lines() {
        if line.starts_with('[') {
            in_workspace_tables = line.starts_with("[workspace.");
        }
        if !in_workspace_tables
            || line.starts_with("taskit-host")
            || line.starts_with("taskit-harness")
        {
            continue;
        }
        if line.starts_with("version = ") {
            theirs.push_str(&format!("version = \"{next}\"\n"));
        } else {
            theirs.push_str(line);
            theirs.push('\n');
        }
    }
    std::fs::write(work.join("Cargo.toml"), theirs).unwrap();
    std::fs::copy(root.join("Cargo.lock"), work.join("Cargo.lock")).unwrap();

    let profile = built();
    let build = |into: &Path, name: &str| {
        let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo
            .args(["build", "-p", "taskit-demo-newer-api"])
            .current_dir(work.path())
            .env("CARGO_TARGET_DIR", profile.parent().unwrap());
        if profile.ends_with("release") {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().unwrap().success(),
            "building the plugin failed"
        );
        install_by_rename(&profile.join("libtaskit_demo_newer_api.so"), into, name);
    };

    let plugins = TempDir::new("newer-api-plugins");
    build(plugins.path(), "demo.so");
    let mut host = HostProcess::start(&["--plugins", plugins.path().to_str().unwrap()]);
    host.expect_line(&["loaded plugin", "plugin=demo", &format!("version={next}")]);
    let addr = host.ready();
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(fe.work::<String>("version", &()).unwrap(), next);
    assert_eq!(fe.work::<i64>("add", &(2, 3)).unwrap(), 5);

    // The same plugin against the next major ABI version is refused, in
    // one line that says what to do, and the loaded one keeps serving.
    let abi_manifest = work.join("plugin-api/abi/Cargo.toml");
    let manifest = std::fs::read_to_string(&abi_manifest).unwrap();
    let abi_line = manifest
        .lines()
        .find(|l| l.starts_with("version = \""))
        .expect("the ABI crate states its own version");
    let major: u32 = abi_line["version = \"".len()..]
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("a major version");
    let next_major = format!("{}.0.0", major + 1);
    let bumped = manifest.replacen(abi_line, &format!("version = \"{next_major}\""), 1);
    std::fs::write(&abi_manifest, bumped).unwrap();
    let staging = TempDir::new("newer-api-major");
    build(staging.path(), "demo.so");
    std::fs::rename(staging.join("demo.so"), plugins.join("demo.so")).unwrap();
    let line = host.expect_line(&["refused plugin file", "demo.so"]);
    for part in [
        &format!("built for plugin ABI {next_major}"),
        "rebuild",
        "keeps_serving=demo",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    assert_eq!(fe.work::<i64>("add", &(2, 3)).unwrap(), 5);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn plugin_copies_left_by_hosts_that_are_gone_are_removed_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = demo_dir("stale-shadow");
    let shadow = TempDir::new("stale-shadow-root");
    // A host that is gone: a process that has exited.
    let gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    let mut gone = gone;
    gone.wait().unwrap();
    let stale = shadow.join(&format!(".taskit-host-{gone_pid}-0000abcd"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("demo.so"), b"an old copy").unwrap();
    // One of a host that runs (this test), and something else: both kept.
    let live = shadow.join(&format!(".taskit-host-{}-0000abcd", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    let other = shadow.join("unrelated");
    std::fs::create_dir(&other).unwrap();
    let (host, addr) = HostProcess::serving(
        dir.path(),
        &["--shadow-dir", shadow.path().to_str().unwrap()],
    );
    assert!(!stale.exists(), "the stale copies are still there");
    assert!(live.exists() && other.exists());
    // Logged before the host got ready.
    assert!(
        host.seen
            .iter()
            .any(|l| l.contains("removed the plugin copies of a host that is gone")),
        "{:?}",
        host.seen
    );
    let fe = taskit_plugin_api::frontend::BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(fe.work::<i64>("add", &(2i64, 2i64)).unwrap(), 4);

    // A shadow root any user may write to, without the sticky bit: refused.
    let open = TempDir::new("open-shadow-root");
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(host_binary())
        .args(["--plugins", dir.path().to_str().unwrap()])
        .args(["--shadow-dir", open.path().to_str().unwrap()])
        .args(["--bind", "127.0.0.1:0"])
        .output()
        .expect("run taskit-host");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no sticky bit"), "{stderr}");
}

#[test]
fn plugins_others_could_have_changed_are_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // A plugins directory every user may write to: the host does not start.
    let open = demo_dir("strict-open-dir");
    chmod(open.path(), 0o777);
    let out = Command::new(host_binary())
        .args(["--plugins", open.path().to_str().unwrap()])
        .args(["--bind", "127.0.0.1:0"])
        .output()
        .expect("run taskit-host");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is writable by every user") && stderr.contains("chmod go-w"),
        "{stderr}"
    );

    // A plugin file its group may write to, and one another user owns: each
    // refused with why, the rest served.
    let dir = demo_dir("strict-files");
    install_by_rename(&plugin("taskit_fixture_crasher"), dir.path(), "crasher.so");
    chmod(&dir.join("crasher.so"), 0o775);
    std::fs::copy(plugin("taskit_demo_next"), dir.join("other.so")).unwrap();
    chmod(&dir.join("other.so"), 0o755);
    // SAFETY: a plain system call on a path we made (the tests run as root
    // here; elsewhere chown fails and the file stays ours).
    let path = std::ffi::CString::new(dir.join("other.so").to_str().unwrap()).unwrap();
    let foreign = unsafe { libc::chown(path.as_ptr(), 65534, 65534) } == 0;
    let (mut host, addr) = HostProcess::serving(dir.path(), &[]);
    let refused = |host: &HostProcess, file: &str, why: &str| {
        host.seen
            .iter()
            .any(|l| l.contains("refused plugin file") && l.contains(file) && l.contains(why))
    };
    assert!(
        refused(&host, "crasher.so", "writable by its group"),
        "{:?}",
        host.seen
    );
    if foreign {
        assert!(
            refused(&host, "other.so", "is owned by user 65534"),
            "{:?}",
            host.seen
        );
    }
    let fe = taskit_plugin_api::frontend::BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(fe.work::<i64>("add", &(2i64, 2i64)).unwrap(), 4);
    assert!(fe.work::<String>("crasher-fine", &()).is_err());
    host.kill().unwrap();

    // Allowed: loaded, with a warning.
    let (host, addr) = HostProcess::serving(dir.path(), &["--allow-insecure-plugins"]);
    assert!(
        host.seen
            .iter()
            .any(|l| l.contains("--allow-insecure-plugins")),
        "{:?}",
        host.seen
    );
    let fe = taskit_plugin_api::frontend::BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(fe.work::<String>("crasher-fine", &()).unwrap(), "fine");
}

#[test]
fn reloads_do_not_map_a_refused_plugin_again_until_its_bytes_change() {
    let dir = demo_dir("refused-reloads");
    // Refused after it is mapped: its `init` panics.
    install_by_rename(&plugin("taskit_fixture_init_panic"), dir.path(), "bad.so");
    // In process, each mapping would stay for good.
    let (host, addr) = HostProcess::serving(dir.path(), &["--isolation", "none"]);
    let fe = taskit_plugin_api::frontend::BlockingFrontEnd::new([addr]).unwrap();
    let before = rss_kib(host.pid()).unwrap();
    for _ in 0..100 {
        let report = fe.reload(addr).unwrap();
        assert_eq!(report.refused.len(), 1, "{report:?}");
    }
    let after = rss_kib(host.pid()).unwrap();
    // Mapped again each time (0.9 MB or more a time), 100 reloads grew it
    // by 90 MB or more.
    assert!(
        after < before + 32 * 1024,
        "RSS {before} KiB before, {after} KiB after 100 reloads"
    );
    // New bytes are tried again: the demo plugin, under the refused name.
    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "bad.so");
    let report = fe.reload(addr).unwrap();
    assert!(report.refused.is_empty(), "{report:?}");
}
