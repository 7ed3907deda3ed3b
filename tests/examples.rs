//! Every example runs, and says what its README line promises.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use taskit_harness::*;

fn run(name: &str, args: &[&str]) -> (String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(example(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run example {name}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    assert!(
        status.success(),
        "example {name} failed: {status:?}\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

fn assert_has(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
}

#[test]
fn simple() {
    let (out, err) = run("simple", &[]);
    assert_has(
        &out,
        &[
            "work: half(10) = Ok(5)",
            r#"work: half(3) = Err(Error("3 is odd"))"#,
            "callback: half(8) = 4",
            "callback: handled error: 5 is odd",
            "ignore: done",
            r#"work: boom() = Err(Panic("boom"))"#,
        ],
    );
    assert_has(&err, &["half failed: 7 is odd"]);
    assert!(
        !out.contains("9 is odd") && !err.contains("9 is odd"),
        "a silenced error was shown"
    );
    assert!(
        !out.contains("11 is odd") && !err.contains("11 is odd"),
        "an ignored error was shown"
    );
}

#[test]
fn resync() {
    let (out, _) = run("resync", &[]);
    assert_has(
        &out,
        &[
            "hand-off: Ok(42)",
            r#"callback made blocking: Ok("TASKIT")"#,
            "second completion: Err(AlreadyCompleted)",
            "timeout: Err(Timeout(30ms))",
            r#"after the timeout: Ok("late")"#,
            "taken twice: true",
            "meanwhile: 10! = 3628800",
            "resyncer: Ok(500500)",
            r#"async: Ok("awaited")"#,
        ],
    );
}

#[test]
fn log() {
    let (out, err) = run("log", &[]);
    assert_has(
        &out,
        &[
            "DEBUG (",
            "\tdebugging detail",
            "INFO (",
            "IMPORTANT (",
            "ERROR (",
            "\tprinted, then logged as one line",
        ],
    );
    let file = out
        .split("errors.log holds:\n")
        .nth(1)
        .expect("the file's content");
    let lines: Vec<&str> = file.lines().collect();
    assert_eq!(lines.len(), 2, "{file}");
    assert!(lines[0].starts_with("IMPORTANT (") && lines[0].ends_with("\tworth noticing"));
    assert!(lines[1].starts_with("ERROR (") && lines[1].ends_with("\tsomething failed"));
    assert_has(&err, &["something failed", "worth noticing"]);
}

#[test]
fn worker_and_main() {
    let mut worker = Command::new(example("worker"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the worker");
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("worker listening on ")
        .expect("the worker's address");
    let (out, _) = run("main", &[addr]);
    assert_has(
        &out,
        &[
            "work: add(4, 4) = 8",
            "callback: wait-double(100) = 200",
            "ignore: sent wait-double(50)",
            "status: ",
            "client count: 0",
            r#"error: AssertionError [String("this task always fails")]"#,
            "long message: echoed 6000 characters over taskit4",
            "stop: sent",
        ],
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l == "worker exiting: Stopped"),
        "{rest:?}"
    );
    assert!(worker.wait().unwrap().success());
}

#[test]
fn main_leaves_a_host_serving_plugins_running() {
    let dir = demo_dir("example-main-host");
    let (host, addr) = HostProcess::serving(dir.path(), &[]);
    let (out, _) = run("main", &[&addr.to_string()]);
    assert_has(&out, &["work: add(4, 4) = 8", "stop: not sent"]);
    let fe = taskit_plugin_api::frontend::BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(fe.work::<i64>("add", &(1, 1)).unwrap(), 2);
    drop(host);
}

#[test]
fn load_and_call() {
    let dir = demo_dir("example-load");
    let (out, _) = run(
        "load_and_call",
        &[dir.path().to_str().unwrap(), "add", "4", "4"],
    );
    assert_has(&out, &["demo 0.1.0 serves add, echo", "add -> 8"]);
}

#[test]
fn plugin_walkthrough() {
    // Make sure the plugins it builds are already fresh (it runs cargo too).
    built();
    let (out, _) = run("plugin_walkthrough", &[]);
    assert_has(
        &out,
        &[
            "1. build the plugin",
            "3. dropped demo.so in; it answered after",
            "4. add(4, 4) = 8",
            "5. replaced it with version 0.2.0; live after",
            "6. the host now serves demo 0.2.0",
        ],
    );
}

/// The first fenced block of `lang` after the line `marker` in `doc`.
fn block_after(doc: &str, marker: &str, lang: &str) -> String {
    let rest = &doc[doc
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in the doc"))..];
    let open = format!("```{lang}\n");
    let start = rest.find(&open).expect("a code block") + open.len();
    let end = rest[start..].find("```").expect("its end");
    rest[start..start + end].to_owned()
}

#[test]
fn the_plugins_doc_walkthrough_builds_and_loads() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/plugins.md")).unwrap();
    let manifest = block_after(&doc, "`Cargo.toml`:", "toml");
    let lib = block_after(&doc, "`src/lib.rs`:", "rust");
    // Inside the checkout (under its target directory, so under its
    // workspace), next to a `plugin-api` as the doc says: the two files as
    // they are written there.
    let profile = profile_dir();
    let target = profile.parent().unwrap().to_path_buf();
    let top = target.join("doc-walkthrough");
    let _ = std::fs::remove_dir_all(&top);
    std::fs::create_dir_all(top.join("my-tasks/src")).unwrap();
    std::os::unix::fs::symlink(root.join("plugin-api"), top.join("plugin-api")).unwrap();
    std::fs::write(top.join("my-tasks/Cargo.toml"), manifest).unwrap();
    std::fs::write(top.join("my-tasks/src/lib.rs"), lib).unwrap();
    // The checkout's lock file and target directory: the dependencies
    // built for it are reused.
    std::fs::copy(root.join("Cargo.lock"), top.join("my-tasks/Cargo.lock")).unwrap();
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .arg("build")
        .current_dir(top.join("my-tasks"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("warning"),
        "the doc's plugin builds with warnings:\n{stderr}"
    );

    let dir = TempDir::new("doc-walkthrough");
    install_by_rename(
        &target.join("debug/libmy_tasks.so"),
        dir.path(),
        "my-tasks.so",
    );
    let (_host, addr) = HostProcess::serving(dir.path(), &[]);
    let fe = taskit_plugin_api::frontend::BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(fe.work::<i64>("add", &(4, 4)).unwrap(), 8);
    assert_eq!(fe.work::<i64>("parse", &(" 42 ",)).unwrap(), 42);
    let tasks = fe.tasks(addr).unwrap();
    assert!(
        tasks
            .iter()
            .any(|p| p.name == "my-tasks" && p.version == "0.3.1"),
        "{tasks:?}"
    );
}
