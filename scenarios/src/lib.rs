//! scenarios: YAML lifecycle scenarios and the `kata-sim` command (issue "Scenarios"; not
//! built yet). The bundled scenario library will live beside this crate in `scenarios/`.

pub use sim_agent::Agent;
