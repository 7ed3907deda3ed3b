//! The frontend against real `taskit-host` processes over real sockets.

use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use taskit_harness::*;
use taskit_plugin_api::frontend::{
    BackendAddr, BlockingFrontEnd, CallOptions, FrontEnd, FrontendConfig, FrontendError,
};
use taskit_plugin_api::wire::admin::Signal;
use taskit_plugin_api::CodecKind;
use taskit_plugin_api::OnError;

fn backends(addr: std::net::SocketAddr) -> Vec<BackendAddr> {
    let base = BackendAddr::from(addr);
    vec![base]
}

#[test]
fn calls_work_over_every_protocol_and_codec() {
    let dir = demo_dir("fe-protocols");
    let (_host, addr) = HostProcess::serving(dir.path(), &[]);
    let base = BackendAddr::from(addr);
    for backend in [
        base.clone(),
        base.clone().codec(CodecKind::Bincode),
        base.clone().taskit4(),
    ] {
        let label = format!("{:?}/{:?}", backend.protocol, backend.codec);
        let fe = BlockingFrontEnd::new([backend]).unwrap();
        assert_eq!(fe.work::<i64>("add", &(4i64, 4i64)).unwrap(), 8, "{label}");
        let big = "é".repeat(5000);
        assert_eq!(
            fe.work::<String>("echo", &(big.as_str(),)).unwrap(),
            big,
            "{label}"
        );
        let greeting = fe
            .work_with::<String>(
                "greet",
                &("Ada",),
                &CallOptions::default()
                    .kw("greeting", "Hi")
                    .kw("excited", true),
            )
            .unwrap();
        assert_eq!(greeting, "Hi, Ada!", "{label}");
        match fe.work::<Value>("get-error", &()) {
            Err(FrontendError::BackendProcessing { kind, args }) => {
                assert_eq!(
                    (kind.as_str(), args),
                    ("AssertionError", vec![json!("this task always fails")]),
                    "{label}"
                )
            }
            other => panic!("{label}: {other:?}"),
        }
        let err = fe.work::<Value>("no-such-task", &()).unwrap_err();
        assert_eq!(err.remote_type(), Some("KeyError"), "{label}");
        let err = fe.work::<i64>("add", &(1i64, 2i64, 3i64)).unwrap_err();
        assert_eq!(err.remote_type(), Some("TypeError"), "{label}");
        assert_eq!(
            fe.get_tasks(addr).unwrap(),
            "1",
            "{label}: an idle host counts the status call itself"
        );
        let plugins = fe.tasks(addr).unwrap();
        assert_eq!(plugins.len(), 1);
        assert_eq!(plugins[0].name, "demo");
        assert!(plugins[0].tasks.contains(&"wait-double".to_owned()));
    }
}

