//! # tests
//!
//! Whole-system tests. The deterministic simulator (`sim`) runs the real `paxos-core` engine on
//! every replica from one seed, in virtual time, under every fault we can simulate, with the oracle
//! (`oracle`) checking safety after every event and liveness after faults heal. A register state
//! machine (`app`) above the engine lets it record client operations. About half the seeds run the
//! real storage code (`replicated_log::storage`) over a faulty in-memory disk (`sim/disk.rs`).
//! Chubby seeds (`--app chubby`, `sim/chubby.rs`) run the real chubby-db database instead, with
//! simulated master duties, clients and a fenced downstream resource, and check lock safety,
//! sequencers, exactly-once requests and agreement of the replicas' databases.
//!
//! Run one seed: `cargo run -p tests --release --bin sim -- --seed 42`; sweep: `--seeds 500`;
//! `--disk model|real|mixed` picks the disk (mixed, the default, draws it from the seed).

pub mod app;
pub mod fault;
pub mod hash;
pub mod lincheck;
pub mod oracle;
pub mod queue;
pub mod sim;
pub mod sweep;
