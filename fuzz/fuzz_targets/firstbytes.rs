//! FirstBytes articles, fed whole and byte-split: the decoder must never
//! panic, never keep more than its limit, and agree with itself however the
//! bytes arrive.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::firstbytes(data));
