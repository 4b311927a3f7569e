//! Byte layouts of every file storage writes, as pure encoders and decoders.
//!
//! Nothing here does IO, so the decoders can be fuzzed on arbitrary bytes and reused by offline
//! verifiers. Every decoder returns a [`FormatError`] for bytes that do not check out; none panics.
//! All integers are fixed-width little-endian. The diagrams are in `docs/storage-format.md`.

use super::limits::{
    BATCH_NUMBER_MAX, RECORD_BYTES_MAX, SECTOR_BYTES, SEGMENT_HEADER_BYTES,
    SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_HANDLE_BYTES_MAX,
};
use crate::wire::ClusterId;
use paxos_core::{Incarnation, NodeId, Record, Slot, SnapshotHandle};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The first eight bytes of every file storage writes.
pub const MAGIC: [u8; 8] = *b"PMLSTORE";
/// The last eight bytes of a complete snapshot file.
pub const SNAPSHOT_END_MAGIC: [u8; 8] = *b"PMLSNEND";
/// Version of the layouts below. A reader refuses any other version.
pub const FORMAT_VERSION: u32 = 1;

/// `length u32 | crc32 u32` before every record payload and every snapshot chunk.
pub const FRAME_HEADER_BYTES: u64 = 8;
/// `batch u64 | flags u8` at the start of a record payload, before the postcard-encoded record.
pub const RECORD_PREFIX_BYTES: u64 = 9;
/// Flag: the record is the last of its batch (the batch is complete).
pub const FLAG_END_OF_BATCH: u8 = 1;
/// Bytes of the identity file.
pub const IDENTITY_BYTES: usize = 44;
/// Bytes of the fixed part of a snapshot header, before the encoded handle.
pub const SNAPSHOT_HEADER_FIXED_BYTES: usize = 24;
/// Bytes of a snapshot trailer: `total u64 | file crc u32 | end magic [8]`.
pub const SNAPSHOT_TRAILER_BYTES: usize = 20;

/// Which kind of file a header starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum FileKind {
    Segment = 1,
    Snapshot = 2,
    Identity = 3,
}

/// Why bytes read from disk do not check out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the layout needs.
    Truncated {
        needed: u64,
        available: u64,
    },
    BadMagic,
    UnsupportedVersion(u32),
    WrongKind {
        expected: u32,
        found: u32,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    /// A length field above its limit.
    TooLarge {
        length: u64,
        max: u64,
    },
    /// The checksum matched but the payload is not what the layout says (postcard's message).
    Undecodable(String),
    /// A field holds a value the layout does not allow.
    Invalid(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Truncated { needed, available } => {
                write!(f, "truncated: needs {needed} bytes, {available} present")
            }
            FormatError::BadMagic => write!(f, "not a file of this storage (bad magic)"),
            FormatError::UnsupportedVersion(v) => write!(
                f,
                "format version {v} is not supported (this build reads version {FORMAT_VERSION})"
            ),
            FormatError::WrongKind { expected, found } => {
                write!(f, "file kind {found} where kind {expected} was expected")
            }
            FormatError::ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
            FormatError::TooLarge { length, max } => {
                write!(f, "length {length} exceeds the limit of {max}")
            }
            FormatError::Undecodable(why) => write!(f, "checksum matches but undecodable: {why}"),
            FormatError::Invalid(why) => write!(f, "invalid field: {why}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// Which node a data directory belongs to (the `identity` file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub cluster: ClusterId,
    pub node: NodeId,
    /// How many times this node's state was lost and rebuilt (PML 5.1).
    pub incarnation: Incarnation,
}

/// The fixed header at offset 0 of every WAL segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment in the log; segments of one log are numbered without gaps.
    pub seq: u64,
    /// The batch number of the segment's first batch (one more than the last batch before it).
    pub first_batch: u64,
    /// Recovery starts at the newest base segment: its first batch restates the whole state, so
    /// every older segment is superseded.
    pub base: bool,
    pub cluster: ClusterId,
    pub node: NodeId,
}

/// One record frame as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A zero length: the end of the data in this segment.
    End,
    Record {
        batch: u64,
        end_of_batch: bool,
        record: Record,
        /// Bytes of the frame, header included.
        bytes: u64,
    },
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn need(bytes: &[u8], needed: u64) -> Result<(), FormatError> {
    if (bytes.len() as u64) < needed {
        return Err(FormatError::Truncated {
            needed,
            available: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Checks magic, version and kind of a file header.
fn check_preamble(bytes: &[u8], kind: FileKind) -> Result<(), FormatError> {
    need(bytes, 16)?;
    if bytes[0..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let found = u32_at(bytes, 12);
    if found != kind as u32 {
        return Err(FormatError::WrongKind {
            expected: kind as u32,
            found,
        });
    }
    Ok(())
}

fn preamble(out: &mut Vec<u8>, kind: FileKind) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u32).to_le_bytes());
}

impl SegmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize);
        preamble(&mut out, FileKind::Segment);
        out.extend_from_slice(&u32::from(self.base).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.cluster.0.to_le_bytes());
        out.extend_from_slice(&self.node.0.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.first_batch.to_le_bytes());
        let sum = crc(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(out.len() as u64, SEGMENT_HEADER_BYTES);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
        check_preamble(bytes, FileKind::Segment)?;
        need(bytes, SEGMENT_HEADER_BYTES)?;
        let stored = u32_at(bytes, 56);
        let computed = crc(&bytes[..56]);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch { stored, computed });
        }
        let base = match u32_at(bytes, 16) {
            0 => false,
            1 => true,
            _ => return Err(FormatError::Invalid("segment flags")),
        };
        if u64_at(bytes, 48) > BATCH_NUMBER_MAX {
            return Err(FormatError::Invalid("first batch number out of range"));
        }
        Ok(SegmentHeader {
            seq: u64_at(bytes, 40),
            first_batch: u64_at(bytes, 48),
            base,
            cluster: ClusterId(u64_at(bytes, 24)),
            node: NodeId(u64_at(bytes, 32)),
        })
    }
}

