//! Hot reload against a real directory: replacing, refusing, removing and
//! conflicting plugin files while calls run.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use taskit_harness::*;
use taskit_host::{HostConfig, LoadError, PluginEvent, PluginHost};

/// The next event about `file`, skipping others.
fn next_event_for(events: &Receiver<PluginEvent>, file: &Path) -> PluginEvent {
    loop {
        let event = events
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no event for {}", file.display()));
        let about = match &event {
            PluginEvent::Loaded { file, .. }
            | PluginEvent::Refused { file, .. }
            | PluginEvent::Removed { file, .. } => file,
        };
        if about == file {
            return event;
        }
    }
}

fn expect_loaded(events: &Receiver<PluginEvent>, file: &Path) -> String {
    match next_event_for(events, file) {
        PluginEvent::Loaded { version, .. } => version,
        other => panic!("expected a load of {}, got {other:?}", file.display()),
    }
}

fn expect_refused(events: &Receiver<PluginEvent>, file: &Path) -> LoadError {
    match next_event_for(events, file) {
        PluginEvent::Refused { error, .. } => error,
        other => panic!("expected a refusal of {}, got {other:?}", file.display()),
    }
}

fn version_served(host: &PluginHost) -> String {
    call::<String>(host.registry(), "version", &()).expect("version()")
}

#[test]
fn replacing_by_rename_and_by_overwrite_serves_the_new_version() {
    let dir = TempDir::new("replace");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = start_host(dir.path());
    let events = host.subscribe();
    let file = dir.join("demo.so");
    assert_eq!(version_served(&host), "0.1.0");

    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "demo.so");
    assert_eq!(expect_loaded(&events, &file), "0.2.0");
    assert_eq!(version_served(&host), "0.2.0");

    install_by_overwrite(&plugin("taskit_demo"), dir.path(), "demo.so");
    assert_eq!(expect_loaded(&events, &file), "0.1.0");
    assert_eq!(version_served(&host), "0.1.0");
    assert_eq!(call::<i64>(host.registry(), "add", &(2, 3)).unwrap(), 5);
}

#[test]
fn a_call_running_during_a_swap_finishes_on_the_old_version() {
    let dir = TempDir::new("inflight");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = Arc::new(start_host(dir.path()));
    let events = host.subscribe();

    let slow = {
        let host = Arc::clone(&host);
        std::thread::spawn(move || call::<String>(host.registry(), "wait-version", &(800,)))
    };
    wait_until("the slow call to start", || {
        host.registry().running_tasks() == 1
    });
    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "demo.so");
    assert_eq!(expect_loaded(&events, &dir.join("demo.so")), "0.2.0");
    assert_eq!(
        version_served(&host),
        "0.2.0",
        "new calls run the new version"
    );
    assert_eq!(
        host.registry().running_tasks(),
        1,
        "the old call is still running"
    );
    assert_eq!(
        slow.join().unwrap().unwrap(),
        "0.1.0",
        "the old call ends on the old version"
    );
}

/// Replaces `demo.so` by `bad` and checks that it is refused with an error
/// matching `check` while version 0.1.0 keeps serving.
fn refused_while_old_serves(
    label: &str,
    write_bad: impl FnOnce(&Path),
    check: impl FnOnce(&LoadError) -> bool,
) {
    let dir = TempDir::new(label);
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = start_host(dir.path());
    let events = host.subscribe();
    let file = dir.join("demo.so");

    let staged = dir.join(".staged.tmp");
    write_bad(&staged);
    std::fs::rename(&staged, &file).unwrap();
    let error = expect_refused(&events, &file);
    assert!(check(&error), "{label}: unexpected refusal: {error}");
    assert!(!error.to_string().is_empty());
    assert_eq!(
        version_served(&host),
        "0.1.0",
        "{label}: the old version keeps serving"
    );
    assert_eq!(call::<i64>(host.registry(), "add", &(4, 4)).unwrap(), 8);

    // A good file afterwards is loaded again.
    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "demo.so");
    assert_eq!(expect_loaded(&events, &file), "0.2.0");
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    refused_while_old_serves(
        "not-a-library",
        |p| std::fs::write(p, "#!/bin/sh\necho definitely not ELF\n").unwrap(),
        |e| matches!(e, LoadError::NotALibrary(m) if m.contains("not an ELF file")),
    );
}

