//! Fuzz target `scenario`: the body is `fuzz_bodies::scenario` (shared with the corpus-replay test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::scenario(data));
