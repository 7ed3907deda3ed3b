//! Process isolation, end to end: the real `taskit-host` with its default
//! `--isolation process`, fixture plugins that crash their process or never
//! finish loading, and clients calling other plugins throughout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::Value;
use taskit_harness::*;
use taskit_plugin_api::error::kind;
use taskit_plugin_api::frontend::{BlockingFrontEnd, FrontendError};

/// A client calling the demo plugin's `add` without pause until dropped;
/// counts what it got wrong.
struct Bystander {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64)>>,
}

impl Bystander {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            std::thread::spawn(move || {
                let fe = BlockingFrontEnd::new([addr]).unwrap();
                let mut failed = 0;
                let mut i = 0i64;
                while !stop.load(Ordering::Acquire) {
                    match fe.work::<i64>("add", &(i, 1)) {
                        Ok(v) if v == i + 1 => {}
                        _ => failed += 1,
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                (answered.load(Ordering::Relaxed), failed)
            })
        };
        // Wait until it is under way, so the faults happen while it calls.
        wait_until("the bystander's first answers", || {
            answered.load(Ordering::Relaxed) >= 10
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; its (answered, failed) counts.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// A host serving `dir` in process isolation, whatever
/// `TASKIT_TEST_ISOLATION` says.
fn serving(dir: &std::path::Path, extra: &[&str]) -> (HostProcess, SocketAddr) {
    let mut args = vec!["--isolation", "process"];
    args.extend_from_slice(extra);
    HostProcess::serving(dir, &args)
}

fn crasher_dir(label: &str) -> TempDir {
    let dir = demo_dir(label);
    install_by_rename(&plugin("taskit_fixture_crasher"), dir.path(), "crasher.so");
    dir
}

fn remote(result: Result<Value, FrontendError>) -> (String, Vec<Value>) {
    match result {
        Err(FrontendError::BackendProcessing { kind, args }) => (kind, args),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn a_task_that_kills_its_worker_fails_alone_and_a_fresh_worker_answers_next() {
    let dir = crasher_dir("iso-crash");
    let (mut host, addr) = serving(dir.path(), &["--workers-per-plugin", "1"]);
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    let bystander = Bystander::start(addr);

    for (task, causes) in [
        ("segv", &["killed by SIGSEGV"][..]),
        ("abort", &["killed by SIGABRT"][..]),
        ("exit0", &["exited with status 0"][..]),
        // Rust reports a stack overflow and aborts; without its handler
        // the guard page's SIGSEGV ends the process.
        ("recurse", &["killed by SIGABRT", "killed by SIGSEGV"][..]),
        // What any panic does in a plugin built with `panic = "abort"`.
        ("panic-abort", &["killed by SIGABRT"][..]),
    ] {
        let before: u32 = fe.work("crasher-pid", &()).unwrap();
        let (kind, args) = remote(fe.work::<Value>(task, &()));
        assert_eq!(kind, kind::WORKER_CRASHED, "{task}: {args:?}");
        assert_eq!(args[0], "crasher", "{task}: {args:?}");
        assert_eq!(args[1], env!("CARGO_PKG_VERSION"), "{task}: {args:?}");
        let cause = args[2].as_str().unwrap();
        assert!(causes.contains(&cause), "{task}: cause {cause:?}");

        let line = host.expect_line(&["plugin worker crashed", "plugin=crasher", cause]);
        assert!(line.contains(&format!("running={task}")), "{line}");
        assert!(line.contains("crasher.so"), "{line}");

        // The next call waits for the restarted worker.
        let after: u32 = fe.work("crasher-pid", &()).unwrap();
        assert_ne!(before, after, "{task}: a fresh worker answers");
        assert_eq!(fe.work::<String>("crasher-fine", &()).unwrap(), "fine");
        // A reload forgives past crashes: five in a minute would mark the
        // plugin failed (see below).
        fe.reload(addr).unwrap();
    }

    let (answered, failed) = bystander.finish();
    assert_eq!(
        failed, 0,
        "the demo plugin's caller saw failures ({answered} answered)"
    );
    assert!(host.is_running());
}

#[test]
fn a_plugin_that_keeps_crashing_is_marked_failed_until_a_reload() {
    let dir = crasher_dir("iso-failed");
    let (mut host, addr) = serving(dir.path(), &["--workers-per-plugin", "1"]);
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    // Five crashes within a minute.
    for _ in 0..5 {
        let (kind, _) = remote(fe.work::<Value>("segv", &()));
        assert_eq!(kind, kind::WORKER_CRASHED);
    }
    host.expect_line(&["plugin marked failed", "plugin=crasher"]);
    let (kind, args) = remote(fe.work::<Value>("crasher-fine", &()));
    assert_eq!(kind, kind::PLUGIN_UNAVAILABLE, "{args:?}");
    assert_eq!(args[0], "crasher");
    assert!(
        args[2].as_str().unwrap().contains("crashed 5 times"),
        "{args:?}"
    );
    // Other plugins are unaffected.
    assert_eq!(fe.work::<i64>("add", &(2, 2)).unwrap(), 4);
    // <tasks> says so.
    let crasher = |fe: &BlockingFrontEnd| {
        fe.tasks(addr)
            .unwrap()
            .into_iter()
            .find(|p| p.name == "crasher")
            .unwrap()
    };
    let summary = crasher(&fe);
    assert_eq!(summary.isolation, "process");
    assert_eq!(summary.restarts, 4, "{summary:?}");
    assert_eq!(summary.last_crash.as_deref(), Some("killed by SIGSEGV"));
    assert!(summary.failed.is_some(), "{summary:?}");
    assert!(summary.workers.is_empty(), "{summary:?}");

    // A reload revives it.
    fe.reload(addr).unwrap();
    host.expect_line(&["revived", "plugin=crasher"]);
    assert_eq!(fe.work::<String>("crasher-fine", &()).unwrap(), "fine");
    let summary = crasher(&fe);
    assert!(summary.failed.is_none(), "{summary:?}");
    assert_eq!(summary.workers.len(), 1, "{summary:?}");
    let demo = fe
        .tasks(addr)
        .unwrap()
        .into_iter()
        .find(|p| p.name == "demo")
        .unwrap();
    assert_eq!((demo.isolation.as_str(), demo.restarts), ("process", 0));
}

#[test]
fn an_init_that_never_returns_is_refused_at_the_init_timeout() {
    let dir = demo_dir("iso-init-hang");
    install_by_rename(&plugin("taskit_fixture_init_hang"), dir.path(), "hang.so");
    // At start: the host still gets ready, without it.
    let mut host = HostProcess::start(&[
        "--isolation",
        "process",
        "--plugins",
        dir.path().to_str().unwrap(),
        "--init-timeout",
        // Short, yet ample for a plugin that does load on a busy machine.
        "4",
    ]);
    host.expect_line(&["refused plugin file", "hang.so", "--init-timeout"]);
    let addr = host.ready();
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(fe.work::<i64>("add", &(2, 2)).unwrap(), 4);

    // Dropped into the running host: refused the same way, and the watcher
    // goes on applying changes.
    install_by_rename(&plugin("taskit_fixture_init_hang"), dir.path(), "hang2.so");
    host.expect_line(&["refused plugin file", "hang2.so", "--init-timeout"]);
    install_by_rename(&plugin("taskit_fixture_crasher"), dir.path(), "crasher.so");
    host.expect_line(&["loaded plugin", "plugin=crasher"]);
    assert_eq!(fe.work::<String>("crasher-fine", &()).unwrap(), "fine");
}

#[test]
fn an_idempotent_call_whose_worker_crashed_is_retried_on_the_next_backend() {
    use taskit_plugin_api::frontend::CallOptions;
    let (dir1, dir2) = (crasher_dir("iso-retry-1"), crasher_dir("iso-retry-2"));
    let (mut first, addr1) = serving(dir1.path(), &[]);
    let (mut second, addr2) = serving(dir2.path(), &[]);
    let fe = BlockingFrontEnd::new([addr1, addr2]).unwrap();

    // Not idempotent: it may have run, so it is not sent again.
    let (kind, _) = remote(fe.work::<Value>("segv", &()));
    assert_eq!(kind, kind::WORKER_CRASHED);
    let crashed = |host: &mut HostProcess| {
        host.try_expect_line(
            &["plugin worker crashed", "running=segv"],
            std::time::Duration::from_secs(5),
        )
        .is_some()
    };
    let (one, two) = (crashed(&mut first), crashed(&mut second));
    assert!(one != two, "exactly one host ran it: {one} {two}");

    // Idempotent: tried on each backend in turn; both crash, and the last
    // crash is the answer.
    let options = CallOptions::default().idempotent();
    let (kind, args) = remote(fe.work_with::<Value>("segv", &(), &options));
    assert_eq!(kind, kind::WORKER_CRASHED, "{args:?}");
    first.expect_line(&["plugin worker crashed", "running=segv"]);
    second.expect_line(&["plugin worker crashed", "running=segv"]);
}

#[test]
fn a_task_past_its_time_limit_is_cancelled_then_its_worker_killed_and_replaced() {
    let dir = crasher_dir("iso-time-limit");
    let (mut host, addr) = serving(
        dir.path(),
        &[
            "--workers-per-plugin",
            "1",
            "--task-timeout",
            "1",
            "--kill-grace",
            "1",
        ],
    );
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    let before: u32 = fe.work("crasher-pid", &()).unwrap();
    let (kind, args) = remote(fe.work::<Value>("sleep-forever", &()));
    assert_eq!(kind, kind::TIME_LIMIT_EXCEEDED, "{args:?}");
    assert_eq!(args[0], "crasher");
    assert_eq!(args[2], "sleep-forever");
    host.expect_line(&[
        "plugin worker killed",
        "plugin=crasher",
        "overran its time limit",
    ]);
    let after: u32 = fe.work("crasher-pid", &()).unwrap();
    assert_ne!(before, after, "a fresh worker answers");
    // A kill for a time limit is not a crash: the plugin is never marked
    // failed for it. A busy loop ends the same way.
    for task in ["sleep-forever", "spin", "sleep-forever", "spin", "spin"] {
        let (kind, args) = remote(fe.work::<Value>(task, &()));
        assert_eq!(kind, kind::TIME_LIMIT_EXCEEDED, "{task}: {args:?}");
    }
    assert_eq!(fe.work::<String>("crasher-fine", &()).unwrap(), "fine");
}

#[test]
fn tasks_that_never_return_hold_only_their_own_plugins_task_slots() {
    use taskit_plugin_api::frontend::CallOptions;
    let dir = crasher_dir("iso-slots");
    let (_host, addr) = serving(dir.path(), &["--max-tasks", "2"]);
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    // Every slot of the crasher plugin, and more, taken for good.
    for _ in 0..4 {
        fe.ignore("sleep-forever", ());
    }
    // Bounded: without slots of its own, the demo plugin would wait too.
    let options = CallOptions::default().timeout(std::time::Duration::from_secs(30));
    wait_until("two tasks hung", || {
        fe.work_with::<u64>("running", &(), &options).unwrap() >= 3
    });
    // The demo plugin still has its own.
    assert_eq!(fe.work_with::<i64>("add", &(2, 3), &options).unwrap(), 5);
    assert_eq!(fe.work_with::<u64>("running", &(), &options).unwrap(), 3);
    // The two calls past the crasher's slots wait in its queue, not run.
    wait_until("two calls waiting", || {
        let crasher = summary_of(&fe, addr, "crasher");
        (crasher.running, crasher.waiting) == (2, 2)
    });
}

/// What `<tasks>` says of plugin `name`.
fn summary_of(
    fe: &BlockingFrontEnd,
    addr: SocketAddr,
    name: &str,
) -> taskit_plugin_api::wire::admin::PluginSummary {
    fe.tasks(addr)
        .unwrap()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
}

#[test]
fn a_call_that_turns_slow_in_a_worker_holds_up_no_call_after_it() {
    use taskit_plugin_api::frontend::CallOptions;
    let dir = crasher_dir("iso-takeover");
    // One worker: the call after runs in the same process.
    let (_host, addr) = serving(dir.path(), &["--workers-per-plugin", "1"]);
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    let pid = fe.work::<u32>("crasher-pid", &()).unwrap();
    // Run on the worker thread that read it, as every call is.
    fe.ignore("sleep-forever", ());
    wait_until("the call running", || {
        summary_of(&fe, addr, "crasher").running == 1
    });
    // Bounded, so a worker that waited for the call before would fail
    // here rather than hang.
    let options = CallOptions::default().timeout(std::time::Duration::from_secs(30));
    for _ in 0..10 {
        assert_eq!(
            fe.work_with::<u32>("crasher-pid", &(), &options).unwrap(),
            pid
        );
    }
}

#[test]
fn a_call_whose_client_gives_up_while_it_waits_for_a_slot_leaves_the_queue() {
    use taskit_plugin_api::frontend::CallOptions;
    let dir = crasher_dir("iso-cancel-waiting");
    let (_host, addr) = serving(dir.path(), &["--max-tasks", "1"]);
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    fe.ignore("sleep-forever", ());
    wait_until("the slot taken", || {
        summary_of(&fe, addr, "crasher").running == 1
    });
    // Waits for the slot, until its client gives up (and cancels it).
    let options = CallOptions::default().timeout(std::time::Duration::from_millis(300));
    assert!(fe.work_with::<u32>("crasher-pid", &(), &options).is_err());
    wait_until("the cancelled call gone from the queue", || {
        let crasher = summary_of(&fe, addr, "crasher");
        (crasher.running, crasher.waiting) == (1, 0)
    });
}

#[test]
fn a_stop_past_the_drain_timeout_abandons_calls_on_replaced_workers_and_versions() {
    let dir = crasher_dir("iso-drain-replaced");
    // Each worker takes one call, then is replaced and drains.
    let (mut host, addr) = serving(
        dir.path(),
        &["--drain-timeout", "1", "--worker-max-calls", "1"],
    );
    let call = move || {
        std::thread::spawn(move || {
            let fe = BlockingFrontEnd::new([addr]).unwrap();
            remote(fe.work::<Value>("sleep-forever", &()))
        })
    };
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    let on_replaced_worker = call();
    wait_until("the first call running", || {
        summary_of(&fe, addr, "crasher").running == 1
    });
    // Its file removed and another serving its tasks: the call above now
    // runs on a version that is no longer served.
    std::fs::remove_file(dir.path().join("crasher.so")).unwrap();
    host.expect_line(&["removed plugin", "crasher.so"]);
    install_by_rename(&plugin("taskit_fixture_crasher"), dir.path(), "crasher2.so");
    host.expect_line(&["loaded plugin", "crasher2.so"]);
    let on_current = call();
    // Both running, and this call: the host's count.
    wait_until("the second call running", || {
        fe.work::<u64>("running", &()).unwrap() == 3
    });
    // SAFETY: signalling a child process we own.
    assert_eq!(
        unsafe { libc::kill(host.pid() as libc::pid_t, libc::SIGTERM) },
        0
    );
    host.expect_line(&[
        "tasks still running after the drain timeout",
        "abandoned=sleep-forever,sleep-forever",
    ]);
    for caller in [on_replaced_worker, on_current] {
        let (kind, args) = caller.join().unwrap();
        assert_eq!(kind, kind::WORKER_CRASHED, "{args:?}");
    }
}

#[test]
fn calls_waiting_for_a_task_slot_at_shutdown_are_answered_stopping() {
    let dir = crasher_dir("iso-drain-waiting");
    let (mut host, addr) = serving(dir.path(), &["--drain-timeout", "1", "--max-tasks", "1"]);
    let callers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let fe = BlockingFrontEnd::new([addr]).unwrap();
                match fe.work::<Value>("sleep-forever", &()) {
                    Err(FrontendError::Stopping(_)) => kind::STOPPING.to_owned(),
                    other => remote(other).0,
                }
            })
        })
        .collect();
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    wait_until("one call running, one waiting", || {
        let crasher = summary_of(&fe, addr, "crasher");
        (crasher.running, crasher.waiting) == (1, 1)
    });
    // SAFETY: signalling a child process we own.
    assert_eq!(
        unsafe { libc::kill(host.pid() as libc::pid_t, libc::SIGTERM) },
        0
    );
    host.expect_line(&[
        "tasks still running after the drain timeout",
        "abandoned=sleep-forever,sleep-forever",
    ]);
    let mut kinds: Vec<String> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    kinds.sort();
    // The one that ran may have: `WorkerCrashed`. The one that waited
    // never ran (the reply says so), so it may go to another host:
    // `Stopping`.
    assert_eq!(kinds, [kind::STOPPING, kind::WORKER_CRASHED]);
}

#[test]
fn sigterm_with_a_task_that_never_ends_exits_at_the_drain_timeout() {
    let dir = crasher_dir("iso-drain");
    let (mut host, addr) = serving(dir.path(), &["--drain-timeout", "1"]);
    let caller = std::thread::spawn(move || {
        let fe = BlockingFrontEnd::new([addr]).unwrap();
        remote(fe.work::<Value>("sleep-forever", &()))
    });
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    wait_until("the task running", || {
        fe.work::<u64>("running", &()).is_ok_and(|n| n >= 2)
    });
    // SAFETY: signalling a child process we own.
    assert_eq!(
        unsafe { libc::kill(host.pid() as libc::pid_t, libc::SIGTERM) },
        0
    );
    host.expect_line(&[
        "tasks still running after the drain timeout",
        "abandoned=sleep-forever",
    ]);
    // Not `Stopping`: that would tell the client it never ran.
    let (kind, args) = caller.join().unwrap();
    assert_eq!(kind, kind::WORKER_CRASHED, "{args:?}");
    assert!(
        args[2].as_str().unwrap().contains("drain timeout"),
        "{args:?}"
    );
    // Bounded: before the drain timeout existed, it never exited.
    let status = host.wait_exit_within(std::time::Duration::from_secs(60));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "a stop that abandoned a task ends, and not cleanly"
    );
}

#[test]
fn a_worker_past_its_memory_limit_dies_out_of_memory_alone() {
    let dir = crasher_dir("iso-memory");
    let (mut host, addr) = serving(
        dir.path(),
        &["--workers-per-plugin", "1", "--worker-memory-limit", "512"],
    );
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    let bystander = Bystander::start(addr);
    let (kind, args) = remote(fe.work::<Value>("alloc", &()));
    assert_eq!(kind, kind::WORKER_CRASHED, "{args:?}");
    assert_eq!(args[2], "out of memory", "{args:?}");
    host.expect_line(&[
        "plugin worker crashed",
        "cause=out of memory",
        "running=alloc",
    ]);
    assert_eq!(fe.work::<String>("crasher-fine", &()).unwrap(), "fine");
    let (answered, failed) = bystander.finish();
    assert_eq!(
        failed, 0,
        "the demo plugin's caller saw failures ({answered} answered)"
    );
}

#[test]
fn a_worker_is_replaced_after_its_share_of_calls_and_exits() {
    let dir = crasher_dir("iso-max-calls");
    let (mut host, addr) = serving(
        dir.path(),
        &["--workers-per-plugin", "1", "--worker-max-calls", "3"],
    );
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    let pids: Vec<u32> = (0..7)
        .map(|_| fe.work("crasher-pid", &()).unwrap())
        .collect();
    assert_eq!(pids[0], pids[1]);
    assert_eq!(pids[1], pids[2]);
    assert_ne!(pids[2], pids[3], "{pids:?}");
    assert_eq!(pids[3], pids[5]);
    assert_ne!(pids[5], pids[6], "{pids:?}");
    // The old ones are gone, reaped, not crashed.
    for old in [pids[0], pids[3]] {
        wait_until("the replaced worker to exit", || {
            !std::path::Path::new(&format!("/proc/{old}")).exists()
        });
    }
    assert!(host
        .try_expect_line(
            &["plugin worker crashed"],
            std::time::Duration::from_millis(200)
        )
        .is_none());
}

#[test]
fn recycling_workers_keeps_a_leaking_plugin_under_its_memory_limit() {
    // 100 MiB leaked per call, 512 MiB allowed per worker: without
    // recycling the fifth call or so runs out of memory.
    let dir = crasher_dir("iso-leak");
    let (_host, addr) = serving(
        dir.path(),
        &[
            "--workers-per-plugin",
            "1",
            "--worker-memory-limit",
            "512",
            "--worker-max-calls",
            "2",
        ],
    );
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    for i in 0..10 {
        assert_eq!(fe.work::<u64>("leak", &()).unwrap(), 100, "call {i}");
    }
}

#[test]
fn workers_run_as_the_user_they_are_given() {
    // SAFETY: a plain system call.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: switching users needs root");
        return;
    }
    let out = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    assert!(out.status.success(), "no user `nobody` here");
    let nobody: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let dir = crasher_dir("iso-user");
    let (_host, addr) = serving(dir.path(), &["--worker-user", "nobody"]);
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(fe.work::<u32>("crasher-uid", &()).unwrap(), nobody);
    // Everything else works as before: the plugin was mapped from the
    // descriptor the host passed, the shadow directory stays private.
    assert_eq!(fe.work::<i64>("add", &(2, 2)).unwrap(), 4);
    assert_eq!(fe.work::<u64>("running", &()).unwrap(), 1);
}

