//! Fuzz target `sh`: the body is `fuzz_bodies::sh` (shared with the corpus-replay test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::sh(data));
