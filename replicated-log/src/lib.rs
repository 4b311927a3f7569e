//! # replicated-log
//!
//! The reusable fault-tolerant log of Paxos Made Live (PML 4), built on the sans-IO engine in
//! `paxos-core`. An application implements [`StateMachine`]; every replica applies the same entries
//! in the same order, exactly once; [`Log::submit`] answers once an entry is chosen and applied.
//! You need not know Paxos to use it.
//!
//! ## Contract
//! - **Storage** ([`storage`]): a segmented, checksummed (`length | crc32 | payload`) write-ahead
//!   log of the engine's records, group commit (one write and one fdatasync per batch, on a writer
//!   thread), atomic checksummed snapshot files and an identity file, over a narrow file-system
//!   trait with a real ([`storage::FileVfs`]) and a fault-injecting ([`storage::MemVfs`])
//!   implementation. Byte layouts and crash cases: `docs/storage-format.md`.
//! - **Transport** ([`transport`]): QUIC with mutual TLS ([`transport::QuicTransport`], certificates
//!   from [`tls`]) or an in-memory network ([`transport::MemNetwork`]), behind one trait.
//! - **Driver**: one tokio task per replica owns the engine, turns wall time into ticks, and performs
//!   the engine's actions in order (records durable before the messages that depend on them).
//! - **API**: [`Log::submit`] → slot, epoch and the state machine's output, or a typed
//!   [`SubmitError`] (not master with a hint, epoch changed, timeout, shutting down);
//!   [`Log::read`] runs a closure on the state under the master's lease (linearizable, no log
//!   round) and [`Log::read_stale`] anywhere; snapshots are taken by the log through
//!   [`StateMachine::snapshot`] while it keeps applying, and installed from a peer on catch-up
//!   through [`StateMachine::restore`]; [`Log::add_learner`], [`Log::promote`], [`Log::remove`];
//!   [`Log::status`] and [`Log::metrics`].
//!
//! ## Example
//!
//! A one-replica log over a real data directory (three replicas differ only in their `peers`).
//!
//! ```
//! use replicated_log::transport::MemNetwork;
//! use replicated_log::{ClusterId, Log, LogConfig, SnapshotFn, StateMachine};
//! use paxos_core::{NodeId, Slot};
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! /// The application: a running sum of the numbers in the log.
//! #[derive(Default)]
//! struct Sum(u64);
//!
//! impl StateMachine for Sum {
//!     type Output = u64; // the sum after this entry
//!     fn apply(&mut self, _slot: Slot, entry: &[u8]) -> u64 {
//!         self.0 += u64::from_le_bytes(entry.try_into().unwrap_or([0; 8]));
//!         self.0
//!     }
//!     fn snapshot(&self) -> SnapshotFn {
//!         let sum = self.0;
//!         Box::new(move |out: &mut dyn Write| out.write_all(&sum.to_le_bytes()))
//!     }
//!     fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
//!         let mut bytes = [0; 8];
//!         input.read_exact(&mut bytes)?;
//!         self.0 = u64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//!     fn reset(&mut self) {
//!         self.0 = 0;
//!     }
//!     fn digest(&self) -> u64 {
//!         self.0
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let node = NodeId(1);
//! let peers = [(node, "127.0.0.1:7001".parse()?)].into();
//! let mut config = LogConfig::new(ClusterId(42), node, dir.path(), peers);
//! config.tick = Duration::from_millis(1);
//!
//! let network = MemNetwork::new(); // or `Log::open_quic` with certificates from `tls`
//! let log = Log::open(config, Sum::default(), replicated_log::storage::FileVfs, |inbound, snapshots| {
//!     Ok(Arc::new(network.join(node, inbound, snapshots)))
//! })
//! .await?;
//!
//! // Wait for this replica to be elected master and hold its lease.
//! while !log.status().await.is_some_and(|s| s.lease) {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! let first = log.submit(5u64.to_le_bytes().to_vec()).await?;
//! let second = log.submit(7u64.to_le_bytes().to_vec()).await?;
//! assert!(second.slot > first.slot);
//! assert_eq!(second.output, 12);
//! assert_eq!(log.read(|sum: &Sum| sum.0).await?, 12); // linearizable, no log round
//! log.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod clock;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod wire;

mod driver;
mod entry;
mod log;
mod writer;

pub use api::{
    CheckReport, Committed, LogConfig, Metrics, OpenError, ReadError, Role, SnapshotFn, StartMode,
    StateMachine, Status, SubmitError,
};
pub use log::Log;
pub use wire::ClusterId;
