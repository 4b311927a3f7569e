//! # paxos-core
//!
//! A sans-IO Multi-Paxos engine after Google's "Paxos Made Live" (Chandra, Griesemer, Redstone,
//! PODC 2007): master election with pre-vote, master leases safe under bounded clock drift, epoch
//! numbers, catch-up (log and snapshot), group membership through the log with non-voting members,
//! rebuild of a replica that lost its state, snapshot handles with log truncation, and runtime
//! consistency checks.
//!
//! ## Contract
//!
//! The engine is a pure, deterministic state machine. It never reads a clock, touches a file or a
//! socket, spawns a thread, or draws unseeded randomness (`clippy.toml` bans them). Same inputs,
//! same outputs: that is what lets the simulator replay any run from its seed.
//!
//! - Inputs: [`Replica::handle_tick`] (one tick of this replica's own clock), [`Replica::handle_message`],
//!   [`Replica::propose`], [`Replica::propose_membership`], [`Replica::handle_snapshot_done`],
//!   [`Replica::handle_snapshot_installed`], [`Replica::handle_digest`].
//! - Outputs: [`Action`]s drained with [`Replica::poll_action`], executed in order. An
//!   [`Action::Persist`] carries the records to make durable *and* the messages released only once
//!   they are: persisting before replying is in the types. Messages addressed to the replica itself
//!   must be looped back by the driver.
//! - Reads: [`Replica::lease_read_ok`] tells when a local read is linearizable (PML 5.2).
//!
//! The safety argument is in `docs/paxos.md`.

pub mod action;
pub mod durable;
pub mod limits;
pub mod message;
pub mod rng;
pub mod settings;
pub mod types;

mod acceptor;
mod learner;
mod master;
mod replica;
mod slot_map;

pub use action::{Action, Outgoing, ProposeError, RoleKind};
pub use durable::{DurableState, Record, RecoverError};
pub use message::{Envelope, Message};
pub use replica::{PlantedBugs, Replica};
pub use settings::Settings;
pub use types::*;
