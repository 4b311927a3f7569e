//! Named limits of the storage layer, units last. Relations between them are checked at compile
//! time below.

/// The unit of alignment on disk. Every batch starts on a sector boundary, so a torn write of one
/// batch never rewrites a sector that holds an acknowledged batch.
pub const SECTOR_BYTES: u64 = 512;

/// Default size of a WAL segment. Segments are zero-filled and synced once when created, so that
/// later fdatasyncs write data blocks only and never file metadata.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Smallest segment `StorageOptions` accepts (tests use tiny segments to exercise rolling).
pub const SEGMENT_BYTES_MIN: u64 = 4 * SECTOR_BYTES;

/// Bytes of the fixed segment header at offset 0; batches start at `SECTOR_BYTES`.
pub const SEGMENT_HEADER_BYTES: u64 = 64;

/// Largest record payload (batch number, flags and the postcard-encoded record).
pub const RECORD_BYTES_MAX: u32 = 8 * 1024 * 1024;

/// Largest batch number a segment header or record may carry. Batch numbers grow by one per
/// synced batch, so no log we wrote comes near it; a larger one is corruption, and the bound
/// keeps every later `+ 1` on batch numbers from overflowing.
pub const BATCH_NUMBER_MAX: u64 = 1 << 62;

/// Zeros written per call while preallocating a segment.
pub const PREALLOCATE_WRITE_BYTES: u64 = 1024 * 1024;

/// Data bytes per checksummed snapshot chunk (the writer fills chunks to this size; the reader refuses
/// larger ones).
pub const SNAPSHOT_CHUNK_BYTES_MAX: u32 = 256 * 1024;

/// Largest encoded `SnapshotHandle` in a snapshot file header.
pub const SNAPSHOT_HANDLE_BYTES_MAX: u32 = 1024 * 1024;

const _: () = assert!(SEGMENT_HEADER_BYTES <= SECTOR_BYTES);
const _: () = assert!(SEGMENT_BYTES_DEFAULT % SECTOR_BYTES == 0);
const _: () = assert!(SEGMENT_BYTES_MIN % SECTOR_BYTES == 0);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(PREALLOCATE_WRITE_BYTES % SECTOR_BYTES == 0);
// A record of the largest size fits in a default segment after its header sector.
const _: () = assert!(RECORD_BYTES_MAX as u64 + 8 <= SEGMENT_BYTES_DEFAULT - SECTOR_BYTES);
// paxos-core's largest value, with room for the record around it.
const _: () = assert!(paxos_core::limits::VALUE_BYTES_MAX + 64 * 1024 <= RECORD_BYTES_MAX as usize);
