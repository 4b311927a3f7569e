//! What `Storage::open` finds in a data directory: nothing, a replica's state, or damage.
//!
//! This module only reads. It returns what to do (files to remove, a tail to zero) and
//! `Storage::open` does it, so a directory found damaged is never changed.

use super::error::{Damage, DamageKind, StorageError};
use super::format::{self, names, FormatError, Identity, SegmentHeader};
use super::limits::{SECTOR_BYTES, SEGMENT_HEADER_BYTES};
use super::snapshot::read_snapshot_header;
use super::store::StorageOptions;
use super::vfs::{Vfs, VfsFile};
use super::wal::{io_error, judge, scan_segment, Located, Tail};
use paxos_core::{DurableState, Slot};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The files of ours in a data directory, by what their names say.
#[derive(Clone, Debug, Default)]
pub(crate) struct Listing {
    pub identity: bool,
    pub segments: BTreeSet<u64>,
    pub snapshots: BTreeSet<Slot>,
    pub temps: Vec<String>,
    pub quarantines: BTreeSet<u64>,
}

impl Listing {
    pub fn read<V: Vfs>(vfs: &V, dir: &Path) -> Result<Listing, StorageError> {
        let entries = vfs
            .list(dir)
            .map_err(io_error("list the data directory", dir))?;
        let mut listing = Listing::default();
        for entry in entries {
            match (names::classify(&entry.name), entry.is_dir) {
                (names::Name::Quarantine(n), true) => {
                    listing.quarantines.insert(n);
                }
                (_, true) | (names::Name::Foreign, _) | (names::Name::Quarantine(_), false) => {}
                (names::Name::Identity, false) => listing.identity = true,
                (names::Name::Segment(seq), false) => {
                    listing.segments.insert(seq);
                }
                (names::Name::Snapshot(slot), false) => {
                    listing.snapshots.insert(slot);
                }
                (names::Name::Temp, false) => listing.temps.push(entry.name),
            }
        }
        Ok(listing)
    }

    /// Every file of ours, by name.
    pub fn files(&self) -> Vec<String> {
        let mut files = Vec::new();
        if self.identity {
            files.push(names::IDENTITY.to_owned());
        }
        files.extend(self.segments.iter().map(|s| names::segment(*s)));
        files.extend(self.snapshots.iter().map(|s| names::snapshot(*s)));
        files.extend(self.temps.iter().cloned());
        files
    }
}

/// A torn tail that `open` cut off: the records of a batch whose sync never returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Where the unfinished batch started (the new end of the log).
    pub offset: u64,
    /// Bytes zeroed.
    pub bytes: u64,
    /// Whole records of the unfinished batch seen before the tear.
    pub records: u64,
}

/// What the directory holds.
#[derive(Debug)]
pub(crate) enum Recovery {
    /// Nothing acknowledged. `leftovers` (temporary files, or a WAL that never got a record) are to
    /// be removed.
    Empty {
        leftovers: Vec<String>,
    },
    Damaged {
        identity: Option<Identity>,
        damage: Damage,
    },
    Recovered(Box<Recovered>),
}

#[derive(Debug)]
pub(crate) struct Recovered {
    pub identity: Identity,
    pub state: DurableState,
    /// The last segment, where appends continue.
    pub last_seq: u64,
    pub last_capacity: u64,
    pub tail: Tail,
    pub next_batch: u64,
    /// Superseded segments, snapshot files the log does not refer to, temporary files.
    pub obsolete: Vec<String>,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    header: SegmentHeader,
}

/// The records of the chain of segments recovery reads.
struct Chain {
    records: Vec<(usize, Located)>,
    tail: Tail,
    next_batch: u64,
    last_len: u64,
}

fn damage(file: Option<&Path>, offset: Option<u64>, kind: DamageKind) -> Damage {
    Damage {
        file: file.map(Path::to_path_buf),
        offset,
        kind,
    }
}