/// The postcard encoding of one record, checked against the size limit.
pub fn encode_record(record: &Record) -> Result<Vec<u8>, u64> {
    // Measured first, so a record holding a large batch is written into one allocation.
    let size = postcard::serialize_with_flavor(record, postcard::ser_flavors::Size::default())
        .expect("records always encode");
    let bytes =
        postcard::to_extend(record, Vec::with_capacity(size)).expect("records always encode");
    let payload = bytes.len() as u64 + RECORD_PREFIX_BYTES;
    if payload > u64::from(RECORD_BYTES_MAX) {
        return Err(payload);
    }
    Ok(bytes)
}

/// Bytes a record of `encoded` postcard bytes takes on disk.
pub fn frame_bytes(encoded: usize) -> u64 {
    FRAME_HEADER_BYTES + RECORD_PREFIX_BYTES + encoded as u64
}

/// Rounds up to the next sector boundary.
pub fn align_up(offset: u64) -> u64 {
    offset.div_ceil(SECTOR_BYTES) * SECTOR_BYTES
}

/// Appends one batch (every record framed, the last one flagged end-of-batch) to `out`, padded
/// with zeros to a sector boundary.
pub fn encode_batch(records: &[Vec<u8>], batch: u64, out: &mut Vec<u8>) {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let start = out.len();
    for (i, encoded) in records.iter().enumerate() {
        let flags = if i + 1 == records.len() {
            FLAG_END_OF_BATCH
        } else {
            0
        };
        let length = RECORD_PREFIX_BYTES as u32 + encoded.len() as u32;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&batch.to_le_bytes());
        hasher.update(&[flags]);
        hasher.update(encoded);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&hasher.finalize().to_le_bytes());
        out.extend_from_slice(&batch.to_le_bytes());
        out.push(flags);
        out.extend_from_slice(encoded);
    }
    let padded = align_up((out.len() - start) as u64) as usize;
    out.resize(start + padded, 0);
}

