//! Hostile clients against the running host: one that floods calls, one
//! that hoards connections. Each takes its share and no more; the others
//! keep being served. Clients come from several loopback addresses
//! (127.0.0.0/8 is all loopback on Linux), so peers are told apart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskit_harness::*;
use taskit_plugin_api::wire::native;
use taskit_plugin_api::CodecKind;

/// A TCP connection to `addr` from the loopback address `source`.
fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket.connect(addr).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// A native connection from `source`, its hello answered.
fn native_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let mut s = connect_from(source, addr);
    s.write_all(&native::client_hello(CodecKind::Json)).unwrap();
    let mut hello = [0u8; native::HELLO_LEN];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(
        native::parse_server_hello(&hello).unwrap(),
        native::HelloStatus::Ok
    );
    s
}

/// Whether the host closes a new connection from `source` without
/// answering its hello.
fn refused_from(source: [u8; 4], addr: SocketAddr) -> bool {
    let mut s = connect_from(source, addr);
    let _ = s.write_all(&native::client_hello(CodecKind::Json));
    let mut hello = [0u8; native::HELLO_LEN];
    s.read_exact(&mut hello).is_err()
}

fn call_frame(id: u64, task: &str, args: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    native::encode_call(&mut frame, id, task, args.as_bytes(), b"");
    frame
}

/// Reads one reply frame: its id and whether it is a success.
fn read_reply(s: &mut TcpStream) -> (u64, Result<Vec<u8>, String>) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    match native::parse_response(&body).unwrap() {
        native::Response::Ok { id, result } => (id, Ok(result.to_vec())),
        native::Response::Error { id, kind, .. } => (id, Err(kind.to_owned())),
    }
}

/// One call on a connection of its own from `source`.
fn call_from(source: [u8; 4], addr: SocketAddr, task: &str, args: &str) -> Vec<u8> {
    let mut s = native_from(source, addr);
    s.write_all(&call_frame(1, task, args)).unwrap();
    read_reply(&mut s).1.unwrap()
}

const FLOOD: u64 = 40;

/// A client pipelines `FLOOD` slow calls on one connection, more than the
/// task slots by far; its replies are counted as they come.
struct Flood {
    answered: Arc<AtomicU64>,
    reader: std::thread::JoinHandle<()>,
}

