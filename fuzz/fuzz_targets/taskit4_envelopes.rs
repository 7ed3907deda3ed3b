//! TaskIt 4.0 envelopes: requests as the host reads them, replies as the
//! frontend reads them, and the ASCII escaping of everything we write.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::taskit4_envelopes(data));
