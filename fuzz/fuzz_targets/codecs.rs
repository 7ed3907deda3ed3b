//! Argument decoding in both codecs, for a few parameter shapes: errors,
//! never panics or unbounded allocations.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::codecs(data));