/// Reads the directory and decides. IO errors are errors; bytes that do not check out are damage.
pub(crate) fn recover<V: Vfs>(
    vfs: &V,
    dir: &Path,
    listing: &Listing,
    options: &StorageOptions,
) -> Result<Recovery, StorageError> {
    let identity = match read_identity(vfs, dir, listing)? {
        Ok(identity) => identity,
        Err(damage) => {
            return Ok(Recovery::Damaged {
                identity: None,
                damage,
            })
        }
    };
    let damaged = |damage: Damage| Ok(Recovery::Damaged { identity, damage });
    if listing.segments.is_empty() {
        if identity.is_none() && listing.snapshots.is_empty() {
            let leftovers = listing.temps.clone();
            return Ok(Recovery::Empty { leftovers });
        }
        return damaged(damage(None, None, DamageKind::WalMissing));
    }
    let segments = match read_headers(vfs, dir, listing, identity.as_ref())? {
        Ok(segments) => segments,
        Err(d) => return damaged(d),
    };
    let base = match choose_base(&segments) {
        Ok(base) => base,
        Err(d) => return damaged(d),
    };
    let chain = match read_chain(vfs, &segments[base..], options)? {
        Ok(chain) => chain,
        Err(d) => return damaged(d),
    };
    if chain.records.is_empty() {
        // No batch ever completed since the very first segment: nothing was acknowledged (a crash
        // between set_identity and the first sync), and any snapshot file is one no durable record
        // refers to.
        let fresh = base == 0 && segments[0].seq == 0 && chain.next_batch == 0;
        if fresh {
            return Ok(Recovery::Empty {
                leftovers: listing.files(),
            });
        }
        let last = segments.last().expect("segments are present");
        return damaged(damage(Some(&last.path), None, DamageKind::NoRecords));
    }
    let Some(identity) = identity else {
        let file = &segments[base].path;
        return damaged(damage(Some(file), None, DamageKind::IdentityMissing));
    };
    let place = Place {
        vfs,
        dir,
        listing,
        options,
    };
    match recover_state(&place, identity, &segments[..], base, chain)? {
        Ok(recovered) => Ok(Recovery::Recovered(Box::new(recovered))),
        Err(d) => damaged(d),
    }
}

/// Where recovery looks, and how.
struct Place<'a, V: Vfs> {
    vfs: &'a V,
    dir: &'a Path,
    listing: &'a Listing,
    options: &'a StorageOptions,
}

/// The state of a chain that holds records, checked against the identity and the snapshot files.
fn recover_state<V: Vfs>(
    place: &Place<'_, V>,
    identity: Identity,
    segments: &[Segment],
    base: usize,
    chain: Chain,
) -> Result<Result<Recovered, Damage>, StorageError> {
    let Place {
        vfs,
        dir,
        listing,
        options,
    } = place;
    let last = segments.last().expect("segments are present");
    if let Tail::Torn { start, end, .. } = chain.tail {
        if !options.repair_torn_tail {
            let kind = DamageKind::TornTail { bytes: end - start };
            return Ok(Err(damage(Some(&last.path), Some(start), kind)));
        }
    }
    let state = match fold(&segments[base..], &chain.records) {
        Ok(state) => state,
        Err(d) => return Ok(Err(d)),
    };
    if state.node != identity.node {
        let kind = DamageKind::WrongNode {
            expected: (identity.cluster, identity.node),
            found: (identity.cluster, state.node),
        };
        return Ok(Err(damage(Some(&segments[base].path), None, kind)));
    }
    if let Err(d) = check_snapshot(*vfs, dir, listing, state.snapshot.slot)? {
        return Ok(Err(d));
    }
    let superseded = segments[..base].iter().map(|s| names::segment(s.seq));
    let unreferenced = listing
        .snapshots
        .iter()
        .filter(|slot| **slot != state.snapshot.slot)
        .map(|slot| names::snapshot(*slot));
    let obsolete = superseded
        .chain(unreferenced)
        .chain(listing.temps.iter().cloned())
        .collect();
    let last_capacity = if options.preallocate {
        chain.last_len
    } else {
        format::align_up(chain.last_len).max(options.segment_bytes)
    };
    Ok(Ok(Recovered {
        identity,
        state,
        last_seq: last.seq,
        last_capacity,
        tail: chain.tail,
        next_batch: chain.next_batch,
        obsolete,
    }))
}

