//! TaskIt for Rust: the workspace's root package. Its `tests/` drive the
//! real binaries end to end; its binaries measure them (`taskit-bench`,
//! `taskit-load`). The libraries are `taskit-plugin-api` (with its ABI crate
//! `taskit-plugin-abi`) and `taskit-host`; `taskit-harness` holds what the
//! tests and the measuring binaries share.

pub mod plot;
