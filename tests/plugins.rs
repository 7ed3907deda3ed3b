//! Loading plugins from a directory and calling their tasks through the
//! registry: real `.so` files built by cargo, loaded by the host library.

use serde_json::{json, Value};
use taskit_harness::*;
use taskit_host::TaskCall;
use taskit_plugin_api::{Bincode, CodecKind, Json, TaskError};

#[test]
fn every_demo_task_answers_in_json_and_bincode() {
    let dir = TempDir::new("demo-tasks");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = start_host(dir.path());
    let reg = host.registry();

    assert_eq!(call::<i64>(reg, "add", &(4, 4)).unwrap(), 8);
    // Never a wrapped sum.
    let err = call::<i64>(reg, "add", &(i64::MAX, 1)).unwrap_err();
    assert_eq!(err.kind(), "OverflowError", "{err:?}");
    let err = call::<u64>(reg, "wait-double", &(u64::MAX,)).unwrap_err();
    assert_eq!(err.kind(), "OverflowError", "{err:?}");
    assert_eq!(
        call_with::<Bincode, i64>(reg, "add", &(4i64, 4i64), b"").unwrap(),
        8
    );
    assert_eq!(call::<String>(reg, "echo", &("héllo",)).unwrap(), "héllo");
    assert_eq!(
        call_with::<Bincode, String>(reg, "echo", &("héllo",), b"").unwrap(),
        "héllo"
    );
    assert_eq!(call::<u64>(reg, "wait-double", &(21,)).unwrap(), 42);
    assert_eq!(
        call_with::<Bincode, u64>(reg, "wait-double", &(21u64,), b"").unwrap(),
        42
    );
    assert_eq!(call::<String>(reg, "version", &()).unwrap(), "0.1.0");
    assert_eq!(
        call_with::<Bincode, String>(reg, "version", &(), b"").unwrap(),
        "0.1.0"
    );
    assert_eq!(call::<Value>(reg, "log", &("hi",)).unwrap(), Value::Null);
}