#[test]
fn a_truncated_library_is_refused() {
    refused_while_old_serves(
        "truncated",
        |p| {
            // Cut inside the loadable segments (the end of a debug build is
            // debug info, which a loader never maps).
            let bytes = std::fs::read(plugin("taskit_demo_next")).unwrap();
            std::fs::write(p, &bytes[..bytes.len() / 32]).unwrap();
        },
        |e| matches!(e, LoadError::NotALibrary(m) if m.contains("truncated")),
    );
}

#[test]
fn a_library_without_the_root_module_is_refused() {
    refused_while_old_serves(
        "no-root",
        |p| {
            std::fs::copy(plugin("taskit_fixture_no_root"), p).unwrap();
        },
        |e| matches!(e, LoadError::NotAPlugin(_)),
    );
}

#[test]
fn a_plugin_built_against_another_api_version_is_refused() {
    refused_while_old_serves(
        "bad-version",
        |p| {
            std::fs::copy(plugin("taskit_fixture_bad_version"), p).unwrap();
        },
        |e| {
            matches!(e, LoadError::Incompatible(m)
                if m.contains("99.0.0") && m.contains("rebuild") && m.len() < 200)
        },
    );
}

#[test]
fn a_plugin_with_another_layout_is_refused() {
    refused_while_old_serves(
        "bad-layout",
        |p| {
            std::fs::copy(plugin("taskit_fixture_bad_layout"), p).unwrap();
        },
        // One short line saying what differs and what to do; the full
        // layout comparison is logged at debug level only.
        |e| {
            matches!(e, LoadError::Incompatible(m)
                if m.contains("layout differs") && m.contains("rebuild") && m.len() < 200)
        },
    );
}

#[test]
fn a_plugin_whose_init_panics_is_refused() {
    refused_while_old_serves(
        "init-panic",
        |p| {
            std::fs::copy(plugin("taskit_fixture_init_panic"), p).unwrap();
        },
        |e| matches!(e, LoadError::Init(m) if m.contains("cannot find my configuration")),
    );
}

#[test]
fn duplicate_task_ids_stay_with_the_plugin_loaded_first() {
    let dir = TempDir::new("conflict");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = start_host(dir.path());
    let events = host.subscribe();
    let reg = host.registry();

    let file = dir.join("zz-conflict.so");
    install_by_rename(
        &plugin("taskit_fixture_conflict"),
        dir.path(),
        "zz-conflict.so",
    );
    match next_event_for(&events, &file) {
        PluginEvent::Loaded { conflicts, .. } => {
            assert_eq!(conflicts.len(), 1, "{conflicts:?}");
            assert_eq!(conflicts[0].task, "add");
            assert_eq!(conflicts[0].winner.0, "demo");
            assert_eq!(conflicts[0].loser.0, "conflict");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        call::<i64>(reg, "add", &(4, 4)).unwrap(),
        8,
        "demo keeps `add`"
    );
    assert_eq!(
        call::<String>(reg, "conflict-only", &()).unwrap(),
        "served by conflict"
    );

    // Reloading the winner does not hand the id over.
    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "demo.so");
    expect_loaded(&events, &dir.join("demo.so"));
    assert_eq!(call::<i64>(reg, "add", &(4, 4)).unwrap(), 8);

    // Removing the winner does.
    std::fs::remove_file(dir.join("demo.so")).unwrap();
    assert!(matches!(
        next_event_for(&events, &dir.join("demo.so")),
        PluginEvent::Removed { .. }
    ));
    assert_eq!(call::<i64>(reg, "add", &(4, 4)).unwrap(), -1);
}

