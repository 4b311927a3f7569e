//! What can go wrong in storage, as values that say what to do next.

use super::format::{FormatError, Identity};
use paxos_core::{NodeId, RecoverError, Slot};
use std::fmt;
use std::io;
use std::path::PathBuf;

/// An operation on storage failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StorageError {
    /// A file-system call failed (not an fsync): permissions, space, a missing directory.
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// fdatasync or a directory fsync failed. Fatal: the kernel may have dropped the dirty pages, so
    /// what is on disk is unknown and retrying could report durable what is not. Storage refuses
    /// every later call; the process must exit and recover from disk.
    SyncFailed { path: PathBuf, source: io::Error },
    /// An earlier failure stopped this storage (see `why`); restart the process.
    Stopped { why: String },
    /// `open` found the data directory damaged: only `quarantine` works until it is rebuilt.
    Damaged(Damage),
    /// The directory holds no replica yet: `set_identity` comes first.
    NoIdentity,
    /// `set_identity` named another cluster or node than the one this directory belongs to.
    IdentityConflict {
        stored: Identity,
        requested: Identity,
    },
    /// One record's encoding exceeds `limits::RECORD_BYTES_MAX`.
    RecordTooLarge { bytes: u64, max: u64 },
    /// An appended record contradicts the records before it (an engine bug): nothing more is
    /// appended, since the log would no longer recover.
    Inconsistent(RecoverError),
    /// A snapshot file (stored, or received from a peer) does not check out.
    BadSnapshot { path: PathBuf, why: String },
    /// No snapshot file covers the requested slot.
    NoSnapshot { min_slot: Slot },
    /// Another process holds the data directory's lock (`DirLock`): a replica runs on it.
    Locked(super::LockError),
}

impl From<super::LockError> for StorageError {
    fn from(error: super::LockError) -> StorageError {
        StorageError::Locked(error)
    }
}

fn hint(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::PermissionDenied => {
            "check that the data directory is writable by this process (permissions, owner)"
        }
        io::ErrorKind::StorageFull => "the disk is full: free space on it, then restart",
        io::ErrorKind::ReadOnlyFilesystem => "the file system is read-only: remount it read-write",
        io::ErrorKind::NotFound => {
            "check that the data directory exists and nothing removes files in it"
        }
        _ => "check the disk and the data directory, then restart",
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io {
                action,
                path,
                source,
            } => write!(
                f,
                "could not {action} {}: {source}; {}",
                path.display(),
                hint(source.kind())
            ),
            StorageError::SyncFailed { path, source } => write!(
                f,
                "fsync of {} failed: {source}; what reached the disk is unknown, so this process \
                 must exit and recover from disk (never retry a failed fsync)",
                path.display()
            ),
            StorageError::Stopped { why } => write!(
                f,
                "storage stopped after an earlier failure ({why}); restart the process"
            ),
            StorageError::Damaged(damage) => write!(
                f,
                "the data directory is damaged ({damage}); quarantine it and rebuild this replica"
            ),
            StorageError::NoIdentity => write!(
                f,
                "the data directory holds no replica yet: call set_identity before appending"
            ),
            StorageError::IdentityConflict { stored, requested } => write!(
                f,
                "this data directory belongs to node {} of cluster {}, not node {} of cluster {}: \
                 point the replica at its own directory",
                stored.node, stored.cluster, requested.node, requested.cluster
            ),
            StorageError::RecordTooLarge { bytes, max } => write!(
                f,
                "a record of {bytes} bytes exceeds the limit of {max} bytes"
            ),
            StorageError::Inconsistent(error) => write!(
                f,
                "an appended record contradicts the log ({error}): this is a bug in the caller; \
                 storage stopped appending"
            ),
            StorageError::BadSnapshot { path, why } => write!(
                f,
                "snapshot file {} does not check out: {why}; fetch it again",
                path.display()
            ),
            StorageError::NoSnapshot { min_slot } => {
                write!(f, "no snapshot file covers slot {min_slot}")
            }
            StorageError::Locked(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } | StorageError::SyncFailed { source, .. } => {
                Some(source)
            }
            StorageError::Inconsistent(error) => Some(error),
            _ => None,
        }
    }
}

