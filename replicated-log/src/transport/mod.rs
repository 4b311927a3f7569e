//! How replicas reach each other: a narrow trait, with QUIC + mutual TLS for real use and an
//! in-memory network for tests and examples.

use crate::wire::{Inbound, PeerMessage};
use paxos_core::{NodeId, Slot};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

/// Delivery is best effort: Paxos tolerates loss, so `send` never blocks and never fails loudly. A
/// message to a peer that is down, unknown, or too slow to drain its queue is dropped (and counted).
pub trait Transport: Send + Sync + 'static {
    fn send(&self, to: NodeId, message: PeerMessage);

    /// Downloads `from`'s newest snapshot file covering at least `min_slot` into `dest` (a temporary
    /// path in the local data directory). The bytes are the peer's snapshot file as stored; the caller
    /// verifies and installs it through storage.
    fn fetch_snapshot(
        &self,
        from: NodeId,
        min_slot: Slot,
        dest: PathBuf,
    ) -> Pin<Box<dyn Future<Output = Result<u64, TransportError>> + Send + 'static>>;
}

/// Where a transport finds the snapshot file to serve when a peer asks for one.
pub trait SnapshotSource: Send + Sync + 'static {
    /// The newest complete snapshot file covering at least `min_slot`, if any.
    fn snapshot_file(&self, min_slot: Slot) -> Option<PathBuf>;
}

/// Inbound messages are pushed into this channel, in the order each peer sent them.
pub type InboundSender = tokio::sync::mpsc::Sender<Inbound>;

#[derive(Debug)]
#[non_exhaustive]
pub enum TransportError {
    /// Placeholder until the transport module defines its errors.
    Unavailable(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Unavailable(why) => write!(f, "transport unavailable: {why}"),
        }
    }
}

impl std::error::Error for TransportError {}
