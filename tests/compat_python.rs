//! Wire compatibility with the original TaskIt 4.0 (Python, from PyPI):
//! its frontend calls our host, and our frontend calls its backend.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskit_harness::*;
use taskit_plugin_api::frontend::{BackendAddr, BlockingFrontEnd, CallOptions, FrontendError};

/// A virtualenv with `taskit==4.0.0`, made once under the target directory.
fn python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        venv_python(
            "taskit4-venv",
            "import taskit.frontend, taskit.backend",
            &["taskit==4.0.0"],
        )
    })
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python")
        .join(name)
}

/// Runs client.py against `addr`, ending with `<stop>`; what it saw.
fn original_client_against(addr: std::net::SocketAddr) -> Value {
    let out = Command::new(python())
        .arg(script("client.py"))
        .args([
            addr.ip().to_string(),
            addr.port().to_string(),
            "stop".into(),
        ])
        .output()
        .expect("run client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn the_original_python_frontend_calls_our_host() {
    let dir = demo_dir("py-frontend");
    // By default, <stop> needs the token the host made: the original
    // client calls tasks and asks for the status, but cannot stop it.
    let (_protected, addr) = HostProcess::serving(dir.path(), &[]);
    let seen = original_client_against(addr);
    assert_eq!(seen["add"], json!(8));
    assert_eq!(seen["status"], json!("1"));
    assert_eq!(seen["stop"], json!(["Unauthorized", ["<stop>"]]));
    let fe = taskit_plugin_api::frontend::BlockingFrontEnd::new([addr]).unwrap();
    assert_eq!(fe.work::<i64>("add", &(1, 1)).unwrap(), 2);

    let (mut host, addr) = HostProcess::serving(dir.path(), &["--no-admin-token"]);
    let seen = original_client_against(addr);
    assert_eq!(seen["stop"], Value::Null);
    assert_eq!(seen["add"], json!(8));
    assert_eq!(seen["echo_big"], json!(true));
    assert_eq!(seen["echo_exact"], json!(true));
    assert_eq!(seen["echo_unclosed"], json!(true));
    assert_eq!(seen["greet"], json!("Hi, Ada!"));
    assert_eq!(
        seen["error"],
        json!(["AssertionError", ["this task always fails"]])
    );
    assert_eq!(seen["unknown"], json!(["KeyError", ["no-such-task"]]));
    assert_eq!(seen["arity"][0], json!("TypeError"));
    assert_eq!(seen["status"], json!("1"));
    // The client sent <stop> last: the host drains and exits.
    assert_eq!(host.wait_exit(), Some(0));
}

/// A host's token file for `port`, as one killed there leaves it; removed
/// on drop.
struct StaleTokenFile(PathBuf);

impl StaleTokenFile {
    fn write(port: u16) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let path = taskit_plugin_api::wire::admin::local_token_file(([127, 0, 0, 1], port).into());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            // A pid no process has (the largest Linux allows is 4194304).
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"stale\n999999999\n"))
            .unwrap();
        Self(path)
    }
}

impl Drop for StaleTokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An original Python backend on a free port, killed on drop.
struct PythonBackend {
    child: Child,
    port: u16,
}

impl PythonBackend {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python())
            .arg(script("backend.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start backend.py");
        Self { child, port }
    }
}

impl Drop for PythonBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn our_frontend_calls_the_original_python_backend() {
    let mut backend = PythonBackend::start();
    // A token file left for its port (by a host killed there before): our
    // frontend must not send the token with `<status>`, which the original
    // backend would refuse.
    let _stale = StaleTokenFile::write(backend.port);
    let addr = BackendAddr::new("127.0.0.1", backend.port).taskit4();
    let fe = BlockingFrontEnd::new([addr.clone()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fe.get_tasks(addr.clone()).unwrap() == "down" {
        assert!(
            Instant::now() < deadline,
            "the Python backend never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(fe.work::<i64>("add", &(4, 4)).unwrap(), 8);
    let text = "héllo 🌍, ñ";
    assert_eq!(fe.work::<String>("echo", &(text,)).unwrap(), text);
    let big = "z".repeat(6000);
    assert_eq!(fe.work::<String>("echo", &(big.as_str(),)).unwrap(), big);
    // A request whose JSON is exactly 4096 bytes: we close it with a `0`
    // article, which the original receiver accepts.
    let exact = "q".repeat(4096 - r#"["echo",[""],{}]"#.len());
    assert_eq!(
        fe.work::<String>("echo", &(exact.as_str(),)).unwrap(),
        exact
    );
    assert_eq!(
        fe.work_with::<Vec<i64>>("pair", &(1,), &CallOptions::default().kw("b", 5))
            .unwrap(),
        vec![1, 5]
    );
    match fe.work::<Value>("fail", &()) {
        Err(FrontendError::BackendProcessing { kind, args }) => {
            assert_eq!(
                (kind.as_str(), args),
                ("ValueError", vec![json!("bad value"), json!(3)])
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fe.work::<Value>("nope", &()).unwrap_err().remote_type(),
        Some("KeyError")
    );
    // The original backend sends a reply before it counts the call out, so
    // right after the last reply `<status>` may still count that call
    // ("2"); idle, it counts only itself ("1"), and nothing else is ever
    // right.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = fe.get_tasks(addr.clone()).unwrap();
        if status == "1" {
            break;
        }
        assert_eq!(status, "2", "an idle backend counts only the status call");
        assert!(Instant::now() < deadline, "the backend never went idle");
        std::thread::sleep(Duration::from_millis(10));
    }
    fe.send_stop(addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = backend.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the Python backend did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}
