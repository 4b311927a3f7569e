//! Operator requests of the client protocol: membership, snapshots (backup and restore) and the
//! cross-replica consistency check. They travel as [`Request::Admin`](crate::Request::Admin) and
//! are answered with [`Response::Admin`](crate::Response::Admin); servers take them only from the
//! cluster's `client-admin` certificate and refuse any other caller with
//! [`AdminRefusal::NotAdmin`]. Like every request, the ones that need the master are redirected
//! with `ServerError::NotMaster` by the other replicas.
//!
//! # Snapshot save stream
//!
//! [`AdminRequest::SnapshotSave`] is answered with [`AdminResponse::SnapshotBegin`] (the slot the
//! snapshot was taken at, its size and checksum), then [`AdminResponse::SnapshotChunk`] frames of
//! at most [`SNAPSHOT_CHUNK_BYTES`] until `bytes` bytes have been sent; then the server finishes
//! the stream. The bytes are the database snapshot format of `docs/chubby-db.md` (section 11),
//! which carries its own CRC-32; `checksum` is FNV-1a 64 of the whole byte string.

use crate::limits::{COMMAND_BYTES_MAX, FRAME_BYTES_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

/// The largest snapshot an online restore takes: it travels as one log entry (one command), whose
/// limit is [`COMMAND_BYTES_MAX`]; 4 KiB stay for the command's own fields and encoding.
pub const RESTORE_SNAPSHOT_BYTES_MAX: usize = COMMAND_BYTES_MAX - 4 * 1024;
/// Bytes of snapshot in one [`AdminResponse::SnapshotChunk`] frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// By default a learner is promoted only if it applied within this many slots of what the
/// master chose (see [`AdminRequest::Promote`]).
pub const PROMOTE_LAG_SLOTS_MAX_DEFAULT: u64 = 1_000;
/// The longest a consistency check may wait for the voters' digests.
pub const CHECK_TIMEOUT_MS_MAX: u64 = 60_000;

const _: () = assert!(RESTORE_SNAPSHOT_BYTES_MAX + 8 * 1024 < FRAME_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES + 1024 < FRAME_BYTES_MAX);

/// What an operator asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The membership as the master sees it (voters, learners, addresses). Master only.
    Members,
    /// The answering replica's own role and progress. Any replica answers (no redirect).
    ReplicaStatus,
    /// Adds `node`, reachable by its peers at `peer`, as a non-voting member (a learner): it
    /// catches up from the log and votes only once promoted. Master only.
    AddLearner { node: u64, peer: SocketAddr },
    /// Makes a learner a voter. Master only. The catch-up rule (the learner applied within a
    /// number of slots of what the master chose) is checked by the client before it sends this,
    /// by asking the learner itself ([`AdminRequest::ReplicaStatus`]); see `docs/operations.md`.
    Promote { node: u64 },
    /// Removes a voter or a learner for good (its id is never reused). Refused if it would leave
    /// fewer than one voter. Master only.
    Remove { node: u64 },
    /// A consistent snapshot of the database, taken on the master under its lease, streamed as
    /// described in the module docs. Master only.
    SnapshotSave,
    /// Replaces the database with `snapshot` through the log (every replica applies it at the
    /// same slot): every session ends, every node's instance number is renumbered above any ever
    /// handed out. Refused unless the database is empty or `force`. Master only.
    Restore {
        #[serde(with = "serde_bytes")]
        snapshot: Vec<u8>,
        force: bool,
    },
    /// Runs a cross-replica consistency check now and waits up to `timeout_ms` (at most
    /// [`CHECK_TIMEOUT_MS_MAX`]) for every voter's digest. Master only.
    Check { timeout_ms: u64 },
}