#[test]
fn many_calls_in_flight_on_one_connection_answer_in_completion_order() {
    let dir = demo_dir("fe-inflight");
    let (_host, addr) = HostProcess::serving(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fe = FrontEnd::new(backends(addr));
        // A slow call first, then fast ones: the fast ones finish first
        // (the slow one, a second, takes far longer than 200 quick calls on any
        // machine this runs on).
        let slow = {
            let fe = fe.clone();
            tokio::spawn(async move { fe.call::<u64>("wait-double", &(1000u64,)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut fast = Vec::new();
        for i in 0..200i64 {
            let fe = fe.clone();
            fast.push(tokio::spawn(async move {
                (i, fe.call::<i64>("add", &(i, i)).await)
            }));
        }
        for handle in fast {
            let (i, result) = handle.await.unwrap();
            assert_eq!(result.unwrap(), 2 * i);
        }
        assert!(
            !slow.is_finished(),
            "fast calls were not held up behind the slow one"
        );
        assert_eq!(slow.await.unwrap().unwrap(), 2000);
    });
}

#[test]
fn timeouts_fail_the_call_and_the_connection_keeps_working() {
    let dir = demo_dir("fe-timeout");
    let (_host, addr) = HostProcess::serving(dir.path(), &[]);
    let fe = BlockingFrontEnd::new(backends(addr)).unwrap();
    let options = CallOptions::default().timeout(Duration::from_millis(100));
    match fe.work_with::<u64>("wait-double", &(1000u64,), &options) {
        Err(FrontendError::Timeout(t)) => assert_eq!(t, Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
    assert_eq!(fe.work::<i64>("add", &(1i64, 1i64)).unwrap(), 2);
}

#[test]
fn callback_and_ignore_run_on_other_threads() {
    let dir = demo_dir("fe-callback");
    let (_host, addr) = HostProcess::serving(dir.path(), &[]);
    let fe = BlockingFrontEnd::new(backends(addr)).unwrap();
    let (tx, rx) = mpsc::channel();
    let caller = std::thread::current().id();
    let ok_tx = tx.clone();
    fe.callback(
        "add",
        (2i64, 3i64),
        move |v: i64| {
            ok_tx
                .send((v, std::thread::current().id() != caller))
                .unwrap()
        },
        OnError::Print,
    );
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), (5, true));

    let (err_tx, err_rx) = mpsc::channel();
    fe.callback(
        "get-error",
        (),
        |_: Value| panic!("no result expected"),
        OnError::handle(move |e: FrontendError| {
            err_tx.send(e.remote_type().map(str::to_owned)).unwrap()
        }),
    );
    assert_eq!(
        err_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .as_deref(),
        Some("AssertionError")
    );

    fe.ignore("get-error", ());
    fe.ignore("add", (1i64, 1i64));
    assert!(fe.wait_idle(Duration::from_secs(30)));
}

#[test]
fn no_reachable_backend_gives_backend_not_available_and_down() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let config = FrontendConfig {
        connect_timeout: Duration::from_secs(2),
        ..FrontendConfig::default()
    };
    for backend in [BackendAddr::from(addr), BackendAddr::from(addr).taskit4()] {
        let fe = BlockingFrontEnd::with_config([backend], config.clone()).unwrap();
        assert_eq!(
            fe.work::<i64>("add", &(1i64, 1i64)),
            Err(FrontendError::BackendNotAvailable)
        );
        assert_eq!(fe.get_tasks(addr).unwrap(), "down");
    }
}

#[test]
fn two_hosts_one_killed_mid_run_loses_no_call() {
    let dir_a = demo_dir("fe-two-a");
    let dir_b = demo_dir("fe-two-b");
    let (mut host_a, addr_a) = HostProcess::serving(dir_a.path(), &[]);
    let (_host_b, addr_b) = HostProcess::serving(dir_b.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (answered, lost) = rt.block_on(async {
        let fe = FrontEnd::new([BackendAddr::from(addr_a), BackendAddr::from(addr_b)]);
        let mut answered = 0;
        let mut lost = Vec::new();
        for round in 0..40i64 {
            if round == 20 {
                // Kill one host between rounds: its connection breaks, and
                // the next calls must move to the survivor.
                host_a.child.kill().unwrap();
                host_a.child.wait().unwrap();
            }
            let mut calls = Vec::new();
            for i in 0..50i64 {
                let fe = fe.clone();
                let n = round * 1000 + i;
                calls.push(tokio::spawn(async move {
                    (n, fe.call::<i64>("add", &(n, 1i64)).await)
                }));
            }
            for call in calls {
                let (n, result) = call.await.unwrap();
                match result {
                    Ok(v) if v == n + 1 => answered += 1,
                    other => lost.push((n, other)),
                }
            }
        }
        (answered, lost)
    });
    assert!(
        lost.is_empty(),
        "{} calls lost or wrong: {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
    assert_eq!(answered, 2000);
}

#[test]
fn idempotent_calls_in_flight_on_a_killed_host_are_retried_on_the_other() {
    let dir_a = demo_dir("fe-idem-a");
    let dir_b = demo_dir("fe-idem-b");
    let (mut host_a, addr_a) = HostProcess::serving(dir_a.path(), &[]);
    let (_host_b, addr_b) = HostProcess::serving(dir_b.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fe = FrontEnd::new([BackendAddr::from(addr_a), BackendAddr::from(addr_b)]);
        let mut calls = Vec::new();
        // Slow calls spread over both hosts in turn (the least loaded, ties
        // taken in turn), half of those on each idempotent.
        for i in 0..40u64 {
            let fe = fe.clone();
            let idempotent = i % 4 < 2;
            calls.push(tokio::spawn(async move {
                let options = if idempotent {
                    CallOptions::default().idempotent()
                } else {
                    CallOptions::default()
                };
                let result = fe
                    .call_with::<u64>("wait-double", &(600 + i,), &options)
                    .await;
                (i, idempotent, result)
            }));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        host_a.child.kill().unwrap();
        host_a.child.wait().unwrap();
        let mut lost_plain = 0;
        for call in calls {
            let (i, idempotent, result) = call.await.unwrap();
            match result {
                Ok(v) => assert_eq!(v, 2 * (600 + i)),
                Err(FrontendError::ConnectionLost(_)) if !idempotent => lost_plain += 1,
                Err(e) => panic!("call {i} (idempotent: {idempotent}): {e}"),
            }
        }
        // The kill did catch calls in flight: the plain ones on it are lost.
        assert!(lost_plain > 0, "no call was in flight on the killed host");
    });
}

#[test]
fn stop_answers_every_call_in_flight_then_exits_0() {
    let dir = demo_dir("fe-stop");
    let (mut host, addr) = HostProcess::serving(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fe = FrontEnd::new(backends(addr));
        let mut slow = Vec::new();
        for i in 0..8u64 {
            let fe = fe.clone();
            slow.push(tokio::spawn(async move {
                fe.call::<u64>("wait-double", &(300 + i,)).await
            }));
        }
        // Let them be accepted, then stop from another client.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let admin = FrontEnd::new(backends(addr).into_iter().map(|b| b.taskit4()));
        admin.send_stop(addr).await.unwrap();
        for (i, call) in slow.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), 2 * (300 + i as u64));
        }
        // New calls after the stop are refused (or find the host gone).
        let after = fe.call::<i64>("add", &(1i64, 1i64)).await;
        assert!(after.is_err(), "{after:?}");
    });
    assert_eq!(host.wait_exit(), Some(0));
}

