//! The client's one error type: what went wrong and, in its message, what to do next.

use chubby_proto::{NodePath, OpError, PathError, Rejection, SequencerInvalid};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The string is not a valid node path.
    InvalidPath(PathError),
    /// The op ran and failed (its MultiOp branch was rolled back): the node is absent, the lock
    /// is busy, ...
    Op(OpError),
    /// The database refused the request as a whole (MultiOp limits, an invalid lease).
    Rejected(Rejection),
    /// A read of a node that does not exist.
    NotFound(NodePath),
    /// `list` of a node that is not a directory.
    NotADirectory(NodePath),
    /// The sequencer no longer validates: its grant was released, lost or superseded.
    SequencerInvalid(SequencerInvalid),
    /// A blocking lock request was withdrawn by the database (its node was deleted).
    LockWaitCancelled(NodePath),
    /// The session ended (the master expired it, or the client gave it up after its lease and
    /// grace period). Its locks and ephemeral nodes are gone; connect a new client.
    SessionExpired,
    /// The client was closed.
    Closed,
    /// No master answered within the request timeout (the cluster is electing, partitioned or
    /// down). `why` is the last problem seen.
    Unavailable { why: String },
    /// A replica refused the connection: the TLS handshake failed (no client certificate, one the
    /// cluster CA did not sign, or a server certificate this client does not trust).
    Refused { why: String },
    /// A retried write's reply was forgotten before the retry reached the master: it may or may
    /// not have been applied. Re-read and decide.
    OutcomeUnknown,
    /// The configuration cannot work.
    Config(String),
    /// The server answered something this client does not understand.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidPath(error) => write!(f, "invalid path: {error}"),
            Error::Op(error) => write!(f, "operation failed: {}", op_error_advice(error)),
            Error::Rejected(rejection) => write!(
                f,
                "request rejected by the database: {rejection:?}; make it smaller or fix it"
            ),
            Error::NotFound(path) => write!(f, "no node {path}"),
            Error::NotADirectory(path) => write!(f, "{path} is not a directory"),
            Error::SequencerInvalid(why) => write!(
                f,
                "sequencer no longer valid ({why:?}): the lock was released, lost or taken over; stop acting on it"
            ),
            Error::LockWaitCancelled(path) => write!(
                f,
                "the wait for the lock on {path} was cancelled: its node was deleted"
            ),
            Error::SessionExpired => f.write_str(
                "session expired: its locks and ephemeral nodes are gone; connect a new client",
            ),
            Error::Closed => f.write_str("the client was closed"),
            Error::Unavailable { why } => write!(
                f,
                "no master reachable in time (last: {why}): check the replicas are up and reachable, then retry"
            ),
            Error::Refused { why } => write!(
                f,
                "connection refused ({why}): check the client certificate and the cluster CA"
            ),
            Error::OutcomeUnknown => f.write_str(
                "the write may or may not have been applied (its retry came too late): re-read and decide",
            ),
            Error::Config(why) => write!(f, "bad client configuration: {why}"),
            Error::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

fn op_error_advice(error: &OpError) -> String {
    match error {
        OpError::NodeAbsent => "no such node".to_string(),
        OpError::AlreadyExists => "the node already exists".to_string(),
        OpError::ParentAbsent => "the parent directory does not exist: create it first".to_string(),
        OpError::LockBusy => "the lock is held or waited for: retry later, or wait with lock()".to_string(),
        OpError::LockDelayed { until_ms } => format!(
            "the lock is in lock-delay until {until_ms} ms (its last holder's session expired): wait with lock() or retry after"
        ),
        OpError::Locked => "the node's lock is held, waited for, or in lock-delay".to_string(),
        OpError::NotEmpty => "the directory has children: delete them first".to_string(),
        other => format!("{other:?}"),
    }
}

impl Error {
    /// Whether a try-lock failed only because the lock is not available now (held, waited for,
    /// or in lock-delay).
    pub fn is_lock_busy(&self) -> bool {
        matches!(
            self,
            Error::Op(OpError::LockBusy) | Error::Op(OpError::LockDelayed { .. })
        )
    }

    /// Whether retrying the same call later may succeed (the cluster was unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

impl std::error::Error for Error {}

impl From<PathError> for Error {
    fn from(error: PathError) -> Error {
        Error::InvalidPath(error)
    }
}
