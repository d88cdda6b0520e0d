//! Fuzz target `frame`: the body is `fuzz_bodies::frame` (shared with the corpus-replay test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::frame(data));