/// `Ok(Ok(None))`: no identity file.
fn read_identity<V: Vfs>(
    vfs: &V,
    dir: &Path,
    listing: &Listing,
) -> Result<Result<Option<Identity>, Damage>, StorageError> {
    if !listing.identity {
        return Ok(Ok(None));
    }
    let path = dir.join(names::IDENTITY);
    let bytes = vfs
        .read(&path)
        .map_err(io_error("read the identity file", &path))?;
    Ok(match format::decode_identity(&bytes) {
        Ok(identity) => Ok(Some(identity)),
        Err(e) => Err(damage(Some(&path), Some(0), DamageKind::BadIdentity(e))),
    })
}

/// Every segment's header, checked against its name and the identity.
fn read_headers<V: Vfs>(
    vfs: &V,
    dir: &Path,
    listing: &Listing,
    identity: Option<&Identity>,
) -> Result<Result<Vec<Segment>, Damage>, StorageError> {
    let mut segments: Vec<Segment> = Vec::new();
    for seq in &listing.segments {
        let path = dir.join(names::segment(*seq));
        let mut file = vfs.open(&path).map_err(io_error("open segment", &path))?;
        let mut bytes = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        let n = file
            .read_at(0, &mut bytes)
            .map_err(io_error("read segment", &path))?;
        bytes.truncate(n);
        let header = match SegmentHeader::decode(&bytes) {
            Ok(h) if h.seq == *seq => h,
            Ok(_) => {
                let e = FormatError::Invalid("sequence number differs from the file name");
                return Ok(Err(damage(Some(&path), Some(0), DamageKind::BadHeader(e))));
            }
            Err(e) => return Ok(Err(damage(Some(&path), Some(0), DamageKind::BadHeader(e)))),
        };
        let owner = identity
            .map(|i| (i.cluster, i.node))
            .or(segments.first().map(|s| (s.header.cluster, s.header.node)));
        let found = (header.cluster, header.node);
        if let Some(expected) = owner.filter(|o| *o != found) {
            let kind = DamageKind::WrongNode { expected, found };
            return Ok(Err(damage(Some(&path), Some(0), kind)));
        }
        segments.push(Segment {
            seq: *seq,
            path,
            header,
        });
    }
    Ok(Ok(segments))
}

/// The index of the newest base segment; the segments from it on must be numbered without gaps.
fn choose_base(segments: &[Segment]) -> Result<usize, Damage> {
    let Some(base) = segments.iter().rposition(|s| s.header.base) else {
        let oldest = &segments[0].path;
        return Err(damage(Some(oldest), None, DamageKind::NoBaseSegment));
    };
    for pair in segments[base..].windows(2) {
        let expected = pair[0].seq + 1;
        if pair[1].seq != expected {
            let kind = DamageKind::MissingSegment {
                expected,
                found: pair[1].seq,
            };
            return Err(damage(Some(&pair[1].path), None, kind));
        }
    }
    Ok(base)
}

