//! What the database answers: MultiOp replies (per-guard and per-op results), rejections, and the
//! results of read-only queries. MultiOp replies are kept in the session's reply cache (and so in
//! snapshots) to answer retries, and they travel to clients, hence `Serialize`.

use crate::multiop::{DecodeError, LockMode, NodeKind, Sequencer};
use crate::path::NodePath;
use crate::types::{RequestSeq, SessionId};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The entry's bytes are not a command (`apply_bytes` only).
    Undecodable(DecodeError),
    /// The session is closed, expired, or never existed.
    SessionUnknown(SessionId),
    /// The request number is below the session's reply cache: it may or may not have been
    /// applied, and its reply is forgotten. Requests `< forgotten_below` are never applied.
    SeqForgotten {
        seq: RequestSeq,
        forgotten_below: RequestSeq,
    },
    /// The requested lease is outside `LEASE_MS_MIN..=LEASE_MS_MAX`.
    InvalidLease {
        lease_ms: u64,
    },
    TooManyTests {
        count: usize,
        max: usize,
    },
    TooManyOps {
        count: usize,
        max: usize,
    },
    TooManyBytes {
        bytes: usize,
        max: usize,
    },
    /// Every session id has been handed out (reachable only from a crafted snapshot: ids are
    /// never reused and one `OpenSession` takes one).
    SessionIdsExhausted,
}

/// Which branch of a MultiOp ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Branch {
    /// Every guard test held.
    Top,
    /// Some guard test failed.
    Fop,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiOpReply {
    pub branch: Branch,
    /// One result per guard test, in order: whether it held.
    pub guards: Vec<bool>,
    /// One result per op of the branch that ran, in order.
    pub ops: Vec<OpResult>,
}

/// The outcome of one op. If an op fails, the ops before it are `Undone`, it is `Failed` and
/// the ops after it are `NotRun`: the branch changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Done(OpOutput),
    Failed(OpError),
    /// The op succeeded, then a later op of the branch failed and its effect was undone.
    Undone,
    NotRun,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpOutput {
    Created {
        instance: u64,
    },
    Set {
        content_generation: u64,
        checksum: u64,
    },
    Deleted,
    Read(NodeView),
    /// The lock was granted now.
    Acquired(Sequencer),
    /// The request joined the lock's queue with `ahead` requests before it; a `LockGranted`
    /// event follows when it is granted.
    Queued {
        ahead: u64,
    },
    /// The session's hold was released.
    Released,
    /// The session's queued request was withdrawn.
    WaitCancelled,
    Watching,
}

/// Why an op failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpError {
    NodeAbsent,
    AlreadyExists,
    ParentAbsent,
    ParentNotDirectory,
    /// Ephemeral nodes have no children (as in ZooKeeper), so a session's end only ever deletes
    /// leaves.
    ParentEphemeral,
    /// The root cannot be created, deleted or have contents.
    IsRoot,
    /// `Set` on a directory, or `Create` of a directory with contents.
    NotAFile,
    /// `Delete` of a node that has children.
    NotEmpty,
    ContentsTooLarge {
        bytes: usize,
        max: usize,
    },
    LockDelayTooLong {
        lock_delay_ms: u64,
        max: u64,
    },
    /// `Delete` of a node whose lock is held, waited for, or in lock-delay.
    Locked,
    /// Try-acquire: the lock is held in a conflicting mode, or others are queued for it.
    LockBusy,
    /// Try-acquire: the lock is in lock-delay after its holder's session expired.
    LockDelayed {
        until_ms: u64,
    },
    /// `Acquire` by a session that already holds the lock (in either mode).
    AlreadyHolder,
    /// `Acquire` by a session already queued for the lock.
    AlreadyWaiting,
    /// `Release` by a session that neither holds nor waits for the lock.
    NotHolder,
    LockQueueFull {
        max: usize,
    },
    TooManyWatches {
        max: usize,
    },
    /// The reads of this MultiOp would return more than `MULTIOP_READ_BYTES_MAX` bytes.
    ReadTooLarge {
        max: usize,
    },
}

/// A node's metadata, as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStat {
    pub kind: NodeKind,
    /// The session that owns an ephemeral node; `None` for a permanent one.
    pub ephemeral_owner: Option<SessionId>,
    /// Larger than the instance of every earlier node of the same name: tells a re-created node
    /// from the one before.
    pub instance: u64,
    /// 1 at creation, bumped by every `Set`.
    pub content_generation: u64,
    /// Bumped by every grant of the node's lock; the generation of the latest grant.
    pub lock_generation: u64,
    /// FNV-1a 64 of the contents ([`crate::content_checksum`]).
    pub checksum: u64,
    pub contents_bytes: u64,
    pub lock_delay_ms: u64,
}

/// A node's metadata and contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub stat: NodeStat,
    #[serde(with = "crate::types::shared_bytes")]
    pub contents: Arc<[u8]>,
}

/// Why a sequencer does not validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SequencerInvalid {
    NodeAbsent,
    /// The node was deleted and re-created since the sequencer was issued.
    InstanceChanged,
    /// No current holder holds this grant (released, lost, or never issued).
    NotHeld,
}

/// Why a read-only query has no answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryError {
    NodeAbsent(NodePath),
    NotADirectory(NodePath),
}

/// A session as read-only queries see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session: SessionId,
    pub lease_ms: u64,
    /// When the lease ends, on the master's clock.
    pub lease_until_ms: u64,
    /// Locks held or waited for.
    pub locks: Vec<NodePath>,
    pub ephemerals: Vec<NodePath>,
    pub watches: Vec<NodePath>,
}

/// A lock as read-only queries see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Holders with their mode and grant generation, in session order.
    pub holders: Vec<(SessionId, LockMode, u64)>,
    /// Queued requests, first in line first.
    pub waiters: Vec<(SessionId, LockMode)>,
    /// Set while the lock is in lock-delay.
    pub delay_until_ms: Option<u64>,
}

impl MultiOpReply {
    /// Whether the branch that ran took effect (every op of it succeeded).
    pub fn committed(&self) -> bool {
        self.failed_op().is_none()
    }

    /// The index of the op that failed and rolled the branch back.
    pub fn failed_op(&self) -> Option<usize> {
        self.ops
            .iter()
            .position(|op| matches!(op, OpResult::Failed(_)))
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for OpError {}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::NodeAbsent(path) => write!(f, "no node {path}"),
            QueryError::NotADirectory(path) => write!(f, "{path} is not a directory"),
        }
    }
}

impl std::error::Error for QueryError {}