#[test]
fn conflicts_at_start_follow_file_name_order() {
    for (conflict_name, expected) in [("aa-conflict.so", -1), ("zz-conflict.so", 8)] {
        let dir = TempDir::new("conflict-order");
        install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
        install_by_rename(
            &plugin("taskit_fixture_conflict"),
            dir.path(),
            conflict_name,
        );
        let host = start_host(dir.path());
        assert_eq!(
            call::<i64>(host.registry(), "add", &(4, 4)).unwrap(),
            expected,
            "{conflict_name}"
        );
        let infos = host.registry().plugins();
        assert_eq!(infos.len(), 2);
    }
}

#[test]
fn removing_the_file_unregisters_its_tasks_after_running_calls_end() {
    let dir = TempDir::new("remove");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = Arc::new(start_host(dir.path()));
    let events = host.subscribe();

    let slow = {
        let host = Arc::clone(&host);
        std::thread::spawn(move || call::<u64>(host.registry(), "wait-double", &(500,)))
    };
    wait_until("the slow call to start", || {
        host.registry().running_tasks() == 1
    });
    std::fs::remove_file(dir.join("demo.so")).unwrap();
    assert!(matches!(
        next_event_for(&events, &dir.join("demo.so")),
        PluginEvent::Removed { .. }
    ));
    let err = call::<i64>(host.registry(), "add", &(1, 1)).unwrap_err();
    assert_eq!(err.kind(), "KeyError");
    assert_eq!(
        slow.join().unwrap().unwrap(),
        1000,
        "the running call finished"
    );
    assert!(host.registry().plugins().is_empty());
}

#[test]
fn hidden_and_non_library_names_are_ignored() {
    let dir = TempDir::new("ignored");
    std::fs::copy(plugin("taskit_demo"), dir.join(".demo.so")).unwrap();
    std::fs::copy(plugin("taskit_demo"), dir.join("demo.so.bak")).unwrap();
    std::fs::write(dir.join("README.txt"), "not a plugin").unwrap();
    let host = start_host(dir.path());
    assert!(host.registry().plugins().is_empty());
    assert_eq!(host.reload().refused.len(), 0);
}

#[test]
fn a_file_still_being_written_is_not_loaded_half_way() {
    let dir = TempDir::new("slow-writer");
    let host = start_host(dir.path());
    let events = host.subscribe();
    let file = dir.join("demo.so");

    let bytes = std::fs::read(plugin("taskit_demo")).unwrap();
    let mut out = std::fs::File::create(&file).unwrap();
    for chunk in bytes.chunks(bytes.len() / 8 + 1) {
        out.write_all(chunk).unwrap();
        out.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }
    drop(out);
    // The first event for the file must be the load of the whole file.
    assert_eq!(expect_loaded(&events, &file), "0.1.0");
    assert_eq!(version_served(&host), "0.1.0");
}

/// A host that looks at a file soon after a write pauses (20 ms), and
/// holds a refusal back for as long as a writer may still be writing.
fn stall_tolerant_host(dir: &Path) -> PluginHost {
    let mut config = HostConfig::new(dir);
    config.quiet = Duration::from_millis(20);
    config.hold = Duration::from_secs(3600);
    PluginHost::start(config).unwrap()
}

/// The version and load generation of the next event about `file`, which
/// must be a load.
fn next_load(events: &Receiver<PluginEvent>, file: &Path) -> (String, u64) {
    match next_event_for(events, file) {
        PluginEvent::Loaded {
            version,
            generation,
            ..
        } => (version, generation),
        other => panic!("expected a load of the whole file, got {other:?}"),
    }
}

