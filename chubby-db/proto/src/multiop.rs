//! The client-visible data model of a transaction [PML 5.6]: [`MultiOp`] with its guard
//! [`Test`]s and [`Op`]s, lock modes, watch interests, [`Sequencer`]s, and the typed
//! [`DecodeError`] of every decoder in the protocol.
//!
//! Paths are validated by decoding itself ([`NodePath`]'s `Deserialize`); the MultiOp-wide limits
//! ([`MultiOp::invalid`]) are checked by the database when the command is applied, since they bind
//! commands built in process too.

use crate::limits::{BRANCH_OPS_MAX, GUARD_TESTS_MAX, MULTIOP_BYTES_MAX};
use crate::path::NodePath;
use crate::reply::Rejection;
use crate::types::{Epoch, SessionId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A transaction [PML 5.6]: if every test of `guard` holds, run `top`, otherwise run `fop`. The
/// branch that runs is atomic: if one of its ops fails, the ops before it are undone and the
/// state is as if the branch had never started. An empty guard holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiOp {
    pub guard: Vec<Test>,
    pub top: Vec<Op>,
    pub fop: Vec<Op>,
}

/// A guard test, evaluated against the state before either branch runs. Every test on a path
/// fails when the node is absent, except `Absent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Test {
    Exists {
        path: NodePath,
    },
    Absent {
        path: NodePath,
    },
    /// `node.content_generation <cmp> generation`.
    ContentGeneration {
        path: NodePath,
        cmp: Cmp,
        generation: u64,
    },
    ContentsEqual {
        path: NodePath,
        #[serde(with = "serde_bytes")]
        contents: Vec<u8>,
    },
    ChecksumEquals {
        path: NodePath,
        checksum: u64,
    },
    /// `session` holds the node's lock in `mode`.
    LockHeldBy {
        path: NodePath,
        session: SessionId,
        mode: LockMode,
    },
    /// The sequencer's holder still holds the lock it was issued for (see
    /// `chubby_db::Database::check_sequencer`).
    SequencerValid(Sequencer),
    SessionAlive(SessionId),
    /// The last `MasterChanged` applied named this epoch.
    MasterEpochEquals(Epoch),
}

/// A comparison of a node's value (left) with the test's (right).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Gt,
}

/// An operation of a MultiOp branch, run in order on behalf of the requesting session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Creates a node. Its parent must be an existing, permanent directory. A directory has no
    /// contents. An ephemeral node belongs to the requesting session and is deleted when the
    /// session ends. `lock_delay_ms` (at most [`crate::limits::LOCK_DELAY_MS_MAX`]) defaults to
    /// `chubby_db::Config::lock_delay_ms_default`.
    Create {
        path: NodePath,
        kind: NodeKind,
        ephemeral: bool,
        #[serde(with = "serde_bytes")]
        contents: Vec<u8>,
        lock_delay_ms: Option<u64>,
    },
    /// Replaces a file's contents and bumps its content generation.
    Set {
        path: NodePath,
        #[serde(with = "serde_bytes")]
        contents: Vec<u8>,
    },
    /// Deletes a node that has no children and whose lock is free, unwaited and not in lock-delay.
    Delete { path: NodePath },
    /// Returns the node's stat and contents.
    Read { path: NodePath },
    /// Acquires the node's lock for the requesting session. With `wait` false it is a
    /// try-acquire that fails unless the lock can be granted now; with `wait` true a request
    /// that cannot be granted now joins the lock's FIFO queue and is granted later (an event).
    Acquire {
        path: NodePath,
        mode: LockMode,
        wait: bool,
    },
    /// Releases the session's hold on the lock, or withdraws its queued request.
    Release { path: NodePath },
    /// Sets the requesting session's interest in `path` (which need not exist); empty `kinds`
    /// removes the watch. Watches persist until removed or the session ends.
    Watch { path: NodePath, kinds: WatchKinds },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Directory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockMode {
    Exclusive,
    Shared,
}

/// What a watch reports. See [`crate::EventKind`] for the events each interest produces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchKinds {
    /// The node is created, its contents set, or it is deleted.
    pub contents: bool,
    /// A child is added or removed.
    pub children: bool,
    /// Someone is granted the node's lock.
    pub lock_acquired: bool,
    /// A blocking lock request on the node joins its queue (someone wants a lock held or
    /// waited for by others: a hint to holders to finish and release).
    pub lock_conflict: bool,
}

/// Proof of holding a lock, for a downstream server to check [Chubby 2.4]: the lock's node
/// (path and instance), the mode, and the generation of this particular grant. Every grant of
/// a node's lock gets a new generation, so a sequencer, once its holder releases or loses the
/// lock, never validates again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequencer {
    pub path: NodePath,
    pub instance: u64,
    pub mode: LockMode,
    pub lock_generation: u64,
}

/// Why bytes are not a value of the protocol (a command, an event, a reply, a frame payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecodeError {
    TooLarge {
        bytes: usize,
        max: usize,
    },
    /// Not a postcard-encoded value of the expected type (or a path in it is invalid).
    Malformed,
    /// A value decoded but bytes were left over.
    TrailingBytes {
        bytes: usize,
    },
}

impl MultiOp {
    pub fn new() -> MultiOp {
        MultiOp::default()
    }

