//! Bad input against the running host, over raw sockets: each gets its
//! documented error reply or a clean close, and other clients keep being
//! served.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskit_harness::*;
use taskit_plugin_api::wire::{firstbytes, native, taskit4};
use taskit_plugin_api::CodecKind;

/// A host with small limits, so the tests can reach them quickly.
fn small_host(label: &str) -> (HostProcess, SocketAddr, TempDir) {
    let dir = demo_dir(label);
    let (host, addr) = HostProcess::serving(
        dir.path(),
        &[
            "--max-message",
            "4096",
            "--read-timeout",
            "1",
            "--handshake-timeout",
            "1",
            "--write-timeout",
            "1",
            "--idle-timeout",
            "2",
        ],
    );
    (host, addr, dir)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Everything the server sends until it closes.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after we sent bytes it did not read counts as a close.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// Sends raw TaskIt 4.0 bytes and returns the decoded reply, if any.
fn compat_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Result<Value, (String, Vec<Value>)>> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let reply = read_to_close(&mut s);
    if reply.is_empty() {
        return None;
    }
    let (message, _) = firstbytes::decode(&reply, 1 << 20)
        .unwrap()
        .expect("a whole reply");
    Some(match taskit4::parse_reply(&message).unwrap() {
        Ok(raw) => Ok(serde_json::from_str(raw.get()).unwrap()),
        Err(e) => Err((e.kind().to_owned(), e.args().to_vec())),
    })
}

fn compat_message(addr: SocketAddr, json: &[u8]) -> Result<Value, (String, Vec<Value>)> {
    compat_raw(addr, &firstbytes::encode(json)).expect("a reply")
}

fn error_type(reply: Result<Value, (String, Vec<Value>)>) -> String {
    reply.expect_err("an error reply").0
}

/// A good client still gets its answer.
fn still_serving(addr: SocketAddr) {
    assert_eq!(
        compat_message(addr, br#"["add", [20, 22], {}]"#),
        Ok(json!(42))
    );
}

#[test]
fn bytes_that_are_no_protocol_see_a_clean_close() {
    let (_host, addr, _dir) = small_host("bad-garbage");
    let garbage = vec![0xFFu8; 4096];
    for bytes in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &garbage] {
        let mut s = connect(addr);
        s.write_all(bytes).unwrap();
        // A FIN (end of stream), not a reset, and nothing sent.
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "sent {:?}", &buf[..n]),
            Err(e) => panic!("not a clean close: {e}"),
        }
    }
    still_serving(addr);
}

#[test]
fn corrupt_firstbytes_headers_get_protocol_errors() {
    let (_host, addr, _dir) = small_host("bad-headers");
    assert_eq!(
        error_type(compat_raw(addr, b"0zz12abc").unwrap()),
        "ProtocolError"
    );
    assert_eq!(
        error_type(compat_raw(addr, b"10003abc2xxxx").unwrap()),
        "ProtocolError"
    );
    still_serving(addr);
}

#[test]
fn a_message_cut_short_is_closed_without_reply() {
    let (_host, addr, _dir) = small_host("bad-short");
    assert_eq!(compat_raw(addr, b"00100[\"add\""), None);
    assert_eq!(compat_raw(addr, b"000"), None);
    still_serving(addr);
}