/// Stalls of 100 ms, 200 ms, ... (one per round, at most 8) until the host
/// has looked at the file during one, seen as a load attempt between the
/// load before the round (generation `before`) and the one after.
fn stall_until_looked(mut round: impl FnMut(Duration) -> (u64, u64)) {
    for i in 0..8 {
        let (before, after) = round(Duration::from_millis(100 << i));
        if after > before + 1 {
            return;
        }
    }
    panic!("the host never looked at the file during a stall");
}

/// A copy over the plugin whose writer stalls, with all but the last byte
/// written, for longer than the host waits for a file to settle (a busy
/// machine): the host looks at the half-written file, but neither serves it
/// (every loadable segment is there; the section headers are not) nor
/// reports it refused. When the writer closes, the whole file loads, once.
#[test]
fn a_write_that_stalls_halfway_is_neither_served_nor_refused() {
    let dir = TempDir::new("stalled-writer");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = stall_tolerant_host(dir.path());
    let events = host.subscribe();
    let file = dir.join("demo.so");
    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "demo.so");
    let (_, mut generation) = next_load(&events, &file);

    let versions = [("taskit_demo", "0.1.0"), ("taskit_demo_next", "0.2.0")];
    let mut next = 0;
    stall_until_looked(|stall| {
        let (name, version) = versions[next % 2];
        next += 1;
        let bytes = std::fs::read(plugin(name)).unwrap();
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file)
            .unwrap();
        out.write_all(&bytes[..bytes.len() - 1]).unwrap();
        std::thread::sleep(stall);
        out.write_all(&bytes[bytes.len() - 1..]).unwrap();
        drop(out);
        let (served, now) = next_load(&events, &file);
        assert_eq!(served, version);
        assert_eq!(version_served(&host), version);
        (std::mem::replace(&mut generation, now), now)
    });
    // Nothing more about the half-written file is still to come.
    let (name, version) = versions[next % 2];
    install_by_rename(&plugin(name), dir.path(), "demo.so");
    assert_eq!(expect_loaded(&events, &file), version);
}

/// `cp` to a new file creates it, then writes: a writer that stalls in
/// between leaves an empty file, which is not reported refused either.
#[test]
fn a_new_file_whose_writer_stalls_before_writing_is_not_refused() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = TempDir::new("stalled-creator");
    let host = stall_tolerant_host(dir.path());
    let events = host.subscribe();
    let file = dir.join("demo.so");
    let bytes = std::fs::read(plugin("taskit_demo")).unwrap();
    let mut generation = 0;
    stall_until_looked(|stall| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&file)
            .unwrap();
        std::thread::sleep(stall);
        out.write_all(&bytes).unwrap();
        drop(out);
        let (served, now) = next_load(&events, &file);
        assert_eq!(served, "0.1.0");
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            next_event_for(&events, &file),
            PluginEvent::Removed { .. }
        ));
        (std::mem::replace(&mut generation, now), now)
    });
}

#[test]
fn a_forced_reload_rescans_the_directory() {
    let dir = TempDir::new("forced");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    // Timers so long that only a forced reload can notice the change.
    let mut config = HostConfig::new(dir.path());
    config.settle = Duration::from_secs(3600);
    config.quiet = Duration::from_secs(3600);
    let host = PluginHost::start(config).unwrap();

    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "demo.so");
    install_by_rename(&plugin("taskit_fixture_faulty"), dir.path(), "faulty.so");
    std::fs::write(dir.join("broken.so"), "nope").unwrap();
    let summary = host.reload();
    assert_eq!(
        summary.loaded,
        vec![dir.join("demo.so"), dir.join("faulty.so")]
    );
    assert_eq!(summary.refused, vec![dir.join("broken.so")]);
    assert_eq!(version_served(&host), "0.2.0");

    std::fs::remove_file(dir.join("faulty.so")).unwrap();
    let summary = host.reload();
    assert_eq!(summary.removed, vec![dir.join("faulty.so")]);
    assert_eq!(
        summary.unchanged, 1,
        "demo.so is unchanged and not reloaded"
    );
    assert_eq!(
        summary.refused.len(),
        1,
        "refused files are retried by a forced reload"
    );
}

