//! The frames between the host and a worker process, over a Unix socket
//! pair. The native protocol's frame format (length-prefixed, big-endian),
//! with its replies and CANCEL unchanged; a call names its codec and its
//! task by number, and the worker has three frames of its own (id 0).
//!
//! ```text
//! frame          length:u32 body[length]
//! host → worker  id:u64 kind:u8 ...
//!   CALL   (1)   codec:u8 task:u32 args_len:u32 args kwargs(rest)
//!   CANCEL (2)   (nothing)                       as native
//! worker → host  id:u64 status:u8 ...
//!   OK, ERROR    as native replies
//!   READY  (id 0, 0x80)  name:str16 version:str16 count:u32 task:str16 × count
//!   REFUSED(id 0, 0x81)  code:u8 message(rest)
//!   LOG    (id 0, 0x82)  level:u8 target:str16 message(rest)
//! ```

use std::io::{self, Read};

use taskit_plugin_api::host_side::abi::LogLevel;
use taskit_plugin_api::wire::native::{
    self, codec_from_id, codec_id, declared_len, ErrorStatus, Response, LENGTH_LEN,
};
use taskit_plugin_api::{CodecKind, TaskError};

use crate::loader::LoadError;

const KIND_CALL: u8 = 1;
const KIND_CANCEL: u8 = 2;
const CONTROL: u64 = 0;
const READY: u8 = 0x80;
const REFUSED: u8 = 0x81;
const LOG: u8 = 0x82;

/// What the host sends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ToWorker<'a> {
    /// Run task number `task`.
    Call {
        id: u64,
        codec: CodecKind,
        task: usize,
        args: &'a [u8],
        kwargs: &'a [u8],
    },
    /// Set call `id`'s cancellation flag.
    Cancel { id: u64 },
}

/// What a worker sends.
#[derive(Debug)]
pub(crate) enum FromWorker<'a> {
    /// The answer to call `id`.
    Reply {
        id: u64,
        result: Result<&'a [u8], TaskError>,
    },
    /// The plugin is loaded and initialised.
    Ready {
        name: String,
        version: String,
        tasks: Vec<String>,
    },
    /// The plugin was refused.
    Refused(LoadError),
    /// A record the plugin logged.
    Log {
        level: LogLevel,
        target: &'a str,
        message: &'a str,
    },
}

fn frame(out: &mut Vec<u8>, id: u64, kind: u8, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_LEN]);
    out.extend_from_slice(&id.to_be_bytes());
    out.push(kind);
    write(out);
    let len = (out.len() - start - LENGTH_LEN) as u32;
    out[start..start + LENGTH_LEN].copy_from_slice(&len.to_be_bytes());
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let mut cut = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    out.extend_from_slice(&(cut as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..cut]);
}

/// Appends a CALL.
pub(crate) fn encode_call(
    out: &mut Vec<u8>,
    id: u64,
    codec: CodecKind,
    task: usize,
    args: &[u8],
    kwargs: &[u8],
) {
    frame(out, id, KIND_CALL, |out| {
        out.push(codec_id(codec));
        out.extend_from_slice(&(task as u32).to_be_bytes());
        out.extend_from_slice(&(args.len() as u32).to_be_bytes());
        out.extend_from_slice(args);
        out.extend_from_slice(kwargs);
    });
}

/// Appends a CANCEL.
pub(crate) fn encode_cancel(out: &mut Vec<u8>, id: u64) {
    native::encode_cancel(out, id);
}

/// Appends a reply to call `id`.
pub(crate) fn encode_reply(out: &mut Vec<u8>, id: u64, result: &Result<Vec<u8>, TaskError>) {
    match result {
        Ok(bytes) => native::encode_ok(out, id, bytes),
        Err(err) => native::encode_error(out, id, err.kind(), &err.args_json(), ErrorStatus::Error),
    }
}