/// Checks the frame at the start of `bytes` (length, bounds, checksum) and returns its payload.
/// `Ok(None)` is a zero length: the end of the data.
pub fn check_frame(bytes: &[u8], max: u32) -> Result<Option<&[u8]>, FormatError> {
    need(bytes, FRAME_HEADER_BYTES)?;
    let length = u32_at(bytes, 0);
    if length == 0 {
        return Ok(None);
    }
    if length > max {
        return Err(FormatError::TooLarge {
            length: u64::from(length),
            max: u64::from(max),
        });
    }
    need(bytes, FRAME_HEADER_BYTES + u64::from(length))?;
    let payload = &bytes[8..8 + length as usize];
    let stored = u32_at(bytes, 4);
    let computed = crc(payload);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { stored, computed });
    }
    Ok(Some(payload))
}

/// The batch number and end-of-batch flag of a checked record payload.
pub fn decode_record_prefix(payload: &[u8]) -> Result<(u64, bool), FormatError> {
    need(payload, RECORD_PREFIX_BYTES)?;
    let end_of_batch = match payload[8] {
        0 => false,
        FLAG_END_OF_BATCH => true,
        _ => return Err(FormatError::Invalid("record flags")),
    };
    let batch = u64_at(payload, 0);
    if batch > BATCH_NUMBER_MAX {
        return Err(FormatError::Invalid("batch number out of range"));
    }
    Ok((batch, end_of_batch))
}

/// Decodes the record frame at the start of `bytes`.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, FormatError> {
    let Some(payload) = check_frame(bytes, RECORD_BYTES_MAX)? else {
        return Ok(Frame::End);
    };
    let (batch, end_of_batch) = decode_record_prefix(payload)?;
    let rest = &payload[RECORD_PREFIX_BYTES as usize..];
    let (record, left) = postcard::take_from_bytes::<Record>(rest)
        .map_err(|e| FormatError::Undecodable(e.to_string()))?;
    if !left.is_empty() {
        return Err(FormatError::Undecodable(format!(
            "{} bytes after the record",
            left.len()
        )));
    }
    Ok(Frame::Record {
        batch,
        end_of_batch,
        record,
        bytes: FRAME_HEADER_BYTES + payload.len() as u64,
    })
}

pub fn encode_identity(identity: &Identity) -> Vec<u8> {
    let mut out = Vec::with_capacity(IDENTITY_BYTES);
    preamble(&mut out, FileKind::Identity);
    out.extend_from_slice(&identity.cluster.0.to_le_bytes());
    out.extend_from_slice(&identity.node.0.to_le_bytes());
    out.extend_from_slice(&identity.incarnation.0.to_le_bytes());
    let sum = crc(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    assert_eq!(out.len(), IDENTITY_BYTES);
    out
}

pub fn decode_identity(bytes: &[u8]) -> Result<Identity, FormatError> {
    check_preamble(bytes, FileKind::Identity)?;
    need(bytes, IDENTITY_BYTES as u64)?;
    if bytes.len() != IDENTITY_BYTES {
        return Err(FormatError::Invalid("identity file has trailing bytes"));
    }
    let stored = u32_at(bytes, 40);
    let computed = crc(&bytes[..40]);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { stored, computed });
    }
    Ok(Identity {
        cluster: ClusterId(u64_at(bytes, 16)),
        node: NodeId(u64_at(bytes, 24)),
        incarnation: Incarnation(u64_at(bytes, 32)),
    })
}

/// The snapshot file header: preamble, handle length and checksum, the postcard-encoded handle.
pub fn encode_snapshot_header(handle: &SnapshotHandle) -> Vec<u8> {
    let encoded = postcard::to_stdvec(handle).expect("handles always encode");
    assert!(
        encoded.len() as u64 <= u64::from(SNAPSHOT_HANDLE_BYTES_MAX),
        "snapshot handle of {} bytes exceeds SNAPSHOT_HANDLE_BYTES_MAX",
        encoded.len()
    );
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_FIXED_BYTES + encoded.len());
    preamble(&mut out, FileKind::Snapshot);
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(&encoded).to_le_bytes());
    out.extend_from_slice(&encoded);
    out
}

