//! Crash and corruption tests of the WAL over the in-memory disk, which separates written from
//! synced bytes (redb's live/durable model). The rule under test: every record whose `sync` returned
//! Ok survives recovery, nothing is invented after a torn tail, and any other damage is reported
//! with its file and offset.

use paxos_core::rng::Rng;
use paxos_core::{
    Ballot, Config, DurableState, Entry, EntryId, EntryKind, Epoch, Incarnation, MembershipLog,
    NodeId, Record, RecoverError, Slot, SnapshotHandle, Value,
};
use replicated_log::storage::format::{self, names, SegmentHeader};
use replicated_log::storage::limits::SECTOR_BYTES;
use replicated_log::storage::{
    prepare_spare, DamageKind, FailPoint, FormatError, Identity, MemVfs, Opened, Storage,
    StorageError, StorageOptions, Tear, Vfs, VfsFile,
};
use replicated_log::wire::ClusterId;
use std::io::Write;
use std::path::{Path, PathBuf};

const NODE: NodeId = NodeId(1);

fn dir() -> PathBuf {
    PathBuf::from("/data/n1")
}

fn segment_path(seq: u64) -> PathBuf {
    dir().join(names::segment(seq))
}

fn identity() -> Identity {
    Identity {
        cluster: ClusterId(0xC0FFEE),
        node: NODE,
        incarnation: Incarnation(1),
    }
}

fn small(segment_bytes: u64) -> StorageOptions {
    StorageOptions {
        segment_bytes,
        ..StorageOptions::default()
    }
}

fn membership() -> MembershipLog {
    MembershipLog::initial(Config::new([NodeId(1), NodeId(2), NodeId(3)]))
}

fn bootstrap() -> Record {
    Record::Bootstrap {
        node: NODE,
        incarnation: Incarnation(1),
        membership: membership(),
    }
}

fn ballot(round: u64) -> Ballot {
    Ballot { round, node: NODE }
}

fn value(seq: u64, len: usize) -> Value {
    let data = (0..len).map(|i| (seq as usize + i) as u8).collect();
    Value::new(vec![Entry {
        id: EntryId {
            epoch: Epoch(ballot(1)),
            seq,
        },
        kind: EntryKind::App(data),
    }])
}

fn accepted(slot: u64, len: usize) -> Record {
    Record::Accepted {
        slot: Slot(slot),
        ballot: ballot(1),
        value: value(slot, len),
    }
}

fn open(vfs: &MemVfs, options: &StorageOptions) -> (Storage<MemVfs>, Opened) {
    Storage::open(vfs.clone(), dir(), options.clone()).expect("open")
}

/// A storage with its identity set and the bootstrap record synced.
fn fresh(vfs: &MemVfs, options: &StorageOptions) -> Storage<MemVfs> {
    let (mut storage, opened) = open(vfs, options);
    assert_eq!(opened, Opened::Empty);
    storage.set_identity(&identity()).unwrap();
    storage.append(&[bootstrap()]).unwrap();
    storage.sync().unwrap();
    storage
}

fn recovered(opened: Opened) -> DurableState {
    match opened {
        Opened::Recovered {
            identity: id,
            state,
        } => {
            assert_eq!(id, identity());
            state
        }
        other => panic!("expected a recovered state, got {other:?}"),
    }
}

fn damage_of(opened: Opened) -> replicated_log::storage::Damage {
    match opened {
        Opened::Damaged { problem, .. } => problem,
        other => panic!("expected damage, got {other:?}"),
    }
}

fn fold(state: Option<&DurableState>, records: &[Record]) -> Option<DurableState> {
    let mut records = records.iter();
    let mut state = match state {
        Some(s) => s.clone(),
        None => DurableState::recover(records.next()).ok()?,
    };
    for r in records {
        state.apply(r).expect("the workload is consistent");
    }
    Some(state)
}

/// Writes a snapshot file for `slot` with a few kilobytes of data derived from the slot.
fn write_snapshot(storage: &Storage<MemVfs>, slot: u64) -> SnapshotHandle {
    try_snapshot(storage, slot).unwrap()
}

fn try_snapshot(storage: &Storage<MemVfs>, slot: u64) -> Result<SnapshotHandle, StorageError> {
    let handle = SnapshotHandle {
        slot: Slot(slot),
        membership: membership(),
    };
    let mut writer = storage.begin_snapshot(&handle)?;
    writer.write_all(&snapshot_data(slot)).unwrap();
    writer.finish()?;
    Ok(handle)
}

