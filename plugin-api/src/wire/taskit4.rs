//! TaskIt 4.0's JSON envelopes.
//!
//! Request `[task, args, kwargs]`; replies `["success", result]` and
//! `["error", type, args]`. Everything written toward a peer is ASCII-only
//! JSON (non-ASCII escaped as `\uXXXX`): the original receiver counts
//! decoded characters, not bytes, and would misread anything else.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::TaskError;

/// A decoded request; `args` and `kwargs` are left as JSON text, to be
/// handed to the task undecoded.
#[derive(Debug)]
pub struct Request<'a> {
    /// The task id.
    pub task: String,
    /// A JSON array.
    pub args: &'a RawValue,
    /// A JSON object.
    pub kwargs: &'a RawValue,
}

/// Why a request or reply envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON at all (or not UTF-8).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// JSON of the wrong shape.
    #[error("{0}")]
    Shape(String),
}

fn shape(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Shape(msg.into())
}

fn first_char(raw: &RawValue) -> Option<u8> {
    raw.get().bytes().find(|b| !b.is_ascii_whitespace())
}

/// Parses `[task, args, kwargs]` (`kwargs` may be left out).
///
/// Not JSON at all is [`EnvelopeError::Json`], answered `DecodeError`; JSON of
/// another shape is [`EnvelopeError::Shape`], answered `ProtocolError`.
pub fn parse_request(message: &[u8]) -> Result<Request<'_>, EnvelopeError> {
    let parts: Vec<&RawValue> = match serde_json::from_slice(message) {
        Ok(parts) => parts,
        Err(e) if e.is_data() => {
            return Err(shape("the request is not a JSON list [task, args, kwargs]"))
        }
        Err(e) => return Err(EnvelopeError::Json(e.to_string())),
    };
    if parts.len() != 2 && parts.len() != 3 {
        return Err(shape(format!(
            "the request has {} elements; expected [task, args, kwargs]",
            parts.len()
        )));
    }
    let task: String = serde_json::from_str(parts[0].get())
        .map_err(|_| shape("the task (first element) is not a string"))?;
    let args = parts[1];
    if first_char(args) != Some(b'[') {
        return Err(shape("args (second element) is not a list"));
    }
    let kwargs = match parts.get(2) {
        Some(kw) if first_char(kw) == Some(b'{') => *kw,
        Some(_) => return Err(shape("kwargs (third element) is not an object")),
        None => empty_object(),
    };
    Ok(Request { task, args, kwargs })
}

fn empty_object() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| RawValue::from_string("{}".to_owned()).expect("valid JSON"))
}

/// Writes a request, ASCII-only.
pub fn encode_request(task: &str, args: &[u8], kwargs: &[u8]) -> Vec<u8> {
    let kwargs: &[u8] = if kwargs.is_empty() { b"{}" } else { kwargs };
    let mut out = Vec::with_capacity(task.len() + args.len() + kwargs.len() + 8);
    out.push(b'[');
    out.extend_from_slice(&serde_json::to_vec(task).unwrap_or_else(|_| b"\"\"".to_vec()));
    out.push(b',');
    out.extend_from_slice(args);
    out.push(b',');
    out.extend_from_slice(kwargs);
    out.push(b']');
    ascii_json(&out).into_owned()
}

/// `["success", result]`, with `result` already JSON text.
pub fn encode_success(result: &[u8]) -> Vec<u8> {
    let result = ascii_json(result);
    let mut out = Vec::with_capacity(result.len() + 12);
    out.extend_from_slice(b"[\"success\",");
    out.extend_from_slice(&result);
    out.push(b']');
    out
}

/// `["error", type, args]`.
pub fn encode_error(kind: &str, args: &[Value]) -> Vec<u8> {
    let text = serde_json::to_vec(&("error", kind, args))
        .unwrap_or_else(|_| b"[\"error\",\"EncodeError\",[]]".to_vec());
    ascii_json(&text).into_owned()
}