#[test]
fn a_message_over_max_message_is_refused_before_its_payload_arrives() {
    let (_host, addr, _dir) = small_host("bad-large");
    // Only the header is sent: the refusal cannot have waited for 65535 bytes.
    let mut s = connect(addr);
    s.write_all(b"1ffff").unwrap();
    let reply = read_to_close(&mut s);
    let (message, _) = firstbytes::decode(&reply, 1 << 20).unwrap().unwrap();
    let err = taskit4::parse_reply(&message).unwrap().unwrap_err();
    assert_eq!(err.kind(), "MessageTooLarge");
    // Within the limit across articles is fine; over it in total is not.
    let just_over =
        firstbytes::encode(format!(r#"["echo", ["{}"], {{}}]"#, "a".repeat(4096)).as_bytes());
    assert_eq!(
        error_type(compat_raw(addr, &just_over).unwrap()),
        "MessageTooLarge"
    );
    still_serving(addr);
}

#[test]
fn invalid_json_and_wrong_envelopes_get_documented_errors() {
    let (_host, addr, _dir) = small_host("bad-envelopes");
    assert_eq!(
        error_type(compat_message(addr, br#"["add", [4,"#)),
        "DecodeError"
    );
    assert_eq!(error_type(compat_message(addr, b"\xff\xfe")), "DecodeError");
    for shape in [
        &br#"{"task": "add"}"#[..],
        br#"["add"]"#,
        br#"["add", [], {}, 4]"#,
        br#"[4, [1, 2], {}]"#,
        br#"["add", 4, {}]"#,
        br#"["add", [1, 2], [3]]"#,
        br#""add""#,
    ] {
        let reply = compat_message(addr, shape);
        assert_eq!(
            error_type(reply),
            "ProtocolError",
            "{}",
            String::from_utf8_lossy(shape)
        );
    }
    assert_eq!(
        compat_message(addr, br#"["nope", [], {}]"#),
        Err(("KeyError".into(), vec![json!("nope")]))
    );
    assert_eq!(
        error_type(compat_message(addr, br#"["add", [1], {}]"#)),
        "TypeError"
    );
    assert_eq!(
        error_type(compat_message(addr, br#"["add", ["a", 1], {}]"#)),
        "TypeError"
    );
    assert_eq!(
        error_type(compat_message(addr, br#"["add", [1, 2], {"z": 1}]"#)),
        "TypeError"
    );
    // A reserved id tells nothing to a caller without the admin token.
    assert_eq!(
        error_type(compat_message(addr, br#"["<nonsense>", [], {}]"#)),
        "Unauthorized"
    );
    let token = taskit_plugin_api::wire::admin::local_token(addr).unwrap();
    let with_token = json!(["<nonsense>", [], {"token": token}]).to_string();
    assert_eq!(
        error_type(compat_message(addr, with_token.as_bytes())),
        "UnknownSignal"
    );
    still_serving(addr);
}

#[test]
fn a_silent_client_is_disconnected_while_others_are_served() {
    let (_host, addr, _dir) = small_host("bad-silent");
    let mut silent = connect(addr);
    let mut half_hello = connect(addr);
    half_hello.write_all(b"TKI").unwrap();
    let mut half_message = connect(addr);
    half_message.write_all(b"00010[\"a").unwrap();
    still_serving(addr);
    for s in [&mut silent, &mut half_hello, &mut half_message] {
        let started = Instant::now();
        assert!(read_to_close(s).is_empty());
        // Closed by the 1 s read timeout (not by the 30 s client timeout).
        assert!(started.elapsed() < Duration::from_secs(25));
    }
    still_serving(addr);
}

/// A native connection after a successful hello.
fn native_conn(addr: SocketAddr, codec: CodecKind) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(&native::client_hello(codec)).unwrap();
    let mut hello = [0u8; native::HELLO_LEN];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(
        native::parse_server_hello(&hello).unwrap(),
        native::HelloStatus::Ok
    );
    s
}

/// Reads one reply frame: (id, Ok(result) | Err((type, fatal))).
fn read_reply(s: &mut TcpStream) -> (u64, Result<Vec<u8>, (String, bool)>) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    match native::parse_response(&body).unwrap() {
        native::Response::Ok { id, result } => (id, Ok(result.to_vec())),
        native::Response::Error {
            id, kind, status, ..
        } => (
            id,
            Err((kind.to_owned(), status == native::ErrorStatus::Fatal)),
        ),
    }
}

#[test]
fn native_hellos_with_unknown_codec_or_version_are_refused() {
    let (_host, addr, _dir) = small_host("bad-hello");
    let mut hello = native::client_hello(CodecKind::Json);
    hello[5] = 9;
    let mut s = connect(addr);
    s.write_all(&hello).unwrap();
    let reply = read_to_close(&mut s);
    let reply: [u8; 8] = reply.try_into().expect("an 8-byte hello");
    assert_eq!(
        native::parse_server_hello(&reply).unwrap(),
        native::HelloStatus::UnsupportedCodec
    );

    let mut hello = native::client_hello(CodecKind::Json);
    hello[4] = 200;
    let mut s = connect(addr);
    s.write_all(&hello).unwrap();
    let reply: [u8; 8] = read_to_close(&mut s).try_into().expect("an 8-byte hello");
    assert_eq!(
        native::parse_server_hello(&reply).unwrap(),
        native::HelloStatus::UnsupportedVersion
    );

    let mut s = connect(addr);
    s.write_all(b"TXYZ\x01\x00\x00\x00").unwrap();
    assert!(read_to_close(&mut s).is_empty());
    still_serving(addr);
}

#[test]
fn native_frames_over_the_limit_or_malformed_are_fatal_after_earlier_calls_are_answered() {
    let (_host, addr, _dir) = small_host("bad-frames");
    // Over --max-message: refused on the length alone.
    let mut s = native_conn(addr, CodecKind::Json);
    s.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    assert_eq!(read_reply(&mut s).1, Err(("MessageTooLarge".into(), true)));
    assert!(read_to_close(&mut s).is_empty());

    // A good call, then an unknown frame kind: the call is answered, then
    // the fatal error, then the close.
    let mut s = native_conn(addr, CodecKind::Json);
    let mut out = Vec::new();
    native::encode_call(&mut out, 1, "wait-double", b"[100]", b"");
    let mut bad = 2u64.to_be_bytes().to_vec();
    bad.push(77);
    out.extend_from_slice(&(bad.len() as u32).to_be_bytes());
    out.extend_from_slice(&bad);
    s.write_all(&out).unwrap();
    let mut replies = [read_reply(&mut s), read_reply(&mut s)];
    replies.sort_by_key(|r| r.1.is_ok());
    assert_eq!(replies[0].1, Err(("ProtocolError".into(), true)));
    assert_eq!(replies[1], (1, Ok(b"200".to_vec())));
    assert!(read_to_close(&mut s).is_empty());

    // A task id that is not UTF-8.
    let mut s = native_conn(addr, CodecKind::Json);
    let mut body = 3u64.to_be_bytes().to_vec();
    body.extend_from_slice(&[1, 0, 2, 0xff, 0xfe, 0, 0, 0, 0]);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    s.write_all(&out).unwrap();
    assert_eq!(read_reply(&mut s).1, Err(("ProtocolError".into(), true)));
    still_serving(addr);
}

#[test]
fn native_cancel_of_an_unknown_id_is_ignored_and_bad_arguments_are_errors() {
    let (_host, addr, _dir) = small_host("bad-native-args");
    let mut s = native_conn(addr, CodecKind::Bincode);
    let mut out = Vec::new();
    native::encode_cancel(&mut out, 999);
    // Bincode bytes that end before the second integer.
    native::encode_call(&mut out, 5, "add", &[0x02, 0x01], b"");
    native::encode_call(&mut out, 6, "add", &[0x03, 1, 2, 3], b"");
    native::encode_call(&mut out, 7, "nope", &[0x00], b"");
    native::encode_call(&mut out, 8, "add", &[0x02, 2, 4], b"");
    s.write_all(&out).unwrap();
    let mut replies: Vec<_> = (0..4).map(|_| read_reply(&mut s)).collect();
    replies.sort_by_key(|r| r.0);
    assert_eq!(replies[0].1, Err(("DecodeError".into(), false)));
    assert_eq!(replies[1].1, Err(("TypeError".into(), false)));
    assert_eq!(replies[2].1, Err(("KeyError".into(), false)));
    // 2 + 4 = 6, as a bincode varint.
    assert_eq!(replies[3], (8, Ok(vec![6])));
}

#[test]
fn a_client_that_stops_reading_is_dropped_while_others_are_served() {
    let (_host, addr, _dir) = small_host("bad-no-read");
    let mut s = native_conn(addr, CodecKind::Json);
    let payload = format!("[\"{}\"]", "r".repeat(3500));
    let mut out = Vec::new();
    for id in 0..2000 {
        native::encode_call(&mut out, id, "echo", payload.as_bytes(), b"");
    }
    // Write what the server will take; it stops reading once its replies
    // back up, so do it from another thread.
    let mut writer = s.try_clone().unwrap();
    let pusher = std::thread::spawn(move || {
        let _ = writer.write_all(&out);
    });
    std::thread::sleep(Duration::from_millis(300));
    still_serving(addr);
    // After the write timeout (1 s) the server drops the connection: the
    // bytes already queued can be read, then the stream ends.
    std::thread::sleep(Duration::from_secs(2));
    let rest = read_to_close(&mut s);
    assert!(
        rest.len() < 2000 * 3520,
        "not every reply was delivered to a client that did not read"
    );
    let _ = s.shutdown(Shutdown::Both);
    pusher.join().unwrap();
    still_serving(addr);
}

#[test]
fn native_connections_that_go_silent_are_closed() {
    let (_host, addr, _dir) = small_host("bad-native-silent");
    // Idle after the hello, with nothing in flight: closed after --idle-timeout.
    let mut idle = native_conn(addr, CodecKind::Json);
    // Half a frame: closed after --read-timeout.
    let mut partial = native_conn(addr, CodecKind::Json);
    partial.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    // Idle once its slow call is answered, which happens while the host
    // waits for its next frame: closed after --idle-timeout too.
    let mut after_call = native_conn(addr, CodecKind::Json);
    let mut frame = Vec::new();
    native::encode_call(&mut frame, 1, "wait-double", b"[300]", b"");
    after_call.write_all(&frame).unwrap();
    assert_eq!(read_reply(&mut after_call), (1, Ok(b"600".to_vec())));
    still_serving(addr);
    for s in [&mut idle, &mut partial, &mut after_call] {
        let started = Instant::now();
        assert!(read_to_close(s).is_empty());
        assert!(started.elapsed() < Duration::from_secs(25));
    }
}

fn host_rss_kib(host: &HostProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn requests_held_at_once_are_bounded_by_the_byte_budget() {
    let dir = demo_dir("bad-budget");
    let (host, addr) = HostProcess::serving(
        dir.path(),
        &[
            "--max-message",
            "4194304",
            "--max-buffered",
            "8388608",
            "--read-timeout",
            "30",
        ],
    );
    let before = host_rss_kib(&host);
    // 24 connections each start a 4 MiB frame and send all but its last
    // byte: 96 MiB offered, 8 MiB allowed.
    let mut conns = Vec::new();
    let mut pushers = Vec::new();
    for _ in 0..24 {
        let s = native_conn(addr, CodecKind::Json);
        let mut w = s.try_clone().unwrap();
        // Gives up once the host stops reading for a while.
        w.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        pushers.push(std::thread::spawn(move || {
            let mut frame = (4u32 << 20).to_be_bytes().to_vec();
            frame.resize(4 + (4 << 20) - 1, b'x');
            let _ = w.write_all(&frame);
        }));
        conns.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let during = host_rss_kib(&host);
    assert!(
        during < before + 48 * 1024,
        "RSS grew from {before} KiB to {during} KiB with 96 MiB offered"
    );
    still_serving(addr);
    for c in &conns {
        let _ = c.shutdown(Shutdown::Both);
    }
    for p in pushers {
        let _ = p.join();
    }
}

#[test]
fn a_reply_over_max_message_is_answered_reply_too_large() {
    use taskit_plugin_api::frontend::{BlockingFrontEnd, FrontendError};
    let dir = demo_dir("bad-big-reply");
    install_by_rename(&plugin("taskit_fixture_crasher"), dir.path(), "crasher.so");
    // The default --max-message: 16 MiB.
    let (_host, addr) = HostProcess::serving(dir.path(), &[]);
    let limit = json!((16 << 20) - 64);
    let size = 20usize << 20;
    // A 20 MiB string, as JSON: its quotes too.
    let expected = vec![json!(size + 2), limit];
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    match fe.work::<Value>("crasher-big", &(size,)) {
        Err(FrontendError::BackendProcessing { kind, args }) => {
            assert_eq!(kind, "ReplyTooLarge");
            assert_eq!(args, expected);
        }
        other => panic!("expected ReplyTooLarge, got {other:?}"),
    }
    let message = format!(r#"["crasher-big", [{size}], {{}}]"#);
    assert_eq!(
        compat_message(addr, message.as_bytes()),
        Err(("ReplyTooLarge".into(), expected))
    );
    // A result just under the limit still goes through, whole.
    let under = (16 << 20) - 64 - 2;
    assert_eq!(
        fe.work::<String>("crasher-big", &(under,)).unwrap().len(),
        under
    );
    still_serving(addr);
}

#[test]
fn a_peer_string_with_a_newline_cannot_forge_a_log_line() {
    use taskit_plugin_api::frontend::BlockingFrontEnd;
    let dir = demo_dir("bad-forged-log");
    let token_file = private_token_file(&dir, "s3cret\n");
    let (mut host, addr) = HostProcess::serving(
        dir.path(),
        &["--admin-token-file", token_file.to_str().unwrap()],
    );
    let fe = BlockingFrontEnd::new([addr]).unwrap();
    // Refused without the token, and logged with the id it gave.
    let forged = "<x>\nINFO taskit_host: taskit-host exiting \u{1b}[2J";
    assert!(fe.work::<Value>(forged, &()).is_err());
    let line = host.expect_line(&["admin signal refused"]);
    assert!(
        line.contains(r"<x>\nINFO taskit_host: taskit-host exiting \u{1b}[2J"),
        "{line}"
    );
    // A plugin's record (the demo's `log` task logs what it is given).
    fe.work::<Value>("log", &("hello\nINFO taskit_host: taskit-host exiting",))
        .unwrap();
    let line = host.expect_line(&["demo task says"]);
    assert!(
        line.contains(r"hello\nINFO taskit_host: taskit-host exiting"),
        "{line}"
    );
    still_serving(addr);
    assert!(
        !host.seen.iter().any(|l| l.starts_with("INFO taskit_host")),
        "a forged line: {:?}",
        host.seen
    );
}

#[test]
fn a_request_never_closed_by_its_last_article_is_served_once_the_peer_goes_quiet() {
    let (_host, addr, _dir) = small_host("bad-unclosed");
    let article = |last: bool, payload: &[u8]| {
        let mut out = format!("{}{:04x}", if last { 0 } else { 1 }, payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out
    };
    // Exactly 2048 bytes, sent as the original client does: one
    // continuation article, and no last one.
    let head = br#"["echo", [""#;
    let tail = br#""], {}]"#;
    let text = "u".repeat(2048 - head.len() - tail.len());
    let request = [&head[..], text.as_bytes(), &tail[..]].concat();
    assert_eq!(request.len(), 2048);
    let answer = |s: &mut TcpStream| -> Value {
        let reply = read_to_close(s);
        let (message, _) = firstbytes::decode(&reply, 1 << 20)
            .unwrap()
            .expect("a whole reply");
        serde_json::from_str(taskit4::parse_reply(&message).unwrap().unwrap().get()).unwrap()
    };
    // The connection left open: served once it goes quiet.
    let mut s = connect(addr);
    s.write_all(&article(false, &request)).unwrap();
    assert_eq!(answer(&mut s), json!(text));
    // Closed for writing instead: served at once.
    let reply = compat_raw(addr, &article(false, &request)).expect("a reply");
    assert_eq!(reply, Ok(json!(text)));

    // A continuation whose bytes are not yet a whole request: the host
    // waits for the rest, however long the pause (within the read timeout).
    let text = "v".repeat(3000);
    let request = [&head[..], text.as_bytes(), &tail[..]].concat();
    let mut s = connect(addr);
    s.write_all(&article(false, &request[..2048])).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&article(true, &request[2048..])).unwrap();
    assert_eq!(answer(&mut s), json!(text));
    still_serving(addr);
}

/// A child process killed when dropped (a failed assertion included).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A host started with its open-files limit at `soft` / `hard`, logging to
/// a shared list; its address once ready.
fn host_with_file_limit(
    dir: &std::path::Path,
    soft: u64,
    hard: u64,
    extra: &[&str],
) -> (
    Killed,
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(host_binary());
    command
        .args(["--plugins", dir.to_str().unwrap(), "--bind", "127.0.0.1:0"])
        .args(extra)
        .stderr(std::process::Stdio::piped());
    // SAFETY: only an async-signal-safe system call between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = Killed(command.spawn().expect("start taskit-host"));
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    let seen = std::sync::Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listening="))
            {
                let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
            }
            seen.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the host never got ready");
    (child, addr, lines)
}

#[test]
fn the_open_files_limit_is_raised_and_running_out_is_logged_once_per_interval() {
    let dir = demo_dir("bad-nofile");
    // A soft limit below the hard one: raised at start.
    let (child, _, _) = host_with_file_limit(dir.path(), 256, 1024, &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["1024", "1024"], "{files}");
    drop(child);

    // A hard limit so low that silent connections use up every descriptor:
    // `accept` fails over and over, and says so once, with a count.
    let (_child, addr, lines) = host_with_file_limit(dir.path(), 64, 64, &[]);
    let silent: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    wait_until("accept failing", || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("accept failed"))
    });
    // The silent ones are closed at the handshake timeout (the host keeps
    // failing to accept meanwhile, every 50 ms); then a client that speaks
    // is served again.
    wait_until("the host serving again", || {
        let fe = taskit_plugin_api::frontend::BlockingFrontEnd::new([addr]).unwrap();
        fe.work::<i64>("add", &(1i64, 1i64)).is_ok_and(|v| v == 2)
    });
    drop(silent);
    let failures = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    // The host retries every 50 ms while it is out of descriptors: without
    // the interval, a line each time.
    assert!(
        failures <= 2,
        "{failures} lines: {:?}",
        lines.lock().unwrap()
    );
}

#[test]
fn connections_that_do_not_finish_their_handshake_are_closed_at_the_handshake_timeout() {
    let dir = demo_dir("bad-handshake");
    // A long read timeout: only the handshake timeout can close them.
    let (_host, addr) = HostProcess::serving(
        dir.path(),
        &["--handshake-timeout", "1", "--read-timeout", "120"],
    );
    let mut silent = connect(addr);
    let mut half_hello = connect(addr);
    half_hello.write_all(b"T").unwrap();
    // Served meanwhile.
    still_serving(addr);
    for s in [&mut silent, &mut half_hello] {
        // `connect` gives up reading after 30 s: closed well before.
        assert!(read_to_close(s).is_empty());
    }
}

#[test]
fn silent_and_hello_only_connections_cannot_lock_out_a_client_that_speaks() {
    let dir = demo_dir("bad-lockout");
    // Long timeouts: only making room can admit anyone.
    let (_host, addr) = HostProcess::serving(
        dir.path(),
        &[
            "--max-connections",
            "40",
            "--handshake-timeout",
            "120",
            "--idle-timeout",
            "300",
        ],
    );
    // Every slot taken, and more: half say nothing, half only their hello.
    let mut held = Vec::new();
    for i in 0..60 {
        if i % 2 == 0 {
            held.push(connect(addr));
        } else {
            held.push(native_conn(addr, CodecKind::Json));
        }
    }
    // Clients that speak are served, one after another, each in a new
    // connection (an idle one is closed for it).
    for i in 0..10i64 {
        let fe = taskit_plugin_api::frontend::BlockingFrontEnd::new([addr]).unwrap();
        assert_eq!(fe.work::<i64>("add", &(i, 1i64)).unwrap(), i + 1);
    }
    assert_eq!(
        compat_message(addr, br#"["add", [20, 22], {}]"#),
        Ok(json!(42))
    );
    drop(held);
}
