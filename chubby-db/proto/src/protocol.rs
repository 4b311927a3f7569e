//! The client protocol: what a client and a server say to each other over QUIC.
//!
//! # Streams
//!
//! A client opens one QUIC connection (ALPN [`ALPN`], TLS 1.3 with a client certificate of the
//! cluster unless the server allows anonymous clients) and then one bidirectional stream per
//! request: it writes one [`Request`] frame and finishes its side; the server answers one
//! [`Response`] frame and finishes. [`Request::Subscribe`] is the exception: the server answers
//! [`Response::Subscribed`] and then writes one [`Event`](crate::Event) frame per event of the session, in log
//! order, for as long as the stream lives.
//!
//! # Frames
//!
//! ```text
//! offset 0   payload length N, u32 little-endian      4 bytes
//! offset 4   payload: the message, postcard-encoded   N bytes, N <= FRAME_BYTES_MAX
//! ```
//!
//! QUIC already protects the bytes in flight, so frames carry no checksum. Decoding is the
//! boundary: a length over [`FRAME_BYTES_MAX`], a payload that is not a message (or holds an
//! invalid path), or bytes left over after the message become a [`FrameError`], never a panic.
//!
//! # Retries
//!
//! Every request may be retried, to any replica, after a lost connection or an error that says so
//! ([`ServerError::retryable`]): `MultiOp`s carry a session-scoped request number that makes the
//! database apply each at most once (the retry gets the remembered reply), `KeepAlive` is
//! idempotent, `CloseSession` answers `SessionUnknown` the second time, reads change nothing, and a
//! retried `OpenSession` at worst opens a spare session that expires unused.

use crate::admin::{AdminRequest, AdminResponse};
use crate::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
use crate::multiop::{MultiOp, Sequencer};
use crate::path::NodePath;
use crate::reply::{
    LockInfo, MultiOpReply, NodeStat, NodeView, QueryError, Rejection, SequencerInvalid,
    SessionInfo,
};
use crate::types::{EventId, RequestSeq, SessionId, Slot};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// The ALPN protocol name of the client protocol, version 1.
pub const ALPN: &[u8] = b"chubby/1";

/// What a client asks; the first (and only) frame a client writes on a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Opens a session with a lease of `lease_ms` (the server's default when `None`). Master only.
    OpenSession { lease_ms: Option<u64> },
    /// Extends the session's lease. Master only.
    KeepAlive { session: SessionId },
    /// Ends the session cleanly: locks released without lock-delay, ephemeral nodes deleted.
    CloseSession { session: SessionId },
    /// A transaction, applied at most once per `(session, seq)`. Master only.
    MultiOp {
        session: SessionId,
        seq: RequestSeq,
        op: MultiOp,
    },
    /// A read-only query. `Linearizable` is served by the master under its lease without a log
    /// round; `Stale` by any replica from what it has applied.
    Read {
        query: Query,
        consistency: Consistency,
    },
    /// Opens the session's event stream, resuming after `after` (the last event the client saw):
    /// the server replays what it still holds after it, then sends events as they are applied.
    /// Any replica serves it.
    Subscribe {
        session: SessionId,
        after: Option<EventId>,
    },
    /// An operator request (membership, snapshots, consistency check), accepted only from the
    /// cluster's admin certificate; see [`crate::admin`].
    Admin(AdminRequest),
}

/// A read-only query of the database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// A node's stat and contents.
    Get(NodePath),
    Stat(NodePath),
    /// A directory's children, in path order.
    Children(NodePath),
    /// Whether a sequencer's grant is still held.
    CheckSequencer(Sequencer),
    /// A node's lock (holders, queue, lock-delay) and the node's instance, so a holder can rebuild
    /// its sequencer.
    Lock(NodePath),
    Session(SessionId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (master under its lease).
    Linearizable,
    /// What the replica that answers has applied: possibly behind.
    Stale,
}

/// What a server answers; the first frame a server writes on a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// `lease_until_ms` is on the master's clock; `lease_remaining_ms` is how long the lease
    /// lasts from when the master stamped the request, which a client adds to the instant it sent
    /// the request to get a conservative local view of its lease.
    SessionOpened {
        session: SessionId,
        lease_ms: u64,
        lease_until_ms: u64,
        lease_remaining_ms: u64,
    },
    KeptAlive {
        lease_until_ms: u64,
        lease_remaining_ms: u64,
    },
    SessionClosed,
    MultiOp(MultiOpReply),
    /// `applied` is the last slot the answering replica had applied.
    Read {
        applied: Slot,
        result: Result<ReadReply, QueryError>,
    },
    /// The event stream follows. `missed`: the server cannot replay every event after the
    /// client's `after` (it restarted, caught up through a snapshot, or dropped the oldest of its
    /// buffer); re-read what matters.
    Subscribed {
        missed: bool,
    },
    /// The answer to [`Request::Admin`] (a snapshot save continues with more of these frames).
    Admin(AdminResponse),
    Error(ServerError),
}

