//! # tools
//!
//! The binaries people run (delivered by the tools issue): `chubbyd` (the replica daemon),
//! `chubbyctl` (client and operator CLI, including rebuilding a corrupted replica), `chubby-bench`
//! (the benchmark) and offline verifiers. The deterministic simulator's seed sweep lives in the
//! `tests` crate (`cargo run -p tests --release --bin sim`).
