//! What replicas say to each other over a [`crate::transport::Transport`].

use paxos_core::{Envelope, Incarnation, NodeId};
use serde::{Deserialize, Serialize};

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
}

/// A message as received: `from` is the node the peer's certificate proves it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub from: NodeId,
    pub message: PeerMessage,
}