#[test]
fn kill_ends_the_host_at_once() {
    let dir = demo_dir("fe-kill");
    let shadow = TempDir::new("fe-kill-shadow");
    let (mut host, addr) = HostProcess::serving(
        dir.path(),
        &["--shadow-dir", shadow.path().to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_dir(shadow.path()).unwrap().count(),
        1,
        "this run's copies directory"
    );
    let fe = BlockingFrontEnd::new(backends(addr)).unwrap();
    fe.ignore("wait-double", (1000u64,));
    std::thread::sleep(Duration::from_millis(100));
    fe.send_kill(addr).unwrap();
    assert_eq!(host.wait_exit(), Some(0));
    assert_eq!(
        std::fs::read_dir(shadow.path()).unwrap().count(),
        0,
        "plugin copies removed even on <kill>"
    );
}

/// A frontend on `backend` that sends `token` with admin signals.
fn with_token(backend: BackendAddr, token: &str) -> BlockingFrontEnd {
    BlockingFrontEnd::with_config(
        [backend],
        FrontendConfig {
            admin_token: Some(token.into()),
            ..FrontendConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn the_admin_token_is_required_when_configured() {
    let dir = demo_dir("fe-token");
    let token_file = private_token_file(&dir, "s3cret\n");
    let (mut host, addr) = HostProcess::serving(
        dir.path(),
        &["--admin-token-file", token_file.to_str().unwrap()],
    );

    for backend in [BackendAddr::from(addr), BackendAddr::from(addr).taskit4()] {
        let without = BlockingFrontEnd::new([backend.clone()]).unwrap();
        for signal in Signal::ALL {
            let err = without.send_signal(addr, signal).unwrap_err();
            assert_eq!(err.remote_type(), Some("Unauthorized"), "{signal}: {err}");
        }
        let wrong = with_token(backend.clone(), "guess");
        assert_eq!(
            wrong.send_stop(addr).unwrap_err().remote_type(),
            Some("Unauthorized")
        );
        // Ordinary calls need no token.
        assert_eq!(without.work::<i64>("add", &(1i64, 2i64)).unwrap(), 3);
    }
    let right = with_token(BackendAddr::from(addr), "s3cret");
    assert_eq!(right.get_tasks(addr).unwrap(), "1");
    assert_eq!(right.reload(addr).unwrap().unchanged, 1);
    right.send_stop(addr).unwrap();
    assert_eq!(host.wait_exit(), Some(0));
}

#[test]
fn by_default_a_token_the_host_makes_guards_the_signals_that_change_things() {
    use std::os::unix::fs::MetadataExt;
    use taskit_plugin_api::wire::admin::local_token_file;
    let dir = demo_dir("fe-made-token");
    let (mut host, addr) = HostProcess::serving(dir.path(), &[]);
    // Written for this port, readable by this user alone.
    let file = local_token_file(addr);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "{}", file.display());
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0].len(), 64, "{text}");
    assert_eq!(lines[1], host.child.id().to_string());
    assert_eq!(lines[2], addr.to_string());
    // Only for the address the host listens on: whatever listens on the
    // same port elsewhere (another user's [::1]:PORT, 127.0.0.2:PORT) is
    // never sent it.
    use taskit_plugin_api::wire::admin::local_token;
    assert!(local_token(addr).is_some());
    for elsewhere in ["127.0.0.2", "::1"] {
        let other = std::net::SocketAddr::new(elsewhere.parse().unwrap(), addr.port());
        assert_eq!(local_token(other), None, "{other}");
    }

    for backend in [BackendAddr::from(addr), BackendAddr::from(addr).taskit4()] {
        let wrong = with_token(backend.clone(), "guess");
        for signal in [Signal::Stop, Signal::Kill, Signal::Reload] {
            let err = wrong.send_signal(backend.clone(), signal).unwrap_err();
            assert_eq!(err.remote_type(), Some("Unauthorized"), "{signal}: {err}");
        }
        // What TaskIt 4.0 clients ask for stays open.
        assert_eq!(wrong.get_tasks(backend.clone()).unwrap(), "1");
        assert!(!wrong.tasks(backend.clone()).unwrap().is_empty());
    }
    // A frontend given no token sends a host on this machine the one it
    // made.
    let local = BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(local.reload(addr).unwrap().unchanged, 1);
    local.send_stop(addr).unwrap();
    assert_eq!(host.wait_exit(), Some(0));
    assert!(!file.exists(), "the token file is removed at exit");
}

#[test]
fn a_host_removes_the_token_files_of_hosts_that_are_gone() {
    use std::os::unix::fs::OpenOptionsExt;
    use taskit_plugin_api::wire::admin::local_token_file;
    // What a host killed on 127.0.0.9:1 left: its pid no longer runs (the
    // largest Linux allows is 4194304).
    let stale = local_token_file("127.0.0.9:1".parse().unwrap());
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&stale);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&stale)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"0123\n4194305\n127.0.0.9:1\n"))
        .unwrap();
    let dir = demo_dir("fe-token-sweep");
    let (_host, addr) = HostProcess::serving(dir.path(), &[]);
    assert!(!stale.exists(), "a gone host's token file stayed");
    assert!(local_token_file(addr).exists());
}

