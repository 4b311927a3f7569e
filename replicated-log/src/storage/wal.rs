//! WAL segments: creating them (preallocated, header synced, renamed into place) and reading them
//! back at recovery, where a torn tail is told from corruption.
//!
//! ## Torn tail or corruption
//!
//! A batch is the records of one write followed by one fdatasync; only its last record carries the
//! end-of-batch flag, and every batch starts on a sector boundary. Scanning a segment stops at the
//! first frame that is not a valid record of the expected batch. What follows decides:
//!
//! - A record whose checksum matches but does not decode, or whose batch number is out of
//!   sequence, is corruption: a torn write leaves only zeros (the segment is preallocated and never
//!   reused) or the bytes that were meant to be written.
//! - Every sector boundary after the stop is probed for a valid frame. A frame of any batch other
//!   than the unfinished one means a later batch was written, so the batch at the stop had been
//!   synced: corruption, reported with both offsets.
//! - Otherwise, in the last segment, the unfinished batch is a torn tail: its sync never returned,
//!   so nothing in it was acknowledged. It is cut off by zeroing and the log continues.
//! - In any other segment, an unfinished batch is corruption (a segment is only followed by another
//!   once its last batch is synced).
//!
//! The one ambiguity: a bit flip inside the last synced batch, with nothing synced after it, looks
//! exactly like a torn write of that batch. It is bounded to that one batch (the records of one
//! `sync`), logged with its size, reported by `Storage::torn_tail`, and can be refused outright with
//! `StorageOptions::repair_torn_tail = false`. `docs/storage-format.md` has the full argument.

use super::error::{DamageKind, StorageError};
use super::format::{
    self, align_up, check_frame, decode_frame, decode_record_prefix, FormatError, Frame,
    SegmentHeader,
};
use super::limits::{PREALLOCATE_WRITE_BYTES, RECORD_BYTES_MAX, SECTOR_BYTES};
use super::vfs::{Vfs, VfsFile};
use paxos_core::Record;
use std::io;
use std::path::{Path, PathBuf};

/// Counts of IO done, folded into the storage metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounts {
    pub data_syncs: u64,
    pub dir_syncs: u64,
    pub bytes_written: u64,
}

pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io {
        action,
        path,
        source,
    }
}

pub(crate) fn sync_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| {
        tracing::error!(path = %path.display(), error = %source, "fsync failed; storage stops");
        StorageError::SyncFailed { path, source }
    }
}

pub(crate) fn sync_file<F: VfsFile>(
    file: &mut F,
    path: &Path,
    counts: &mut IoCounts,
) -> Result<(), StorageError> {
    file.sync_data().map_err(sync_error(path))?;
    counts.data_syncs += 1;
    Ok(())
}

pub(crate) fn sync_dir<V: Vfs>(
    vfs: &V,
    dir: &Path,
    counts: &mut IoCounts,
) -> Result<(), StorageError> {
    vfs.sync_dir(dir).map_err(sync_error(dir))?;
    counts.dir_syncs += 1;
    Ok(())
}

pub(crate) fn write_at<F: VfsFile>(
    file: &mut F,
    path: &Path,
    offset: u64,
    bytes: &[u8],
    counts: &mut IoCounts,
) -> Result<(), StorageError> {
    file.write_at(offset, bytes)
        .map_err(io_error("write to", path))?;
    counts.bytes_written += bytes.len() as u64;
    Ok(())
}

/// The segment batches are appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment<V: Vfs> {
    pub seq: u64,
    pub path: PathBuf,
    pub file: V::File,
    /// Where the next batch goes. Invariant: a multiple of `SECTOR_BYTES`, at most `capacity`.
    pub offset: u64,
    pub capacity: u64,
}

impl<V: Vfs> ActiveSegment<V> {
    pub fn room(&self) -> u64 {
        self.capacity - self.offset
    }
}

