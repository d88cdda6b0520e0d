//! kata-sim: the project's main command, and YAML scenarios that replay a container lifecycle
//! against a host runtime.
//!
//! - [`schema`]: the scenario format; [`load`]: loading it with located errors.
//! - [`host`]: the built-in host runtime (personas `go`, `rs` and `go@3.19.1`); [`check`]: expectations.
//! - [`conn`]: the host's one agent connection, never re-dialled, failing as the runtime's
//!   client does once it is closed.
//! - [`record`]: the typed lines of a run's record (calls, faults that fired, warnings, task
//!   states); [`words`]: the runtimes' own log messages and error renderings.
//! - [`shim`]: the shim driver: kata-sim plays containerd to an unmodified shim binary and
//!   replays the steps through containerd's task API.
//! - [`snapshot`]: `kata-sim run --snapshots DIR`: outcomes held against insta-format files.
//! - [`exec`]: the `exec` driver: a real host runtime against a kata-sim service.
//! - [`render`]: Mermaid diagrams of a run, and diffs of two runs' agent calls.
//! - [`runner`]: `kata-sim run` and `check`: finding files, summaries; [`junit`]: JUnit XML.
//! - [`serve`]: `kata-sim serve`, the remote hypervisor and every guest agent it creates.
//! - [`matrix`]: `kata-sim matrix` and `coverage`: every RPC x fault x phase, classified;
//!   [`shard`]: `--shard I/N` and `kata-sim merge`; [`pool`]: `-j N` in serial order;
//!   [`shrink`]: `kata-sim shrink`, a failing random run reduced to a regression scenario.

pub mod check;
pub mod conn;
pub mod exec;
pub mod host;
pub mod junit;
pub mod load;
pub mod matrix;
pub mod pool;
pub mod record;
pub mod render;
pub mod runner;
pub mod schema;
pub mod serve;
pub mod shard;
pub mod shim;
pub mod shrink;
pub mod snapshot;
pub mod words;
