//! TaskIt for Rust
