//! # tools
//!
//! The binaries people run: `chubbyctl` (operator and client CLI), `log-bench` (the replicated log
//! measured alone), and, with the tools issue, `chubbyd` (the replica daemon) and `chubby-bench`.
//! The deterministic simulator's seed sweep lives in the `tests` crate
//! (`cargo run -p tests --release --bin sim`).
//!
//! This library holds what the binaries share and what tests call directly.

pub mod bench;
pub mod client_commands;
pub mod dev_cluster;
pub mod http;
pub mod rebuild;
pub mod verify;
