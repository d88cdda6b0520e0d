//! sim-agent's integration tests, one binary (see ARCHITECTURE.md, "Testing").

mod binary;
mod confinement;
mod conformance;
mod faults;
mod model;
mod replay;
mod support;
mod wire;