/// What a server answers to an [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResponse {
    Members(MembersReport),
    ReplicaStatus(ReplicaStatus),
    /// The membership change was chosen at `slot` (it takes effect a few slots later).
    MembershipChanged {
        slot: u64,
    },
    /// A snapshot stream begins; `bytes` bytes follow in chunks.
    SnapshotBegin {
        slot: u64,
        bytes: u64,
        /// FNV-1a 64 of the snapshot bytes.
        checksum: u64,
        /// The database digest at `slot` (what `Check` compares across replicas).
        digest: u64,
    },
    SnapshotChunk(#[serde(with = "serde_bytes")] Vec<u8>),
    Restored(RestoreReport),
    Check(CheckReport),
    Refused(AdminRefusal),
}

/// The membership, from the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReport {
    pub master: u64,
    pub chosen_through: u64,
    pub applied_through: u64,
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: u64,
    pub voter: bool,
    /// Where peers reach it (replica traffic).
    pub peer: Option<SocketAddr>,
    /// Where clients reach it, if the master's configuration names it.
    pub client: Option<SocketAddr>,
}

/// One replica's view of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub node: u64,
    /// `follower`, `candidate` or `master`.
    pub role: String,
    pub master: Option<u64>,
    pub lease: bool,
    pub rebuilding: bool,
    pub chosen_through: u64,
    pub applied_through: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// What an online restore did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// The log slot of the restore: every replica replaced its database there.
    pub slot: u64,
    /// The slot the snapshot had been taken at (in its own cluster).
    pub snapshot_slot: u64,
    /// Nodes in the restored namespace (ephemeral nodes of the snapshot are not restored).
    pub nodes: u64,
    /// Sessions the restore ended (their locks and ephemeral nodes are gone).
    pub sessions_ended: u64,
    /// Every restored node's instance number is its number in the snapshot plus this, above any
    /// instance handed out before (here or in the snapshot's cluster): no earlier sequencer
    /// validates again.
    pub instance_offset: u64,
    /// The database digest right after the restore.
    pub digest: u64,
}

/// The result of a consistency check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The log slot of the digest request; each digest is of the state right after it.
    pub slot: u64,
    /// The voters at that slot: the replicas that must agree.
    pub voters: Vec<u64>,
    /// Each replica's digest, by node (voters, and learners that reported in time).
    pub digests: BTreeMap<u64, u64>,
    /// Every voter reported before the timeout.
    pub complete: bool,
}

impl CheckReport {
    /// Every voter reported and all digests are equal.
    pub fn agree(&self) -> bool {
        let mut values = self.digests.values();
        let first = values.next();
        self.complete && values.all(|d| Some(d) == first)
    }
}

/// Why an operator request was refused. Not retryable as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRefusal {
    /// Admin requests need the cluster's `client-admin` certificate; the caller is `identity`.
    NotAdmin { identity: String },
    /// The node is not a member.
    UnknownNode { node: u64 },
    /// The node is (or was) a member: node ids are never reused.
    AlreadyMember { node: u64 },
    /// Promote names a node that is already a voter.
    AlreadyVoter { node: u64 },
    /// Removing this node would leave the cluster without a voter.
    LastVoter { node: u64 },
    /// The learner has not caught up: it applied through `applied`, the master chose through
    /// `chosen`; promote waits until the lag is at most `lag_slots_max`.
    LearnerBehind {
        node: u64,
        applied: u64,
        chosen: u64,
        lag_slots_max: u64,
    },
    /// The learner could not be asked how far it got (no client address, or it did not answer).
    LearnerUnreachable { node: u64, why: String },
    /// The log refused the change (another change in progress, ...).
    Membership { why: String },
    /// Restore without `force` into a database that holds nodes besides the root.
    NotEmpty { nodes: u64 },
    /// The snapshot does not check out (checksum, format, invariants) or breaks this cluster's
    /// limits.
    InvalidSnapshot { why: String },
    /// The snapshot is over [`RESTORE_SNAPSHOT_BYTES_MAX`].
    SnapshotTooLarge { bytes: u64, max: u64 },
    /// A parameter is out of range.
    BadRequest { why: String },
}

