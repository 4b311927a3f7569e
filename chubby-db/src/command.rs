//! Commands: what the master proposes and the log carries, one per log entry.
//!
//! Decoding ([`Command::decode`]) is the boundary: bytes that do not decode, carry trailing
//! garbage, exceed [`COMMAND_BYTES_MAX`] or hold an invalid path become a [`DecodeError`], never a
//! panic. Paths are validated by decoding itself ([`NodePath`]'s `Deserialize`); the MultiOp limits,
//! which also bind commands built in process, are checked when the command is applied.
//!
//! The client-visible parts of a command (the [`MultiOp`] and what it is made of) live in
//! `chubby-proto` and are re-exported here.

pub use chubby_proto::multiop::{
    Cmp, DecodeError, LockMode, MultiOp, NodeKind, Op, Sequencer, Test, WatchKinds,
};

use crate::limits::COMMAND_BYTES_MAX;
#[cfg(doc)]
use crate::path::NodePath;
use crate::types::{Epoch, RequestSeq, SessionId};
use serde::{Deserialize, Serialize};

/// One log entry for the database. Time enters only through the `now_ms` fields: the master's
/// clock reading when it proposed the command, in milliseconds. The database's clock is the
/// largest `now_ms` applied so far, so it never runs backwards even if a new master's clock is
/// behind the old one's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Opens a session; the reply names it. `lease_ms` defaults to
    /// [`crate::Config::lease_ms_default`] and must lie in
    /// [`LEASE_MS_MIN`](crate::limits::LEASE_MS_MIN)..=[`LEASE_MS_MAX`](crate::limits::LEASE_MS_MAX).
    OpenSession { now_ms: u64, lease_ms: Option<u64> },
    /// Extends a live session's lease to `now_ms + lease_ms`.
    KeepAlive { session: SessionId, now_ms: u64 },
    /// Ends a session cleanly: its locks are released without lock-delay, its waits cancelled,
    /// its ephemeral nodes deleted and its watches dropped.
    CloseSession { session: SessionId },
    /// A transaction on behalf of `session`, applied at most once per `(session, seq)`.
    MultiOp {
        session: SessionId,
        seq: RequestSeq,
        op: MultiOp,
    },
    /// The master's periodic clock entry: advances the clock, expires every session whose lease
    /// ended (`lease_until_ms <= now`), and grants queued lock requests whose lock-delay ended.
    Tick { now_ms: u64 },
    /// The first command a new master proposes in its tenure: records the epoch, extends every
    /// live session's lease to at least `now_ms + lease_ms` (instead of expiring sessions whose
    /// KeepAlives the fail-over held up) and tells every session that it may have missed events.
    MasterChanged { epoch: Epoch, now_ms: u64 },
    /// An operator's online restore: replaces the database with `snapshot` (the snapshot format),
    /// ends every session and renumbers every node's instance above any handed out before, so no
    /// earlier sequencer validates again. Refused unless the database holds no node but the
    /// root, or `force`. See `restore.rs` for the rules.
    Restore { snapshot: Vec<u8>, force: bool },
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        if bytes.len() > COMMAND_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                bytes: bytes.len(),
                max: COMMAND_BYTES_MAX,
            });
        }
        let (command, rest) =
            postcard::take_from_bytes::<Command>(bytes).map_err(|_| DecodeError::Malformed)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { bytes: rest.len() });
        }
        Ok(command)
    }
}