#[test]
fn keyword_arguments_reach_the_task() {
    let dir = TempDir::new("demo-kw");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = start_host(dir.path());
    let reg = host.registry();

    assert_eq!(
        call::<String>(reg, "greet", &("Ada",)).unwrap(),
        "Hello, Ada."
    );
    let kw = br#"{"greeting": "Hi", "excited": true}"#;
    assert_eq!(
        call_with::<Json, String>(reg, "greet", &("Ada",), kw).unwrap(),
        "Hi, Ada!"
    );
    assert_eq!(
        call_with::<Bincode, String>(reg, "greet", &("Ada",), kw).unwrap(),
        "Hi, Ada!"
    );

    let err = call_with::<Json, String>(reg, "greet", &("Ada",), br#"{"colour": 1}"#).unwrap_err();
    assert_eq!(err.kind(), "TypeError", "{err}");
    assert!(err.to_string().contains("colour"), "{err}");
    let err = call_with::<Json, i64>(reg, "add", &(1, 2), br#"{"z": 3}"#).unwrap_err();
    assert_eq!(err.kind(), "TypeError");
    assert!(
        err.to_string().contains("unexpected keyword argument 'z'"),
        "{err}"
    );
}

#[test]
fn errors_arrive_as_type_and_args() {
    let dir = TempDir::new("demo-errors");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = start_host(dir.path());
    let reg = host.registry();

    let err = call::<Value>(reg, "get-error", &()).unwrap_err();
    assert_eq!(err.kind(), "AssertionError");
    assert_eq!(err.args(), &[json!("this task always fails")]);

    let err = call::<Value>(reg, "no-such-task", &()).unwrap_err();
    assert_eq!(
        (err.kind(), err.args()),
        ("KeyError", &[json!("no-such-task")][..])
    );

    let err = call::<i64>(reg, "add", &(1, 2, 3)).unwrap_err();
    assert_eq!(err.kind(), "TypeError");
    assert!(
        err.to_string()
            .contains("add() takes 2 positional arguments but 3 were given"),
        "{err}"
    );
    let err = call_with::<Bincode, i64>(reg, "add", &(1i64,), b"").unwrap_err();
    assert!(err.to_string().contains("but 1 was given"), "{err}");
    let err = call::<i64>(reg, "add", &("four", 4)).unwrap_err();
    assert_eq!(err.kind(), "TypeError", "{err}");

    // Bytes that are not valid JSON at all.
    let broken = TaskCall::new("add", CodecKind::Json, b"[4, ".to_vec(), Vec::new());
    let err = reg.call(&broken).unwrap_err();
    assert_eq!(err.kind(), "DecodeError", "{err}");

    // The same mistake reads the same in both codecs, in words, with no
    // position in the text and no Rust debug output.
    let raw = |codec, args: &[u8]| {
        reg.call(&TaskCall::new("add", codec, args.to_vec(), Vec::new()))
            .unwrap_err()
    };
    let text = |err: TaskError| (err.kind().to_owned(), err.args().to_vec());
    let one_arg = (
        "TypeError".to_owned(),
        vec![json!("add() takes 2 positional arguments but 1 was given")],
    );
    assert_eq!(text(raw(CodecKind::Json, b"[4]")), one_arg);
    assert_eq!(text(raw(CodecKind::Bincode, &[1, 8])), one_arg);
    let trailing = (
        "DecodeError".to_owned(),
        vec![json!("add(): 2 trailing bytes after the value")],
    );
    assert_eq!(text(raw(CodecKind::Json, b"[4, 4] x")), trailing);
    assert_eq!(text(raw(CodecKind::Bincode, &[2, 8, 8, 0, 0])), trailing);
    let cut = raw(CodecKind::Bincode, &[2, 8]);
    assert_eq!(
        text(cut),
        (
            "DecodeError".to_owned(),
            vec![json!(
                "add(): the bytes end too early: 1 more were expected"
            )]
        )
    );
    let not_utf8 = raw(CodecKind::Bincode, &[1, 2, 0xff, 0xfe]);
    assert!(!not_utf8.to_string().contains('{'), "{not_utf8}");
}

#[test]
fn a_panicking_task_gives_a_panic_error_and_the_next_call_works() {
    let dir = TempDir::new("faulty");
    install_by_rename(&plugin("taskit_fixture_faulty"), dir.path(), "faulty.so");
    let host = start_host(dir.path());
    let reg = host.registry();

    for _ in 0..3 {
        let err = call::<Value>(reg, "panic", &("boom",)).unwrap_err();
        assert_eq!((err.kind(), err.args()), ("Panic", &[json!("boom")][..]));
        assert_eq!(call::<String>(reg, "fine", &()).unwrap(), "still here");
    }
    let err = call::<Value>(reg, "panic-payload", &()).unwrap_err();
    assert_eq!(err.kind(), "Panic");
    assert_eq!(
        call::<Value>(reg, "panic", &("again",)).unwrap_err().kind(),
        "Panic"
    );
}

#[test]
fn the_context_reports_running_tasks_and_counts_subtasks() {
    let dir = TempDir::new("context");
    install_by_rename(&plugin("taskit_demo"), dir.path(), "demo.so");
    let host = start_host(dir.path());
    let reg = host.registry();

    // A call counts itself, as TaskIt's status does.
    assert_eq!(call::<u64>(reg, "running", &()).unwrap(), 1);
    assert_eq!(reg.running_tasks(), 0);
    assert!(call::<bool>(reg, "background", &(300,)).unwrap());
    assert_eq!(reg.running_tasks(), 1, "the background subtask is counted");
    assert_eq!(call::<u64>(reg, "running", &()).unwrap(), 2);
    wait_until("the subtask to end", || reg.running_tasks() == 0);
}

/// Collects what a `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Loads `lib` alone, calls `task(arg)` under a host subscriber filtered by
/// `filter`, and returns what the subscriber wrote.
fn host_log_of_call(lib: &str, filter: &str, task: &str, arg: &str) -> String {
    let dir = TempDir::new("plugin-log");
    install_by_rename(&plugin(lib), dir.path(), "plugin.so");
    let host = start_host(dir.path());
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    // The plugin logs on the calling thread, so a thread-local default
    // subscriber sees exactly this test's records.
    tracing::subscriber::with_default(subscriber, || {
        let _ = call::<Value>(host.registry(), task, &(arg,));
    });
    let bytes = captured.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn a_plugin_log_record_reaches_the_host_subscriber_with_its_name_and_version() {
    let text = host_log_of_call(
        "taskit_demo",
        "taskit::plugin=info",
        "log",
        "hello from the plugin",
    );
    let line = text
        .lines()
        .find(|l| l.contains("hello from the plugin"))
        .unwrap_or_else(|| panic!("no plugin record in {text:?}"));
    for part in ["INFO", "taskit::plugin", "plugin=demo", "version=0.1.0"] {
        assert!(line.contains(part), "{part} missing from {line}");
    }
}

#[test]
fn plugin_records_below_the_host_filter_are_dropped() {
    let text = host_log_of_call("taskit_demo", "taskit::plugin=warn", "log", "quiet please");
    assert!(text.is_empty(), "{text}");
}

#[test]
fn a_panic_in_a_plugin_is_logged_through_the_host_with_its_location() {
    let text = host_log_of_call(
        "taskit_fixture_faulty",
        "taskit::plugin=error",
        "panic",
        "kaboom",
    );
    for part in [
        "ERROR",
        "plugin=faulty",
        "panicked at",
        "src/lib.rs",
        "kaboom",
    ] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
}