/// Decodes a snapshot header from the first bytes of the file. `Truncated { needed }` tells a
/// streaming reader how many bytes to supply. Returns the handle and the header's length.
pub fn decode_snapshot_header(bytes: &[u8]) -> Result<(SnapshotHandle, usize), FormatError> {
    check_preamble(bytes, FileKind::Snapshot)?;
    need(bytes, SNAPSHOT_HEADER_FIXED_BYTES as u64)?;
    let length = u32_at(bytes, 16);
    if length > SNAPSHOT_HANDLE_BYTES_MAX {
        return Err(FormatError::TooLarge {
            length: u64::from(length),
            max: u64::from(SNAPSHOT_HANDLE_BYTES_MAX),
        });
    }
    let total = SNAPSHOT_HEADER_FIXED_BYTES + length as usize;
    need(bytes, total as u64)?;
    let encoded = &bytes[SNAPSHOT_HEADER_FIXED_BYTES..total];
    let stored = u32_at(bytes, 20);
    let computed = crc(encoded);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { stored, computed });
    }
    let handle = postcard::from_bytes::<SnapshotHandle>(encoded)
        .map_err(|e| FormatError::Undecodable(e.to_string()))?;
    Ok((handle, total))
}

/// A snapshot chunk header: `Some((length, crc))` of the data that follows, or `None` for the end
/// frame (zero length, zero crc) that precedes the trailer.
pub fn decode_chunk_header(bytes: &[u8]) -> Result<Option<(u32, u32)>, FormatError> {
    need(bytes, FRAME_HEADER_BYTES)?;
    let length = u32_at(bytes, 0);
    let stored = u32_at(bytes, 4);
    if length == 0 {
        if stored != 0 {
            return Err(FormatError::Invalid("end frame with a checksum"));
        }
        return Ok(None);
    }
    if length > SNAPSHOT_CHUNK_BYTES_MAX {
        return Err(FormatError::TooLarge {
            length: u64::from(length),
            max: u64::from(SNAPSHOT_CHUNK_BYTES_MAX),
        });
    }
    Ok(Some((length, stored)))
}

/// Checks one chunk's data against the crc from its header.
pub fn check_chunk(data: &[u8], stored: u32) -> Result<(), FormatError> {
    let computed = crc(data);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { stored, computed });
    }
    Ok(())
}

pub fn encode_chunk_header(data: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
    out[4..].copy_from_slice(&crc(data).to_le_bytes());
    out
}

/// The trailer: total data bytes, crc of every byte of the file before the trailer, end magic.
pub fn encode_snapshot_trailer(total: u64, file_crc: u32) -> [u8; SNAPSHOT_TRAILER_BYTES] {
    let mut out = [0u8; SNAPSHOT_TRAILER_BYTES];
    out[..8].copy_from_slice(&total.to_le_bytes());
    out[8..12].copy_from_slice(&file_crc.to_le_bytes());
    out[12..].copy_from_slice(&SNAPSHOT_END_MAGIC);
    out
}

/// Returns `(total data bytes, file crc)` from a trailer.
pub fn decode_snapshot_trailer(bytes: &[u8]) -> Result<(u64, u32), FormatError> {
    need(bytes, SNAPSHOT_TRAILER_BYTES as u64)?;
    if bytes[12..20] != SNAPSHOT_END_MAGIC {
        return Err(FormatError::BadMagic);
    }
    Ok((u64_at(bytes, 0), u32_at(bytes, 8)))
}

/// Names of the files storage keeps in a data directory.
pub mod names {
    use super::Slot;

    pub const IDENTITY: &str = "identity";
    pub const IDENTITY_TEMP: &str = "identity.tmp";
    /// Every name that ends so is a file whose rename never became durable: never acknowledged.
    pub const TEMP_SUFFIX: &str = ".tmp";

    pub fn segment(seq: u64) -> String {
        format!("wal-{seq:020}.log")
    }
    pub fn segment_temp(seq: u64) -> String {
        format!("wal-{seq:020}.log.tmp")
    }
    pub fn snapshot(slot: Slot) -> String {
        format!("snapshot-{:020}.snap", slot.0)
    }
    pub fn snapshot_temp(slot: Slot, n: u64) -> String {
        format!("snapshot-{:020}-{n}.tmp", slot.0)
    }
    pub fn incoming(n: u64) -> String {
        format!("incoming-{n}.tmp")
    }
    pub fn quarantine(n: u64) -> String {
        format!("damaged-{n}")
    }