/// Scans every segment of the chain and judges each one's end.
fn read_chain<V: Vfs>(
    vfs: &V,
    chain: &[Segment],
    options: &StorageOptions,
) -> Result<Result<Chain, Damage>, StorageError> {
    let mut next_batch = chain[0].header.first_batch;
    let mut records = Vec::new();
    let mut tail = Tail::Clean { end: SECTOR_BYTES };
    let mut last_len = 0;
    for (i, segment) in chain.iter().enumerate() {
        let path = &segment.path;
        if segment.header.first_batch != next_batch {
            let kind = DamageKind::BatchGap {
                expected: next_batch,
                found: segment.header.first_batch,
            };
            return Ok(Err(damage(Some(path), Some(0), kind)));
        }
        let data = vfs.read(path).map_err(io_error("read segment", path))?;
        let scan = scan_segment(&data, next_batch);
        let is_last = i + 1 == chain.len();
        tail = match judge(&scan, &data, is_last) {
            Ok(tail) => tail,
            Err((offset, kind)) => return Ok(Err(damage(Some(path), Some(offset), kind))),
        };
        if is_last {
            if let Some(kind) = cut_short(&tail, data.len() as u64, options) {
                return Ok(Err(damage(Some(path), Some(data.len() as u64), kind)));
            }
        }
        // A compacted base segment is renamed into place only after its first batch is synced.
        if i == 0 && segment.seq != 0 && scan.records.is_empty() {
            let kind = DamageKind::EmptyBaseSegment;
            return Ok(Err(damage(Some(path), Some(SECTOR_BYTES), kind)));
        }
        records.extend(scan.records.into_iter().map(|r| (i, r)));
        next_batch = scan.next_batch;
        last_len = data.len() as u64;
    }
    Ok(Ok(Chain {
        records,
        tail,
        next_batch,
        last_len,
    }))
}

/// A preallocated segment is created at its full size (zero-filled, synced, then renamed into
/// place) and every write leaves a zero end marker after its data, so its data never runs into
/// the end of a file shorter than a segment: a torn write leaves the file's length alone. A last
/// segment whose data does run into the end of such a file was cut short after the fact, and the
/// batches it lost may have been acknowledged.
fn cut_short(tail: &Tail, len: u64, options: &StorageOptions) -> Option<DamageKind> {
    if !options.preallocate || len >= options.segment_bytes {
        return None;
    }
    let reaches_the_end = match tail {
        Tail::Clean { end } => end + SECTOR_BYTES > len,
        Tail::Torn { .. } => true,
    };
    reaches_the_end.then_some(DamageKind::Truncated {
        len,
        segment_bytes: options.segment_bytes,
    })
}

/// Folds the records into the state, naming the record that does not fit.
fn fold(chain: &[Segment], records: &[(usize, Located)]) -> Result<DurableState, Damage> {
    let at = |i: usize| {
        let (segment, located) = &records[i];
        (chain[*segment].path.as_path(), located.offset)
    };
    let unrecoverable = |i: usize, e| {
        let (file, offset) = at(i);
        damage(Some(file), Some(offset), DamageKind::Unrecoverable(e))
    };
    let first = &records[0].1.record;
    let mut state =
        DurableState::recover(std::iter::once(first)).map_err(|e| unrecoverable(0, e))?;
    for (i, (_, located)) in records.iter().enumerate().skip(1) {
        state
            .apply(&located.record)
            .map_err(|e| unrecoverable(i, e))?;
    }
    Ok(state)
}

/// The snapshot the log refers to must be present with a header that checks out; its chunks are
/// verified as they are read.
fn check_snapshot<V: Vfs>(
    vfs: &V,
    dir: &Path,
    listing: &Listing,
    slot: Slot,
) -> Result<Result<(), Damage>, StorageError> {
    if slot == Slot::ZERO {
        return Ok(Ok(()));
    }
    let path = dir.join(names::snapshot(slot));
    if !listing.snapshots.contains(&slot) {
        let kind = DamageKind::SnapshotMissing { slot };
        return Ok(Err(damage(Some(&path), None, kind)));
    }
    let error = match read_snapshot_header(vfs, &path)? {
        Ok(handle) if handle.slot == slot => return Ok(Ok(())),
        Ok(_) => FormatError::Invalid("snapshot slot differs from the file name"),
        Err(e) => e,
    };
    let kind = DamageKind::BadSnapshot { slot, error };
    Ok(Err(damage(Some(&path), Some(0), kind)))
}