fn snapshot_data(slot: u64) -> Vec<u8> {
    (0..3000u64).map(|i| (i * 7 + slot) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Randomized crash sequences.

/// Generates a consistent stream of engine records: promises go up, slots go forward.
struct Workload {
    rng: Rng,
    round: u64,
    next_slot: u64,
    chosen: u64,
    snapshot: u64,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        Workload {
            rng: Rng::new(seed),
            round: 1,
            next_slot: 1,
            chosen: 0,
            snapshot: 0,
        }
    }

    fn record(&mut self) -> Record {
        match self.rng.below(6) {
            0 => {
                self.round += self.rng.below(2);
                Record::Promised(ballot(self.round))
            }
            1 | 2 if self.chosen + 1 < self.next_slot => {
                self.chosen += 1;
                let len = self.rng.below(400) as usize;
                Record::Chosen {
                    slot: Slot(self.chosen),
                    value: value(self.chosen, len),
                }
            }
            _ => {
                let slot = self.next_slot;
                self.next_slot += 1;
                accepted(slot, self.rng.below(700) as usize)
            }
        }
    }
}

/// What the test knows is durable, and what may or may not be.
struct Model {
    acked: Option<DurableState>,
    unacked: Vec<Record>,
    seen: Coverage,
}

/// What the random sequences exercised, so a quiet generator cannot pass unnoticed.
#[derive(Debug, Default)]
struct Coverage {
    crashes: u64,
    torn_tails: u64,
    unacked_survived: u64,
    empty_restarts: u64,
    rolls: u64,
    compactions: u64,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.crashes += other.crashes;
        self.torn_tails += other.torn_tails;
        self.unacked_survived += other.unacked_survived;
        self.empty_restarts += other.empty_restarts;
        self.rolls += other.rolls;
        self.compactions += other.compactions;
    }
}

impl Model {
    /// The recovered state must be the acknowledged state plus a prefix of the rest.
    fn check_recovered(&mut self, state: &DurableState, context: &str) {
        for k in (0..=self.unacked.len()).rev() {
            if fold(self.acked.as_ref(), &self.unacked[..k]).as_ref() == Some(state) {
                self.seen.unacked_survived += u64::from(k > 0);
                self.acked = Some(state.clone());
                self.unacked.clear();
                return;
            }
        }
        panic!(
            "{context}: recovered state is not the acknowledged records plus a prefix of the rest"
        );
    }
}

/// Opens after a crash (possibly crashing again inside open's own repair) and checks the state.
fn reopen(
    vfs: &MemVfs,
    options: &StorageOptions,
    model: &mut Model,
    rng: &mut Rng,
    context: &str,
) -> Storage<MemVfs> {
    if rng.below(4) == 0 {
        // Power fails again while open repairs the tail or removes leftovers.
        vfs.power_off_after(rng.below(4));
        let _ = Storage::open(vfs.clone(), dir(), options.clone());
        vfs.crash(rng.next_u64());
    }
    let (mut storage, opened) = open(vfs, options);
    match opened {
        Opened::Empty => {
            assert!(
                model.acked.is_none(),
                "{context}: acknowledged records lost"
            );
            model.seen.empty_restarts += 1;
            model.unacked.clear();
            storage.set_identity(&identity()).unwrap();
            storage.append(&[bootstrap()]).unwrap();
            model.unacked.push(bootstrap());
        }
        Opened::Recovered { state, .. } => {
            model.check_recovered(&state, context);
            assert_eq!(storage.state(), Some(&state));
            model.seen.torn_tails += u64::from(storage.torn_tail().is_some());
        }
        Opened::Damaged { problem, .. } => panic!("{context}: damage after a crash: {problem}"),
    }
    storage
}

fn crash_sequence(seed: u64, options: &StorageOptions) -> Coverage {
    let vfs = MemVfs::new();
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut work = Workload::new(seed);
    let mut model = Model {
        acked: None,
        unacked: Vec::new(),
        seen: Coverage::default(),
    };
    let (mut storage, _) = open(&vfs, options);
    storage.set_identity(&identity()).unwrap();
    storage.append(&[bootstrap()]).unwrap();
    model.unacked.push(bootstrap());
    let mut alive = true;
    for step in 0..150 {
        let context = format!("seed {seed} step {step}");
        match rng.below(12) {
            _ if !alive => {}
            0..=4 => {
                let records: Vec<Record> = (0..1 + rng.below(5)).map(|_| work.record()).collect();
                storage.append(&records).unwrap();
                model.unacked.extend(records);
            }
            5..=7 => match storage.sync() {
                Ok(report) => {
                    model.seen.rolls += u64::from(report.rolled);
                    model.seen.compactions += u64::from(report.compacted);
                    model.acked = fold(model.acked.as_ref(), &model.unacked);
                    model.unacked.clear();
                    assert_eq!(storage.state(), model.acked.as_ref(), "{context}");
                }
                Err(_) => alive = false,
            },
            8 if work.chosen > work.snapshot => match try_snapshot(&storage, work.chosen) {
                Ok(handle) => {
                    work.snapshot = work.chosen;
                    storage.append(&[Record::Snapshot(handle.clone())]).unwrap();
                    model.unacked.push(Record::Snapshot(handle));
                }
                // A failure injected for the WAL hit the snapshot's fsync first.
                Err(_) => alive = false,
            },
            9 => {
                // Power fails in the middle of a sync (or of the compaction after it).
                vfs.power_off_after(rng.below(8));
                if storage.sync().is_err() {
                    alive = false;
                } else {
                    vfs.cancel_power_off();
                    model.acked = fold(model.acked.as_ref(), &model.unacked);
                    model.unacked.clear();
                }
            }
            10 if storage.pending_records() > 0 => {
                vfs.fail_next(FailPoint::SyncData);
                assert!(storage.sync().is_err(), "{context}");
                alive = false;
                let later = storage.append(&[work.record()]);
                assert!(
                    matches!(later, Err(StorageError::Stopped { .. })),
                    "{context}"
                );
            }
            _ => alive = false,
        }
        if !alive {
            model.seen.crashes += 1;
            drop(storage);
            vfs.crash(rng.next_u64());
            storage = reopen(&vfs, options, &mut model, &mut rng, &context);
            alive = true;
        }
    }
    // A clean shutdown after a final sync loses nothing.
    storage.sync().unwrap();
    model.acked = fold(model.acked.as_ref(), &model.unacked);
    model.unacked.clear();
    drop(storage);
    vfs.crash_with(seed, Tear::Nothing);
    let (_, opened) = open(&vfs, options);
    assert_eq!(
        Some(recovered(opened)),
        model.acked,
        "seed {seed}: final state"
    );
    model.seen
}

