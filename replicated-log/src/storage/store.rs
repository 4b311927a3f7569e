//! [`Storage`]: the write-ahead log, the identity file and the snapshot files of one data directory.

use super::error::{Damage, StorageError};
use super::format::{self, align_up, encode_batch, frame_bytes, names, Identity, SegmentHeader};
use super::limits::{RECORD_BYTES_MAX, SECTOR_BYTES, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MIN};
use super::recovery::{self, Listing, Recovered, Recovery, TornTail};
use super::snapshot::{self, SnapshotFiles, SnapshotReader, SnapshotWriter};
use super::vfs::{Vfs, VfsFile};
use super::wal::{
    self, create_segment, io_error, sync_dir, sync_file, ActiveSegment, IoCounts, Tail,
};
use paxos_core::{DurableState, Record, Slot, SnapshotHandle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Superseded segments kept for reuse (64 MiB each by default): enough that a log compacted every
/// few segments never zero-fills a new one.
const RECYCLED_KEPT_MAX: usize = 4;

/// A batch buffer that grew past this is dropped after its write rather than kept.
const BUFFER_KEPT_BYTES: usize = 16 << 20;

/// How a data directory is laid out and repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageOptions {
    /// Size of each WAL segment. A multiple of `limits::SECTOR_BYTES`, at least
    /// `limits::SEGMENT_BYTES_MIN`. A segment is made larger only to fit one oversized record or a
    /// compacted state.
    pub segment_bytes: u64,
    /// Zero-fill each segment when it is created (and sync it once), so that each later fdatasync
    /// writes data blocks only. Off only to measure what preallocation buys.
    pub preallocate: bool,
    /// Cut off a torn tail (the default) or report it as damage. See `docs/storage-format.md` for
    /// the one case where a torn tail and a bit flip look alike.
    pub repair_torn_tail: bool,
}

impl Default for StorageOptions {
    fn default() -> StorageOptions {
        StorageOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            preallocate: true,
            repair_torn_tail: true,
        }
    }
}

/// What `Storage::open` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Nothing of ours (or nothing ever acknowledged): bootstrap or rebuild, after `set_identity`.
    Empty,
    /// The replica's identity and the state its records fold into.
    Recovered {
        identity: Identity,
        state: DurableState,
    },
    /// Damage other than a torn tail: `quarantine`, then rebuild this replica (PML 5.1).
    Damaged {
        identity: Option<Identity>,
        problem: Damage,
    },
}

/// What one `sync` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Records made durable.
    pub records: u64,
    /// Bytes of record batches written (padding included; segment creation excluded).
    pub bytes: u64,
    /// Batches written: one write and one fdatasync each. More than one only when the records do
    /// not fit in one segment.
    pub batches: u32,
    /// A new segment was started.
    pub rolled: bool,
    /// A snapshot record was synced, so the log was compacted into a new base segment.
    pub compacted: bool,
}

/// Totals since `open`, for the driver's metrics. Durations are measured by the caller: storage
/// reads no clock, so the simulator stays deterministic. Snapshot writers run on other threads and
/// are not counted here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageMetrics {
    /// fdatasync calls on files (batches, segment creation, identity).
    pub data_syncs: u64,
    /// fsync calls on directories.
    pub dir_syncs: u64,
    pub bytes_written: u64,
    pub records: u64,
    pub batches: u64,
    pub segments_created: u64,
    pub compactions: u64,
}

impl StorageMetrics {
    pub fn fsyncs(&self) -> u64 {
        self.data_syncs + self.dir_syncs
    }

    fn add(&mut self, counts: IoCounts) {
        self.data_syncs += counts.data_syncs;
        self.dir_syncs += counts.dir_syncs;
        self.bytes_written += counts.bytes_written;
    }
}

/// The first fatal failure, shared by the storage and its snapshot writers: once set, every call of
/// either fails.
#[derive(Clone, Debug, Default)]
pub(crate) struct StopFlag(Arc<OnceLock<String>>);

impl StopFlag {
    pub fn check(&self) -> Result<(), StorageError> {
        match self.0.get() {
            Some(why) => Err(StorageError::Stopped { why: why.clone() }),
            None => Ok(()),
        }
    }

    pub fn stop(&self, why: String) {
        let _ = self.0.set(why);
    }
}