impl Flood {
    fn start(source: [u8; 4], addr: SocketAddr) -> Self {
        let mut s = native_from(source, addr);
        let frames: Vec<u8> = (0..FLOOD)
            .flat_map(|id| call_frame(id, "wait-double", "[300]"))
            .collect();
        s.write_all(&frames).unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let reader = std::thread::spawn({
            let answered = Arc::clone(&answered);
            move || {
                for _ in 0..FLOOD {
                    assert_eq!(read_reply(&mut s).1.unwrap(), b"600");
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        // Its calls are read and waiting once the first is answered.
        wait_until("the first flooded call answered", || {
            answered.load(Ordering::SeqCst) > 0
        });
        Self { answered, reader }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }
}

/// How many of the flood's calls were answered while one call of another
/// client, from `source`, waited and ran: a slot freed goes to each caller
/// in turn, so a handful at most, not the whole queue.
fn flooded_calls_answered_during_one_other_call(other: [u8; 4]) -> u64 {
    let dir = demo_dir("hostile-fair");
    // Two slots: the flood takes far more than its share if let.
    let (_host, addr) = HostProcess::serving(dir.path(), &["--max-tasks", "2"]);
    let flood = Flood::start([127, 0, 0, 1], addr);
    let mut s = native_from(other, addr);
    let before = flood.answered();
    s.write_all(&call_frame(7, "wait-double", "[1]")).unwrap();
    assert_eq!(read_reply(&mut s), (7, Ok(b"2".to_vec())));
    let during = flood.answered() - before;
    assert!(
        flood.answered() < FLOOD,
        "the flood ended before the other call was answered"
    );
    flood.reader.join().unwrap();
    during
}

#[test]
fn a_client_flooding_slow_calls_takes_its_turn_with_a_call_from_another_address() {
    // First in first out, the other call would wait for ~37 of them. (Each
    // takes 300 ms: a busy machine's delays do not add flooded answers.)
    let during = flooded_calls_answered_during_one_other_call([127, 0, 0, 2]);
    assert!(during <= 6, "{during} flooded calls went first");
}

#[test]
fn a_client_flooding_slow_calls_takes_its_turn_with_another_connection_from_its_address() {
    let during = flooded_calls_answered_during_one_other_call([127, 0, 0, 1]);
    assert!(during <= 6, "{during} flooded calls went first");
}

#[test]
fn one_address_holds_at_most_its_share_of_connections() {
    let dir = demo_dir("hostile-per-peer");
    install_by_rename(&plugin("taskit_fixture_crasher"), dir.path(), "crasher.so");
    let (_host, addr) = HostProcess::serving(
        dir.path(),
        &[
            "--max-connections-per-peer",
            "3",
            "--handshake-timeout",
            "120",
            "--idle-timeout",
            "300",
        ],
    );
    // Another address holds an idle connection.
    let mut idle_other = native_from([127, 0, 0, 2], addr);
    // 127.0.0.1 holds its share, each with a call that never ends.
    let mut busy = Vec::new();
    for id in 0..3 {
        let mut s = native_from([127, 0, 0, 1], addr);
        s.write_all(&call_frame(id, "sleep-forever", "[]")).unwrap();
        busy.push(s);
    }
    // Counted by a client of a third address: the three calls running, and
    // itself.
    wait_until("the three calls running", || {
        call_from([127, 0, 0, 3], addr, "<status>", "[]") == b"\"4\""
    });
    // Every connection of 127.0.0.1 is busy: a new one is closed...
    assert!(refused_from([127, 0, 0, 1], addr));
    // ... and no other address's idle connection was closed for it.
    idle_other
        .write_all(&call_frame(9, "crasher-fine", "[]"))
        .unwrap();
    assert_eq!(read_reply(&mut idle_other), (9, Ok(b"\"fine\"".to_vec())));

    // 127.0.0.2 takes its share with idle connections: a fourth closes its
    // own idle longest (`idle_other`), and is served.
    let held: Vec<TcpStream> = (0..2).map(|_| native_from([127, 0, 0, 2], addr)).collect();
    assert_eq!(
        call_from([127, 0, 0, 2], addr, "crasher-fine", "[]"),
        b"\"fine\""
    );
    let mut byte = [0u8; 1];
    match idle_other.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the idle connection was not closed: {other:?}"),
    }
    drop((held, busy));
}

/// Clients from `sources` each write `frame` `times` over, until the host
/// stops reading them for a while (or all is written); their connections.
fn push_until_stalled(
    sources: impl Iterator<Item = [u8; 4]>,
    addr: SocketAddr,
    frame: &[u8],
    times: usize,
) -> Vec<TcpStream> {
    let pushers: Vec<_> = sources
        .map(|source| {
            let mut s = native_from(source, addr);
            s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
            let frame = frame.to_vec();
            std::thread::spawn(move || {
                for _ in 0..times {
                    if s.write_all(&frame).is_err() {
                        break;
                    }
                }
                s
            })
        })
        .collect();
    pushers.into_iter().map(|p| p.join().unwrap()).collect()
}

/// A host serving the demo and crasher plugins, the
/// crasher's only task slot taken for good by a call that never ends: its
/// further calls wait in the host.
fn host_with_a_stuck_slot(
    label: &str,
    extra: &[&str],
) -> (HostProcess, SocketAddr, TempDir, TcpStream) {
    let dir = demo_dir(label);
    install_by_rename(&plugin("taskit_fixture_crasher"), dir.path(), "crasher.so");
    let mut args = vec!["--max-tasks", "1"];
    args.extend_from_slice(extra);
    let (host, addr) = HostProcess::serving(dir.path(), &args);
    let mut stuck = native_from([127, 0, 0, 9], addr);
    stuck
        .write_all(&call_frame(0, "sleep-forever", "[]"))
        .unwrap();
    wait_until("the crasher's slot taken", || {
        call_from([127, 0, 0, 3], addr, "<status>", "[]") == b"\"2\""
    });
    (host, addr, dir, stuck)
}

#[test]
fn a_flood_of_small_calls_is_held_within_the_byte_budget() {
    let (host, addr, _dir, _stuck) = host_with_a_stuck_slot(
        "hostile-budget",
        &[
            "--max-buffered",
            "16777216",
            "--max-buffered-per-connection",
            "4194304",
        ],
    );
    let before = rss_kib(host.child.id()).unwrap();
    // 20 connections each pipeline 1,000 calls of 60 KiB that wait for
    // the crasher's slot: 1.2 GB offered, none of it over 64 KiB.
    let arg = format!("[\"{}\"]", "x".repeat(60 << 10));
    let frame = call_frame(1, "sleep-forever", &arg);
    let flood = push_until_stalled((0..20u8).map(|i| [127, 0, 1, i]), addr, &frame, 1000);
    let during = rss_kib(host.child.id()).unwrap();
    // 16 MiB of budget, 16 KiB of allowance per connection, buffers.
    assert!(
        during < before + 64 * 1024,
        "RSS grew from {before} KiB to {during} KiB with 1.2 GB of small calls offered"
    );
    // A client from elsewhere is read and answered all the same (the
    // crasher's slot, and with plugins in process every slot, is taken).
    assert_eq!(call_from([127, 0, 0, 2], addr, "<status>", "[]"), b"\"2\"");
    drop(flood);
}

#[test]
fn replies_a_client_does_not_read_are_held_within_the_byte_budget() {
    let dir = demo_dir("hostile-replies");
    install_by_rename(&plugin("taskit_fixture_crasher"), dir.path(), "crasher.so");
    let (host, addr) = HostProcess::serving(
        dir.path(),
        &[
            "--max-buffered",
            "16777216",
            "--max-buffered-per-connection",
            "4194304",
            "--write-timeout",
            "120",
        ],
    );
    let before = rss_kib(host.child.id()).unwrap();
    // Two clients ask for 1,000 replies of 256 KiB each and read none:
    // 500 MB of replies, from tiny requests.
    let frame = call_frame(1, "crasher-big", "[262144]");
    let hoarders = push_until_stalled((0..2u8).map(|i| [127, 0, 2, i]), addr, &frame, 1000);
    // The replies of the calls it read are made by now.
    wait_until("no call running", || {
        call_from([127, 0, 0, 3], addr, "<status>", "[]") == b"\"1\""
    });
    let during = rss_kib(host.child.id()).unwrap();
    // Per connection: 4 MiB of replies unwritten, and the replies of the
    // calls running when it got there (64 task slots, 16 MiB).
    assert!(
        during < before + 96 * 1024,
        "RSS grew from {before} KiB to {during} KiB with 500 MB of replies unread"
    );
    assert_eq!(call_from([127, 0, 0, 2], addr, "add", "[2, 2]"), b"4");
    drop(hoarders);
}

#[test]
fn frame_headers_that_promise_large_frames_hold_no_budget_from_others() {
    let dir = demo_dir("hostile-headers");
    let (_host, addr) = HostProcess::serving(
        dir.path(),
        &[
            "--max-buffered",
            "1048576",
            "--max-buffered-per-connection",
            "1048576",
            "--read-timeout",
            "300",
        ],
    );
    // 40 connections each announce a 16 MiB frame and send nothing more.
    let headers: Vec<TcpStream> = (0..40u8)
        .map(|i| {
            let mut s = native_from([127, 0, 3, i], addr);
            s.write_all(&(16u32 << 20).to_be_bytes()).unwrap();
            s
        })
        .collect();
    // Each is read (and charged) before the client below starts.
    let status = call_from([127, 0, 0, 3], addr, "<status>", "[]");
    assert_eq!(status, b"\"1\"");
    // A client from elsewhere pipelines more calls than its own allowance
    // holds: they need the server's budget, which the headers left alone.
    let mut s = native_from([127, 0, 0, 2], addr);
    let frames: Vec<u8> = (0..200u64)
        .flat_map(|id| call_frame(id, "add", "[1, 2]"))
        .collect();
    s.write_all(&frames).unwrap();
    for _ in 0..200 {
        assert_eq!(read_reply(&mut s).1.unwrap(), b"3");
    }
    drop(headers);
}