#[test]
fn acknowledged_records_survive_random_crashes_and_torn_writes() {
    let options = small(8 * SECTOR_BYTES);
    let mut seen = Coverage::default();
    for seed in 0..60 {
        seen.add(&crash_sequence(seed, &options));
    }
    assert!(
        seen.crashes > 500
            && seen.torn_tails > 20
            && seen.unacked_survived > 20
            && seen.empty_restarts > 0
            && seen.rolls > 100
            && seen.compactions > 20,
        "{seen:?}"
    );
}

#[test]
fn random_crashes_without_preallocation() {
    let options = StorageOptions {
        preallocate: false,
        ..small(16 * SECTOR_BYTES)
    };
    let mut seen = Coverage::default();
    for seed in 100..130 {
        seen.add(&crash_sequence(seed, &options));
    }
    assert!(seen.torn_tails > 5 && seen.compactions > 5, "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Torn tails and corruption.

/// Three synced batches in one segment; returns the byte offset where each batch starts.
fn three_batches(vfs: &MemVfs) -> (Storage<MemVfs>, Vec<u64>) {
    let mut storage = fresh(vfs, &StorageOptions::default());
    let mut starts = Vec::new();
    let mut at = SECTOR_BYTES + SECTOR_BYTES; // header sector, then the bootstrap batch
    for b in 0..3 {
        starts.push(at);
        storage
            .append(&[accepted(2 * b + 1, 300), accepted(2 * b + 2, 300)])
            .unwrap();
        at += storage.sync().unwrap().bytes;
    }
    (storage, starts)
}

#[test]
fn a_bit_flip_in_the_middle_of_a_synced_segment_is_damage_with_file_and_offset() {
    let vfs = MemVfs::new();
    let (storage, starts) = three_batches(&vfs);
    drop(storage);
    // Inside the payload of the second batch's first record.
    vfs.flip_bit(&segment_path(0), starts[1] + 40, 3).unwrap();
    vfs.crash(1);
    let (mut storage, opened) = open(&vfs, &StorageOptions::default());
    let damage = damage_of(opened);
    assert_eq!(damage.file.as_deref(), Some(segment_path(0).as_path()));
    assert_eq!(damage.offset, Some(starts[1]));
    assert!(
        matches!(
            damage.kind,
            DamageKind::CorruptRecord {
                error: FormatError::ChecksumMismatch { .. },
                later_data_at: Some(later),
            } if later == starts[2]
        ),
        "{damage}"
    );
    // Damaged storage refuses work until quarantined.
    assert!(matches!(
        storage.append(&[accepted(9, 1)]),
        Err(StorageError::Damaged(_))
    ));
    assert!(storage.damage().is_some());
}

#[test]
fn a_zeroed_length_before_later_batches_is_damage() {
    let vfs = MemVfs::new();
    let (storage, starts) = three_batches(&vfs);
    drop(storage);
    let path = segment_path(0);
    let mut image = vfs.durable_contents(&path).unwrap();
    image[starts[1] as usize..starts[1] as usize + 4].fill(0);
    let mut file = vfs.open(&path).unwrap();
    file.write_at(0, &image).unwrap();
    file.sync_data().unwrap();
    drop(file);
    let (_, opened) = open(&vfs, &StorageOptions::default());
    let damage = damage_of(opened);
    assert_eq!(damage.offset, Some(starts[1]));
    assert_eq!(
        damage.kind,
        DamageKind::EndBeforeData {
            later_data_at: starts[2]
        }
    );
}

#[test]
fn a_bit_flip_in_the_tail_of_an_unsynced_batch_is_a_torn_tail() {
    let vfs = MemVfs::new();
    let (mut storage, starts) = three_batches(&vfs);
    let before = storage.state().cloned();
    let tail_start = starts[2] + 2 * SECTOR_BYTES;
    storage
        .append(&[accepted(7, 300), accepted(8, 300)])
        .unwrap();
    // The write reaches the disk but the fdatasync never returns.
    vfs.fail_next(FailPoint::SyncData);
    assert!(matches!(
        storage.sync(),
        Err(StorageError::SyncFailed { .. })
    ));
    drop(storage);
    vfs.crash_with(3, Tear::PrefixAndSectors);
    let image = vfs.durable_contents(&segment_path(0)).unwrap();
    let nonzero = image[tail_start as usize..].iter().rposition(|b| *b != 0);
    if let Some(last) = nonzero {
        vfs.flip_bit(&segment_path(0), tail_start + last as u64, 0)
            .unwrap();
    } else {
        vfs.flip_bit(&segment_path(0), tail_start + 200, 5).unwrap();
    }
    let (storage, opened) = open(&vfs, &StorageOptions::default());
    assert_eq!(Some(recovered(opened)), before);
    let torn = storage.torn_tail().expect("the tail was cut off");
    assert_eq!(torn.offset, tail_start);
    assert_eq!(torn.file, segment_path(0));
    // The cut-off bytes are zero now, so the next batch starts clean.
    let image = vfs.durable_contents(&segment_path(0)).unwrap();
    assert!(image[tail_start as usize..].iter().all(|b| *b == 0));
}

#[test]
fn a_bit_flip_in_the_last_synced_batch_is_the_documented_ambiguity() {
    let vfs = MemVfs::new();
    let (storage, starts) = three_batches(&vfs);
    drop(storage);
    // In the batch's second record.
    vfs.flip_bit(&segment_path(0), starts[2] + 450, 1).unwrap();
    vfs.crash(5);

    // Strict mode refuses to guess.
    let strict = StorageOptions {
        repair_torn_tail: false,
        ..StorageOptions::default()
    };
    let (_, opened) = open(&vfs, &strict);
    let damage = damage_of(opened);
    assert_eq!(damage.offset, Some(starts[2]));
    assert!(matches!(damage.kind, DamageKind::TornTail { .. }));

    // The default cuts it off as a torn tail and says so: bounded to that one batch.
    let (storage, opened) = open(&vfs, &StorageOptions::default());
    let state = recovered(opened);
    assert!(state.log.contains_key(&Slot(4)) && !state.log.contains_key(&Slot(5)));
    let torn = storage.torn_tail().unwrap();
    assert_eq!((torn.offset, torn.records), (starts[2], 1));
}

#[test]
fn a_bad_segment_header_is_damage_at_offset_zero() {
    let vfs = MemVfs::new();
    let (storage, _) = three_batches(&vfs);
    drop(storage);
    vfs.flip_bit(&segment_path(0), 41, 0).unwrap();
    let (_, opened) = open(&vfs, &StorageOptions::default());
    let damage = damage_of(opened);
    assert_eq!(damage.offset, Some(0));
    assert!(matches!(
        damage.kind,
        DamageKind::BadHeader(FormatError::ChecksumMismatch { .. })
    ));
}

/// A storage whose records fill segments 0 through at least 3.
fn several_segments(vfs: &MemVfs) -> Storage<MemVfs> {
    let options = small(4 * SECTOR_BYTES);
    let mut storage = fresh(vfs, &options);
    for slot in 1..=12 {
        storage.append(&[accepted(slot, 500)]).unwrap();
        storage.sync().unwrap();
    }
    assert!(vfs.files().contains(&segment_path(3)));
    storage
}

#[test]
fn a_missing_segment_is_damage() {
    let vfs = MemVfs::new();
    drop(several_segments(&vfs));
    vfs.remove_durably(&segment_path(2)).unwrap();
    let (_, opened) = open(&vfs, &small(4 * SECTOR_BYTES));
    let damage = damage_of(opened);
    assert_eq!(
        damage.kind,
        DamageKind::MissingSegment {
            expected: 2,
            found: 3
        }
    );
    assert_eq!(damage.file, Some(segment_path(3)));

    let vfs = MemVfs::new();
    drop(several_segments(&vfs));
    vfs.remove_durably(&segment_path(0)).unwrap();
    let (_, opened) = open(&vfs, &small(4 * SECTOR_BYTES));
    assert_eq!(damage_of(opened).kind, DamageKind::NoBaseSegment);
}

#[test]
fn a_truncated_middle_segment_is_damage() {
    let vfs = MemVfs::new();
    drop(several_segments(&vfs));
    vfs.truncate(&segment_path(1), SECTOR_BYTES + 100).unwrap();
    let (_, opened) = open(&vfs, &small(4 * SECTOR_BYTES));
    let damage = damage_of(opened);
    assert_eq!(damage.file, Some(segment_path(1)));
    assert_eq!(damage.kind, DamageKind::UnfinishedSegment);
}

/// Found by the real-process fault harness: a WAL segment cut short (its data running into the
/// end of the file) was read as a torn tail and silently dropped synced, acknowledged batches. A
/// torn write never shortens a preallocated segment, so this is damage.
#[test]
fn a_last_segment_cut_short_is_damage_not_a_torn_tail() {
    let vfs = MemVfs::new();
    drop(several_segments(&vfs));
    let last = vfs
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .expect("segments");
    vfs.truncate(&last, SECTOR_BYTES + 100).unwrap();
    let (_, opened) = open(&vfs, &small(4 * SECTOR_BYTES));
    let damage = damage_of(opened);
    assert_eq!(damage.file, Some(last));
    assert_eq!(
        damage.kind,
        DamageKind::Truncated {
            len: SECTOR_BYTES + 100,
            segment_bytes: 4 * SECTOR_BYTES
        }
    );
}

#[test]
fn missing_identity_or_missing_wal_is_damage() {
    let vfs = MemVfs::new();
    drop(several_segments(&vfs));
    vfs.remove_durably(&dir().join(names::IDENTITY)).unwrap();
    let (_, opened) = open(&vfs, &small(4 * SECTOR_BYTES));
    assert!(matches!(
        opened,
        Opened::Damaged {
            identity: None,
            problem: replicated_log::storage::Damage {
                kind: DamageKind::IdentityMissing,
                ..
            }
        }
    ));

    let vfs = MemVfs::new();
    drop(several_segments(&vfs));
    for path in vfs.files() {
        if path.to_string_lossy().ends_with(".log") {
            vfs.remove_durably(&path).unwrap();
        }
    }
    let (_, opened) = open(&vfs, &small(4 * SECTOR_BYTES));
    match opened {
        Opened::Damaged {
            identity: id,
            problem,
        } => {
            assert_eq!(id, Some(identity()));
            assert_eq!(problem.kind, DamageKind::WalMissing);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wiped_disk_is_empty_and_a_corrupt_identity_is_damage() {
    let vfs = MemVfs::new();
    drop(several_segments(&vfs));
    vfs.flip_bit(&dir().join(names::IDENTITY), 20, 2).unwrap();
    let (_, opened) = open(&vfs, &small(4 * SECTOR_BYTES));
    assert!(matches!(damage_of(opened).kind, DamageKind::BadIdentity(_)));
    vfs.wipe();
    let (_, opened) = open(&vfs, &small(4 * SECTOR_BYTES));
    assert_eq!(opened, Opened::Empty);
}

/// Writes a segment by hand (the storage itself refuses to write inconsistent records).
fn handmade_segment(vfs: &MemVfs, records: &[Record]) {
    vfs.create_dir(&dir()).unwrap();
    let header = SegmentHeader {
        seq: 0,
        first_batch: 0,
        base: true,
        cluster: identity().cluster,
        node: NODE,
    };
    let mut bytes = header.encode();
    bytes.resize(SECTOR_BYTES as usize, 0);
    let encoded: Vec<Vec<u8>> = records
        .iter()
        .map(|r| format::encode_record(r).unwrap())
        .collect();
    format::encode_batch(&encoded, 0, &mut bytes);
    bytes.resize(8 * SECTOR_BYTES as usize, 0);
    let mut file = vfs.create(&segment_path(0)).unwrap();
    file.write_at(0, &bytes).unwrap();
    let mut id = vfs.create(&dir().join(names::IDENTITY)).unwrap();
    id.write_at(0, &format::encode_identity(&identity()))
        .unwrap();
}

#[test]
fn records_that_do_not_recover_are_damage_at_the_offending_record() {
    let vfs = MemVfs::new();
    handmade_segment(&vfs, &[Record::Promised(ballot(1)), bootstrap()]);
    let (_, opened) = open(&vfs, &StorageOptions::default());
    let damage = damage_of(opened);
    assert_eq!(damage.offset, Some(SECTOR_BYTES));
    assert_eq!(
        damage.kind,
        DamageKind::Unrecoverable(RecoverError::NoIdentity)
    );

    let vfs = MemVfs::new();
    let back = [
        bootstrap(),
        Record::Promised(ballot(5)),
        Record::Promised(ballot(2)),
    ];
    handmade_segment(&vfs, &back);
    let (_, opened) = open(&vfs, &StorageOptions::default());
    let damage = damage_of(opened);
    assert!(damage.offset.unwrap() > SECTOR_BYTES);
    assert!(matches!(
        damage.kind,
        DamageKind::Unrecoverable(RecoverError::Inconsistent(_))
    ));
}

#[test]
fn an_inconsistent_append_stops_the_storage() {
    let vfs = MemVfs::new();
    let mut storage = fresh(&vfs, &StorageOptions::default());
    storage.append(&[Record::Promised(ballot(5))]).unwrap();
    let error = storage.append(&[Record::Promised(ballot(2))]).unwrap_err();
    assert!(matches!(error, StorageError::Inconsistent(_)), "{error}");
    assert!(matches!(storage.sync(), Err(StorageError::Stopped { .. })));
}

#[test]
fn a_failed_fsync_is_fatal_and_never_retried() {
    let vfs = MemVfs::new();
    let mut storage = fresh(&vfs, &StorageOptions::default());
    storage.append(&[accepted(1, 10)]).unwrap();
    vfs.fail_next(FailPoint::SyncData);
    let error = storage.sync().unwrap_err();
    assert!(matches!(error, StorageError::SyncFailed { .. }));
    assert!(error.to_string().contains("must exit"), "{error}");
    let syncs = vfs.stats().data_syncs;
    assert!(matches!(storage.sync(), Err(StorageError::Stopped { .. })));
    assert!(matches!(
        storage.append(&[accepted(2, 10)]),
        Err(StorageError::Stopped { .. })
    ));
    assert!(storage
        .begin_snapshot(&SnapshotHandle {
            slot: Slot(1),
            membership: membership()
        })
        .is_err());
    assert_eq!(vfs.stats().data_syncs, syncs, "no fsync after the failure");
    assert!(storage.stopped().is_some());
}

#[test]
fn group_commit_is_one_write_and_one_fdatasync() {
    let vfs = MemVfs::new();
    let mut storage = fresh(&vfs, &StorageOptions::default());
    let before = vfs.stats();
    for slot in 1..=50 {
        storage.append(&[accepted(slot, 100)]).unwrap();
    }
    assert_eq!(vfs.stats(), before, "append does no IO");
    let report = storage.sync().unwrap();
    let after = vfs.stats();
    assert_eq!(after.writes - before.writes, 1);
    assert_eq!(after.data_syncs - before.data_syncs, 1);
    assert_eq!(after.dir_syncs, before.dir_syncs);
    assert_eq!(report.records, 50);
    assert_eq!(report.batches, 1);
    assert!(!report.rolled);
    assert_eq!(report.bytes % SECTOR_BYTES, 0);
    assert_eq!(
        storage.sync().unwrap(),
        Default::default(),
        "nothing pending"
    );
    let metrics = storage.metrics();
    assert_eq!(metrics.records, 51);
    assert!(metrics.fsyncs() >= 4);
}

#[test]
fn segments_roll_and_recover_across_many_files() {
    let vfs = MemVfs::new();
    let storage = several_segments(&vfs);
    let state = storage.state().cloned();
    assert!(storage.metrics().segments_created >= 4);
    drop(storage);
    vfs.crash(9);
    let (_, opened) = open(&vfs, &small(4 * SECTOR_BYTES));
    assert_eq!(Some(recovered(opened)), state);
}

#[test]
fn an_oversized_record_gets_its_own_larger_segment() {
    let vfs = MemVfs::new();
    let options = small(4 * SECTOR_BYTES);
    let mut storage = fresh(&vfs, &options);
    storage
        .append(&[accepted(1, 5000), accepted(2, 10)])
        .unwrap();
    let report = storage.sync().unwrap();
    assert!(report.rolled);
    let state = storage.state().cloned();
    drop(storage);
    vfs.crash(2);
    let (_, opened) = open(&vfs, &options);
    assert_eq!(Some(recovered(opened)), state);
}

// ---------------------------------------------------------------------------------------------
// Identity and quarantine.

#[test]
fn a_crash_before_the_first_record_is_synced_recovers_as_empty() {
    let options = small(8 * SECTOR_BYTES);
    for ops in 0..40 {
        let vfs = MemVfs::new();
        let (mut storage, _) = open(&vfs, &options);
        vfs.power_off_after(ops);
        let _ = storage
            .set_identity(&identity())
            .and_then(|()| storage.append(&[bootstrap()]));
        let synced = storage.sync().is_ok();
        let finished = !vfs.powered_off();
        drop(storage);
        vfs.crash(ops);
        let (_, opened) = open(&vfs, &options);
        match opened {
            Opened::Empty => assert!(!synced, "ops {ops}: an acknowledged bootstrap was lost"),
            Opened::Recovered { state, .. } => assert_eq!(state.node, NODE),
            Opened::Damaged { problem, .. } => panic!("ops {ops}: {problem}"),
        }
        if finished {
            return;
        }
    }
    panic!("set_identity and the first sync take fewer than 40 operations");
}

#[test]
fn identity_changes_only_its_incarnation() {
    let vfs = MemVfs::new();
    let mut storage = fresh(&vfs, &StorageOptions::default());
    let other = Identity {
        node: NodeId(2),
        ..identity()
    };
    assert!(matches!(
        storage.set_identity(&other),
        Err(StorageError::IdentityConflict { .. })
    ));
    let next = Identity {
        incarnation: Incarnation(2),
        ..identity()
    };
    storage.set_identity(&next).unwrap();
    drop(storage);
    vfs.crash(0);
    let (storage, opened) = open(&vfs, &StorageOptions::default());
    assert!(matches!(opened, Opened::Recovered { identity, .. } if identity == next));
    assert_eq!(storage.identity(), Some(next));
}

#[test]
fn quarantine_moves_everything_aside_and_leaves_an_empty_directory() {
    let vfs = MemVfs::new();
    drop(several_segments(&vfs));
    vfs.remove_durably(&segment_path(1)).unwrap();
    let options = small(4 * SECTOR_BYTES);
    let (mut storage, opened) = open(&vfs, &options);
    assert!(matches!(opened, Opened::Damaged { .. }));
    let before: Vec<PathBuf> = vfs.files();
    let aside = storage.quarantine().unwrap();
    assert_eq!(aside, dir().join("damaged-0"));
    let after = vfs.files();
    assert_eq!(before.len(), after.len(), "nothing is deleted");
    assert!(after.iter().all(|p| p.starts_with(&aside)));
    vfs.crash(4);
    assert_eq!(vfs.files(), after, "the moves are durable");

    let (mut storage, opened) = open(&vfs, &options);
    assert_eq!(opened, Opened::Empty);
    storage.set_identity(&identity()).unwrap();
    storage.append(&[bootstrap()]).unwrap();
    storage.sync().unwrap();
    assert_eq!(storage.quarantine().unwrap(), dir().join("damaged-1"));
}

#[test]
fn quarantine_survives_a_crash_at_every_step() {
    let options = small(4 * SECTOR_BYTES);
    for ops in 0.. {
        let vfs = MemVfs::new();
        drop(several_segments(&vfs));
        let count = vfs.files().len();
        let (mut storage, _) = open(&vfs, &options);
        vfs.power_off_after(ops);
        let done = storage.quarantine().is_ok();
        let finished = !vfs.powered_off();
        drop(storage);
        vfs.crash(ops);
        let files = vfs.files();
        let aside: Vec<&PathBuf> = files
            .iter()
            .filter(|p| p.starts_with(dir().join("damaged-0")))
            .collect();
        let here = files.len() - aside.len();
        assert!(
            here == count || aside.len() == count,
            "ops {ops}: every file is whole in one place"
        );
        let (_, opened) = open(&vfs, &options);
        if done {
            assert_eq!(opened, Opened::Empty, "ops {ops}");
        } else {
            assert!(
                !matches!(opened, Opened::Damaged { .. }) || here < count,
                "ops {ops}"
            );
        }
        if finished {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compaction.

struct CompactionCase {
    vfs: MemVfs,
    storage: Storage<MemVfs>,
    before: DurableState,
    after: DurableState,
}

/// Records over three segments, an older snapshot at slot 2, a new snapshot file at slot 6 and its
/// record appended but not synced.
fn compaction_case(options: &StorageOptions) -> CompactionCase {
    let vfs = MemVfs::new();
    let mut storage = fresh(&vfs, options);
    for slot in 1..=8 {
        storage.append(&[accepted(slot, 400)]).unwrap();
        storage.sync().unwrap();
    }
    for slot in 1..=6 {
        storage
            .append(&[Record::Chosen {
                slot: Slot(slot),
                value: value(slot, 400),
            }])
            .unwrap();
    }
    let old = write_snapshot(&storage, 2);
    storage.append(&[Record::Snapshot(old)]).unwrap();
    storage.sync().unwrap();
    let before = storage.state().unwrap().clone();
    let handle = write_snapshot(&storage, 6);
    storage.append(&[Record::Snapshot(handle)]).unwrap();
    let after = storage.state().unwrap().clone();
    CompactionCase {
        vfs,
        storage,
        before,
        after,
    }
}

#[test]
fn compaction_restates_the_state_and_removes_what_it_supersedes() {
    let options = small(8 * SECTOR_BYTES);
    let CompactionCase {
        vfs,
        mut storage,
        after,
        ..
    } = compaction_case(&options);
    let report = storage.sync().unwrap();
    assert!(report.compacted);
    let wal: Vec<PathBuf> = vfs
        .files()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".log"))
        .collect();
    assert_eq!(wal.len(), 1, "one base segment is left: {wal:?}");
    assert!(!vfs.files().contains(&dir().join(names::snapshot(Slot(2)))));
    drop(storage);
    vfs.crash(1);
    let (storage, opened) = open(&vfs, &options);
    assert_eq!(recovered(opened), after);
    let (handle, mut reader) = storage.open_snapshot().unwrap().unwrap();
    assert_eq!(handle.slot, Slot(6));
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut data).unwrap();
    assert_eq!(data, snapshot_data(6));
}

#[test]
fn compaction_survives_a_crash_at_every_step() {
    let options = small(8 * SECTOR_BYTES);
    for ops in 0.. {
        let mut case = compaction_case(&options);
        case.vfs.power_off_after(ops);
        let result = case.storage.sync();
        let finished = !case.vfs.powered_off();
        drop(case.storage);
        case.vfs.crash(ops);
        let (mut storage, opened) = open(&case.vfs, &options);
        let state = recovered(opened);
        if result.is_ok() {
            assert_eq!(
                state, case.after,
                "ops {ops}: an acknowledged snapshot record was lost"
            );
        } else {
            assert!(state == case.before || state == case.after, "ops {ops}");
        }
        // The snapshot the state refers to is there and whole.
        let (handle, mut reader) = storage.open_snapshot().unwrap().unwrap();
        assert_eq!(handle.slot, state.snapshot.slot, "ops {ops}");
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut data).unwrap();
        assert_eq!(data, snapshot_data(handle.slot.0), "ops {ops}");
        // And the log goes on.
        storage.append(&[accepted(20, 10)]).unwrap();
        storage.sync().unwrap();
        let expected = storage.state().cloned();
        drop(storage);
        case.vfs.crash(ops + 1000);
        let (_, opened) = open(&case.vfs, &options);
        assert_eq!(Some(recovered(opened)), expected, "ops {ops}");
        if finished {
            // Batch write and sync; the new base segment's write, sync, rename and directory sync;
            // the superseded files recycled or removed and the directory synced.
            assert!(ops >= 8, "compaction takes several steps, not {ops}");
            break;
        }
    }
}

/// Segments recycled by compaction are rolled into and written over, with a crash at every step of
/// a run of several compactions: recovery reads none of their old contents as data and loses no
/// synced record.
#[test]
fn recycled_segments_survive_a_crash_at_every_step() {
    let options = small(8 * SECTOR_BYTES);
    let mut recycled_seen = false;
    for ops in 0.. {
        let vfs = MemVfs::new();
        let mut storage = fresh(&vfs, &options);
        vfs.power_off_after(ops);
        let mut acked = storage.state().cloned();
        let mut pending = None;
        for slot in 1..=24u64 {
            storage.append(&[accepted(slot, 600)]).unwrap();
            if slot % 4 == 0 {
                let chosen: Vec<Record> = (slot - 3..=slot)
                    .map(|s| Record::Chosen {
                        slot: Slot(s),
                        value: value(s, 600),
                    })
                    .collect();
                storage.append(&chosen).unwrap();
                match try_snapshot(&storage, slot) {
                    Ok(handle) => storage.append(&[Record::Snapshot(handle)]).unwrap(),
                    Err(_) => break,
                }
            }
            pending = storage.state().cloned();
            if storage.sync().is_err() {
                break;
            }
            acked = pending.clone();
            let names: Vec<String> = vfs
                .list(&dir())
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            recycled_seen |= names.iter().any(|n| n.starts_with("wal-recycled-"));
        }
        let finished = !vfs.powered_off();
        drop(storage);
        vfs.crash(ops);
        let (mut storage, opened) = open(&vfs, &options);
        let state = Some(recovered(opened));
        assert!(
            state == acked || state == pending,
            "ops {ops}: recovered neither the acknowledged state nor the one being synced"
        );
        storage.append(&[accepted(100, 10)]).unwrap();
        storage.sync().unwrap();
        let expected = storage.state().cloned();
        drop(storage);
        vfs.crash(ops + 1000);
        let (_, opened) = open(&vfs, &options);
        assert_eq!(Some(recovered(opened)), expected, "ops {ops}");
        if finished {
            break;
        }
    }
    assert!(recycled_seen, "compaction recycled no segment");
}

#[test]
fn the_storage_files_are_the_only_ones_it_touches() {
    let vfs = MemVfs::new();
    vfs.create_dir(&dir()).unwrap();
    let notes = dir().join("NOTES.txt");
    let mut file = vfs.create(&notes).unwrap();
    file.write_at(0, b"operator notes").unwrap();
    file.sync_data().unwrap();
    vfs.sync_dir(&dir()).unwrap();
    let (_, opened) = open(&vfs, &StorageOptions::default());
    assert_eq!(opened, Opened::Empty);
    let mut storage = fresh_after_open(&vfs);
    storage.quarantine().unwrap();
    assert!(vfs.files().contains(&notes));
}

fn fresh_after_open(vfs: &MemVfs) -> Storage<MemVfs> {
    let (mut storage, _) = open(vfs, &StorageOptions::default());
    storage.set_identity(&identity()).unwrap();
    storage.append(&[bootstrap()]).unwrap();
    storage.sync().unwrap();
    storage
}

#[test]
fn every_damage_names_what_to_do() {
    let error = StorageError::Damaged(replicated_log::storage::Damage {
        file: Some(Path::new("wal-00000000000000000003.log").to_path_buf()),
        offset: Some(4096),
        kind: DamageKind::UnfinishedSegment,
    });
    let text = error.to_string();
    assert!(
        text.contains("quarantine") && text.contains("4096"),
        "{text}"
    );
}

#[test]
fn compaction_waits_for_a_spare_being_made_rather_than_zero_fill_in_the_sync() {
    let options = small(8 * SECTOR_BYTES);
    let vfs = MemVfs::new();
    let mut storage = fresh(&vfs, &options);
    for slot in 1..=3 {
        storage
            .append(&[Record::Chosen {
                slot: Slot(slot),
                value: value(slot, 100),
            }])
            .unwrap();
    }
    storage.sync().unwrap();
    // The writer asked for a spare; it is still being zero-filled on another thread.
    let (spare, capacity) = storage.spare_wanted().expect("no spare yet");
    let handle = write_snapshot(&storage, 3);
    storage.append(&[Record::Snapshot(handle)]).unwrap();
    let after = storage.state().unwrap().clone();
    let report = storage.sync().unwrap();
    assert!(!report.compacted, "compaction waits for the spare");
    let written = storage.metrics().bytes_written;
    let result = prepare_spare(&vfs, &spare, capacity);
    storage.spare_ready(spare, result);
    let report = storage.sync().unwrap();
    assert!(report.compacted, "the next sync compacts into the spare");
    assert!(
        storage.metrics().bytes_written - written < capacity,
        "nothing was zero-filled in the sync"
    );
    drop(storage);
    vfs.crash(1);
    let (_, opened) = open(&vfs, &options);
    assert_eq!(recovered(opened), after);
}
