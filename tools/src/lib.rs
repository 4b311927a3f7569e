//! # tools
//!
//! The binaries people run: `chubbyctl` (operator and client CLI), `log-bench` (the replicated log
//! measured alone), and, with the tools issue, `chubbyd` (the replica daemon) and `chubby-bench`.
//! The deterministic simulator's seed sweep lives in the `tests` crate
//! (`cargo run -p tests --release --bin sim`).
//!
//! This library holds what the binaries share and what tests call directly.

pub mod admin_commands;
pub mod bench;
pub mod client_commands;
pub mod dev_cluster;
pub mod http;
pub mod rebuild;
pub mod verify;

/// Every binary of this crate allocates with mimalloc: the replicas and the benchmarks allocate
/// and free many small buffers per request across threads, where glibc's allocator spends a tenth
/// of the CPU (and returns memory to the kernel only to fault it back in).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
