//! The server's guarantees under pressure, with an embedded server whose
//! limits the tests set: drain ordering, slow tasks, connection reuse.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskit_host::{Exit, Registry, Server, ServerConfig};
use taskit_plugin_api::frontend::{BackendAddr, FrontEnd, FrontendConfig};
use taskit_plugin_api::wire::native::{self, ErrorStatus, Response};
use taskit_plugin_api::CodecKind;

fn sleeper_registry() -> Arc<Registry> {
    let registry = Arc::new(Registry::new());
    registry
        .register("sleep", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .unwrap();
    registry.register("add", |x: i64, y: i64| x + y).unwrap();
    // An in-process task may use the host's runtime, even once it is
    // judged quick enough to run inline.
    registry
        .register("nested", |x: i64| {
            tokio::runtime::Handle::current().block_on(async move { x * 2 })
        })
        .unwrap();
    registry
}

async fn start(config: ServerConfig) -> (Server, SocketAddr) {
    let config = ServerConfig {
        binds: vec!["127.0.0.1:0".parse().unwrap()],
        ..config
    };
    let server = Server::start(config, sleeper_registry()).await.unwrap();
    let addr = server.local_addrs()[0];
    (server, addr)
}

/// A host runtime with two async threads, as on the 2-core machine.
fn two_threads() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

type Reply = (u64, Result<Vec<u8>, (String, ErrorStatus)>);

/// Reads reply frames until the server closes the connection.
fn replies_until_close(s: &mut TcpStream) -> Vec<Reply> {
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return out;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        out.push(match native::parse_response(&body).unwrap() {
            Response::Ok { id, result } => (id, Ok(result.to_vec())),
            Response::Error {
                id, kind, status, ..
            } => (id, Err((kind.to_owned(), status))),
        });
    }
}

#[test]
fn stop_waits_for_calls_queued_behind_a_full_connection() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // One call in flight per connection: B waits for A's slot.
        let (mut server, addr) = start(ServerConfig {
            max_in_flight_per_connection: 1,
            ..ServerConfig::default()
        })
        .await;
        let replies = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&native::client_hello(CodecKind::Json)).unwrap();
            let mut hello = [0u8; 8];
            s.read_exact(&mut hello).unwrap();
            let mut out = Vec::new();
            native::encode_call(&mut out, 1, "sleep", b"[300]", b"");
            native::encode_call(&mut out, 2, "sleep", b"[1]", b"");
            s.write_all(&out).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            // Stop from another connection while A runs and B waits.
            let fe = FrontEnd::new([BackendAddr::from(addr).taskit4()]);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(fe.send_stop(addr)).unwrap();
            replies_until_close(&mut s)
        });
        let exit = server.wait().await;
        let replies = replies.await.unwrap();
        assert_eq!(exit, Exit::Stopped);
        // A ran; B was read before the stop, so it is answered: not run.
        assert_eq!(replies[0], (1, Ok(b"300".to_vec())), "{replies:?}");
        assert_eq!(
            replies[1],
            (2, Err(("Stopping".into(), ErrorStatus::NotRun))),
            "{replies:?}"
        );
        // Then the connection is told nothing unanswered ran, and closes.
        assert_eq!(
            replies[2],
            (0, Err(("Stopping".into(), ErrorStatus::Fatal))),
            "{replies:?}"
        );
        assert_eq!(replies.len(), 3);
    });
}

#[test]
fn a_quick_task_turning_slow_does_not_hold_up_other_connections() {
    two_threads().block_on(async {
        let (_server, addr) = start(ServerConfig::default()).await;
        let fe = FrontEnd::new([BackendAddr::from(addr)]);
        // Learned as quick...
        for _ in 0..50 {
            assert_eq!(fe.call::<u64>("sleep", &(0u64,)).await.unwrap(), 0);
        }
        // ...then slow, on two connections at once (more than the host's
        // async threads on this machine).
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let fe = FrontEnd::new([BackendAddr::from(addr)]);
                tokio::spawn(async move { fe.call::<u64>("sleep", &(1500u64,)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A third connection is still served while both run.
        let other = FrontEnd::new([BackendAddr::from(addr).codec(CodecKind::Bincode)]);
        assert_eq!(other.call::<i64>("add", &(2i64, 2i64)).await.unwrap(), 4);
        assert!(
            slow.iter().all(|s| !s.is_finished()),
            "answered while the slow calls still run"
        );
        for s in slow {
            assert_eq!(s.await.unwrap().unwrap(), 1500);
        }
    });
}

#[test]
fn an_in_process_task_may_block_on_the_host_runtime_when_run_inline() {
    two_threads().block_on(async {
        let (_server, addr) = start(ServerConfig::default()).await;
        let fe = FrontEnd::new([BackendAddr::from(addr)]);
        // The first calls teach the server the task is quick; the rest run
        // inline, and must still be inside `block_in_place`.
        for i in 0..50i64 {
            assert_eq!(fe.call::<i64>("nested", &(i,)).await.unwrap(), 2 * i);
        }
    });
}

#[test]
fn a_backend_that_never_answers_its_hello_costs_one_connect_attempt() {
    // Accepts connections and holds them without a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in silent.incoming() {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(conn);
            }
        });
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_server, addr) = start(ServerConfig::default()).await;
        let config = FrontendConfig {
            connect_timeout: Duration::from_millis(500),
            ..FrontendConfig::default()
        };
        let fe = FrontEnd::with_config(
            [BackendAddr::from(silent_addr), BackendAddr::from(addr)],
            config,
        );
        let calls: Vec<_> = (0..16i64)
            .map(|i| {
                let fe = fe.clone();
                tokio::spawn(async move { fe.call::<i64>("add", &(i, 1i64)).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), i as i64 + 1);
        }
    });
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "callers shared one failed attempt"
    );
}