impl fmt::Display for AdminRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminRefusal::NotAdmin { identity } => write!(
                f,
                "operator commands need the cluster's admin client certificate (client-admin.pem); this connection is {identity}: use --client admin"
            ),
            AdminRefusal::UnknownNode { node } => {
                write!(f, "node {node} is not a member: see `chubbyctl members list`")
            }
            AdminRefusal::AlreadyMember { node } => write!(
                f,
                "node {node} is or was a member and node ids are never reused: pick a new id"
            ),
            AdminRefusal::AlreadyVoter { node } => write!(f, "node {node} is already a voter"),
            AdminRefusal::LastVoter { node } => write!(
                f,
                "removing node {node} would leave no voter: add and promote another member first"
            ),
            AdminRefusal::LearnerBehind {
                node,
                applied,
                chosen,
                lag_slots_max,
            } => write!(
                f,
                "node {node} has applied through slot {applied}, {} behind the master's {chosen} (at most {lag_slots_max} allowed): wait until it catches up, then promote again",
                chosen.saturating_sub(*applied)
            ),
            AdminRefusal::LearnerUnreachable { node, why } => write!(
                f,
                "cannot ask node {node} how far it caught up ({why}): make sure it runs and is reachable, then promote again"
            ),
            AdminRefusal::Membership { why } => write!(f, "membership change refused: {why}"),
            AdminRefusal::NotEmpty { nodes } => write!(
                f,
                "the database holds {nodes} nodes besides the root: restore replaces them all; pass --force to do it anyway"
            ),
            AdminRefusal::InvalidSnapshot { why } => write!(f, "the snapshot does not check out: {why}"),
            AdminRefusal::SnapshotTooLarge { bytes, max } => write!(
                f,
                "the snapshot is {bytes} bytes, over the online-restore limit of {max} bytes (one log entry)"
            ),
            AdminRefusal::BadRequest { why } => write!(f, "bad request: {why}"),
        }
    }
}

impl AdminRequest {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AdminRequest::Members => "admin_members",
            AdminRequest::ReplicaStatus => "admin_replica_status",
            AdminRequest::AddLearner { .. } => "admin_add_learner",
            AdminRequest::Promote { .. } => "admin_promote",
            AdminRequest::Remove { .. } => "admin_remove",
            AdminRequest::SnapshotSave => "admin_snapshot_save",
            AdminRequest::Restore { .. } => "admin_restore",
            AdminRequest::Check { .. } => "admin_check",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_frame, encode_frame, Request, Response};

    #[test]
    fn admin_messages_round_trip_and_the_largest_restore_fits_a_frame() {
        let requests = [
            AdminRequest::Members,
            AdminRequest::AddLearner {
                node: 4,
                peer: "127.0.0.1:7104".parse().unwrap(),
            },
            AdminRequest::Restore {
                snapshot: vec![7; RESTORE_SNAPSHOT_BYTES_MAX],
                force: true,
            },
            AdminRequest::Check { timeout_ms: 5_000 },
        ];
        for request in requests {
            let request = Request::Admin(request);
            let frame = encode_frame(&request).unwrap();
            assert_eq!(decode_frame::<Request>(&frame).unwrap().0, request);
        }
        let response = Response::Admin(AdminResponse::Refused(AdminRefusal::LearnerBehind {
            node: 4,
            applied: 10,
            chosen: 5_000,
            lag_slots_max: 1_000,
        }));
        let frame = encode_frame(&response).unwrap();
        assert_eq!(decode_frame::<Response>(&frame).unwrap().0, response);
        let chunk = Response::Admin(AdminResponse::SnapshotChunk(vec![1; SNAPSHOT_CHUNK_BYTES]));
        assert!(encode_frame(&chunk).is_ok());
    }

    #[test]
    fn a_check_agrees_only_when_complete_and_equal() {
        let mut report = CheckReport {
            slot: 9,
            voters: vec![1, 2, 3],
            digests: BTreeMap::from([(1, 5), (2, 5), (3, 5)]),
            complete: true,
        };
        assert!(report.agree());
        report.digests.insert(3, 6);
        assert!(!report.agree());
        report.digests.remove(&3);
        report.complete = false;
        assert!(!report.agree());
    }
}
