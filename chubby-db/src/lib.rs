//! # chubby-db
//!
//! The Chubby-style lock service and MultiOp database that runs above the replicated log, as a
//! pure, deterministic state machine: a namespace of files and directories (permanent or
//! ephemeral, with instance numbers, content and lock generations and content checksums),
//! MultiOp transactions (guard / top / fop, PML 5.6), sessions with leases and exactly-once
//! requests, exclusive and shared locks with a fair queue, sequencers and lock-delay, watches
//! and events, snapshots and a digest; and [`server`], which runs it under `replicated-log` and
//! serves the client protocol over QUIC.
//!
//! The client-visible data model (paths, MultiOp, sequencers, events, replies, limits) and the
//! client protocol live in `chubby-proto`, which this crate re-exports under the same paths; the
//! async client is `chubby-client`, which depends on `chubby-proto` only.
//!
//! ## Contract
//!
//! - **Deterministic.** [`Database::apply`] reads no clock, does no IO, draws no randomness and
//!   iterates no hash map. Time enters only through the `now_ms` of commands the master
//!   proposes ([`Command::Tick`], [`Command::MasterChanged`], ...). Replicas that apply the same
//!   commands in the same order return the same [`Applied`] replies and events and reach the
//!   same [`Database::digest`] and snapshot bytes.
//! - **Inputs**: [`Database::apply`] (a typed [`Command`]) or [`Database::apply_bytes`] (a log
//!   entry; undecodable bytes get `Reply::Rejected(Rejection::Undecodable)`, never a panic),
//!   [`Database::restore`], [`Database::reset`].
//! - **Outputs**: each apply returns [`Applied`]: the [`Reply`] for the proposer and the
//!   [`Event`]s for the sessions they address, in log order, tagged with the slot.
//! - **Reads** without a log round (lease reads on the master, stale reads anywhere):
//!   [`Database::get`], [`Database::stat`], [`Database::children`],
//!   [`Database::check_sequencer`], [`Database::session`], [`Database::lock`].
//! - **Snapshots**: [`Database::snapshot`] is a cheap frozen view, `Send + 'static`, written
//!   out with a checksum by [`Snapshot::write_to`] on any thread; [`Database::restore`] checks
//!   everything and answers a typed [`RestoreError`] on corruption.
//! - Programmer errors (applying slots out of order, an invalid [`Config`]) panic; bad bytes
//!   never do.
//!
//! The semantics (MultiOp, sessions and time, locks, sequencers, lock-delay, events, exactly
//! once, limits) are written up in `docs/chubby-db.md`.
//!
//! ## Under `replicated-log`
//!
//! The state machine itself ([`Database`]) knows nothing of the log; [`server::DatabaseMachine`]
//! wraps it in a few lines (plus handing each command's events to the replica's event hub):
//!
//! ```ignore
//! impl StateMachine for Db {
//!     type Output = chubby_db::Applied;
//!     fn apply(&mut self, slot: Slot, entry: &[u8]) -> Applied {
//!         self.0.apply_bytes(chubby_db::Slot(slot.0), entry)
//!     }
//!     fn snapshot(&self) -> Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send> {
//!         self.0.snapshot().into_writer()
//!     }
//!     fn restore(&mut self, snapshot: &mut dyn Read) -> io::Result<()> {
//!         Ok(self.0.restore(snapshot)?)
//!     }
//!     fn reset(&mut self) { self.0.reset() }
//!     fn digest(&self) -> u64 { self.0.digest() }
//! }
//! ```

pub mod command;
pub mod reply;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;

/// The client-visible data model lives in `chubby-proto`; these modules keep their old paths.
pub use chubby_proto::{admin, event, limits, path, protocol, types};

pub(crate) use chubby_proto::hash;

mod database;
mod locks;
mod multiop;
mod namespace;
mod restore;
mod session;
mod snapshot;
mod state;

pub use command::{
    Cmp, Command, DecodeError, LockMode, MultiOp, NodeKind, Op, Sequencer, Test, WatchKinds,
};
pub use database::{Applied, Database, PlantedBugs};
pub use event::{Event, EventKind};
pub use hash::content_checksum;
pub use path::{NodePath, PathError};
pub use reply::{
    Branch, LockInfo, MultiOpReply, NodeStat, NodeView, OpError, OpOutput, OpResult, QueryError,
    Rejection, Reply, SequencerInvalid, SessionInfo,
};
pub use snapshot::{RestoreError, Snapshot, SnapshotWriter};
pub use state::Config;
pub use types::{Epoch, EventId, RequestSeq, SessionId, Slot};