/// The durable state of one replica in one directory. Synchronous and blocking: the driver runs it
/// on a dedicated writer thread; the simulator calls it directly.
#[derive(Debug)]
pub struct Storage<V: Vfs> {
    vfs: V,
    dir: PathBuf,
    options: StorageOptions,
    phase: Phase<V>,
    stop: StopFlag,
    metrics: StorageMetrics,
    /// Numbers temporary file names, so concurrent snapshot writers never share one.
    temp_names: Arc<AtomicU64>,
    torn_tail: Option<TornTail>,
    spare: Spare,
    /// Superseded segments kept by compaction for the next rolls (`.tmp` names), at most
    /// `RECYCLED_KEPT_MAX`.
    recycled: Vec<PathBuf>,
    /// The data directory's lock (real files only), released when the storage is dropped.
    _lock: Option<super::DirLock>,
}

/// The zero-filled file the next segment will use (see `spare_wanted`).
#[derive(Debug)]
enum Spare {
    None,
    /// Being prepared off the write path.
    Requested(PathBuf),
    /// Zero-filled and synced: `roll` and `compact` take it.
    Ready(PathBuf),
    /// Preparing one failed once: segments are zero-filled in place from now on.
    Disabled,
}

#[derive(Debug)]
enum Phase<V: Vfs> {
    /// Nothing of ours in the directory.
    Empty,
    /// Identity set; the WAL takes appends.
    Open(Box<Log<V>>),
    /// `open` found damage: only `quarantine` works.
    Damaged(Damage),
}

#[derive(Debug)]
struct Log<V: Vfs> {
    identity: Identity,
    segment: ActiveSegment<V>,
    /// The number the next batch gets. Invariant: one more than the last batch on disk.
    next_batch: u64,
    /// Every appended record folded (`None` until the first one). Equals the durable state when
    /// nothing is pending.
    state: Option<DurableState>,
    /// Encoded records appended since the last sync.
    pending: Vec<Vec<u8>>,
    /// A snapshot record changed the state's snapshot: compact after the next sync.
    compact_due: bool,
    /// The bytes of the batch being written, kept between syncs so that a large batch does not
    /// allocate (and fault in) fresh memory every time.
    buffer: Vec<u8>,
}

impl<V: Vfs> Storage<V> {
    /// Opens (creating if needed) the data directory and recovers what it holds. A torn tail is cut
    /// off; any other damage is reported in `Opened::Damaged` and the directory is left unchanged.
    pub fn open(
        vfs: V,
        dir: impl Into<PathBuf>,
        options: StorageOptions,
    ) -> Result<(Storage<V>, Opened), StorageError> {
        let dir = dir.into();
        assert!(
            options.segment_bytes >= SEGMENT_BYTES_MIN && options.segment_bytes % SECTOR_BYTES == 0,
            "segment_bytes must be a multiple of {SECTOR_BYTES} and at least {SEGMENT_BYTES_MIN}"
        );
        let mut storage = Storage {
            vfs,
            dir,
            options,
            phase: Phase::Empty,
            stop: StopFlag::default(),
            metrics: StorageMetrics::default(),
            temp_names: Arc::new(AtomicU64::new(0)),
            torn_tail: None,
            spare: Spare::None,
            recycled: Vec::new(),
            _lock: None,
        };
        storage.ensure_dir()?;
        storage._lock = storage.vfs.lock_dir(&storage.dir)?;
        let listing = Listing::read(&storage.vfs, &storage.dir)?;
        let opened = match recovery::recover(
            &storage.vfs,
            &storage.dir,
            &listing,
            &storage.options,
        )? {
            Recovery::Empty { leftovers } => {
                storage.remove_files(&leftovers)?;
                Opened::Empty
            }
            Recovery::Damaged { identity, damage } => {
                tracing::error!(dir = %storage.dir.display(), %damage, "data directory is damaged");
                storage.phase = Phase::Damaged(damage.clone());
                Opened::Damaged {
                    identity,
                    problem: damage,
                }
            }
            Recovery::Recovered(recovered) => storage.resume(*recovered)?,
        };
        Ok((storage, opened))
    }

    fn ensure_dir(&mut self) -> Result<(), StorageError> {
        if self.vfs.list(&self.dir).is_ok() {
            return Ok(());
        }
        self.vfs
            .create_dir(&self.dir)
            .map_err(io_error("create the data directory", &self.dir))?;
        // The directory's own entry in its parent must be durable before anything in it counts.
        let parent = super::vfs::parent_of(&self.dir);
        let mut counts = IoCounts::default();
        let result = sync_dir(&self.vfs, &parent, &mut counts);
        self.metrics.add(counts);
        self.guard(result)
    }