/// Where `open` found damage and what is wrong. Nothing acknowledged is ever dropped silently: any
/// doubt that is not a torn tail ends up here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The damaged file (`None` when the damage is about the set of files).
    pub file: Option<PathBuf>,
    /// Byte offset in `file` where the damage starts, when known.
    pub offset: Option<u64>,
    pub kind: DamageKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// A segment header does not check out.
    BadHeader(FormatError),
    /// A record does not check out and acknowledged data follows it (in this segment, at
    /// `later_data_at`, or in a later segment when that is `None`).
    CorruptRecord {
        error: FormatError,
        later_data_at: Option<u64>,
    },
    /// A record's checksum matches but its batch number is out of sequence.
    BatchOutOfOrder { expected: u64, found: u64 },
    /// The data of a segment ends (zero length) before valid data at `later_data_at`.
    EndBeforeData { later_data_at: u64 },
    /// A segment other than the last ends in the middle of a batch.
    UnfinishedSegment,
    /// The last segment's data runs into the end of a file shorter than a preallocated segment:
    /// the file was cut short after it was written.
    Truncated { len: u64, segment_bytes: u64 },
    /// Segment numbers skip: segment `expected` is missing (the next present one is `found`).
    MissingSegment { expected: u64, found: u64 },
    /// A segment's first batch number does not follow the batch before it.
    BatchGap { expected: u64, found: u64 },
    /// No segment marks where recovery starts (the oldest segments are gone).
    NoBaseSegment,
    /// A segment written by compaction lacks the records that restate the state.
    EmptyBaseSegment,
    /// The records check out but do not fold into a replica's state.
    Unrecoverable(RecoverError),
    /// WAL segments are present but the identity file is not (wiped or partly deleted).
    IdentityMissing,
    /// The identity file or snapshot files are present but no WAL segment is.
    WalMissing,
    /// The identity file does not check out.
    BadIdentity(FormatError),
    /// A file names another cluster or node than the identity.
    WrongNode {
        expected: (crate::wire::ClusterId, NodeId),
        found: (crate::wire::ClusterId, NodeId),
    },
    /// Segments are present past the first but hold no record.
    NoRecords,
    /// The log refers to the snapshot at `slot`, whose file is missing.
    SnapshotMissing { slot: Slot },
    /// The snapshot file the log refers to does not check out.
    BadSnapshot { slot: Slot, error: FormatError },
    /// A torn tail, reported instead of repaired because `StorageOptions::repair_torn_tail` is off.
    TornTail { bytes: u64 },
}

impl fmt::Display for DamageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DamageKind::BadHeader(e) => write!(f, "bad segment header: {e}"),
            DamageKind::CorruptRecord {
                error,
                later_data_at: Some(at),
            } => write!(
                f,
                "corrupt record ({error}) with valid data after it at byte {at}"
            ),
            DamageKind::CorruptRecord { error, .. } => {
                write!(f, "corrupt record ({error}) with later segments after it")
            }
            DamageKind::BatchOutOfOrder { expected, found } => {
                write!(f, "batch {found} where batch {expected} was expected")
            }
            DamageKind::EndBeforeData { later_data_at } => write!(
                f,
                "the data ends early: valid data follows at byte {later_data_at}"
            ),
            DamageKind::UnfinishedSegment => {
                write!(f, "a segment that is not the last ends inside a batch")
            }
            DamageKind::Truncated { len, segment_bytes } => write!(
                f,
                "the segment is {len} bytes, shorter than a preallocated segment ({segment_bytes}), and its data runs into its end: it was cut short"
            ),
            DamageKind::MissingSegment { expected, found } => write!(
                f,
                "segment {expected} is missing (the next present is {found})"
            ),
            DamageKind::BatchGap { expected, found } => write!(
                f,
                "segment starts at batch {found} but the log before it ends before batch {expected}"
            ),
            DamageKind::NoBaseSegment => write!(f, "the oldest segments are missing"),
            DamageKind::EmptyBaseSegment => {
                write!(f, "a compacted segment lacks the records of its state")
            }
            DamageKind::Unrecoverable(e) => write!(f, "records do not recover: {e}"),
            DamageKind::IdentityMissing => write!(
                f,
                "WAL segments without an identity file (wiped or partly deleted)"
            ),
            DamageKind::WalMissing => write!(
                f,
                "identity or snapshot files without a WAL (wiped or partly deleted)"
            ),
            DamageKind::BadIdentity(e) => write!(f, "bad identity file: {e}"),
            DamageKind::WrongNode { expected, found } => write!(
                f,
                "file of node {} of cluster {} in the directory of node {} of cluster {}",
                found.1, found.0, expected.1, expected.0
            ),
            DamageKind::NoRecords => write!(f, "the WAL holds no record"),
            DamageKind::SnapshotMissing { slot } => {
                write!(
                    f,
                    "the snapshot at slot {slot} the log refers to is missing"
                )
            }
            DamageKind::BadSnapshot { slot, error } => {
                write!(f, "the snapshot at slot {slot} does not check out: {error}")
            }
            DamageKind::TornTail { bytes } => write!(
                f,
                "a torn tail of {bytes} bytes (repair is off in the storage options)"
            ),
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.offset) {
            (Some(file), Some(offset)) => {
                write!(f, "{} at byte {offset}: {}", file.display(), self.kind)
            }
            (Some(file), None) => write!(f, "{}: {}", file.display(), self.kind),
            (None, _) => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for Damage {}
