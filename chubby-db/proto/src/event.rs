//! Events: what applying a command tells sessions besides the proposer's reply.
//!
//! Events are produced by `apply`, in log order, each addressed to one live session and tagged
//! with an [`EventId`] (slot, index within the slot), so a client that reconnects can drop the
//! ones it already saw. They are not kept in the replicated state: a client that misses some
//! (its server failed over) is told so by [`EventKind::MasterChanged`] and re-reads.

use crate::multiop::{DecodeError, LockMode, Sequencer};
use crate::path::NodePath;
use crate::types::{Epoch, EventId, SessionId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    /// The session to deliver to.
    pub session: SessionId,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Watch `contents`: the node was created.
    NodeCreated { path: NodePath, instance: u64 },
    /// Watch `contents`: the file's contents were set.
    ContentsChanged {
        path: NodePath,
        content_generation: u64,
        checksum: u64,
    },
    /// Watch `contents`: the node was deleted (explicitly or as an ephemeral).
    NodeDeleted { path: NodePath, instance: u64 },
    /// Watch `children` on the parent.
    ChildAdded { path: NodePath },
    /// Watch `children` on the parent.
    ChildRemoved { path: NodePath },
    /// Watch `lock_acquired`: `holder` was granted the lock.
    LockAcquired {
        path: NodePath,
        holder: SessionId,
        mode: LockMode,
        lock_generation: u64,
    },
    /// Watch `lock_conflict`: a blocking request for `mode` joined the queue.
    LockConflict { path: NodePath, mode: LockMode },
    /// Unwatched, to the requester: its queued request was granted.
    LockGranted(Sequencer),
    /// Unwatched, to a waiter: the node was deleted (its ephemeral owner ended) while it waited.
    LockWaitCancelled { path: NodePath },
    /// Unwatched, to a holder: the node was deleted (its ephemeral owner ended) under its lock.
    LockLost { path: NodePath },
    /// Unwatched, to every session: a new master took over. Events may have been lost in the
    /// fail-over; re-read what matters.
    MasterChanged { epoch: Epoch },
    /// Unwatched, to the session itself, the last event it gets: the master expired it.
    SessionExpired,
}

impl Event {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        postcard::from_bytes(bytes).map_err(|_| DecodeError::Malformed)
    }
}