    /// Continues the recovered log: zeroes a torn tail, removes obsolete files, reopens the last
    /// segment for appends.
    fn resume(&mut self, recovered: Recovered) -> Result<Opened, StorageError> {
        let path = self.dir.join(names::segment(recovered.last_seq));
        let mut file = self
            .vfs
            .open(&path)
            .map_err(io_error("open segment", &path))?;
        let mut counts = IoCounts::default();
        let offset = match recovered.tail {
            Tail::Clean { end } => end,
            Tail::Torn {
                start,
                end,
                records,
            } => {
                tracing::warn!(
                    file = %path.display(), offset = start, bytes = end - start, records,
                    "cut off a torn tail: the last batch's sync never returned"
                );
                let zeros = vec![0u8; (end - start) as usize];
                let result = wal::write_at(&mut file, &path, start, &zeros, &mut counts)
                    .and_then(|()| sync_file(&mut file, &path, &mut counts));
                self.metrics.add(counts);
                self.guard(result)?;
                self.torn_tail = Some(TornTail {
                    file: path.clone(),
                    offset: start,
                    bytes: end - start,
                    records,
                });
                start
            }
        };
        self.remove_files(&recovered.obsolete)?;
        let segment = ActiveSegment {
            seq: recovered.last_seq,
            path,
            file,
            offset,
            capacity: recovered.last_capacity.max(offset),
        };
        self.phase = Phase::Open(Box::new(Log {
            identity: recovered.identity,
            segment,
            next_batch: recovered.next_batch,
            state: Some(recovered.state.clone()),
            pending: Vec::new(),
            compact_due: false,
            buffer: Vec::new(),
        }));
        Ok(Opened::Recovered {
            identity: recovered.identity,
            state: recovered.state,
        })
    }

    /// Removes files of ours that hold nothing acknowledged, then syncs the directory.
    fn remove_files(&mut self, files: &[String]) -> Result<(), StorageError> {
        if files.is_empty() {
            return Ok(());
        }
        for name in files {
            let path = self.dir.join(name);
            self.vfs
                .remove(&path)
                .map_err(io_error("remove obsolete file", &path))?;
        }
        let mut counts = IoCounts::default();
        let result = sync_dir(&self.vfs, &self.dir, &mut counts);
        self.metrics.add(counts);
        self.guard(result)
    }

    /// Stops the storage for good if `result` is a failed fsync.
    fn guard<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e @ StorageError::SyncFailed { .. }) = &result {
            self.stop.stop(e.to_string());
        }
        result
    }

    fn log_mut(&mut self) -> Result<&mut Log<V>, StorageError> {
        match &mut self.phase {
            Phase::Open(log) => Ok(log),
            Phase::Empty => Err(StorageError::NoIdentity),
            Phase::Damaged(damage) => Err(StorageError::Damaged(damage.clone())),
        }
    }

    fn log(&self) -> Result<&Log<V>, StorageError> {
        match &self.phase {
            Phase::Open(log) => Ok(log),
            Phase::Empty => Err(StorageError::NoIdentity),
            Phase::Damaged(damage) => Err(StorageError::Damaged(damage.clone())),
        }
    }
}

// Identity and quarantine.
impl<V: Vfs> Storage<V> {
    /// Records which replica this directory belongs to. On an empty directory it also starts the
    /// WAL (first segment, then the identity file, so every crash in between recovers as Empty).
    /// Later calls may change only the incarnation.
    pub fn set_identity(&mut self, identity: &Identity) -> Result<(), StorageError> {
        self.stop.check()?;
        let mut counts = IoCounts::default();
        let result = self.set_identity_inner(identity, &mut counts);
        self.metrics.add(counts);
        self.guard(result)
    }