/// 50 swaps while another thread calls without pause: no call fails, and
/// the resident memory each reload leaves behind is reported.
#[test]
fn a_reload_storm_loses_no_call() {
    const SWAPS: usize = 50;
    let dir = TempDir::new("storm");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    // A copy that stalls is held back however long it stalls (as a busy
    // machine may make it), not reported refused after two seconds.
    let mut config = HostConfig::new(dir.path());
    config.hold = Duration::from_secs(3600);
    let host = Arc::new(PluginHost::start(config).unwrap());
    let events = host.subscribe();
    let file = dir.join("demo.so");
    let versions = [plugin("taskit_demo_next"), plugin("taskit_demo")];

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let caller = {
        let (host, stop, calls) = (Arc::clone(&host), Arc::clone(&stop), Arc::clone(&calls));
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match call::<i64>(host.registry(), "add", &(20, 22)) {
                    Ok(42) => {}
                    other => failures.push(format!("{other:?}")),
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
            failures
        })
    };

    // Warm up: one reload of each version maps both and touches their pages.
    for src in &versions {
        install_by_rename(src, dir.path(), "demo.so");
        expect_loaded(&events, &file);
    }
    let rss_before = own_kib("VmRSS");
    let (anon_before, file_before) = (own_kib("RssAnon"), own_kib("RssFile"));
    let mut latencies = Vec::with_capacity(SWAPS);
    for i in 0..SWAPS {
        let started = std::time::Instant::now();
        let src = &versions[i % 2];
        if i % 2 == 0 {
            install_by_rename(src, dir.path(), "demo.so");
        } else {
            install_by_overwrite(src, dir.path(), "demo.so");
        }
        let expected = if i % 2 == 0 { "0.2.0" } else { "0.1.0" };
        assert_eq!(expect_loaded(&events, &file), expected);
        assert_eq!(version_served(&host), expected);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let rss_after = own_kib("VmRSS");
    let (anon_after, file_after) = (own_kib("RssAnon"), own_kib("RssFile"));
    stop.store(true, Ordering::Relaxed);
    let failures = caller.join().unwrap();
    let total = calls.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {total} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        total > SWAPS as u64,
        "the caller kept calling ({total} calls)"
    );
    let per_reload = |before: u64, after: u64| (after as f64 - before as f64) / SWAPS as f64;
    println!(
        "reload storm: {SWAPS} reloads, {total} calls, 0 failed; RSS {rss_before} KiB -> {rss_after} KiB, \
         {:.0} KiB per reload ({:.0} KiB anonymous, {:.0} KiB file-backed)",
        per_reload(rss_before, rss_after),
        per_reload(anon_before, anon_after),
        per_reload(file_before, file_after),
    );
    println!(
        "reload latency (file replaced -> first call answered by the new version): median {:?}, max {:?}",
        latencies[SWAPS / 2],
        latencies[SWAPS - 1]
    );
}

#[test]
fn special_files_are_refused_without_blocking_the_host() {
    let dir = TempDir::new("special");
    let fifo = std::ffi::CString::new(dir.join("fifo.so").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.so")).unwrap();
    std::fs::File::create(dir.join("sparse.so"))
        .unwrap()
        .set_len(1 << 40)
        .unwrap();

    // Start returns (a FIFO would block an ordinary open, /dev/zero would
    // copy forever, the sparse file would fill the disk).
    let host = start_host(dir.path());
    let events = host.subscribe();
    let summary = host.reload();
    assert_eq!(summary.refused.len(), 3, "{summary:?}");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    assert_eq!(expect_loaded(&events, &dir.join("demo.so")), "0.1.0");
}

#[test]
fn touching_or_recopying_the_same_bytes_does_not_reload() {
    let dir = TempDir::new("touch");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = start_host(dir.path());
    let events = host.subscribe();
    let file = dir.join("demo.so");
    let generation = host.registry().loaded_from(&file).unwrap().generation;

    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    install_by_overwrite(&plugin("taskit_demo"), dir.path(), "demo.so");
    // The next event must be the real change below, not a reload of the same bytes.
    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "demo.so");
    assert_eq!(expect_loaded(&events, &file), "0.2.0");
    let now = host.registry().loaded_from(&file).unwrap().generation;
    assert!(now > generation);
    assert_eq!(host.reload().unchanged, 1);
}

