//! What the engine asks its driver to do. Drained in order with `Replica::poll_action`.

use crate::durable::Record;
use crate::message::Envelope;
use crate::types::{EntryId, Epoch, NodeId, Slot, SnapshotHandle, Value};

/// A message for one peer (possibly this replica itself: the driver loops those back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: NodeId,
    pub envelope: Envelope,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make `records` durable, in order, then send `messages`. The messages (promises and accepted
    /// votes) depend on the records: none may leave before the records are synced. Group commit may
    /// merge several of these into one write and one sync, keeping their order. When `messages` is
    /// empty nothing waits on the records: they may ride along with the next sync.
    Persist {
        records: Vec<Record>,
        messages: Vec<Outgoing>,
    },
    /// A message that depends on no unsaved state.
    Send(Outgoing),
    /// The value chosen for `slot`. Emitted once per slot, in slot order. The only gap is a jump
    /// over slots covered by a snapshot installed with `handle_snapshot_installed`.
    Apply { slot: Slot, value: Value },
    /// A submit is chosen, its `Apply` was emitted just before, and this replica was master of its
    /// epoch throughout.
    Committed { id: EntryId, slot: Slot },
    /// A submit will not be acknowledged. It may still be chosen later by another master.
    Failed { id: EntryId, error: ProposeError },
    /// This replica became or stopped being master (or candidate).
    RoleChanged {
        role: RoleKind,
        epoch: Option<Epoch>,
    },
    /// Catch-up needs `from`'s snapshot (at least `handle.slot`): fetch it, install it into the
    /// application, then call `handle_snapshot_installed` (or `handle_snapshot_fetch_failed`).
    FetchSnapshot {
        from: NodeId,
        handle: SnapshotHandle,
    },
    /// Replicas disagree about the state at a consistency-check slot. Loud: log, metric, status.
    DigestMismatch {
        slot: Slot,
        digests: Vec<(NodeId, u64)>,
    },
    /// A majority's digest differs from ours: this replica's state is corrupt. The driver must discard
    /// its state and restart it with `Replica::rebuild`.
    Corrupt { slot: Slot },
}

/// Why a submit was refused or will not be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the master takes submits; `hint` is who this replica believes is master.
    NotMaster { hint: Option<NodeId> },
    /// The master tenure the submit was made in ended before it was chosen (PML 5.3). If the replica
    /// is master again, it is under a new epoch; resubmit if the operation is still wanted.
    EpochChanged { submitted: Epoch },
    /// Too many submits are queued; retry later.
    Overloaded,
    /// The value is larger than a slot may hold.
    TooLarge { bytes: usize, max: usize },
    /// A membership change is refused: another is in progress or this one makes no sense.
    Membership(&'static str),
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotMaster { hint: Some(node) } => write!(f, "not master: try {node}"),
            ProposeError::NotMaster { hint: None } => {
                write!(f, "not master and no master known: retry shortly")
            }
            ProposeError::EpochChanged { submitted } => {
                write!(f, "mastership of epoch {submitted} was lost before the value was chosen: resubmit")
            }
            ProposeError::Overloaded => write!(f, "too many submits queued: retry later"),
            ProposeError::TooLarge { bytes, max } => {
                write!(f, "value of {bytes} bytes exceeds {max}")
            }
            ProposeError::Membership(why) => write!(f, "membership change refused: {why}"),
        }
    }
}

impl std::error::Error for ProposeError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    Follower,
    Candidate,
    Master,
}
