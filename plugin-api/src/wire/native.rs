//! The native protocol: a hello each way, then length-prefixed frames in
//! both directions. Requests carry a client-chosen id; replies carry the id
//! of their request and come in completion order. All integers big-endian.
//!
//! ```text
//! client hello  "TKIT" version:u8 codec:u8 0:u16          (8 bytes)
//! server hello  "TKIT" version:u8 status:u8 0:u16         (8 bytes)
//! frame         length:u32 body[length]
//! request body  id:u64 kind:u8 ...
//!   CALL   (1)  task_len:u16 task args_len:u32 args kwargs(rest, JSON object or empty)
//!   CANCEL (2)  (nothing)
//!   AUTH   (3)  token (rest): the host's call token (`--call-token-file`),
//!               sent once, before any call; answered OK (empty), or
//!               FATAL `Unauthorized` if wrong
//! reply body    id:u64 status:u8 ...
//!   OK     (0)  result (rest)
//!   ERROR  (1)  type_len:u16 type args(rest, JSON array)
//!   FATAL  (2)  as ERROR; the server closes the connection after it
//!   NOT_RUN(3)  as ERROR; the call was not run (the host is stopping)
//! ```

use crate::codec::CodecKind;

use super::WireError;

/// First bytes of every native connection (the first byte, `T`, tells it
/// apart from a FirstBytes article, which starts with `0` or `1`).
pub const MAGIC: &[u8; 4] = b"TKIT";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of each hello.
pub const HELLO_LEN: usize = 8;
/// Length of the frame length prefix.
pub const LENGTH_LEN: usize = 4;

const KIND_CALL: u8 = 1;
const KIND_CANCEL: u8 = 2;
const KIND_AUTH: u8 = 3;
const STATUS_OK: u8 = 0;
const STATUS_ERROR: u8 = 1;
const STATUS_FATAL: u8 = 2;
const STATUS_NOT_RUN: u8 = 3;

/// Codec numbers in the hello.
pub fn codec_id(codec: CodecKind) -> u8 {
    match codec {
        CodecKind::Json => 0,
        CodecKind::Bincode => 1,
    }
}

/// The codec numbered `id`, if known.
pub fn codec_from_id(id: u8) -> Option<CodecKind> {
    match id {
        0 => Some(CodecKind::Json),
        1 => Some(CodecKind::Bincode),
        _ => None,
    }
}

/// The client's hello.
pub fn client_hello(codec: CodecKind) -> [u8; HELLO_LEN] {
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        VERSION,
        codec_id(codec),
        0,
        0,
    ]
}

/// A client hello as read by the server: the version and codec number asked for.
pub fn parse_client_hello(hello: &[u8; HELLO_LEN]) -> Result<(u8, u8), WireError> {
    if &hello[..4] != MAGIC {
        return Err(WireError::BadHello(format!(
            "magic {:?} is not \"TKIT\"",
            String::from_utf8_lossy(&hello[..4])
        )));
    }
    Ok((hello[4], hello[5]))
}

/// The server's answer to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloStatus {
    /// Accepted: frames follow.
    Ok = 0,
    /// The server does not speak that version; the version byte of its
    /// hello is the one it speaks. It closes the connection.
    UnsupportedVersion = 1,
    /// The server does not know that codec. It closes the connection.
    UnsupportedCodec = 2,
}

/// The server's hello.
pub fn server_hello(status: HelloStatus) -> [u8; HELLO_LEN] {
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        VERSION,
        status as u8,
        0,
        0,
    ]
}

/// A server hello as read by the client.
pub fn parse_server_hello(hello: &[u8; HELLO_LEN]) -> Result<HelloStatus, WireError> {
    if &hello[..4] != MAGIC {
        return Err(WireError::BadHello(
            "the server's hello does not start with \"TKIT\"".into(),
        ));
    }
    match hello[5] {
        0 => Ok(HelloStatus::Ok),
        1 => Ok(HelloStatus::UnsupportedVersion),
        2 => Ok(HelloStatus::UnsupportedCodec),
        other => Err(WireError::BadHello(format!("unknown hello status {other}"))),
    }
}

/// A request frame, borrowing from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Run task `task`.
    Call {
        /// Chosen by the client; its reply carries it back.
        id: u64,
        /// The task id.
        task: &'a str,
        /// Positional arguments, a sequence in the connection's codec.
        args: &'a [u8],
        /// Keyword arguments as a JSON object, or empty.
        kwargs: &'a [u8],
    },
    /// Asks the server to set the cancellation flag of call `id`; an id not
    /// in flight is ignored.
    Cancel {
        /// The call to cancel.
        id: u64,
    },
    /// Presents the host's call token: the connection may make calls once
    /// it is accepted.
    Auth {
        /// Its reply carries it back.
        id: u64,
        /// The token's bytes.
        token: &'a [u8],
    },
}

/// What an error reply says about its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStatus {
    /// The call ran (or was refused) and failed.
    Error,
    /// A protocol error on the connection; it closes after this reply.
    /// With the type `Stopping`, it means the host is going away and no
    /// call left without a reply on this connection was run.
    Fatal,
    /// The call was not run: safe to send to another host.
    NotRun,
}

