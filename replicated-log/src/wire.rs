//! What replicas say to each other over a [`crate::transport::Transport`].

use paxos_core::{Envelope, Incarnation, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Most entries in an [`PeerMessage::AddressBook`]: far above any real cluster (node ids are never
/// reused, so a long-lived cluster's book grows by one per member ever added).
pub const ADDRESS_BOOK_PEERS_MAX: usize = 4096;

/// Names one cluster. Generated once when the cluster is created and kept in every replica's
/// identity file, so a replica never joins a different cluster by mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One message between replicas. The transport authenticates the sender (its certificate names
/// the node); the driver drops a Paxos envelope whose `from` is not that node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Engine traffic.
    Paxos(Envelope),
    /// Asked by a replica that starts with an empty data directory: "do you hold state of this
    /// cluster?" The answer decides between bootstrapping and rebuilding (see `docs/storage-format.md`,
    /// "An empty data directory").
    IdentityQuery { cluster: ClusterId },
    IdentityReply {
        cluster: ClusterId,
        /// `None`: the peer's data directory is empty too.
        incarnation: Option<Incarnation>,
        /// The peer has promised, accepted and learned nothing yet: no vote of ours can have
        /// counted anywhere, so an empty directory here is no loss.
        pristine: bool,
    },
    /// Sent just before a replica answers a `RebuildProbe`: the peer addresses it knows, by node.
    /// A rebuilding or joining replica knows only the peers its operator configured, which may be
    /// out of date; the probe replies name the current members, and this is how it reaches them
    /// before it has the log (where addresses otherwise travel, see `entry.rs`). The receiver
    /// uses it only while it rebuilds, and only for nodes it has no address for.
    AddressBook { peers: BTreeMap<NodeId, SocketAddr> },
}

impl PeerMessage {
    /// Checks what the types cannot: sizes. `None` means valid. (The engine's messages are checked
    /// by `paxos_core::Message::invalid`.)
    pub fn invalid(&self) -> Option<&'static str> {
        match self {
            PeerMessage::AddressBook { peers } if peers.len() > ADDRESS_BOOK_PEERS_MAX => {
                Some("address book too long")
            }
            PeerMessage::AddressBook { peers } if peers.values().any(|a| a.port() == 0) => {
                Some("address book names port 0")
            }
            _ => None,
        }
    }
}

/// A message as received: `from` is the node the peer's certificate proves it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub from: NodeId,
    pub message: PeerMessage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(entries: usize, port: u16) -> PeerMessage {
        let peers = (0..entries as u64)
            .map(|n| (NodeId(n), SocketAddr::from(([127, 0, 0, 1], port))))
            .collect();
        PeerMessage::AddressBook { peers }
    }

    #[test]
    fn address_books_are_bounded_and_name_real_ports() {
        assert_eq!(book(3, 7000).invalid(), None);
        assert_eq!(book(ADDRESS_BOOK_PEERS_MAX, 7000).invalid(), None);
        assert!(book(ADDRESS_BOOK_PEERS_MAX + 1, 7000).invalid().is_some());
        assert!(book(1, 0).invalid().is_some());
        let bytes = postcard::to_stdvec(&book(3, 7000)).unwrap();
        assert_eq!(
            postcard::from_bytes::<PeerMessage>(&bytes).unwrap(),
            book(3, 7000)
        );
    }
}
