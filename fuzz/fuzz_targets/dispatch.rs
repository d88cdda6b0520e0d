//! Fuzz target `dispatch`: the body is `fuzz_bodies::dispatch` (shared with the corpus-replay test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::dispatch(data));
