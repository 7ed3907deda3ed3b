//! TaskIt for Rust: the workspace's root package. Its `tests/` drive the
//! real binaries end to end; its binaries measure them (`taskit-bench`,
//! `taskit-load`). The libraries are `taskit-plugin-api` and `taskit-host`.

pub mod harness;
pub mod plot;