/// The answer to a [`Query`], one variant per query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadReply {
    Node(NodeView),
    Stat(NodeStat),
    Children(Vec<NodePath>),
    Sequencer(Result<(), SequencerInvalid>),
    Lock { lock: LockInfo, instance: u64 },
    Session(Option<SessionInfo>),
}

/// Why a server did not serve a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerError {
    /// This replica is not master (or cannot tell who is); `master` is who it believes is.
    NotMaster { master: Option<MasterHint> },
    /// Retry shortly, here.
    Unavailable(Unavailable),
    /// A write whose fate is unknown: mastership changed, or it was not chosen in time. Retry it
    /// unchanged (same request number): the database applies it at most once.
    OutcomeUnknown { why: String },
    /// The database refused the request as a whole (unknown session, forgotten request number,
    /// invalid lease, MultiOp limits).
    Rejected(Rejection),
    /// The request makes no sense here (for example a subscription to a session this master has
    /// never heard of). Not retryable as is.
    BadRequest { why: String },
    /// The answer would exceed [`FRAME_BYTES_MAX`] (a directory with too many children).
    ReplyTooLarge { bytes: u64, max: u64 },
    /// The replica is stopping; try another.
    ShuttingDown,
}

/// Who a replica believes is master, and where clients reach it (when the replica knows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterHint {
    pub node: u64,
    pub address: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unavailable {
    /// The replica is master but its lease is not valid right now.
    NoLease,
    /// A new master is starting its tenure (announcing itself through the log).
    TenureStarting,
    /// The log refused the write for now (queue full, ...).
    Refused { why: String },
}

impl ServerError {
    /// Whether the same request may be sent again (here or to another replica) and succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ServerError::NotMaster { .. }
            | ServerError::Unavailable(_)
            | ServerError::OutcomeUnknown { .. }
            | ServerError::ShuttingDown => true,
            ServerError::Rejected(_)
            | ServerError::BadRequest { .. }
            | ServerError::ReplyTooLarge { .. } => false,
        }
    }
}

/// Why bytes are not a frame of the expected message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameError {
    /// The length prefix (or an encoded message) exceeds [`FRAME_BYTES_MAX`].
    TooLarge { bytes: u64, max: u64 },
    /// The bytes end before the frame does.
    Truncated { bytes: u64, needed: u64 },
    /// The payload is not a postcard-encoded message of the expected type (or holds an invalid
    /// path).
    Malformed,
    /// A message decoded but bytes of the payload were left over.
    TrailingBytes { bytes: u64 },
}

/// Encodes `message` as one frame: length prefix, then payload.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; FRAME_HEADER_BYTES];
    frame = postcard::to_extend(message, frame).expect("encoding to a Vec cannot fail");
    let payload = frame.len() - FRAME_HEADER_BYTES;
    if payload > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            bytes: payload as u64,
            max: FRAME_BYTES_MAX as u64,
        });
    }
    let length = u32::try_from(payload).expect("FRAME_BYTES_MAX fits a u32");
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&length.to_le_bytes());
    Ok(frame)
}

/// The payload length a frame header announces, checked against [`FRAME_BYTES_MAX`] before any
/// buffer is allocated for it.
pub fn payload_length(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, FrameError> {
    let length = u32::from_le_bytes(header) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            bytes: length as u64,
            max: FRAME_BYTES_MAX as u64,
        });
    }
    Ok(length)
}

/// Decodes one message from a whole payload.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    if payload.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            bytes: payload.len() as u64,
            max: FRAME_BYTES_MAX as u64,
        });
    }
    let (message, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|_| FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes {
            bytes: rest.len() as u64,
        });
    }
    Ok(message)
}

/// Decodes the first frame of `bytes`; answers the message and the bytes the frame took.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), FrameError> {
    let truncated = |needed: usize| FrameError::Truncated {
        bytes: bytes.len() as u64,
        needed: needed as u64,
    };
    let header: [u8; FRAME_HEADER_BYTES] = bytes
        .get(..FRAME_HEADER_BYTES)
        .ok_or(truncated(FRAME_HEADER_BYTES))?
        .try_into()
        .expect("slice of the header's length");
    let end = FRAME_HEADER_BYTES + payload_length(header)?;
    let payload = bytes.get(FRAME_HEADER_BYTES..end).ok_or(truncated(end))?;
    Ok((decode_payload(payload)?, end))
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { bytes, max } => {
                write!(f, "frame of {bytes} bytes exceeds the limit of {max}")
            }
            FrameError::Truncated { bytes, needed } => {
                write!(f, "frame truncated: {bytes} bytes of {needed}")
            }
            FrameError::Malformed => f.write_str("malformed frame payload"),
            FrameError::TrailingBytes { bytes } => {
                write!(f, "{bytes} bytes left over after the message")
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::NotMaster {
                master:
                    Some(MasterHint {
                        node,
                        address: Some(address),
                    }),
            } => write!(f, "not master: node {node} at {address} is"),
            ServerError::NotMaster {
                master: Some(MasterHint { node, .. }),
            } => write!(
                f,
                "not master: node {node} is, at an address this replica does not know"
            ),
            ServerError::NotMaster { master: None } => {
                f.write_str("not master, and no master known yet: retry shortly")
            }
            ServerError::Unavailable(Unavailable::NoLease) => {
                f.write_str("master without a valid lease right now: retry shortly")
            }
            ServerError::Unavailable(Unavailable::TenureStarting) => {
                f.write_str("a new master is starting its tenure: retry shortly")
            }
            ServerError::Unavailable(Unavailable::Refused { why }) => {
                write!(
                    f,
                    "the log refused the write for now ({why}): retry shortly"
                )
            }
            ServerError::OutcomeUnknown { why } => write!(
                f,
                "outcome unknown ({why}): retry with the same request number"
            ),
            ServerError::Rejected(rejection) => write!(f, "rejected: {rejection:?}"),
            ServerError::BadRequest { why } => write!(f, "bad request: {why}"),
            ServerError::ReplyTooLarge { bytes, max } => write!(
                f,
                "the reply would be {bytes} bytes, over the frame limit of {max}"
            ),
            ServerError::ShuttingDown => f.write_str("the replica is shutting down: try another"),
        }
    }
}