#[test]
fn files_settling_together_resolve_conflicts_by_name() {
    for round in 0..3 {
        let dir = TempDir::new("together");
        let mut config = HostConfig::new(dir.path());
        // Both renames below happen well within one settle time.
        config.settle = Duration::from_millis(300);
        let host = PluginHost::start(config).unwrap();
        let events = host.subscribe();
        install_by_rename(
            &plugin("taskit_fixture_conflict"),
            dir.path(),
            "b-conflict.so",
        );
        install_by_rename(&plugin("taskit_demo"), dir.path(), "a-demo.so");
        expect_loaded(&events, &dir.join("a-demo.so"));
        expect_loaded(&events, &dir.join("b-conflict.so"));
        assert_eq!(
            call::<i64>(host.registry(), "add", &(4, 4)).unwrap(),
            8,
            "round {round}"
        );
    }
}

#[test]
fn rm_then_cp_keeps_serving_without_a_gap() {
    let dir = TempDir::new("rm-cp");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    install_by_rename(
        &plugin("taskit_fixture_conflict"),
        dir.path(),
        "zz-conflict.so",
    );
    let host = Arc::new(start_host(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (host, stop) = (Arc::clone(&host), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut wrong = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match call::<i64>(host.registry(), "add", &(4, 4)) {
                    Ok(8) => {}
                    other => wrong.push(format!("{other:?}")),
                }
            }
            wrong
        })
    };
    std::fs::remove_file(dir.join("demo.so")).unwrap();
    std::fs::copy(plugin("taskit_demo"), dir.join("demo.so")).unwrap();
    // Longer than any settle time: the removal has been applied if it ever will.
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::Relaxed);
    let wrong = caller.join().unwrap();
    assert!(
        wrong.is_empty(),
        "{} wrong answers, first {:?}",
        wrong.len(),
        wrong.first()
    );
}

#[test]
fn a_persistent_shadow_dir_with_leftovers_still_works() {
    let dir = TempDir::new("shadow-plugins");
    let shadow = TempDir::new("shadow-root");
    std::fs::write(shadow.join("demo.1.so"), "left by a crashed run").unwrap();
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let mut config = HostConfig::new(dir.path());
    config.shadow_dir = Some(shadow.path().to_owned());
    {
        let host = PluginHost::start(config.clone()).unwrap();
        assert_eq!(version_served(&host), "0.1.0");
    }
    // Twice, as after a restart; the leftover is untouched.
    let host = PluginHost::start(config).unwrap();
    assert_eq!(version_served(&host), "0.1.0");
    assert!(shadow.join("demo.1.so").exists());
}

#[test]
fn the_shadow_dir_may_be_the_plugins_dir() {
    let dir = TempDir::new("shadow-inside");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let mut config = HostConfig::new(dir.path());
    config.shadow_dir = Some(dir.path().to_owned());
    let host = PluginHost::start(config).unwrap();
    let events = host.subscribe();
    install_by_rename(&plugin("taskit_demo_next"), dir.path(), "demo.so");
    assert_eq!(expect_loaded(&events, &dir.join("demo.so")), "0.2.0");
    // Copies in the private subdirectory are not plugin files: no further loads.
    assert_eq!(host.reload().loaded.len(), 0);
    assert_eq!(host.registry().plugins().len(), 1);
}

/// A line of this process's `/proc/self/status`, in KiB.
fn own_kib(field: &str) -> u64 {
    status_kib(std::process::id(), field).unwrap_or(0)
}
