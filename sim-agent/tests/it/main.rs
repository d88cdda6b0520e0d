//! sim-agent's integration tests, one binary (see ARCHITECTURE.md, "Testing").

mod conformance;
mod replay;
mod support;
mod wire;