/// Appends READY.
pub(crate) fn encode_ready(out: &mut Vec<u8>, name: &str, version: &str, tasks: &[String]) {
    frame(out, CONTROL, READY, |out| {
        put_str16(out, name);
        put_str16(out, version);
        out.extend_from_slice(&(tasks.len() as u32).to_be_bytes());
        for task in tasks {
            put_str16(out, task);
        }
    });
}

/// Appends REFUSED.
pub(crate) fn encode_refused(out: &mut Vec<u8>, error: &LoadError) {
    let (code, message) = error.to_code();
    frame(out, CONTROL, REFUSED, |out| {
        out.push(code);
        out.extend_from_slice(message.as_bytes());
    });
}

/// Appends LOG.
pub(crate) fn encode_log(out: &mut Vec<u8>, level: LogLevel, target: &str, message: &str) {
    frame(out, CONTROL, LOG, |out| {
        out.push(level as u8);
        put_str16(out, target);
        out.extend_from_slice(message.as_bytes());
    });
}

/// A cursor over a frame body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the frame ends too soon".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn str16(&mut self) -> Result<&'a str, String> {
        let n = self.u16()? as usize;
        text(self.take(n)?)
    }
    fn rest_str(&mut self) -> Result<&'a str, String> {
        text(std::mem::take(&mut self.0))
    }
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "a string is not UTF-8".to_owned())
}

/// Reads a frame sent by the host.
pub(crate) fn parse_to_worker(body: &[u8]) -> Result<ToWorker<'_>, String> {
    let mut b = Body(body);
    let id = b.u64()?;
    match b.u8()? {
        KIND_CALL => {
            let codec = codec_from_id(b.u8()?).ok_or("unknown codec")?;
            let task = b.u32()? as usize;
            let args_len = b.u32()? as usize;
            let args = b.take(args_len)?;
            Ok(ToWorker::Call {
                id,
                codec,
                task,
                args,
                kwargs: b.0,
            })
        }
        KIND_CANCEL => Ok(ToWorker::Cancel { id }),
        other => Err(format!("unknown frame kind {other}")),
    }
}

/// Reads a frame sent by a worker.
pub(crate) fn parse_from_worker(body: &[u8]) -> Result<FromWorker<'_>, String> {
    let mut b = Body(body);
    if b.u64()? == CONTROL {
        return match b.u8()? {
            READY => {
                let name = b.str16()?.to_owned();
                let version = b.str16()?.to_owned();
                let count = b.u32()? as usize;
                // Each task id takes two bytes at least: a count that the
                // frame cannot hold is refused before anything is reserved.
                if count > b.0.len() / 2 {
                    return Err("more task ids than the frame holds".into());
                }
                let mut tasks = Vec::with_capacity(count);
                for _ in 0..count {
                    tasks.push(b.str16()?.to_owned());
                }
                Ok(FromWorker::Ready {
                    name,
                    version,
                    tasks,
                })
            }
            REFUSED => {
                let code = b.u8()?;
                Ok(FromWorker::Refused(LoadError::from_code(
                    code,
                    b.rest_str()?.to_owned(),
                )))
            }
            LOG => {
                let level = LogLevel::from_u8(b.u8()?);
                let target = b.str16()?;
                let message = b.rest_str()?;
                Ok(FromWorker::Log {
                    level,
                    target,
                    message,
                })
            }
            other => Err(format!("unknown control frame {other}")),
        };
    }
    match native::parse_response(body).map_err(|e| e.to_string())? {
        Response::Ok { id, result } => Ok(FromWorker::Reply {
            id,
            result: Ok(result),
        }),
        Response::Error {
            id,
            kind,
            args_json,
            ..
        } => Ok(FromWorker::Reply {
            id,
            result: Err(TaskError::from_args_json(kind, args_json)),
        }),
    }
}

