//! Fuzz target `handshake`: the body is `fuzz_bodies::handshake` (shared with the corpus-replay test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::handshake(data));