/// Reads a reply: the result as JSON text, or the remote error.
pub fn parse_reply(message: &[u8]) -> Result<Result<Box<RawValue>, TaskError>, EnvelopeError> {
    let parts: Vec<Box<RawValue>> = serde_json::from_slice(message).map_err(|e| {
        if e.is_data() {
            shape("the reply is not a JSON list")
        } else {
            EnvelopeError::Json(e.to_string())
        }
    })?;
    let status: String = parts
        .first()
        .and_then(|s| serde_json::from_str(s.get()).ok())
        .ok_or_else(|| shape("the reply does not start with a status string"))?;
    match (status.as_str(), parts.len()) {
        ("success", 2) => Ok(Ok(parts.into_iter().nth(1).expect("two elements"))),
        ("error", 3) => {
            let kind: String = serde_json::from_str(parts[1].get())
                .map_err(|_| shape("the error type is not a string"))?;
            let args: Vec<Value> = serde_json::from_str(parts[2].get())
                .map_err(|_| shape("the error args are not a list"))?;
            Ok(Err(TaskError::new(kind, args)))
        }
        _ => Err(shape(format!(
            "unexpected reply: status {status:?} with {} elements",
            parts.len()
        ))),
    }
}

/// Escapes every non-ASCII character of a UTF-8 JSON text as `\uXXXX`
/// (surrogate pairs above U+FFFF). In valid JSON, non-ASCII characters only
/// occur inside strings, where the escape means the same character.
pub fn ascii_json(json: &[u8]) -> Cow<'_, [u8]> {
    if json.is_ascii() {
        return Cow::Borrowed(json);
    }
    let text = String::from_utf8_lossy(json);
    let mut out = Vec::with_capacity(json.len() + json.len() / 2);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c as u8);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_parse_and_keep_args_as_text() {
        let r = parse_request(br#"["add", [4, 4], {}]"#).unwrap();
        assert_eq!(
            (r.task.as_str(), r.args.get(), r.kwargs.get()),
            ("add", "[4, 4]", "{}")
        );
        let r = parse_request(br#"["add",[1]]"#).unwrap();
        assert_eq!(r.kwargs.get(), "{}");
    }

    #[test]
    fn wrong_shapes_are_named() {
        let cases: &[(&[u8], &str)] = &[
            (b"{\"a\": 1}", "not a JSON list"),
            (b"[\"add\"]", "1 elements"),
            (b"[1, [], {}]", "task (first element) is not a string"),
            (b"[\"add\", 4, {}]", "args (second element) is not a list"),
            (
                b"[\"add\", [], []]",
                "kwargs (third element) is not an object",
            ),
        ];
        for (input, expected) in cases {
            let err = parse_request(input).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{err} for {:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(matches!(
            parse_request(b"[\"add\", [4,"),
            Err(EnvelopeError::Json(_))
        ));
        assert!(matches!(
            parse_request(b"\xff\xfe"),
            Err(EnvelopeError::Json(_))
        ));
    }

    #[test]
    fn replies_are_ascii_and_round_trip() {
        let ok = encode_success("\"héllo 🌍\"".as_bytes());
        assert!(ok.is_ascii());
        assert_eq!(ok, br#"["success","h\u00e9llo \ud83c\udf0d"]"#.to_vec());
        let back = parse_reply(&ok).unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<String>(back.get()).unwrap(),
            "héllo 🌍"
        );

        let err = encode_error("KeyError", &[json!("nope")]);
        assert_eq!(err, br#"["error","KeyError",["nope"]]"#.to_vec());
        let back = parse_reply(&err).unwrap().unwrap_err();
        assert_eq!(
            (back.kind(), back.args()),
            ("KeyError", &[json!("nope")][..])
        );
        assert!(parse_reply(br#"["maybe", 1]"#).is_err());
    }

    #[test]
    fn requests_are_written_ascii() {
        let req = encode_request("échó", b"[\"\xc3\xa9\"]", b"");
        assert!(req.is_ascii());
        let parsed = parse_request(&req).unwrap();
        assert_eq!(parsed.task, "échó");
    }
}