    fn set_identity_inner(
        &mut self,
        identity: &Identity,
        counts: &mut IoCounts,
    ) -> Result<(), StorageError> {
        match &mut self.phase {
            Phase::Damaged(damage) => Err(StorageError::Damaged(damage.clone())),
            Phase::Open(log) => {
                let stored = log.identity;
                if (stored.cluster, stored.node) != (identity.cluster, identity.node) {
                    let requested = *identity;
                    return Err(StorageError::IdentityConflict { stored, requested });
                }
                write_identity(&self.vfs, &self.dir, identity, counts)?;
                log.identity = *identity;
                Ok(())
            }
            Phase::Empty => {
                let header = SegmentHeader {
                    seq: 0,
                    first_batch: 0,
                    base: true,
                    cluster: identity.cluster,
                    node: identity.node,
                };
                let (vfs, dir) = (&self.vfs, &self.dir);
                let capacity = self.options.segment_bytes;
                let segment = create_segment(
                    vfs,
                    dir,
                    &header,
                    capacity,
                    self.options.preallocate,
                    None,
                    &[],
                    counts,
                )?;
                self.metrics.segments_created += 1;
                write_identity(vfs, dir, identity, counts)?;
                self.phase = Phase::Open(Box::new(Log {
                    identity: *identity,
                    segment,
                    next_batch: 0,
                    state: None,
                    pending: Vec::new(),
                    compact_due: false,
                    buffer: Vec::new(),
                }));
                Ok(())
            }
        }
    }

    /// Moves every file of ours into a new `damaged-<n>/` directory (nothing is deleted) and leaves
    /// the storage Empty, ready for `set_identity` and a rebuild. Returns the new directory.
    pub fn quarantine(&mut self) -> Result<PathBuf, StorageError> {
        self.stop.check()?;
        let mut counts = IoCounts::default();
        let result = self.quarantine_inner(&mut counts);
        self.metrics.add(counts);
        self.guard(result)
    }

    fn quarantine_inner(&mut self, counts: &mut IoCounts) -> Result<PathBuf, StorageError> {
        let listing = Listing::read(&self.vfs, &self.dir)?;
        let n = listing.quarantines.last().map_or(0, |n| n + 1);
        let aside = self.dir.join(names::quarantine(n));
        self.vfs
            .create_dir(&aside)
            .map_err(io_error("create quarantine directory", &aside))?;
        sync_dir(&self.vfs, &self.dir, counts)?;
        for name in listing.files() {
            let (from, to) = (self.dir.join(&name), aside.join(&name));
            self.vfs
                .rename(&from, &to)
                .map_err(io_error("move aside", &from))?;
        }
        // The files appear in their new place before they leave the old one: a crash in between
        // leaves them in both, never in neither.
        sync_dir(&self.vfs, &aside, counts)?;
        sync_dir(&self.vfs, &self.dir, counts)?;
        tracing::warn!(to = %aside.display(), "quarantined the data directory");
        self.phase = Phase::Empty;
        self.torn_tail = None;
        // Its old records would read as later batches of the log that starts over at batch 0.
        self.recycled.clear();
        Ok(aside)
    }
}

fn write_identity<V: Vfs>(
    vfs: &V,
    dir: &Path,
    identity: &Identity,
    counts: &mut IoCounts,
) -> Result<(), StorageError> {
    let temp = dir.join(names::IDENTITY_TEMP);
    let path = dir.join(names::IDENTITY);
    let mut file = vfs
        .create(&temp)
        .map_err(io_error("create the identity file", &temp))?;
    let bytes = format::encode_identity(identity);
    wal::write_at(&mut file, &temp, 0, &bytes, counts)?;
    sync_file(&mut file, &temp, counts)?;
    vfs.rename(&temp, &path)
        .map_err(io_error("rename the identity file into place", &temp))?;
    sync_dir(vfs, dir, counts)
}