impl ErrorStatus {
    fn byte(self) -> u8 {
        match self {
            Self::Error => STATUS_ERROR,
            Self::Fatal => STATUS_FATAL,
            Self::NotRun => STATUS_NOT_RUN,
        }
    }
}

/// A reply frame, borrowing from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    /// The task's result.
    Ok {
        /// The id of the call answered.
        id: u64,
        /// The result, in the connection's codec.
        result: &'a [u8],
    },
    /// An error reply.
    Error {
        /// The id of the call answered (0 for a connection-wide FATAL).
        id: u64,
        /// The error's type.
        kind: &'a str,
        /// The error's arguments, a JSON array.
        args_json: &'a [u8],
        /// What the error says about the call and the connection.
        status: ErrorStatus,
    },
}

fn frame(out: &mut Vec<u8>, body_len: usize, write: impl FnOnce(&mut Vec<u8>)) {
    out.reserve(LENGTH_LEN + body_len);
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    let start = out.len();
    write(out);
    debug_assert_eq!(out.len() - start, body_len);
}

/// Appends a CALL frame to `out`. The task id must fit in 65535 bytes and
/// the arguments in 4 GiB (callers check this against the peer's limit).
pub fn encode_call(out: &mut Vec<u8>, id: u64, task: &str, args: &[u8], kwargs: &[u8]) {
    let len = 8 + 1 + 2 + task.len() + 4 + args.len() + kwargs.len();
    frame(out, len, |out| {
        out.extend_from_slice(&id.to_be_bytes());
        out.push(KIND_CALL);
        out.extend_from_slice(&(task.len() as u16).to_be_bytes());
        out.extend_from_slice(task.as_bytes());
        out.extend_from_slice(&(args.len() as u32).to_be_bytes());
        out.extend_from_slice(args);
        out.extend_from_slice(kwargs);
    });
}

/// Appends an AUTH frame carrying the call token to `out`.
pub fn encode_auth(out: &mut Vec<u8>, id: u64, token: &[u8]) {
    frame(out, 9 + token.len(), |out| {
        out.extend_from_slice(&id.to_be_bytes());
        out.push(KIND_AUTH);
        out.extend_from_slice(token);
    });
}

/// Appends a CANCEL frame to `out`.
pub fn encode_cancel(out: &mut Vec<u8>, id: u64) {
    frame(out, 9, |out| {
        out.extend_from_slice(&id.to_be_bytes());
        out.push(KIND_CANCEL);
    });
}

/// Appends an OK reply to `out`.
pub fn encode_ok(out: &mut Vec<u8>, id: u64, result: &[u8]) {
    frame(out, 9 + result.len(), |out| {
        out.extend_from_slice(&id.to_be_bytes());
        out.push(STATUS_OK);
        out.extend_from_slice(result);
    });
}

/// Appends an error reply to `out`. A type longer than 65535 bytes is cut.
pub fn encode_error(out: &mut Vec<u8>, id: u64, kind: &str, args_json: &[u8], status: ErrorStatus) {
    let mut cut = kind.len().min(u16::MAX as usize);
    while !kind.is_char_boundary(cut) {
        cut -= 1;
    }
    let kind = &kind[..cut];
    frame(out, 9 + 2 + kind.len() + args_json.len(), |out| {
        out.extend_from_slice(&id.to_be_bytes());
        out.push(status.byte());
        out.extend_from_slice(&(kind.len() as u16).to_be_bytes());
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(args_json);
    });
}

/// Splits the first frame off `buf`: its body and the bytes it used, or
/// `None` if `buf` does not hold all of it yet. A declared length over `max`
/// is refused before anything is buffered for it.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(len) = declared_len(buf) else {
        return Ok(None);
    };
    if len > max {
        return Err(WireError::TooLarge {
            size: len as u64,
            max: max as u64,
        });
    }
    Ok(buf
        .get(LENGTH_LEN..LENGTH_LEN + len)
        .map(|body| (body, LENGTH_LEN + len)))
}

/// The body length declared by the frame at the front of `buf`, once its
/// length prefix has arrived.
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; LENGTH_LEN] = buf.get(..LENGTH_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// A cursor over a frame body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::BadFrame(format!("frame ends inside {what}")));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn str(&mut self, n: usize, what: &str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.take(n, what)?)
            .map_err(|_| WireError::BadFrame(format!("{what} is not UTF-8")))
    }
}

/// Reads a request frame body (see [`split_frame`]).
pub fn parse_request(body: &[u8]) -> Result<Request<'_>, WireError> {
    let mut b = Body(body);
    let id = b.u64("the request id")?;
    match b.u8("the frame kind")? {
        KIND_CALL => {
            let task_len = b.u16("the task length")? as usize;
            let task = b.str(task_len, "the task id")?;
            let args_len = b.u32("the arguments length")? as usize;
            let args = b.take(args_len, "the arguments")?;
            Ok(Request::Call {
                id,
                task,
                args,
                kwargs: b.0,
            })
        }
        KIND_CANCEL if b.0.is_empty() => Ok(Request::Cancel { id }),
        KIND_CANCEL => Err(WireError::BadFrame(
            "a CANCEL frame carries nothing after its id".into(),
        )),
        KIND_AUTH => Ok(Request::Auth { id, token: b.0 }),
        other => Err(WireError::BadFrame(format!("unknown request kind {other}"))),
    }
}

