//! Argument decoding in both codecs, for a few parameter shapes: errors,
//! never panics or unbounded allocations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskit_plugin_api::{decode_args, Bincode, Json};

fuzz_target!(|data: &[u8]| {
    let _ = decode_args::<Json, (i64, i64)>(data);
    let _ = decode_args::<Json, (String,)>(data);
    let _ = decode_args::<Json, (Vec<u32>, Option<String>)>(data);
    let _ = decode_args::<Bincode, (i64, i64)>(data);
    let _ = decode_args::<Bincode, (String,)>(data);
    let _ = decode_args::<Bincode, (Vec<String>, u8)>(data);
    let _ = decode_args::<Bincode, (std::collections::BTreeMap<String, Vec<u8>>,)>(data);
});