// The write-ahead log.
impl<V: Vfs> Storage<V> {
    /// Adds records to the pending batch (no IO). They are durable once a later `sync` returns Ok.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        self.stop.check()?;
        let mut encoded = Vec::with_capacity(records.len());
        for record in records {
            let bytes =
                format::encode_record(record).map_err(|bytes| StorageError::RecordTooLarge {
                    bytes,
                    max: u64::from(RECORD_BYTES_MAX),
                })?;
            encoded.push(bytes);
        }
        let stop = self.stop.clone();
        let log = self.log_mut()?;
        for record in records {
            if let Err(e) = log.fold(record) {
                // The live state no longer matches what the log would recover: append nothing more.
                stop.stop(e.to_string());
                return Err(e);
            }
        }
        log.pending.extend(encoded);
        Ok(())
    }

    /// Writes the pending batch with one write and one fdatasync, then compacts if a snapshot
    /// record was in it. Any failure is fatal: this and every later call fail.
    pub fn sync(&mut self) -> Result<SyncReport, StorageError> {
        self.stop.check()?;
        self.log()?;
        let mut counts = IoCounts::default();
        let result = self.sync_inner(&mut counts);
        self.metrics.add(counts);
        match &result {
            Ok(report) => {
                self.metrics.records += report.records;
                self.metrics.batches += u64::from(report.batches);
            }
            Err(e) => self.stop.stop(e.to_string()),
        }
        result
    }

    fn sync_inner(&mut self, counts: &mut IoCounts) -> Result<SyncReport, StorageError> {
        let (vfs, dir, options) = (&self.vfs, &self.dir, &self.options);
        let spare = &mut self.spare;
        let recycled = &mut self.recycled;
        let temp_names = &self.temp_names;
        let Phase::Open(log) = &mut self.phase else {
            unreachable!("checked by the caller");
        };
        let mut report = SyncReport::default();
        let pending = std::mem::take(&mut log.pending);
        let mut rest = &pending[..];
        let fresh_room = options.segment_bytes - SECTOR_BYTES;
        while !rest.is_empty() {
            let take = fitting(rest, log.segment.room());
            let splits = take < rest.len();
            // Keep one sync in one batch when a fresh segment would hold it all.
            let roll_whole =
                splits && log.segment.offset > SECTOR_BYTES && frames(rest) <= fresh_room;
            if take == 0 || roll_whole {
                let need = SECTOR_BYTES + align_up(frame_bytes(rest[0].len()));
                let spare = recycled.pop().or_else(|| take_spare(spare));
                roll(vfs, dir, options, log, need, spare, counts)?;
                self.metrics.segments_created += 1;
                report.rolled = true;
                continue;
            }
            let written = write_batch(log, &rest[..take], counts)?;
            report.records += take as u64;
            report.bytes += written;
            report.batches += 1;
            rest = &rest[take..];
        }
        // A compaction starts a new base segment. When its file is still being zero-filled on
        // another thread, wait for it (a later sync compacts) rather than zero-fill 64 MiB here, in
        // the path of every write waiting for this sync.
        let file_coming = recycled.is_empty() && matches!(spare, Spare::Requested(_));
        if log.compact_due && !file_coming {
            let spare = recycled.pop().or_else(|| take_spare(spare));
            let keep = if options.preallocate {
                RECYCLED_KEPT_MAX - recycled.len()
            } else {
                0
            };
            let name = || {
                let n = temp_names.fetch_add(1, Ordering::Relaxed);
                dir.join(format!("wal-recycled-{n}.tmp"))
            };
            let kept = compact(vfs, dir, options, log, spare, keep, name, counts)?;
            recycled.extend(kept);
            self.metrics.segments_created += 1;
            self.metrics.compactions += 1;
            report.compacted = true;
        }
        Ok(report)
    }
}

impl<V: Vfs> Log<V> {
    /// Folds one appended record into the live state.
    fn fold(&mut self, record: &Record) -> Result<(), StorageError> {
        let Some(state) = &mut self.state else {
            let state = DurableState::recover(std::iter::once(record))
                .map_err(StorageError::Inconsistent)?;
            if state.node != self.identity.node {
                return Err(StorageError::Inconsistent(
                    paxos_core::RecoverError::Inconsistent("first record names another node"),
                ));
            }
            self.state = Some(state);
            return Ok(());
        };
        let before = matches!(record, Record::Snapshot(_)).then(|| state.snapshot.clone());
        state.apply(record).map_err(StorageError::Inconsistent)?;
        if before.is_some_and(|b| b != state.snapshot) {
            self.compact_due = true;
        }
        Ok(())
    }
}

/// How many of `records` fit, framed, in `room` bytes (a multiple of the sector size, so the
/// padded batch fits too).
fn fitting(records: &[Vec<u8>], room: u64) -> usize {
    let mut used = 0;
    for (i, r) in records.iter().enumerate() {
        used += frame_bytes(r.len());
        if used > room {
            return i;
        }
    }
    records.len()
}

fn frames(records: &[Vec<u8>]) -> u64 {
    records.iter().map(|r| frame_bytes(r.len())).sum()
}

