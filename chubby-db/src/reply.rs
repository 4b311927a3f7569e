//! Replies: what applying a command answers to whoever proposed it. Replies to MultiOps are kept
//! in the session's reply cache (and so in snapshots) to answer retries, hence `Serialize`.
//!
//! The client-visible parts (MultiOp replies, rejections, query results) live in `chubby-proto`
//! and are re-exported here.

pub use chubby_proto::reply::{
    Branch, LockInfo, MultiOpReply, NodeStat, NodeView, OpError, OpOutput, OpResult, QueryError,
    Rejection, SequencerInvalid, SessionInfo,
};

use crate::command::DecodeError;
use crate::types::SessionId;
use chubby_proto::admin::{AdminRefusal, RestoreReport};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `lease_remaining_ms` is counted on the database's clock (the latest stamp any master
    /// applied), never on the clock of the master that answers: a master whose clock is behind
    /// the database's would otherwise promise the client more than the lease it holds.
    SessionOpened {
        session: SessionId,
        lease_until_ms: u64,
        lease_remaining_ms: u64,
    },
    KeptAlive {
        lease_until_ms: u64,
        lease_remaining_ms: u64,
    },
    SessionClosed,
    MultiOp(MultiOpReply),
    /// The sessions this tick expired, in id order.
    Ticked {
        expired: Vec<SessionId>,
    },
    MasterChanged {
        sessions_extended: u64,
    },
    /// The command changed nothing (beyond the clock, for commands that carry one).
    Rejected(Rejection),
    /// The database was replaced by the snapshot of a `Restore`.
    Restored(RestoreReport),
    /// A `Restore` changed nothing: the database is not empty, or the snapshot does not check out.
    RestoreRefused(AdminRefusal),
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, DecodeError> {
        postcard::from_bytes(bytes).map_err(|_| DecodeError::Malformed)
    }

    /// The MultiOp reply, if this is one.
    pub fn multi_op(&self) -> Option<&MultiOpReply> {
        match self {
            Reply::MultiOp(reply) => Some(reply),
            _ => None,
        }
    }
}
