//! # replicated-log
//!
//! The reusable fault-tolerant log of Paxos Made Live, built on the sans-IO engine in `paxos-core`.
//!
//! Contract (delivered by the replicated-log issue; this crate is empty until then):
//! - storage: a segmented, checksummed (`length | crc32 | payload`) write-ahead log for the engine's
//!   durable records, group commit with one fdatasync per batch, atomic checksummed snapshot files and
//!   an identity file, behind a narrow trait with a real and a fault-injecting in-memory implementation;
//! - transport: QUIC (quinn) with mutual TLS (rustls), behind a trait the simulator can stand in for;
//! - driver: a tokio task per replica that owns the engine and executes its actions in order;
//! - public API: submit, ordered apply, lease status, snapshot handles, membership, status and metrics.

pub mod api;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod wire;

mod driver;
mod entry;
mod log;
mod writer;

pub use api::{
    Committed, LogConfig, Metrics, OpenError, ReadError, Role, SnapshotFn, StartMode, StateMachine,
    Status, SubmitError,
};
pub use log::Log;
pub use wire::ClusterId;
