//! # chubby-proto
//!
//! What a chubby-db client and server agree on, and nothing else: no IO, no async, no TLS.
//!
//! - **The data model** the database exposes: [`NodePath`] (validated once, trusted after),
//!   [`MultiOp`] transactions with their guard [`Test`]s and [`Op`]s [PML 5.6], [`LockMode`],
//!   [`Sequencer`]s, [`WatchKinds`] and [`Event`]s, and what the database answers
//!   ([`MultiOpReply`] with per-guard and per-op results, [`Rejection`], [`NodeView`],
//!   [`NodeStat`], ...). The server crate `chubby-db` re-exports all of it.
//! - **The client protocol** ([`protocol`]): one [`Request`] per QUIC bidirectional stream
//!   answered by one [`Response`], or, for [`Request::Subscribe`], by a stream of [`Event`]s.
//!   Every message is a length-prefixed postcard frame of at most [`limits::FRAME_BYTES_MAX`]
//!   bytes; decoding is the boundary and answers a typed [`FrameError`], never a panic. The ALPN
//!   is [`ALPN`] (`chubby/1`).
//! - **The checksum** clients compute locally and compare with a node's: [`content_checksum`]
//!   (FNV-1a 64).
//!
//! The semantics are written up in `docs/chubby-db.md`; the client side in
//! `docs/client-guide.md`.

pub mod admin;
pub mod event;
pub mod hash;
pub mod limits;
pub mod multiop;
pub mod path;
pub mod protocol;
pub mod reply;
pub mod types;

pub use event::{Event, EventKind};
pub use hash::content_checksum;
pub use multiop::{Cmp, DecodeError, LockMode, MultiOp, NodeKind, Op, Sequencer, Test, WatchKinds};
pub use path::{NodePath, PathError};
pub use protocol::{
    Consistency, FrameError, MasterHint, Query, ReadReply, Request, Response, ServerError,
    Unavailable, ALPN,
};
pub use reply::{
    Branch, LockInfo, MultiOpReply, NodeStat, NodeView, OpError, OpOutput, OpResult, QueryError,
    Rejection, SequencerInvalid, SessionInfo,
};
pub use types::{Epoch, EventId, RequestSeq, SessionId, Slot};