/// `taskit-host` serving `dir` on a free loopback port, not started yet.
fn host_command(dir: &TempDir) -> std::process::Command {
    let mut host = std::process::Command::new(host_binary());
    host.args([
        "--plugins",
        dir.path().to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
    ]);
    host
}

/// Runs a host that must refuse to start; what it said.
fn fails_to_start(mut host: std::process::Command) -> String {
    let out = host.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_runtime_directory_others_may_write_to_is_refused() {
    let dir = demo_dir("fe-token-dir");
    let open = dir.join("run");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut host = host_command(&dir);
    host.env("TASKIT_RUNTIME_DIR", &open);
    let stderr = fails_to_start(host);
    assert!(
        stderr.contains("writable by nobody else") && stderr.contains("--no-admin-token"),
        "{stderr}"
    );
}

#[test]
fn a_world_readable_token_file_is_refused() {
    let dir = demo_dir("fe-token-perm");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret").unwrap();
    // Readable by every user, or by its group: both refused.
    for mode in [0o644, 0o640] {
        std::fs::set_permissions(
            &token_file,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
        let mut host = host_command(&dir);
        host.args(["--admin-token-file", token_file.to_str().unwrap()]);
        let stderr = fails_to_start(host);
        assert!(
            stderr.contains("readable by other users than its owner"),
            "{mode:o}: {stderr}"
        );
    }
}

#[test]
fn reload_signal_picks_up_a_new_plugin() {
    let dir = demo_dir("fe-reload");
    let (mut host, addr) = HostProcess::serving(dir.path(), &["--no-watch"]);
    install_by_rename(&plugin("taskit_fixture_faulty"), dir.path(), "faulty.so");
    let fe = BlockingFrontEnd::new(backends(addr)).unwrap();
    let report = fe.reload(addr).unwrap();
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    host.expect_line(&["<reload>: plugins directory rescanned", "loaded=1"]);
    assert!(report.loaded[0].ends_with("faulty.so"));
    assert_eq!(fe.work::<String>("fine", &()).unwrap(), "still here");
    let err = fe.work::<Value>("panic", &("boom",)).unwrap_err();
    assert_eq!(err.remote_type(), Some("Panic"));
}