/// Creates segment `header.seq` holding `first` (a sector-aligned batch, possibly empty) after its
/// header sector: written under a temporary name, zero-filled to `capacity` when `preallocate`,
/// synced, renamed into place, and the directory synced. A segment file that exists under its final
/// name therefore always has a valid header and its complete first batch.
///
/// `spare`, when given, is a file of exactly `capacity` bytes, all allocated and synced: zeros made
/// off the write path by [`prepare_spare`], or a superseded segment recycled by compaction (whose old
/// contents recovery tells apart by their earlier batch numbers). It is used instead of
/// zero-filling a new file here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn create_segment<V: Vfs>(
    vfs: &V,
    dir: &Path,
    header: &SegmentHeader,
    capacity: u64,
    preallocate: bool,
    spare: Option<PathBuf>,
    first: &[u8],
    counts: &mut IoCounts,
) -> Result<ActiveSegment<V>, StorageError> {
    assert_eq!(capacity % SECTOR_BYTES, 0, "segments are whole sectors");
    assert!(
        SECTOR_BYTES + first.len() as u64 <= capacity,
        "the first batch fits"
    );
    let temp = dir.join(format::names::segment_temp(header.seq));
    let path = dir.join(format::names::segment(header.seq));
    let reused = spare.and_then(|spare| {
        vfs.rename(&spare, &temp).ok()?;
        vfs.open(&temp).ok()
    });
    let mut file = match reused {
        Some(file) => file,
        None => {
            let mut file = vfs
                .create(&temp)
                .map_err(io_error("create segment", &temp))?;
            if preallocate {
                zero_fill(&mut file, &temp, capacity, counts)?;
            }
            file
        }
    };
    let mut head = header.encode();
    head.resize(SECTOR_BYTES as usize, 0);
    head.extend_from_slice(first);
    end_marker(&mut head, capacity);
    write_at(&mut file, &temp, 0, &head, counts)?;
    sync_file(&mut file, &temp, counts)?;
    vfs.rename(&temp, &path)
        .map_err(io_error("rename into place", &temp))?;
    sync_dir(vfs, dir, counts)?;
    Ok(ActiveSegment {
        seq: header.seq,
        path,
        file,
        offset: SECTOR_BYTES + first.len() as u64,
        capacity,
    })
}

/// Appends a zero sector to `bytes` (a write that starts at offset 0 or a sector boundary, its
/// length a whole number of sectors) when the file's `capacity` has room for it: every write leaves
/// a zero length right after its last batch, so that the old contents of a recycled segment file
/// never follow the data directly. The next batch overwrites the marker.
pub(crate) fn end_marker(bytes: &mut Vec<u8>, room: u64) {
    if bytes.len() as u64 + SECTOR_BYTES <= room {
        bytes.resize(bytes.len() + SECTOR_BYTES as usize, 0);
    }
}

fn zero_fill<F: VfsFile>(
    file: &mut F,
    path: &Path,
    capacity: u64,
    counts: &mut IoCounts,
) -> Result<(), StorageError> {
    let zeros = vec![0u8; PREALLOCATE_WRITE_BYTES.min(capacity) as usize];
    let mut at = 0;
    while at < capacity {
        let n = (capacity - at).min(PREALLOCATE_WRITE_BYTES);
        write_at(file, path, at, &zeros[..n as usize], counts)?;
        at += n;
    }
    Ok(())
}

/// Makes `path` a file of `capacity` zero bytes, synced: the next segment, prepared on another
/// thread so that the sync that rolls to it does not pay for the zero-fill. The name must end in
/// `.tmp` (a leftover is removed by the next `open`).
pub fn prepare_spare<V: Vfs>(vfs: &V, path: &Path, capacity: u64) -> Result<(), StorageError> {
    let mut counts = IoCounts::default();
    let mut file = vfs
        .create(path)
        .map_err(io_error("create spare segment", path))?;
    zero_fill(&mut file, path, capacity, &mut counts)?;
    sync_file(&mut file, path, &mut counts)
}

/// A record read back, with where it starts.
#[derive(Clone, Debug)]
pub(crate) struct Located {
    pub offset: u64,
    pub record: Record,
}

