//! TaskIt 4.0 envelopes: requests as the host reads them, replies as the
//! frontend reads them, and the ASCII escaping of everything we write.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskit_plugin_api::wire::compat;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = compat::parse_request(data) {
        let again = compat::encode_request(
            &request.task,
            request.args.get().as_bytes(),
            request.kwargs.get().as_bytes(),
        );
        assert!(again.is_ascii());
        let reparsed = compat::parse_request(&again).expect("our own request parses");
        assert_eq!(reparsed.task, request.task);
    }
    let _ = compat::parse_reply(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if serde_json::from_str::<serde_json::Value>(text).is_ok() {
            let escaped = compat::ascii_json(data);
            assert!(escaped.is_ascii());
            let a: serde_json::Value = serde_json::from_slice(&escaped).unwrap();
            let b: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(a, b);
        }
    }
});