    /// Adds a guard test.
    pub fn guard(mut self, test: Test) -> MultiOp {
        self.guard.push(test);
        self
    }

    /// Adds an op to `top`, run when every guard test holds.
    pub fn then(mut self, op: Op) -> MultiOp {
        self.top.push(op);
        self
    }

    /// Adds an op to `fop`, run when some guard test fails.
    pub fn otherwise(mut self, op: Op) -> MultiOp {
        self.fop.push(op);
        self
    }

    /// Compare-and-set: replace `path`'s contents if its content generation is still
    /// `generation`; otherwise read it, so the caller learns the current value in one round.
    pub fn compare_and_set(path: NodePath, generation: u64, contents: Vec<u8>) -> MultiOp {
        MultiOp::new()
            .guard(Test::ContentGeneration {
                path: path.clone(),
                cmp: Cmp::Eq,
                generation,
            })
            .then(Op::Set {
                path: path.clone(),
                contents,
            })
            .otherwise(Op::Read { path })
    }

    /// The MultiOp-wide limit it breaks, if any (per-op limits are op errors).
    pub fn invalid(&self) -> Option<Rejection> {
        if self.guard.len() > GUARD_TESTS_MAX {
            return Some(Rejection::TooManyTests {
                count: self.guard.len(),
                max: GUARD_TESTS_MAX,
            });
        }
        for ops in [&self.top, &self.fop] {
            if ops.len() > BRANCH_OPS_MAX {
                return Some(Rejection::TooManyOps {
                    count: ops.len(),
                    max: BRANCH_OPS_MAX,
                });
            }
        }
        let bytes = self.payload_bytes();
        if bytes > MULTIOP_BYTES_MAX {
            return Some(Rejection::TooManyBytes {
                bytes,
                max: MULTIOP_BYTES_MAX,
            });
        }
        None
    }

    /// Bytes of paths and contents the MultiOp carries (what [`MULTIOP_BYTES_MAX`] limits).
    pub fn payload_bytes(&self) -> usize {
        let tests: usize = self.guard.iter().map(Test::payload_bytes).sum();
        let ops: usize = self
            .top
            .iter()
            .chain(&self.fop)
            .map(Op::payload_bytes)
            .sum();
        tests + ops
    }
}

impl Test {
    fn payload_bytes(&self) -> usize {
        match self {
            Test::Exists { path }
            | Test::Absent { path }
            | Test::ContentGeneration { path, .. }
            | Test::ChecksumEquals { path, .. }
            | Test::LockHeldBy { path, .. } => path.as_str().len(),
            Test::ContentsEqual { path, contents } => path.as_str().len() + contents.len(),
            Test::SequencerValid(sequencer) => sequencer.path.as_str().len(),
            Test::SessionAlive(_) | Test::MasterEpochEquals(_) => 0,
        }
    }
}

impl Op {
    /// A permanent file.
    pub fn create_file(path: NodePath, contents: Vec<u8>) -> Op {
        Op::Create {
            path,
            kind: NodeKind::File,
            ephemeral: false,
            contents,
            lock_delay_ms: None,
        }
    }

    /// An ephemeral file, deleted when the requesting session ends.
    pub fn create_ephemeral(path: NodePath, contents: Vec<u8>) -> Op {
        Op::Create {
            path,
            kind: NodeKind::File,
            ephemeral: true,
            contents,
            lock_delay_ms: None,
        }
    }

    /// A permanent directory.
    pub fn create_directory(path: NodePath) -> Op {
        Op::Create {
            path,
            kind: NodeKind::Directory,
            ephemeral: false,
            contents: Vec::new(),
            lock_delay_ms: None,
        }
    }

    /// The path the op works on.
    pub fn path(&self) -> &NodePath {
        match self {
            Op::Create { path, .. }
            | Op::Set { path, .. }
            | Op::Delete { path }
            | Op::Read { path }
            | Op::Acquire { path, .. }
            | Op::Release { path }
            | Op::Watch { path, .. } => path,
        }
    }

    fn payload_bytes(&self) -> usize {
        let contents = match self {
            Op::Create { contents, .. } | Op::Set { contents, .. } => contents.len(),
            _ => 0,
        };
        self.path().as_str().len() + contents
    }
}

impl Cmp {
    /// `left <cmp> right`.
    pub fn holds(self, left: u64, right: u64) -> bool {
        match self {
            Cmp::Eq => left == right,
            Cmp::Ne => left != right,
            Cmp::Lt => left < right,
            Cmp::Gt => left > right,
        }
    }
}

impl WatchKinds {
    /// Every kind of event.
    pub const ALL: WatchKinds = WatchKinds {
        contents: true,
        children: true,
        lock_acquired: true,
        lock_conflict: true,
    };

    pub fn is_empty(self) -> bool {
        self == WatchKinds::default()
    }
}

impl LockMode {
    /// Whether a lock held in `self` can be granted to another session in `other` as well.
    pub fn compatible(self, other: LockMode) -> bool {
        self == LockMode::Shared && other == LockMode::Shared
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { bytes, max } => {
                write!(f, "value is {bytes} bytes, max {max}")
            }
            DecodeError::Malformed => f.write_str("malformed value"),
            DecodeError::TrailingBytes { bytes } => {
                write!(f, "{bytes} bytes after the value")
            }
        }
    }
}

impl std::error::Error for DecodeError {}
