//! What each fuzz target checks, shared by the libFuzzer binaries
//! (`fuzz_targets/`) and the test that replays the corpus and every past
//! crash on each `cargo test` (`tests/fuzz_corpus.rs`).

use taskit_plugin_api::wire::firstbytes::{self, Decoder};
use taskit_plugin_api::wire::{native, taskit4};
use taskit_plugin_api::{decode_args, Bincode, Json};

/// One target's checks: panics on a failure.
pub type Check = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: [(&str, Check); 4] = [
    ("firstbytes", firstbytes),
    ("native_frames", native_frames),
    ("taskit4_envelopes", taskit4_envelopes),
    ("codecs", codecs),
];

/// FirstBytes articles, fed whole and byte-split: the decoder must never
/// panic, never keep more than its limit, and agree with itself however the
/// bytes arrive.
pub fn firstbytes(data: &[u8]) {
    const MAX: usize = 1 << 16;
    let whole = firstbytes::decode(data, MAX);
    let mut split = Decoder::new(MAX);
    let mut fed = 0;
    let mut failed = false;
    for chunk in data.chunks(7) {
        match split.feed(chunk) {
            Ok(used) => {
                fed += used;
                if used < chunk.len() {
                    break;
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match whole {
        Ok(Some((message, used))) => {
            assert!(!failed && split.is_done());
            assert_eq!(used, fed);
            assert!(message.len() <= MAX);
            assert_eq!(split.into_message(), message);
            // What we write reads back.
            let again = firstbytes::decode(&firstbytes::encode(&message), MAX)
                .unwrap()
                .unwrap();
            assert_eq!(again.0, message);
        }
        Ok(None) => assert!(!failed && !split.is_done()),
        Err(_) => assert!(failed),
    }
}

/// Native hellos and frames, as the host and the frontend read them.
pub fn native_frames(data: &[u8]) {
    if let Some(hello) = data.get(..native::HELLO_LEN) {
        let hello: [u8; native::HELLO_LEN] = hello.try_into().unwrap();
        let _ = native::parse_client_hello(&hello);
        let _ = native::parse_server_hello(&hello);
    }
    let mut rest = data;
    while let Ok(Some((body, used))) = native::split_frame(rest, 1 << 16) {
        assert!(used <= rest.len() && used >= native::LENGTH_LEN);
        if let Ok(native::Request::Call {
            id,
            task,
            args,
            kwargs,
        }) = native::parse_request(body)
        {
            // What parses re-encodes to the same body.
            let mut again = Vec::new();
            native::encode_call(&mut again, id, task, args, kwargs);
            assert_eq!(&again[native::LENGTH_LEN..], body);
        }
        let _ = native::parse_response(body);
        rest = &rest[used..];
    }
}

/// TaskIt 4.0 envelopes: requests as the host reads them, replies as the
/// frontend reads them, and the ASCII escaping of everything we write.
pub fn taskit4_envelopes(data: &[u8]) {
    if let Ok(request) = taskit4::parse_request(data) {
        let again = taskit4::encode_request(
            &request.task,
            request.args.get().as_bytes(),
            request.kwargs.get().as_bytes(),
        );
        assert!(again.is_ascii());
        let reparsed = taskit4::parse_request(&again).expect("our own request parses");
        assert_eq!(reparsed.task, request.task);
    }
    let _ = taskit4::parse_reply(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if serde_json::from_str::<serde_json::Value>(text).is_ok() {
            let escaped = taskit4::ascii_json(data);
            assert!(escaped.is_ascii());
            let a: serde_json::Value = serde_json::from_slice(&escaped).unwrap();
            let b: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(a, b);
        }
    }
}

/// Argument decoding in both codecs, for a few parameter shapes: errors,
/// never panics or unbounded allocations.
pub fn codecs(data: &[u8]) {
    let _ = decode_args::<Json, (i64, i64)>(data);
    let _ = decode_args::<Json, (String,)>(data);
    let _ = decode_args::<Json, (Vec<u32>, Option<String>)>(data);
    let _ = decode_args::<Bincode, (i64, i64)>(data);
    let _ = decode_args::<Bincode, (String,)>(data);
    let _ = decode_args::<Bincode, (Vec<String>, u8)>(data);
    let _ = decode_args::<Bincode, (std::collections::BTreeMap<String, Vec<u8>>,)>(data);
}
