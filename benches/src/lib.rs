//! Criterion benches of kata-sim; the benches are in `benches/benches/`.