/// Reads one frame into `buf` (replacing its contents). `Ok(false)` at a
/// clean end of the stream; a frame longer than `max` is an error.
/// Whether `buf` starts with a whole frame.
pub(crate) fn holds_frame(buf: &[u8]) -> bool {
    declared_len(buf).is_some_and(|len| buf.len() - LENGTH_LEN >= len)
}

/// Reads one frame's body into `buf`; false at the end of the stream.
pub(crate) fn read_frame(
    reader: &mut impl Read,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    let mut prefix = [0u8; LENGTH_LEN];
    match reader.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = declared_len(&prefix).unwrap_or(0);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, over the limit of {max}"),
        ));
    }
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        assert_eq!(declared_len(frame), Some(frame.len() - LENGTH_LEN));
        &frame[LENGTH_LEN..]
    }

    #[test]
    fn calls_and_cancels_round_trip() {
        let mut out = Vec::new();
        encode_call(&mut out, 7, CodecKind::Bincode, 3, b"args", b"{}");
        assert_eq!(
            parse_to_worker(body(&out)).unwrap(),
            ToWorker::Call {
                id: 7,
                codec: CodecKind::Bincode,
                task: 3,
                args: b"args",
                kwargs: b"{}"
            }
        );
        out.clear();
        encode_cancel(&mut out, 9);
        assert_eq!(
            parse_to_worker(body(&out)).unwrap(),
            ToWorker::Cancel { id: 9 }
        );
    }

    #[test]
    fn worker_frames_round_trip() {
        let mut out = Vec::new();
        encode_ready(&mut out, "demo", "0.1.0", &["add".into(), "echo".into()]);
        match parse_from_worker(body(&out)).unwrap() {
            FromWorker::Ready {
                name,
                version,
                tasks,
            } => assert_eq!(
                (name.as_str(), version.as_str(), tasks.len()),
                ("demo", "0.1.0", 2)
            ),
            other => panic!("{other:?}"),
        }
        out.clear();
        encode_refused(&mut out, &LoadError::Init("no config".into()));
        assert!(matches!(
            parse_from_worker(body(&out)).unwrap(),
            FromWorker::Refused(LoadError::Init(m)) if m == "no config"
        ));
        out.clear();
        encode_log(&mut out, LogLevel::Warn, "demo::x", "careful");
        assert!(matches!(
            parse_from_worker(body(&out)).unwrap(),
            FromWorker::Log {
                level: LogLevel::Warn,
                target: "demo::x",
                message: "careful"
            }
        ));
        out.clear();
        encode_reply(&mut out, 5, &Err(TaskError::msg("ValueError", "bad")));
        match parse_from_worker(body(&out)).unwrap() {
            FromWorker::Reply {
                id: 5,
                result: Err(e),
            } => assert_eq!(e.kind(), "ValueError"),
            other => panic!("{other:?}"),
        }
        out.clear();
        encode_reply(&mut out, 6, &Ok(b"8".to_vec()));
        assert!(matches!(
            parse_from_worker(body(&out)).unwrap(),
            FromWorker::Reply {
                id: 6,
                result: Ok(b"8")
            }
        ));
    }

    #[test]
    fn a_ready_frame_claiming_more_tasks_than_it_holds_is_refused() {
        let mut out = Vec::new();
        encode_ready(&mut out, "demo", "1", &[]);
        let count_at = out.len() - 4;
        out[count_at..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_from_worker(&out[LENGTH_LEN..]).is_err());
    }

    #[test]
    fn frames_over_the_limit_are_refused_before_reading_them() {
        let mut out = Vec::new();
        encode_log(&mut out, LogLevel::Info, "t", &"x".repeat(100));
        let mut buf = Vec::new();
        assert!(read_frame(&mut &out[..], &mut buf, 10).is_err());
        assert!(read_frame(&mut &out[..], &mut buf, 1000).unwrap());
        assert!(!read_frame(&mut &[][..], &mut buf, 1000).unwrap());
    }
}