/// Why a segment scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A zero length.
    End,
    /// The segment's last byte was reached at a batch boundary.
    Full,
    /// A frame failed its length or checksum check: torn, or corrupt.
    Bad(FormatError),
    /// A frame checked out but its payload does not decode: corrupt.
    Undecodable(FormatError),
    /// A frame checked out but belongs to a later batch than the next one: corrupt.
    OutOfOrder { expected: u64, found: u64 },
    /// A frame checked out but belongs to an earlier batch: the old contents of a recycled segment
    /// file, past the end of this one's data.
    Stale,
}

#[derive(Clone, Debug)]
pub(crate) struct SegmentScan {
    /// Records of complete batches, in order.
    pub records: Vec<Located>,
    /// The number of the first batch not complete in this segment.
    pub next_batch: u64,
    /// Where that batch starts (sector-aligned): the end of the valid data.
    pub batch_start: u64,
    pub stop: Stop,
    pub stop_offset: u64,
    /// Records of the unfinished batch seen before the stop.
    pub torn_records: u64,
}

/// Reads the records of complete batches from a segment's bytes (header included).
pub(crate) fn scan_segment(data: &[u8], first_batch: u64) -> SegmentScan {
    let mut scan = SegmentScan {
        records: Vec::new(),
        next_batch: first_batch,
        batch_start: SECTOR_BYTES,
        stop: Stop::Full,
        stop_offset: SECTOR_BYTES,
        torn_records: 0,
    };
    let mut unfinished = Vec::new();
    let mut offset = SECTOR_BYTES;
    while offset < data.len() as u64 {
        scan.stop_offset = offset;
        let frame = match decode_frame(&data[offset as usize..]) {
            Ok(frame) => frame,
            Err(e @ FormatError::Undecodable(_)) | Err(e @ FormatError::Invalid(_)) => {
                scan.stop = Stop::Undecodable(e);
                break;
            }
            Err(e) => {
                scan.stop = Stop::Bad(e);
                break;
            }
        };
        let Frame::Record {
            batch,
            end_of_batch,
            record,
            bytes,
        } = frame
        else {
            scan.stop = Stop::End;
            break;
        };
        if batch < scan.next_batch {
            scan.stop = Stop::Stale;
            break;
        }
        if batch != scan.next_batch {
            scan.stop = Stop::OutOfOrder {
                expected: scan.next_batch,
                found: batch,
            };
            break;
        }
        unfinished.push(Located { offset, record });
        offset += bytes;
        if end_of_batch {
            scan.records.append(&mut unfinished);
            scan.next_batch += 1;
            offset = align_up(offset);
            scan.batch_start = offset;
        }
        scan.stop_offset = offset;
        scan.stop = Stop::Full;
    }
    scan.torn_records = unfinished.len() as u64;
    scan
}

/// How a segment's data ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// At a batch boundary; the next batch goes at `end`.
    Clean { end: u64 },
    /// An unfinished batch from `start`; bytes up to `end` are to be zeroed.
    Torn { start: u64, end: u64, records: u64 },
}

/// Decides between a clean end, a torn tail and corruption (see the module docs). The error is the
/// damaged offset and what is wrong.
pub(crate) fn judge(
    scan: &SegmentScan,
    data: &[u8],
    is_last: bool,
) -> Result<Tail, (u64, DamageKind)> {
    let at = scan.stop_offset;
    match &scan.stop {
        Stop::Undecodable(error) => {
            let kind = DamageKind::CorruptRecord {
                error: error.clone(),
                later_data_at: None,
            };
            return Err((at, kind));
        }
        Stop::OutOfOrder { expected, found } => {
            let kind = DamageKind::BatchOutOfOrder {
                expected: *expected,
                found: *found,
            };
            return Err((at, kind));
        }
        Stop::End | Stop::Full | Stop::Bad(_) | Stop::Stale => {}
    }
    let probe = probe_after(data, align_up(at), scan.next_batch);
    if let Some(later) = probe.other_batch_at {
        let kind = match &scan.stop {
            Stop::Bad(error) => DamageKind::CorruptRecord {
                error: error.clone(),
                later_data_at: Some(later),
            },
            _ => DamageKind::EndBeforeData {
                later_data_at: later,
            },
        };
        return Err((at, kind));
    }
    let clean = matches!(scan.stop, Stop::End | Stop::Full | Stop::Stale)
        && scan.torn_records == 0
        && !probe.unfinished_batch_seen;
    if clean {
        return Ok(Tail::Clean {
            end: scan.batch_start,
        });
    }
    if !is_last {
        return Err((scan.batch_start, DamageKind::UnfinishedSegment));
    }
    Ok(Tail::Torn {
        start: scan.batch_start,
        end: torn_end(data, scan.batch_start, scan.next_batch),
        records: scan.torn_records,
    })
}

