//! Fuzz target `rule`: the body is `fuzz_bodies::rule` (shared with the corpus-replay test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::rule(data));