/// One write and one fdatasync. Returns the bytes written.
fn write_batch<V: Vfs>(
    log: &mut Log<V>,
    records: &[Vec<u8>],
    counts: &mut IoCounts,
) -> Result<u64, StorageError> {
    let bytes = &mut log.buffer;
    bytes.clear();
    encode_batch(records, log.next_batch, bytes);
    let batch_bytes = bytes.len() as u64;
    let segment = &mut log.segment;
    assert!(batch_bytes <= segment.room(), "the batch fits");
    wal::end_marker(bytes, segment.room());
    wal::write_at(
        &mut segment.file,
        &segment.path,
        segment.offset,
        bytes,
        counts,
    )?;
    sync_file(&mut segment.file, &segment.path, counts)?;
    segment.offset += batch_bytes;
    log.next_batch += 1;
    if bytes.capacity() > BUFFER_KEPT_BYTES {
        *bytes = Vec::new();
    }
    Ok(batch_bytes)
}

/// Starts the next segment (at least `need` bytes).
/// The prepared spare, if one is ready (it is used once).
fn take_spare(spare: &mut Spare) -> Option<PathBuf> {
    match std::mem::replace(spare, Spare::None) {
        Spare::Ready(path) => Some(path),
        other => {
            *spare = other;
            None
        }
    }
}

fn roll<V: Vfs>(
    vfs: &V,
    dir: &Path,
    options: &StorageOptions,
    log: &mut Log<V>,
    need: u64,
    spare: Option<PathBuf>,
    counts: &mut IoCounts,
) -> Result<(), StorageError> {
    let header = SegmentHeader {
        seq: log.segment.seq + 1,
        first_batch: log.next_batch,
        base: false,
        cluster: log.identity.cluster,
        node: log.identity.node,
    };
    let capacity = options.segment_bytes.max(need);
    let spare = spare.filter(|_| capacity == options.segment_bytes);
    log.segment = create_segment(
        vfs,
        dir,
        &header,
        capacity,
        options.preallocate,
        spare,
        &[],
        counts,
    )?;
    Ok(())
}

/// Restates the state in a new base segment, then removes what it supersedes: older segments and
/// snapshot files older than the state's snapshot. Each step is durable before the next starts, so a
/// crash at any point recovers either the old chain or the new base.
///
/// Up to `keep` superseded segments of the standard size are renamed to names from `recycled_name`
/// instead of removed, and returned: the next rolls reuse their allocated blocks rather than
/// zero-filling new files (see `docs/storage-format.md`, "Recycled segments").
#[allow(clippy::too_many_arguments)]
fn compact<V: Vfs>(
    vfs: &V,
    dir: &Path,
    options: &StorageOptions,
    log: &mut Log<V>,
    spare: Option<PathBuf>,
    keep: usize,
    recycled_name: impl Fn() -> PathBuf,
    counts: &mut IoCounts,
) -> Result<Vec<PathBuf>, StorageError> {
    let state = log.state.as_ref().expect("a snapshot record was folded");
    let snapshot_slot = state.snapshot.slot;
    let mut encoded = Vec::new();
    for record in state.to_records() {
        let bytes =
            format::encode_record(&record).map_err(|bytes| StorageError::RecordTooLarge {
                bytes,
                max: u64::from(RECORD_BYTES_MAX),
            })?;
        encoded.push(bytes);
    }
    let mut batch = Vec::new();
    encode_batch(&encoded, log.next_batch, &mut batch);
    let header = SegmentHeader {
        seq: log.segment.seq + 1,
        first_batch: log.next_batch,
        base: true,
        cluster: log.identity.cluster,
        node: log.identity.node,
    };
    let capacity = options.segment_bytes.max(SECTOR_BYTES + batch.len() as u64);
    let spare = spare.filter(|_| capacity == options.segment_bytes);
    log.segment = create_segment(
        vfs,
        dir,
        &header,
        capacity,
        options.preallocate,
        spare,
        &batch,
        counts,
    )?;
    log.next_batch += 1;
    log.compact_due = false;
    let listing = Listing::read(vfs, dir)?;
    let old_segments = listing
        .segments
        .iter()
        .filter(|seq| **seq < header.seq)
        .map(|seq| names::segment(*seq));
    let old_snapshots = listing
        .snapshots
        .iter()
        .filter(|slot| **slot < snapshot_slot)
        .map(|slot| names::snapshot(*slot));
    let obsolete: Vec<String> = old_segments.chain(old_snapshots).collect();
    let mut recycled = Vec::new();
    for name in &obsolete {
        let path = dir.join(name);
        if recycled.len() < keep && is_standard_segment(vfs, &path, name, options) {
            let to = recycled_name();
            vfs.rename(&path, &to)
                .map_err(io_error("recycle superseded segment", &path))?;
            recycled.push(to);
            continue;
        }
        vfs.remove(&path)
            .map_err(io_error("remove superseded file", &path))?;
    }
    if !obsolete.is_empty() {
        sync_dir(vfs, dir, counts)?;
    }
    tracing::debug!(
        segment = header.seq,
        removed = obsolete.len(),
        "compacted the log"
    );
    Ok(recycled)
}

