//! How replicas reach each other: a narrow trait, with QUIC + mutual TLS for real use
//! ([`QuicTransport`]) and an in-memory network for tests and examples ([`MemNetwork`]).
//!
//! ```
//! use paxos_core::NodeId;
//! use replicated_log::transport::{MemNetwork, NoSnapshots, Transport};
//! use replicated_log::wire::{ClusterId, PeerMessage};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let network = MemNetwork::new();
//! let (tx1, _rx1) = tokio::sync::mpsc::channel(16);
//! let (tx2, mut rx2) = tokio::sync::mpsc::channel(16);
//! let one = network.join(NodeId(1), tx1, Arc::new(NoSnapshots));
//! let _two = network.join(NodeId(2), tx2, Arc::new(NoSnapshots));
//!
//! let query = PeerMessage::IdentityQuery { cluster: ClusterId(7) };
//! one.send(NodeId(2), query.clone());
//! let inbound = rx2.recv().await.unwrap();
//! assert_eq!((inbound.from, inbound.message), (NodeId(1), query.clone()));
//!
//! network.partition(&[NodeId(1)], &[NodeId(2)]);
//! one.send(NodeId(2), query); // lost, and counted
//! assert_eq!(one.metrics().messages_dropped, 1);
//! # }
//! ```

pub mod frame;
pub mod limits;
mod mem;
mod metrics;
pub mod quic;

pub use mem::{MemNetwork, MemTransport};
pub use metrics::TransportMetrics;
pub use quic::{QuicConfig, QuicLimits, QuicTransport};

use crate::tls::TlsError;
use crate::wire::{Inbound, PeerMessage};
use paxos_core::{NodeId, Slot};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;

/// Delivery is best effort: Paxos tolerates loss, so `send` never blocks and never fails loudly. A
/// message to a peer that is down, unknown, or too slow to drain its queue is dropped (and counted).
pub trait Transport: Send + Sync + 'static {
    fn send(&self, to: NodeId, message: PeerMessage);

    /// Where `node` can be reached: called at start for every configured peer, and when the log
    /// learns the address of a member added at run time. Idempotent.
    fn set_peer(&self, node: NodeId, addr: SocketAddr) {
        let _ = (node, addr);
    }

    /// The replica stops: close connections and stop background tasks. Later sends are dropped.
    fn close(&self) {}

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

/// A [`SnapshotSource`] that never has a snapshot: for replicas that serve none, and examples.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSnapshots;

impl SnapshotSource for NoSnapshots {
    fn snapshot_file(&self, _min_slot: Slot) -> Option<PathBuf> {
        None
    }
}

/// Inbound messages are pushed into this channel, in the order each peer sent them.
pub type InboundSender = tokio::sync::mpsc::Sender<Inbound>;

/// Why a transport could not start, or a snapshot could not be fetched. (`send` has no error: it is
/// best effort, and its failures are counted in [`TransportMetrics`].)
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportError {
    /// Another process (or transport) already listens on the address.
    AddressInUse { addr: SocketAddr },
    /// The listening socket could not be opened for another reason.
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS material is unusable or does not name this node.
    Tls(TlsError),
    /// A limit or setting that cannot work.
    InvalidConfig(&'static str),
    /// The node is not among this transport's peers.
    UnknownPeer(NodeId),
    /// No connection to the peer could be established in time.
    Unreachable { peer: NodeId, why: String },
    /// The peer holds no snapshot covering `min_slot`.
    NoSnapshot { peer: NodeId, min_slot: Slot },
    /// The snapshot stream does not check out: a chunk's or the whole file's crc32, a malformed
    /// chunk or header. `offset` is where in the file the fault was found.
    SnapshotCorrupt {
        peer: NodeId,
        offset: u64,
        why: String,
    },
    /// The snapshot stream ended before the announced length.
    SnapshotTruncated {
        peer: NodeId,
        received: u64,
        expected: u64,
    },
    /// `what` made no progress within its time limit.
    Timeout { peer: NodeId, what: &'static str },
    /// The connection or stream to the peer failed midway.
    Stream { peer: NodeId, why: String },
    /// A local file could not be read or written.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The transport was shut down.
    ShutDown,
    /// Anything else that makes the transport unusable.
    Unavailable(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::AddressInUse { addr } => {
                write!(
                    f,
                    "address {addr} is already in use (another replica running?)"
                )
            }
            TransportError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            TransportError::Tls(error) => write!(f, "{error}"),
            TransportError::InvalidConfig(why) => write!(f, "invalid transport config: {why}"),
            TransportError::UnknownPeer(node) => write!(f, "node {} is not a known peer", node.0),
            TransportError::Unreachable { peer, why } => {
                write!(f, "node {} unreachable: {why}", peer.0)
            }
            TransportError::NoSnapshot { peer, min_slot } => write!(
                f,
                "node {} has no snapshot covering slot {}",
                peer.0, min_slot.0
            ),
            TransportError::SnapshotCorrupt { peer, offset, why } => write!(
                f,
                "snapshot from node {} corrupt at byte {offset}: {why}",
                peer.0
            ),
            TransportError::SnapshotTruncated {
                peer,
                received,
                expected,
            } => write!(
                f,
                "snapshot from node {} truncated: {received} of {expected} bytes",
                peer.0
            ),
            TransportError::Timeout { peer, what } => {
                write!(f, "{what} with node {} timed out", peer.0)
            }
            TransportError::Stream { peer, why } => {
                write!(f, "stream with node {} failed: {why}", peer.0)
            }
            TransportError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TransportError::ShutDown => write!(f, "transport shut down"),
            TransportError::Unavailable(why) => write!(f, "transport unavailable: {why}"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Bind { source, .. } | TransportError::Io { source, .. } => Some(source),
            TransportError::Tls(error) => Some(error),
            _ => None,
        }
    }
}

impl From<TlsError> for TransportError {
    fn from(error: TlsError) -> TransportError {
        TransportError::Tls(error)
    }
}