struct Probe {
    /// The first sector boundary holding a valid frame of a batch after the unfinished one. (Frames
    /// of earlier batches past the end are the old contents of a recycled segment file.)
    other_batch_at: Option<u64>,
    /// Whether a valid frame of the unfinished batch sits on some sector boundary.
    unfinished_batch_seen: bool,
}

/// Probes every sector boundary from `from` for a valid record frame.
fn probe_after(data: &[u8], from: u64, unfinished: u64) -> Probe {
    let mut probe = Probe {
        other_batch_at: None,
        unfinished_batch_seen: false,
    };
    let mut at = from;
    while at < data.len() as u64 {
        let bytes = &data[at as usize..];
        if let Ok(Some(payload)) = check_frame(bytes, RECORD_BYTES_MAX) {
            if let Ok((batch, _)) = decode_record_prefix(payload) {
                if batch > unfinished {
                    probe.other_batch_at = Some(at);
                    return probe;
                }
                if batch == unfinished {
                    probe.unfinished_batch_seen = true;
                }
            }
        }
        at += SECTOR_BYTES;
    }
    probe
}

/// Where a torn tail starting at `from` ends: at the first sector boundary holding a valid frame of
/// an earlier batch (the old contents of a recycled segment file begin there), else at the end of
/// the non-zero bytes.
fn torn_end(data: &[u8], from: u64, unfinished: u64) -> u64 {
    let mut at = from;
    while at < data.len() as u64 {
        if let Ok(Some(payload)) = check_frame(&data[at as usize..], RECORD_BYTES_MAX) {
            if matches!(decode_record_prefix(payload), Ok((batch, _)) if batch < unfinished) {
                return nonzero_end(&data[..at as usize], from);
            }
        }
        at += SECTOR_BYTES;
    }
    nonzero_end(data, from)
}