/// Whether `path` is a WAL segment of exactly the configured size (a larger one was made for one
/// oversized batch and is not worth keeping).
fn is_standard_segment<V: Vfs>(vfs: &V, path: &Path, name: &str, options: &StorageOptions) -> bool {
    name.ends_with(".log")
        && vfs
            .open(path)
            .and_then(|file| file.size())
            .is_ok_and(|size| size == options.segment_bytes)
}

// Snapshot files.
impl<V: Vfs> Storage<V> {
    /// Starts writing the application's snapshot at `handle`. The writer can move to another thread;
    /// the file appears under its final name only when `finish` returns Ok.
    pub fn begin_snapshot(
        &self,
        handle: &SnapshotHandle,
    ) -> Result<SnapshotWriter<V>, StorageError> {
        self.stop.check()?;
        self.log()?;
        let n = self.temp_names.fetch_add(1, Ordering::Relaxed);
        SnapshotWriter::create(self.vfs.clone(), &self.dir, handle, n, self.stop.clone())
    }

    /// The newest snapshot file, its handle, and a reader that verifies every chunk. A newest file
    /// whose header does not check out is an error, never a silent fall back to an older snapshot
    /// (the log before the newer one may be gone).
    pub fn open_snapshot(
        &self,
    ) -> Result<Option<(SnapshotHandle, SnapshotReader<V>)>, StorageError> {
        self.stop.check()?;
        let Some(path) = self.snapshot_files().newest_unchecked()? else {
            return Ok(None);
        };
        SnapshotReader::open(&self.vfs, &path).map(Some)
    }

    /// The snapshot file at exactly `slot` (the one the durable state refers to), with a reader
    /// that verifies every chunk. Its handle is in the file's header.
    pub fn open_snapshot_at(&self, slot: Slot) -> Result<SnapshotReader<V>, StorageError> {
        self.stop.check()?;
        let path = self.dir.join(names::snapshot(slot));
        if !self.snapshot_files().has(slot)? {
            return Err(StorageError::NoSnapshot { min_slot: slot });
        }
        let (handle, reader) = SnapshotReader::open(&self.vfs, &path)?;
        if handle.slot != slot {
            let why = format!(
                "header names slot {}, the file name slot {slot}",
                handle.slot
            );
            return Err(StorageError::BadSnapshot { path, why });
        }
        Ok(reader)
    }

    /// A handle on the snapshot files for other threads (the transport serving peers).
    pub fn snapshot_files(&self) -> SnapshotFiles<V> {
        SnapshotFiles::new(self.vfs.clone(), self.dir.clone())
    }

    /// Path of the newest snapshot file covering at least `min_slot`.
    pub fn snapshot_file(&self, min_slot: Slot) -> Option<PathBuf> {
        self.snapshot_files().snapshot_file(min_slot)
    }

    /// The raw bytes of the newest snapshot file covering at least `min_slot`.
    pub fn snapshot_bytes(&self, min_slot: Slot) -> Result<Option<Vec<u8>>, StorageError> {
        self.stop.check()?;
        self.snapshot_files().snapshot_bytes(min_slot)
    }