    /// What a directory entry's name says it is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Name {
        Identity,
        Segment(u64),
        Snapshot(Slot),
        /// A temporary file of ours (identity, segment, snapshot or incoming).
        Temp,
        /// A quarantine directory.
        Quarantine(u64),
        /// Not ours: left alone.
        Foreign,
    }

    fn number(digits: &str) -> Option<u64> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    pub fn classify(name: &str) -> Name {
        if name == IDENTITY {
            return Name::Identity;
        }
        let ours_temp = name.ends_with(TEMP_SUFFIX)
            && (name == IDENTITY_TEMP
                || name.starts_with("wal-")
                || name.starts_with("snapshot-")
                || name.starts_with("incoming-"));
        if ours_temp {
            return Name::Temp;
        }
        let parsed = if let Some(rest) = name.strip_prefix("wal-") {
            rest.strip_suffix(".log")
                .and_then(number)
                .map(Name::Segment)
        } else if let Some(rest) = name.strip_prefix("snapshot-") {
            rest.strip_suffix(".snap")
                .and_then(number)
                .map(|n| Name::Snapshot(Slot(n)))
        } else if let Some(rest) = name.strip_prefix("damaged-") {
            number(rest).map(Name::Quarantine)
        } else {
            None
        };
        parsed.unwrap_or(Name::Foreign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::{Ballot, Config, MembershipLog, Value};
    use proptest::prelude::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            seq: 7,
            first_batch: 41,
            base: true,
            cluster: ClusterId(0xC1),
            node: NodeId(3),
        }
    }

    /// Found while writing the `wal_recovery` fuzz target (which recomputes checksums): a header
    /// whose first batch is `u64::MAX`, or `u64::MAX - 1` with one batch, made recovery or the
    /// next sync overflow the batch counter (a panic). Such numbers are corruption now.
    #[test]
    fn batch_numbers_past_the_limit_are_corruption_not_an_overflow() {
        use crate::storage::{MemVfs, Opened, Storage, StorageOptions, Vfs, VfsFile};
        let record = encode_record(&Record::Promised(Ballot::ZERO)).unwrap();
        let mut batch = Vec::new();
        encode_batch(
            std::slice::from_ref(&record),
            BATCH_NUMBER_MAX + 1,
            &mut batch,
        );
        assert!(matches!(decode_frame(&batch), Err(FormatError::Invalid(_))));
        for first_batch in [u64::MAX, u64::MAX - 1, BATCH_NUMBER_MAX + 1] {
            let head = SegmentHeader {
                seq: 0,
                first_batch,
                base: true,
                cluster: ClusterId(1),
                node: NodeId(1),
            };
            assert!(matches!(
                SegmentHeader::decode(&head.encode()),
                Err(FormatError::Invalid(_))
            ));
            let mut segment = head.encode();
            segment.resize(SECTOR_BYTES as usize, 0);
            encode_batch(std::slice::from_ref(&record), first_batch, &mut segment);
            let vfs = MemVfs::new();
            let dir = std::path::Path::new("/data");
            vfs.create_dir(dir).unwrap();
            let identity = Identity {
                cluster: ClusterId(1),
                node: NodeId(1),
                incarnation: Incarnation(1),
            };
            for (name, bytes) in [
                (names::IDENTITY.to_string(), encode_identity(&identity)),
                (names::segment(0), segment),
            ] {
                let mut file = vfs.create(&dir.join(name)).unwrap();
                file.write_at(0, &bytes).unwrap();
                file.sync_data().unwrap();
            }
            vfs.sync_dir(dir).unwrap();
            let (_, opened) = Storage::open(vfs, dir, StorageOptions::default()).unwrap();
            assert!(matches!(opened, Opened::Damaged { .. }), "{opened:?}");
        }
    }

    #[test]
    fn segment_header_round_trips_and_checks_itself() {
        let bytes = header().encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header()));
        let mut flipped = bytes.clone();
        flipped[44] ^= 0x10;
        assert!(matches!(
            SegmentHeader::decode(&flipped),
            Err(FormatError::ChecksumMismatch { .. })
        ));
        let mut version = bytes;
        version[8] = 9;
        assert_eq!(
            SegmentHeader::decode(&version),
            Err(FormatError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn a_batch_is_sector_aligned_and_flags_its_last_record() {
        let records: Vec<Vec<u8>> = [
            Record::Promised(Ballot::ZERO),
            Record::Accepted {
                slot: Slot(1),
                ballot: Ballot::ZERO,
                value: Value::noop(),
            },
        ]
        .iter()
        .map(|r| encode_record(r).unwrap())
        .collect();
        let mut out = Vec::new();
        encode_batch(&records, 5, &mut out);
        assert_eq!(out.len() as u64, SECTOR_BYTES);
        let Frame::Record {
            batch,
            end_of_batch,
            bytes,
            ..
        } = decode_frame(&out).unwrap()
        else {
            panic!("first frame is a record");
        };
        assert_eq!((batch, end_of_batch), (5, false));
        let second = decode_frame(&out[bytes as usize..]).unwrap();
        assert!(matches!(
            second,
            Frame::Record {
                batch: 5,
                end_of_batch: true,
                ..
            }
        ));
        assert_eq!(decode_frame(&out[out.len() - 8..]), Ok(Frame::End));
    }

    #[test]
    fn identity_and_snapshot_header_round_trip() {
        let identity = Identity {
            cluster: ClusterId(9),
            node: NodeId(2),
            incarnation: Incarnation(4),
        };
        assert_eq!(decode_identity(&encode_identity(&identity)), Ok(identity));
        let handle = SnapshotHandle {
            slot: Slot(12),
            membership: MembershipLog::initial(Config::new([NodeId(1), NodeId(2)])),
        };
        let bytes = encode_snapshot_header(&handle);
        assert_eq!(decode_snapshot_header(&bytes), Ok((handle, bytes.len())));
        assert!(matches!(
            decode_snapshot_header(&bytes[..bytes.len() - 1]),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn names_classify() {
        use names::*;
        assert_eq!(classify(&segment(3)), Name::Segment(3));
        assert_eq!(classify(&segment_temp(3)), Name::Temp);
        assert_eq!(classify(&snapshot(Slot(9))), Name::Snapshot(Slot(9)));
        assert_eq!(classify(&snapshot_temp(Slot(9), 1)), Name::Temp);
        assert_eq!(classify(&incoming(2)), Name::Temp);
        assert_eq!(classify(IDENTITY), Name::Identity);
        assert_eq!(classify(IDENTITY_TEMP), Name::Temp);
        assert_eq!(classify(&quarantine(4)), Name::Quarantine(4));
        assert_eq!(classify("wal-x.log"), Name::Foreign);
        assert_eq!(classify("notes.txt.tmp"), Name::Foreign);
        assert_eq!(classify("wal-+1.log"), Name::Foreign);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SegmentHeader::decode(&bytes);
            let _ = decode_frame(&bytes);
            let _ = decode_identity(&bytes);
            let _ = decode_snapshot_header(&bytes);
            let _ = decode_chunk_header(&bytes);
            let _ = decode_snapshot_trailer(&bytes);
            let _ = names::classify(&String::from_utf8_lossy(&bytes));
        }

        /// Arbitrary payloads behind a valid length and checksum reach the record decoder.
        #[test]
        fn record_decoder_never_panics_on_checksummed_garbage(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
            let _ = decode_frame(&bytes);
        }

        /// Every valid header with a byte changed is refused, never misread.
        #[test]
        fn corrupted_headers_are_refused(at in 0usize..60, xor in 1u8..=255) {
            let mut bytes = header().encode();
            bytes[at] ^= xor;
            prop_assert!(SegmentHeader::decode(&bytes).is_err());
            let identity = Identity {
                cluster: ClusterId(1),
                node: NodeId(1),
                incarnation: Incarnation(1),
            };
            let mut bytes = encode_identity(&identity);
            bytes[at % IDENTITY_BYTES] ^= xor;
            prop_assert!(decode_identity(&bytes).is_err());
        }
    }
}
