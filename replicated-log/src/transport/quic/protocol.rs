//! What travels on the QUIC streams besides [`crate::wire::PeerMessage`]s.
//!
//! Every stream a replica opens starts with a [`Hello`] frame (see [`crate::transport::frame`]):
//! - a unidirectional stream with `StreamKind::Messages` then carries `PeerMessage` frames, one
//!   long-lived stream per connection;
//! - a bidirectional stream with `StreamKind::Snapshot` asks for a snapshot; the answer is a
//!   [`SnapshotHeader`] frame, then for a file its bytes in chunks (see
//!   [`super::snapshot`]).
//!
//! The receiver checks the hello against the peer's TLS certificate before it reads anything
//! else: the cluster must be its own and the certificate must be valid for the claimed node.
//!
//! Each hello also carries the sender's [`BootNonce`], drawn afresh every time a transport starts.
//! A node killed and restarted on the same address comes back with new QUIC keys, so its peers
//! ignore its stateless resets and would keep sending into their old connection until the idle
//! timeout. Instead, the first hello with a new nonce tells the receiver that the node restarted,
//! and it closes its own outgoing connection to that node at once (`quic/accept.rs`).

use crate::wire::ClusterId;
use paxos_core::{NodeId, Slot};
use serde::{Deserialize, Serialize};
use std::hash::BuildHasher;

/// Bumped on any incompatible change to the stream protocol. The ALPN names the protocol family;
/// this lets a mismatch be reported precisely instead of as garbage.
/// Version 2 added [`Hello::boot`]. Version 3 added `PeerMessage::AddressBook`, which a version 2
/// replica cannot decode (it would close the message stream and lose what follows).
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest hello or snapshot header frame.
pub const CONTROL_FRAME_BYTES_MAX: u32 = 1024;

/// QUIC application error codes used to close connections and stop streams.
pub mod codes {
    /// Orderly close (shutdown, peer removed).
    pub const CLOSED: u32 = 0;
    /// The hello named another cluster, or a node the certificate does not prove.
    pub const IDENTITY_REFUSED: u32 = 1;
    /// A frame did not decode; the stream is closed.
    pub const DECODE_ERROR: u32 = 2;
    /// A stream of the wrong kind or direction, or an unsupported protocol version.
    pub const PROTOCOL_ERROR: u32 = 3;
    /// The snapshot source failed while serving.
    pub const SNAPSHOT_FAILED: u32 = 4;
}

/// First frame of every stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub cluster: ClusterId,
    /// The node the sender claims to be; its certificate must be valid for this node's name.
    pub node: NodeId,
    /// The sender's nonce for this run of its transport.
    pub boot: BootNonce,
    pub stream: StreamKind,
}

/// A number drawn each time a transport starts, so that its peers can tell a restart of a node
/// from one more stream of the same run. Only equality matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BootNonce(pub u64);

impl BootNonce {
    /// A fresh nonce: the process id and the wall clock hashed with the standard library's
    /// randomly keyed hasher (whose keys also differ between hashers of one process). Not
    /// cryptographic: a peer that could forge a nonce holds a node certificate anyway, and the most
    /// a wrong one causes is one reconnect.
    pub fn generate() -> BootNonce {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let hasher = std::collections::hash_map::RandomState::new();
        BootNonce(hasher.hash_one((std::process::id(), since_epoch)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Unidirectional: `PeerMessage` frames follow.
    Messages,
    /// Bidirectional: a request for the newest snapshot covering at least `min_slot`.
    Snapshot { min_slot: Slot },
}

/// The first frame of a snapshot response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotHeader {
    /// No snapshot covers the requested slot.
    None,
    /// A file of `bytes` bytes follows in chunks.
    File { bytes: u64 },
}