    /// A fresh temporary path in the data directory to download a peer's snapshot file into. Left
    /// over files are removed by the next `open`.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        let n = self.temp_names.fetch_add(1, Ordering::Relaxed);
        self.dir.join(names::incoming(n))
    }

    /// Verifies a snapshot file received from a peer end to end, syncs it, renames it into place and
    /// syncs the directory. Returns its handle; the engine is told next.
    pub fn install_snapshot_file(
        &mut self,
        received: &Path,
    ) -> Result<SnapshotHandle, StorageError> {
        self.stop.check()?;
        self.log()?;
        let handle = snapshot::verify_snapshot(&self.vfs, received)?;
        let mut counts = IoCounts::default();
        let result = self.install_verified(received, &handle, &mut counts);
        self.metrics.add(counts);
        self.guard(result)?;
        Ok(handle)
    }

    fn install_verified(
        &self,
        received: &Path,
        handle: &SnapshotHandle,
        counts: &mut IoCounts,
    ) -> Result<(), StorageError> {
        let mut file = self
            .vfs
            .open(received)
            .map_err(io_error("open received snapshot", received))?;
        // The transport may not have synced what it wrote: the name must never point at
        // unsynced bytes.
        sync_file(&mut file, received, counts)?;
        let path = self.dir.join(names::snapshot(handle.slot));
        self.vfs
            .rename(received, &path)
            .map_err(io_error("rename snapshot into place", received))?;
        sync_dir(&self.vfs, &self.dir, counts)?;
        let from = snapshot::source_dir(received);
        if from != self.dir {
            sync_dir(&self.vfs, &from, counts)?;
        }
        Ok(())
    }

    /// As `install_snapshot_file`, from bytes (the simulator's transfer).
    pub fn install_snapshot_bytes(&mut self, bytes: &[u8]) -> Result<SnapshotHandle, StorageError> {
        self.stop.check()?;
        self.log()?;
        let temp = self.incoming_snapshot_path();
        let mut file = self
            .vfs
            .create(&temp)
            .map_err(io_error("create snapshot file", &temp))?;
        let mut counts = IoCounts::default();
        let written = wal::write_at(&mut file, &temp, 0, bytes, &mut counts);
        self.metrics.add(counts);
        written?;
        let result = self.install_snapshot_file(&temp);
        if matches!(result, Err(StorageError::BadSnapshot { .. })) {
            let _ = self.vfs.remove(&temp);
        }
        result
    }
}

// The spare segment, prepared off the write path.
impl<V: Vfs> Storage<V> {
    /// When preallocation is on and no spare is ready or being made: a path (a `.tmp` name in the
    /// data directory) and size for the caller to fill with [`super::prepare_spare`] on another
    /// thread, then hand back with `spare_ready`. Without it, a roll zero-fills inside its sync.
    pub fn spare_wanted(&mut self) -> Option<(PathBuf, u64)> {
        if !self.options.preallocate
            || !matches!(self.spare, Spare::None)
            || !self.recycled.is_empty()
            || self.log().is_err()
        {
            return None;
        }
        let n = self.temp_names.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("wal-spare-{n}.tmp"));
        self.spare = Spare::Requested(path.clone());
        Some((path, self.options.segment_bytes))
    }

    /// The spare asked for with `spare_wanted` is made (or failed: then no more are asked for).
    pub fn spare_ready(&mut self, path: PathBuf, result: Result<(), StorageError>) {
        self.spare = match (&self.spare, result) {
            (Spare::Requested(asked), Ok(())) if *asked == path => Spare::Ready(path),
            (_, Err(error)) => {
                tracing::warn!(%error, "cannot prepare a spare segment: zero-filling in place");
                Spare::Disabled
            }
            _ => Spare::None,
        };
    }

    /// The file system this storage runs on.
    pub fn vfs(&self) -> &V {
        &self.vfs
    }
}

// Getters.
impl<V: Vfs> Storage<V> {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn identity(&self) -> Option<Identity> {
        self.log().ok().map(|log| log.identity)
    }

    /// The state every appended record folds into (durable when nothing is pending).
    pub fn state(&self) -> Option<&DurableState> {
        self.log().ok().and_then(|log| log.state.as_ref())
    }

    /// Records appended since the last sync.
    pub fn pending_records(&self) -> usize {
        self.log().map_or(0, |log| log.pending.len())
    }

    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }

    /// The torn tail `open` cut off, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// The damage `open` found, while not yet quarantined.
    pub fn damage(&self) -> Option<&Damage> {
        match &self.phase {
            Phase::Damaged(damage) => Some(damage),
            _ => None,
        }
    }

    /// Why the storage stopped (a failed fsync, an inconsistent record), if it did.
    pub fn stopped(&self) -> Option<String> {
        self.stop.check().err().map(|e| e.to_string())
    }
}
