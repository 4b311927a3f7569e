//! # chubby-client
//!
//! The async client of a chubby-db cluster: a Chubby-style lock service and MultiOp database
//! replicated with Multi-Paxos. It depends on `chubby-proto` only (not on the server, not on
//! the Paxos engine), and speaks QUIC with TLS 1.3 (rustls with the *ring* provider).
//!
//! ## Contract
//!
//! - [`Client::connect`] finds the master among the replicas it is given (following
//!   redirects), opens a session and keeps it alive in the background. Its health is a
//!   [`SessionState`] on a watch channel ([`Client::session_state`]): `Safe`, `Jeopardy` (no
//!   KeepAlive acknowledged for a while: the lease is at risk), `Expired`, `Closed`.
//! - Every call retries across lost connections and master fail-overs until
//!   [`Timeouts::request`]. Writes carry a session-scoped request number that stays the same on
//!   every retry, so the database applies each write **at most once** and a retry gets the
//!   original reply.
//! - Reads ([`Client::get`], [`Client::stat`], [`Client::list`], [`Client::check_sequencer`])
//!   are linearizable, served by the master under its lease without a log round;
//!   [`Client::get_stale`] may be served by any replica.
//! - [`Client::multi_op`] runs a [`MultiOp`] transaction (guard tests, `top` ops if they all
//!   hold, `fop` ops otherwise) and answers each guard's and each op's result.
//! - [`Client::lock`] waits in the lock's fair queue; [`Client::try_lock`] does not. A
//!   [`LockGuard`] carries its [`Sequencer`] and releases the lock on drop (best effort) or with
//!   [`LockGuard::release`].
//! - [`Client::watch`] streams a node's events in log order ([`Watch`]); after a fail-over it
//!   also yields the `MasterChanged` event (or [`WatchEvent::Missed`]): events may have been
//!   lost, re-read what matters.
//! - Errors are one [`Error`] enum whose messages say what to do next.
//!
//! ## Example: leader election and a fenced write
//!
//! Candidates race for an exclusive lock; the winner publishes itself in an ephemeral file and
//! sends its sequencer with every write to a downstream store, which checks the sequencer with
//! the cluster before it applies the write. A deposed leader's writes are refused even if they
//! arrive late. `cargo run -p chubby-client --example leader_election` runs this against a
//! three-replica cluster started in the same process.
//!
//! ```no_run
//! use chubby_client::{Client, ClientConfig, Create, Error, LockMode, Sequencer};
//! use std::path::Path;
//!
//! /// The downstream resource: applies a write only while the writer's lock is still held.
//! async fn fenced_write(store: &Client, sequencer: &Sequencer, value: &[u8]) -> Result<(), Error> {
//!     store.check_sequencer(sequencer).await?; // Err(SequencerInvalid) once superseded
//!     store.set("/service/data", value.to_vec()).await?;
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Error> {
//! let replicas = vec!["10.0.0.1:7001".parse().unwrap(), "10.0.0.2:7001".parse().unwrap()];
//! let config = ClientConfig::from_cert_dir(replicas, 0xc4bb1e, Path::new("certs"), Some("alice"))?;
//! let client = Client::connect(config).await?;
//! let leader = client.lock("/service/leader-lock", LockMode::Exclusive).await?;
//! match client.create("/service/leader", Create::file(b"alice".to_vec()).ephemeral()).await {
//!     Ok(_) | Err(Error::Op(chubby_client::OpError::AlreadyExists)) => {}
//!     Err(error) => return Err(error),
//! }
//! fenced_write(&client, leader.sequencer(), b"written by the leader").await?;
//! leader.release().await?;
//! client.close().await
//! # }
//! ```

pub mod admin;
mod client;
mod config;
mod error;
mod events;
mod link;
mod lock;
mod session;
mod tls;

pub use admin::{Admin, AdminError};
pub use client::{CasOutcome, Client, Create, IntoPath, MultiOpResult, Written};
pub use config::{ClientConfig, ClientIdentity, Timeouts};
pub use error::Error;
pub use events::{Watch, WatchEvent};
pub use lock::LockGuard;
pub use session::{Expiry, SessionState};

/// The data model, re-exported so users need no other crate.
pub use chubby_proto::{
    content_checksum, Branch, Cmp, Epoch, Event, EventId, EventKind, LockInfo, LockMode, MultiOp,
    MultiOpReply, NodeKind, NodePath, NodeStat, NodeView, Op, OpError, OpOutput, OpResult,
    PathError, Rejection, Sequencer, SequencerInvalid, SessionId, Slot, Test, WatchKinds,
};