/// Reads a reply frame body (see [`split_frame`]).
pub fn parse_response(body: &[u8]) -> Result<Response<'_>, WireError> {
    let mut b = Body(body);
    let id = b.u64("the request id")?;
    match b.u8("the reply status")? {
        STATUS_OK => Ok(Response::Ok { id, result: b.0 }),
        byte @ (STATUS_ERROR | STATUS_FATAL | STATUS_NOT_RUN) => {
            let kind_len = b.u16("the error type length")? as usize;
            let kind = b.str(kind_len, "the error type")?;
            Ok(Response::Error {
                id,
                kind,
                args_json: b.0,
                status: match byte {
                    STATUS_FATAL => ErrorStatus::Fatal,
                    STATUS_NOT_RUN => ErrorStatus::NotRun,
                    _ => ErrorStatus::Error,
                },
            })
        }
        other => Err(WireError::BadFrame(format!("unknown reply status {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_and_cancel_round_trip() {
        let mut buf = Vec::new();
        encode_call(&mut buf, 7, "add", b"[4,4]", b"");
        encode_cancel(&mut buf, 7);
        let (body, used) = split_frame(&buf, 1024).unwrap().unwrap();
        assert_eq!(
            parse_request(body).unwrap(),
            Request::Call {
                id: 7,
                task: "add",
                args: b"[4,4]",
                kwargs: b""
            }
        );
        let (body, used2) = split_frame(&buf[used..], 1024).unwrap().unwrap();
        assert_eq!(parse_request(body).unwrap(), Request::Cancel { id: 7 });
        let mut auth = Vec::new();
        encode_auth(&mut auth, 8, b"s3cret");
        let (body, _) = split_frame(&auth, 1 << 20).unwrap().unwrap();
        assert_eq!(
            parse_request(body).unwrap(),
            Request::Auth {
                id: 8,
                token: b"s3cret"
            }
        );
        assert_eq!(used + used2, buf.len());
        assert_eq!(split_frame(&buf[..used - 1], 1024).unwrap(), None);
    }

    /// The example in docs/protocol.md, byte for byte.
    #[test]
    fn documented_example_bytes() {
        assert_eq!(&client_hello(CodecKind::Json), b"TKIT\x01\x00\x00\x00");
        assert_eq!(&server_hello(HelloStatus::Ok), b"TKIT\x01\x00\x00\x00");
        let mut call = Vec::new();
        encode_call(&mut call, 1, "add", b"[4,4]", b"");
        let mut expected = vec![0, 0, 0, 0x17, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 3];
        expected.extend_from_slice(b"add");
        expected.extend_from_slice(&[0, 0, 0, 5]);
        expected.extend_from_slice(b"[4,4]");
        assert_eq!(call, expected);
        let mut reply = Vec::new();
        encode_ok(&mut reply, 1, b"8");
        assert_eq!(reply, [0, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 1, 0, b'8']);
        // add(4, 4) with i64 arguments in bincode.
        let args = CodecKind::Bincode.encode_args(&(4i64, 4i64)).unwrap();
        assert_eq!(args, [2, 8, 8]);
    }

    #[test]
    fn replies_round_trip() {
        let mut buf = Vec::new();
        encode_ok(&mut buf, 1, b"8");
        encode_error(&mut buf, 2, "KeyError", b"[\"x\"]", ErrorStatus::Error);
        let (body, used) = split_frame(&buf, 64).unwrap().unwrap();
        assert_eq!(
            parse_response(body).unwrap(),
            Response::Ok {
                id: 1,
                result: b"8"
            }
        );
        let (body, _) = split_frame(&buf[used..], 64).unwrap().unwrap();
        assert_eq!(
            parse_response(body).unwrap(),
            Response::Error {
                id: 2,
                kind: "KeyError",
                args_json: b"[\"x\"]",
                status: ErrorStatus::Error
            }
        );
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(matches!(
            split_frame(&[0xff, 0xff, 0xff, 0xff], 1024),
            Err(WireError::TooLarge { .. })
        ));
        let mut body = 1u64.to_be_bytes().to_vec();
        body.push(9);
        assert!(parse_request(&body)
            .unwrap_err()
            .to_string()
            .contains("unknown request kind 9"));
        let mut body = 1u64.to_be_bytes().to_vec();
        body.extend_from_slice(&[KIND_CALL, 0, 10, b'a']);
        assert!(parse_request(&body)
            .unwrap_err()
            .to_string()
            .contains("inside the task id"));
        assert!(parse_request(&[1, 2]).is_err());
        assert!(parse_client_hello(b"HTTP/1.1").is_err());
        assert_eq!(
            parse_client_hello(&client_hello(CodecKind::Bincode)).unwrap(),
            (VERSION, 1)
        );
    }
}