impl std::error::Error for ServerError {}

impl Request {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::OpenSession { .. } => "open_session",
            Request::KeepAlive { .. } => "keep_alive",
            Request::CloseSession { .. } => "close_session",
            Request::MultiOp { .. } => "multi_op",
            Request::Read { .. } => "read",
            Request::Subscribe { .. } => "subscribe",
            Request::Admin(request) => request.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::multiop::{LockMode, Op};

    fn p(path: &str) -> NodePath {
        NodePath::new(path).unwrap()
    }

    fn requests() -> Vec<Request> {
        vec![
            Request::OpenSession {
                lease_ms: Some(2_000),
            },
            Request::KeepAlive {
                session: SessionId(3),
            },
            Request::MultiOp {
                session: SessionId(3),
                seq: RequestSeq(9),
                op: MultiOp::new()
                    .then(Op::create_file(p("/a"), b"x".to_vec()))
                    .otherwise(Op::Acquire {
                        path: p("/a"),
                        mode: LockMode::Shared,
                        wait: true,
                    }),
            },
            Request::Read {
                query: Query::Children(p("/")),
                consistency: Consistency::Stale,
            },
            Request::Subscribe {
                session: SessionId(3),
                after: Some(EventId {
                    slot: Slot(7),
                    index: 1,
                }),
            },
        ]
    }

    #[test]
    fn frames_round_trip() {
        for request in requests() {
            let frame = encode_frame(&request).unwrap();
            let (decoded, used) = decode_frame::<Request>(&frame).unwrap();
            assert_eq!(decoded, request);
            assert_eq!(used, frame.len());
        }
        let error = Response::Error(ServerError::NotMaster {
            master: Some(MasterHint {
                node: 2,
                address: Some("127.0.0.1:4000".parse().unwrap()),
            }),
        });
        let frame = encode_frame(&error).unwrap();
        assert_eq!(decode_frame::<Response>(&frame).unwrap().0, error);
    }

    #[test]
    fn every_truncation_and_oversized_header_is_a_typed_error() {
        for request in requests() {
            let frame = encode_frame(&request).unwrap();
            for cut in 0..frame.len() {
                let error = decode_frame::<Request>(&frame[..cut]).unwrap_err();
                assert!(matches!(error, FrameError::Truncated { .. }), "{error}");
            }
        }
        let header = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
        assert!(matches!(
            payload_length(header),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_invalid_paths_are_refused() {
        let mut payload = postcard::to_stdvec(&requests()[0]).unwrap();
        payload.push(0);
        assert_eq!(
            decode_payload::<Request>(&payload),
            Err(FrameError::TrailingBytes { bytes: 1 })
        );
        // A Get of "/a//b": the path is validated while decoding.
        let mut bad = postcard::to_stdvec(&Request::Read {
            query: Query::Get(p("/a/bb")),
            consistency: Consistency::Linearizable,
        })
        .unwrap();
        let at = bad.windows(5).position(|w| w == b"/a/bb").unwrap();
        bad[at + 3] = b'/';
        assert_eq!(decode_payload::<Request>(&bad), Err(FrameError::Malformed));
    }

    #[test]
    fn oversized_messages_do_not_encode() {
        let huge = Request::MultiOp {
            session: SessionId(1),
            seq: RequestSeq(1),
            op: MultiOp::new().then(Op::Set {
                path: p("/a"),
                contents: vec![0; FRAME_BYTES_MAX],
            }),
        };
        assert!(matches!(
            encode_frame(&huge),
            Err(FrameError::TooLarge { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_frame::<Request>(&bytes);
            let _ = decode_frame::<Response>(&bytes);
            let _ = decode_payload::<Event>(&bytes);
        }
    }
}
