//! FirstBytes articles, fed whole and byte-split: the decoder must never
//! panic, never keep more than its limit, and agree with itself however the
//! bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskit_plugin_api::wire::firstbytes::{self, Decoder};

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
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
});