#[test]
fn a_worker_user_that_does_not_exist_stops_the_host_at_start() {
    let dir = crasher_dir("iso-no-user");
    let mut host = HostProcess::start(&[
        "--isolation",
        "process",
        "--plugins",
        dir.path().to_str().unwrap(),
        "--worker-user",
        "no-such-user-here",
    ]);
    let status = host.wait_exit_within(std::time::Duration::from_secs(60));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    host.expect_line(&["no user named", "no-such-user-here"]);
}

#[test]
fn a_plugin_flooding_its_output_and_errors_gets_a_bounded_number_of_log_lines() {
    let dir = crasher_dir("iso-noise");
    let (mut host, addr) = serving(dir.path(), &["--workers-per-plugin", "1"]);
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(
        fe.work::<usize>("crasher-noise", &(5000usize,)).unwrap(),
        5000
    );
    // Its worker still answers, and everything it wrote before has been
    // read by now: a marker logged after it shows the log is caught up.
    let pid = fe.work::<u32>("crasher-pid", &()).unwrap();
    assert!(pid > 0);
    assert_eq!(
        fe.work::<Value>("log", &("caught up",)).unwrap(),
        Value::Null
    );
    host.expect_line(&["demo task says", "caught up"]);
    let count = |what: &str| host.seen.iter().filter(|l| l.contains(what)).count();
    // 5000 of each: a burst of 50 of each is logged (plus a worker's own
    // lines), the rest left out.
    let (output, errors) = (count("plugin worker output"), count("noisy error"));
    assert!((1..=60).contains(&output), "{output} output lines");
    assert!((1..=60).contains(&errors), "{errors} error records");
}

#[test]
fn calls_waiting_for_a_slot_are_dropped_when_their_client_goes_away() {
    use std::io::{Read, Write};
    use taskit_plugin_api::wire::native;
    let dir = crasher_dir("iso-gone");
    let (_host, addr) = serving(dir.path(), &["--max-tasks", "1"]);
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    fe.ignore("sleep-forever", ());
    wait_until("the slot taken", || {
        summary_of(&fe, addr, "crasher").running == 1
    });
    // A client queues five calls behind it, then goes away.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(&native::client_hello(taskit_plugin_api::CodecKind::Json))
        .unwrap();
    let mut hello = [0u8; native::HELLO_LEN];
    s.read_exact(&mut hello).unwrap();
    let mut calls = Vec::new();
    for id in 1..=5 {
        native::encode_call(&mut calls, id, "crasher-pid", b"[]", b"");
    }
    s.write_all(&calls).unwrap();
    wait_until("five calls waiting", || {
        summary_of(&fe, addr, "crasher").waiting == 5
    });
    drop(s);
    wait_until("the calls of the client gone dropped", || {
        let crasher = summary_of(&fe, addr, "crasher");
        (crasher.running, crasher.waiting) == (1, 0)
    });
}