/// The end (sector-aligned, at most the data's length) of the non-zero bytes from `from`.
fn nonzero_end(data: &[u8], from: u64) -> u64 {
    let from = (from as usize).min(data.len());
    let last = data[from..].iter().rposition(|b| *b != 0);
    match last {
        Some(i) => align_up((from + i + 1) as u64).min(data.len() as u64),
        None => from as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ClusterId;
    use format::{encode_batch, encode_record};
    use paxos_core::{Ballot, NodeId};

    fn promise(round: u64) -> Vec<u8> {
        encode_record(&Record::Promised(Ballot {
            round,
            node: NodeId(1),
        }))
        .unwrap()
    }

    /// A segment image with `batches` batches of two records each, zero-filled to 8 sectors.
    fn segment(batches: u64) -> Vec<u8> {
        let mut data = SegmentHeader {
            seq: 0,
            first_batch: 0,
            base: true,
            cluster: ClusterId(1),
            node: NodeId(1),
        }
        .encode();
        data.resize(SECTOR_BYTES as usize, 0);
        for b in 0..batches {
            encode_batch(&[promise(2 * b), promise(2 * b + 1)], b, &mut data);
        }
        data.resize(8 * SECTOR_BYTES as usize, 0);
        data
    }

    /// `segment(old)` recycled: a new header (first batch 10) and `batches` new batches written over
    /// its old contents, each write followed by its end marker when `markers`.
    fn recycled(old: u64, batches: u64, markers: bool) -> Vec<u8> {
        let mut data = segment(old);
        let mut head = SegmentHeader {
            seq: 7,
            first_batch: 10,
            base: false,
            cluster: ClusterId(1),
            node: NodeId(1),
        }
        .encode();
        head.resize(SECTOR_BYTES as usize, 0);
        let write = |bytes: &mut Vec<u8>, data: &mut Vec<u8>, at: usize| {
            if markers {
                end_marker(bytes, (data.len() - at) as u64);
            }
            data[at..at + bytes.len()].copy_from_slice(bytes);
        };
        write(&mut head, &mut data, 0);
        let mut at = SECTOR_BYTES as usize;
        for b in 0..batches {
            let mut batch = Vec::new();
            encode_batch(&[promise(100 + b)], 10 + b, &mut batch);
            let len = batch.len();
            write(&mut batch, &mut data, at);
            at += len;
        }
        data
    }

    #[test]
    fn the_old_contents_of_a_recycled_segment_end_its_data() {
        for markers in [true, false] {
            for batches in [0, 1, 2] {
                let data = recycled(5, batches, markers);
                let scan = scan_segment(&data, 10);
                assert_eq!(scan.records.len() as u64, batches, "markers {markers}");
                assert_eq!(scan.next_batch, 10 + batches);
                let end = (1 + batches) * SECTOR_BYTES;
                assert_eq!(judge(&scan, &data, true), Ok(Tail::Clean { end }));
                assert_eq!(judge(&scan, &data, false), Ok(Tail::Clean { end }));
            }
        }
    }

    #[test]
    fn a_torn_batch_over_old_contents_is_torn_up_to_them() {
        // Old batches 0..5 of two records each fill sectors 1..=5; the new batch 10 is one sector.
        let mut data = recycled(5, 1, true);
        // Tear the new batch: its bytes are gone, but not the marker (or the marker never made it).
        data[SECTOR_BYTES as usize + 12..2 * SECTOR_BYTES as usize].fill(0xAB);
        let scan = scan_segment(&data, 10);
        assert_eq!(scan.records.len(), 0);
        assert_eq!(
            judge(&scan, &data, true),
            Ok(Tail::Torn {
                start: SECTOR_BYTES,
                end: 2 * SECTOR_BYTES,
                records: 0
            })
        );
    }

    #[test]
    fn a_later_batch_after_damage_is_corruption_even_over_old_contents() {
        let mut data = recycled(5, 2, true);
        // Flip a bit in the first new batch: the second (batch 11) proves later data exists.
        data[SECTOR_BYTES as usize + 12] ^= 1;
        let scan = scan_segment(&data, 10);
        let (at, kind) = judge(&scan, &data, true).unwrap_err();
        assert_eq!(at, SECTOR_BYTES);
        assert!(matches!(
            kind,
            DamageKind::CorruptRecord {
                later_data_at: Some(l),
                ..
            } if l == 2 * SECTOR_BYTES
        ));
    }

    #[test]
    fn a_clean_segment_ends_at_its_last_batch() {
        let data = segment(3);
        let scan = scan_segment(&data, 0);
        assert_eq!(scan.records.len(), 6);
        assert_eq!(scan.next_batch, 3);
        let tail = judge(&scan, &data, true).unwrap();
        assert_eq!(
            tail,
            Tail::Clean {
                end: 4 * SECTOR_BYTES
            }
        );
    }

    #[test]
    fn a_cut_last_batch_is_torn_and_an_earlier_one_is_corrupt() {
        let mut data = segment(3);
        // Cut the last batch in its second record.
        let cut = (3 * SECTOR_BYTES + 30) as usize;
        data[cut..].fill(0);
        let scan = scan_segment(&data, 0);
        assert_eq!(scan.records.len(), 4);
        assert_eq!(
            judge(&scan, &data, true),
            Ok(Tail::Torn {
                start: 3 * SECTOR_BYTES,
                end: 4 * SECTOR_BYTES,
                records: 1
            })
        );
        assert_eq!(
            judge(&scan, &data, false),
            Err((3 * SECTOR_BYTES, DamageKind::UnfinishedSegment))
        );

        let mut data = segment(3);
        data[(SECTOR_BYTES + 12) as usize] ^= 4;
        let scan = scan_segment(&data, 0);
        let (at, kind) = judge(&scan, &data, true).unwrap_err();
        assert_eq!(at, SECTOR_BYTES);
        assert!(matches!(
            kind,
            DamageKind::CorruptRecord {
                later_data_at: Some(l),
                ..
            } if l == 2 * SECTOR_BYTES
        ));
    }
}
