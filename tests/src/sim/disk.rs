//! The real storage under the simulator.
//!
//! On a real-disk seed (`Options::real_disk`) each node's disk is
//! `replicated_log::storage::Storage` over an in-memory disk of its own (`MemVfs`) instead of the
//! model disk. The engine's `Persist` records go through `append`; the simulator's sync event calls
//! `sync`; only once `sync` returned Ok are the held messages released and the records reported
//! durable to the oracle. A crash is `MemVfs::crash_with` (unsynced writes lost, or torn), and the
//! restart is `Storage::open`: `Recovered` becomes `Replica::recover`, `Damaged` a quarantine and a
//! rebuild. The application's snapshots are snapshot files of the real storage, written with
//! `begin_snapshot`/`finish`; catch-up ships a file's bytes (`snapshot_bytes`) and the receiver
//! installs them (`install_snapshot_bytes`).
//!
//! The model disk's `durable` records stay as the simulator's record of what storage acknowledged:
//! every record of a `sync` that returned Ok, compacted as storage compacts. The disk check
//! (`Check::SyncedLost`) holds storage to its contract at every restart:
//!
//! - a recovered state is exactly the acknowledged records folded, plus a prefix of the records
//!   appended but not acknowledged when the node crashed (a sync the crash interrupted may have
//!   written some of them; those are reported to the oracle as durable votes, as the model disk's
//!   surviving prefix is);
//! - storage comes back empty only if it acknowledged nothing;
//! - it reports damage only when the simulator damaged the disk, and it reports every damage the
//!   simulator dealt (then the node quarantines its directory and rebuilds, PML 5.1).
//!
//! Faults, all seeded, all on real-disk seeds only: crashes that interrupt a sync part way (the disk
//! loses power after a few operations), torn writes of whatever was not synced, failed fdatasyncs
//! (fatal: the node crashes and restarts), and, rarely and only while the group can afford the
//! rebuild, damage to a down node's disk: a bit flipped in synced WAL bytes (a segment header, or a
//! record of a batch that a later synced batch follows), a bit flipped in the snapshot file the
//! acknowledged state names, an older segment truncated or removed, the identity file removed.
//!
//! The one ambiguity (`docs/storage-format.md`, "The one ambiguity, and its bound"): a bit flip in
//! the last synced batch of the last segment, with nothing synced after it, looks exactly like a torn
//! write of that batch, and storage cuts it off as one. The simulator never flips a bit there, so
//! that every flip it makes must be reported; the bound is storage's own tests' business.

use super::{Event, Sim, MS, SECOND};
use crate::app::Register;
use crate::oracle::Check;
use paxos_core::rng::Rng;
use paxos_core::{
    DurableState, Incarnation, NodeId, Outgoing, Record, Replica, Slot, SnapshotHandle,
};
use replicated_log::storage::format::{self, names, Frame, SegmentHeader};
use replicated_log::storage::limits::{SECTOR_BYTES, SEGMENT_HEADER_BYTES};
use replicated_log::storage::{
    prepare_spare, FailPoint, Identity, MemVfs, Opened, SnapshotWriter, Storage, StorageError,
    StorageOptions, Tear,
};
use replicated_log::ClusterId;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where each node keeps its data, on its own in-memory disk.
const DATA_DIR: &str = "/data";
const CLUSTER: ClusterId = ClusterId(0x5EED_D15C);
/// Bytes of the segment header its checksum covers: damage there is always reported.
const HEADER_CHECKED_BYTES: u64 = SEGMENT_HEADER_BYTES - 4;
/// A snapshot file holds the register: value, applied slot, hash chain; on a chubby seed the
/// database's own snapshot bytes follow (`chubby_db::Snapshot`, checksummed).
const REGISTER_BYTES: usize = 24;

/// Which disk the simulated nodes run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskChoice {
    /// The model disk: records, and the simulator's own judgement of what survives a crash.
    Model,
    /// The real storage code over a faulty in-memory disk.
    Real,
    /// Drawn from the seed: about half the seeds run the real storage.
    #[default]
    Mixed,
}

/// Deliberately broken uses of storage, for the teeth tests. Not reachable from the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskBugs {
    /// Messages go out as soon as their records are appended, before a `sync` covers them.
    pub release_before_sync: bool,
    /// The sync event releases messages and counts records durable without calling `sync`.
    pub ack_without_sync: bool,
}

/// How a real-disk seed runs its disks. Drawn from the seed (see [`RealDiskOptions::from_seed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealDiskOptions {
    /// Small segments, so that rolls and compactions happen often.
    pub storage: StorageOptions,
    /// Chance, per restart in the fault phase, that the disk was damaged while the node was down
    /// (only while the group can afford the rebuild that follows).
    pub damage_ppm: u64,
    /// Chance, per sync with records to write in the fault phase, that an fdatasync fails.
    pub sync_fail_ppm: u64,
    /// Chance that a crash interrupts the sync of the records a node holds unsynced.
    pub crash_mid_sync_ppm: u64,
    /// Chance, per sync with records to write in the fault phase, that the power fails during it.
    pub power_loss_ppm: u64,
    pub bugs: DiskBugs,
}

impl RealDiskOptions {
    /// `None` on a model-disk seed. Drawn from its own generator, so that the other options of a
    /// seed are the same whichever disk it runs.
    pub fn from_seed(seed: u64, choice: DiskChoice) -> Option<RealDiskOptions> {
        let mut rng = Rng::new(seed ^ 0xD15C_0000_5EED_0001);
        let real = match choice {
            DiskChoice::Model => false,
            DiskChoice::Real => true,
            DiskChoice::Mixed => rng.chance(500_000),
        };
        if !real {
            return None;
        }
        Some(RealDiskOptions {
            storage: StorageOptions {
                segment_bytes: [16 * 1024, 64 * 1024, 64 * 1024][rng.below(3) as usize],
                preallocate: rng.chance(500_000),
                repair_torn_tail: true,
            },
            damage_ppm: 20_000 + rng.below(130_000),
            sync_fail_ppm: rng.below(200),
            crash_mid_sync_ppm: 250_000 + rng.below(500_000),
            power_loss_ppm: rng.below(800),
            bugs: DiskBugs::default(),
        })
    }
}

/// Damage the simulator dealt to a down node's disk, which the next `open` must report.
#[derive(Debug)]
struct Injected {
    what: String,
    /// A snapshot file was damaged: reported only if the recovered state names it (otherwise the
    /// file is superseded and `open` removes it unread).
    snapshot: Option<Slot>,
}

/// One node's disk: its storage, and what the simulator knows about it.
pub(super) struct RealDisk {
    vfs: MemVfs,
    options: StorageOptions,
    /// `None` while the node is down: a crash makes every file handle stale.
    storage: Option<Storage<MemVfs>>,
    /// Snapshots begun when taken, finished by `Event::SnapshotWritten`.
    writing: Vec<(Slot, SnapshotWriter<MemVfs>)>,
    /// What the node had appended but not seen synced when it crashed, in order: a prefix of it may
    /// survive.
    unsynced: Vec<(Incarnation, Record)>,
    injected: Option<Injected>,
    /// The node rebuilds because storage found damage: counted when the rebuild completes.
    rebuilding_after_damage: bool,
    /// The power fails during the sync under way: the crash that follows interrupts it.
    power_loss: bool,
}

impl RealDisk {
    pub(super) fn new(options: &RealDiskOptions) -> RealDisk {
        let mut disk = RealDisk {
            vfs: MemVfs::new(),
            options: options.storage.clone(),
            storage: None,
            writing: Vec::new(),
            unsynced: Vec::new(),
            injected: None,
            rebuilding_after_damage: false,
            power_loss: false,
        };
        let opened = disk.open().expect("a fresh disk opens");
        assert_eq!(opened, Opened::Empty, "a fresh disk is empty");
        disk
    }

    fn open(&mut self) -> Result<Opened, StorageError> {
        self.storage = None;
        let (storage, opened) = Storage::open(self.vfs.clone(), DATA_DIR, self.options.clone())?;
        self.storage = Some(storage);
        Ok(opened)
    }

    fn storage(&mut self) -> &mut Storage<MemVfs> {
        self.storage.as_mut().expect("the node is up")
    }

    /// As the driver's writer does: the identity file before the record that creates the replica.
    fn append(&mut self, node: NodeId, records: &[Record]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        let storage = self.storage();
        for record in records {
            if let Record::Bootstrap { incarnation, .. }
            | Record::RebuildBegan { incarnation, .. } = record
            {
                storage.set_identity(&Identity {
                    cluster: CLUSTER,
                    node,
                    incarnation: *incarnation,
                })?;
            }
        }
        storage.append(records)
    }

    /// One group commit; `fail` makes its fdatasync fail. Then the next segment is prepared, as the
    /// driver's helper thread does (synchronously here).
    fn sync(&mut self, fail: bool) -> Result<(), StorageError> {
        let vfs = self.vfs.clone();
        let storage = self.storage();
        if storage.identity().is_none() {
            return Ok(()); // nothing appended yet (a rebuild that has not begun)
        }
        if fail && storage.pending_records() > 0 {
            vfs.fail_next(FailPoint::SyncData);
        }
        storage.sync()?;
        if let Some((path, capacity)) = storage.spare_wanted() {
            let result = prepare_spare(&vfs, &path, capacity);
            storage.spare_ready(path, result);
        }
        Ok(())
    }

    /// A sync that the power cuts after `ops` disk operations. Whether it returned Ok.
    fn sync_until_power_off(&mut self, ops: u64) -> bool {
        let vfs = self.vfs.clone();
        let Some(storage) = self.storage.as_mut() else {
            return false;
        };
        if storage.identity().is_none() {
            return false;
        }
        vfs.power_off_after(ops);
        storage.sync().is_ok()
    }

    fn pending_records(&self) -> usize {
        self.storage.as_ref().map_or(0, Storage::pending_records)
    }

    fn crash(&mut self, seed: u64, tear: Tear) {
        self.storage = None;
        self.writing.clear();
        self.vfs.crash_with(seed, tear);
    }

    /// The disk is replaced by an empty one.
    pub(super) fn wipe(&mut self) {
        self.storage = None;
        self.writing.clear();
        self.unsynced.clear();
        self.injected = None;
        self.vfs.wipe();
    }

    /// Leaves the storage open and empty, for a rebuild: whatever it holds is quarantined.
    pub(super) fn start_empty(&mut self) {
        self.unsynced.clear();
        self.injected = None;
        if self.storage.is_none() {
            self.open().expect("the data directory opens");
        }
        let storage = self.storage();
        if storage.identity().is_some() || storage.damage().is_some() {
            storage.quarantine().expect("quarantine succeeds");
        }
        self.writing.clear();
    }

    fn begin_snapshot(&mut self, handle: &SnapshotHandle, register: &Register) {
        let mut writer = self
            .storage()
            .begin_snapshot(handle)
            .expect("a snapshot file can be started");
        writer
            .write_all(&encode_register(register))
            .expect("a snapshot file can be written");
        if let Some(db) = &register.db {
            writer
                .write_all(&db.snapshot().to_bytes())
                .expect("a snapshot file can be written");
        }
        self.writing.push((handle.slot, writer));
    }

    fn finish_snapshot(&mut self, slot: Slot) -> Result<(), StorageError> {
        let at = self
            .writing
            .iter()
            .position(|(s, _)| *s == slot)
            .expect("a snapshot being written at this slot");
        let (_, writer) = self.writing.swap_remove(at);
        writer.finish().map(drop)
    }

    /// The register in the snapshot file at `slot`, every chunk and the trailer verified.
    fn read_register(&mut self, slot: Slot) -> Result<Register, String> {
        if slot == Slot::ZERO {
            return Ok(Register::default());
        }
        let mut reader = self
            .storage()
            .open_snapshot_at(slot)
            .map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let split = bytes.len().min(REGISTER_BYTES);
        let mut register = decode_register(&bytes[..split])
            .ok_or_else(|| format!("snapshot at {slot} holds {} bytes", bytes.len()))?;
        if bytes.len() > REGISTER_BYTES {
            let db = chubby_db::Database::from_snapshot(&mut &bytes[REGISTER_BYTES..])
                .map_err(|e| format!("the database in the snapshot at {slot}: {e}"))?;
            register.db = Some(Box::new(db));
        }
        if register.applied != slot {
            return Err(format!(
                "snapshot file at {slot} holds the state at {}",
                register.applied
            ));
        }
        Ok(register)
    }
}

fn encode_register(register: &Register) -> [u8; REGISTER_BYTES] {
    let mut bytes = [0u8; REGISTER_BYTES];
    bytes[0..8].copy_from_slice(&register.value.to_le_bytes());
    bytes[8..16].copy_from_slice(&register.applied.0.to_le_bytes());
    bytes[16..24].copy_from_slice(&register.chain.to_le_bytes());
    bytes
}

fn decode_register(bytes: &[u8]) -> Option<Register> {
    let bytes: &[u8; REGISTER_BYTES] = bytes.try_into().ok()?;
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("eight bytes"));
    Some(Register {
        value: word(0),
        applied: Slot(word(8)),
        chain: word(16),
        db: None,
    })
}

// The simulator's side: called from the events in `sim.rs` on real-disk seeds.
impl Sim {
    fn real_options(&self) -> &RealDiskOptions {
        self.options.real_disk.as_ref().expect("a real-disk seed")
    }

    fn real_disk(&mut self, node: usize) -> &mut RealDisk {
        self.nodes[node].real.as_mut().expect("a real-disk seed")
    }

    /// `Action::Persist`: the records go to storage (no IO until the sync).
    pub(super) fn append_real(&mut self, node: usize, records: &[Record], messages: &[Outgoing]) {
        let id = self.nodes[node].id;
        if let Err(error) = self.real_disk(node).append(id, records) {
            panic!("{id}: storage refused an append: {error}");
        }
        if self.real_options().bugs.release_before_sync {
            for outgoing in messages {
                self.transmit(node, outgoing.clone());
            }
        }
    }

    /// The sync event: one `sync` covers every record appended so far. Returns false if it failed
    /// (then the node crashed).
    pub(super) fn sync_real(&mut self, node: usize) -> bool {
        let options = self.real_options();
        let (bugs, fail_ppm, loss_ppm) =
            (options.bugs, options.sync_fail_ppm, options.power_loss_ppm);
        let fail = self.faults_on && self.rng.chance(fail_ppm);
        let writes = self.real_disk(node).pending_records() > 0;
        if writes && self.faults_on && self.rng.chance(loss_ppm) && self.alive_count() > 1 {
            self.real_disk(node).power_loss = true;
            self.crash(node);
            let down_for = 50 * MS + self.rng.below(3 * SECOND);
            self.schedule(down_for, Event::Restart { node });
            return false;
        }
        if !bugs.ack_without_sync {
            if let Err(error) = self.real_disk(node).sync(fail) {
                self.disk_failed(node, error);
                return false;
            }
        }
        let disk = &mut self.nodes[node].disk;
        disk.syncing = disk.pending.len();
        true
    }

    fn alive_count(&self) -> usize {
        let alive = |n: &&super::Node| n.engine.is_some() && !n.retired;
        self.nodes.iter().filter(alive).count()
    }

    /// A failed fsync is fatal: the process exits and recovers from disk.
    fn disk_failed(&mut self, node: usize, error: StorageError) {
        let id = self.nodes[node].id;
        assert!(
            matches!(error, StorageError::SyncFailed { .. }),
            "{id}: storage failed unexpectedly: {error}"
        );
        self.stats.sync_failures += 1;
        if self.options.trace {
            println!("{:.6} {id}: {error}", self.now as f64 / 1e9);
        }
        self.crash(node);
        let down_for = 50 * MS + self.rng.below(3 * SECOND);
        self.schedule(down_for, Event::Restart { node });
    }

    /// The process dies. If it held unsynced records, the crash may catch their sync part way.
    pub(super) fn crash_real(&mut self, node: usize, unsynced: Vec<(Incarnation, Record)>) {
        let mid_sync_ppm = self.real_options().crash_mid_sync_ppm;
        let power_loss = std::mem::take(&mut self.real_disk(node).power_loss);
        let mid_sync = !unsynced.is_empty() && (power_loss || self.rng.chance(mid_sync_ppm));
        // Often the power goes right after the batch's write, before its fdatasync (the torn write
        // storage must cut off); otherwise anywhere in the sync (a roll or compaction is longer).
        let ops = if self.rng.chance(500_000) {
            1
        } else {
            self.rng.below(10)
        };
        let tear =
            [Tear::Nothing, Tear::Prefix, Tear::PrefixAndSectors][self.rng.below(3) as usize];
        let seed = self.rng.next_u64();
        let real = self.real_disk(node);
        let synced = mid_sync && real.sync_until_power_off(ops);
        real.crash(seed, tear);
        if !synced {
            real.unsynced = unsynced;
            return;
        }
        real.unsynced.clear();
        // The sync returned Ok just before the power went: acknowledged, though the process died
        // before it could send what the records released.
        for (incarnation, record) in unsynced {
            self.make_durable(node, incarnation, std::slice::from_ref(&record));
            self.nodes[node].disk.durable.push(record);
        }
    }

    /// The node comes back from what its storage recovers (the wipe fault is handled before).
    pub(super) fn restart_real(&mut self, node: usize) {
        let damage_ppm = self.real_options().damage_ppm;
        if self.faults_on && self.rng.chance(damage_ppm) && self.wipe_allowed(node) {
            self.damage_disk(node);
        }
        let id = self.nodes[node].id;
        let real = self.real_disk(node);
        let opened = real
            .open()
            .unwrap_or_else(|e| panic!("{id}: the data directory does not open: {e}"));
        let torn = real.storage().torn_tail().is_some();
        let injected = real.injected.take();
        let unsynced = std::mem::take(&mut real.unsynced);
        self.stats.torn_tails += u64::from(torn);
        match opened {
            Opened::Recovered { state, .. } => self.resume_real(node, state, injected, unsynced),
            Opened::Damaged { problem, .. } => {
                if injected.is_none() {
                    let detail = format!("{id}: storage reported damage nothing caused: {problem}");
                    self.oracle.fail(Check::SyncedLost, self.now, detail);
                }
                self.rebuild_after_damage(node, &problem.to_string());
            }
            Opened::Empty => {
                let synced = self.nodes[node].disk.durable.len();
                if synced > 0 {
                    let detail = format!(
                        "{id}: storage came back empty, but {synced} records were synced{}",
                        describe(injected.as_ref())
                    );
                    self.oracle.fail(Check::SyncedLost, self.now, detail);
                }
                self.restart_wiped(node);
            }
        }
    }

    fn resume_real(
        &mut self,
        node: usize,
        state: DurableState,
        injected: Option<Injected>,
        unsynced: Vec<(Incarnation, Record)>,
    ) {
        let id = self.nodes[node].id;
        let mut app = match self.real_disk(node).read_register(state.snapshot.slot) {
            Ok(app) => app,
            Err(why) => {
                if injected.as_ref().and_then(|i| i.snapshot) != Some(state.snapshot.slot) {
                    let detail = format!("{id}: the snapshot the log names does not read: {why}");
                    self.oracle.fail(Check::SyncedLost, self.now, detail);
                }
                return self.rebuild_after_damage(node, &why);
            }
        };
        if let Some(injected) = &injected {
            if injected
                .snapshot
                .is_none_or(|slot| slot == state.snapshot.slot)
            {
                let detail = format!("{id}: storage did not report {}", injected.what);
                self.oracle.fail(Check::SyncedLost, self.now, detail);
            }
        }
        match survivors(&self.nodes[node].disk.durable, &unsynced, &state) {
            Ok(kept) => {
                for (incarnation, record) in &unsynced[..kept] {
                    self.make_durable(node, *incarnation, std::slice::from_ref(record));
                }
            }
            Err(detail) => {
                let detail = format!("{id}: {detail}");
                self.oracle.fail(Check::SyncedLost, self.now, detail);
            }
        }
        self.complete_app(&mut app);
        let peers = self.peer_ids();
        let n = &mut self.nodes[node];
        n.disk.durable = state.to_records();
        n.app = app;
        n.last_snapshot_slot = state.snapshot.slot;
        n.rate_ppm = super::pick_rate(&mut self.rng, self.options.settings.clock_drift_ppm);
        let seed = self.rng.next_u64();
        let mut engine = Replica::recover(state, peers, self.options.settings.clone(), seed);
        engine.plant_bugs(self.options.bugs);
        n.engine = Some(engine);
        self.schedule_tick(node);
        self.drain(node);
    }

    /// Storage found damage: the directory is moved aside and the replica rebuilds (PML 5.1).
    fn rebuild_after_damage(&mut self, node: usize, why: &str) {
        self.stats.damages_detected += 1;
        if self.options.trace {
            let id = self.nodes[node].id;
            println!(
                "{:.6} {id} found its disk damaged: {why}",
                self.now as f64 / 1e9
            );
        }
        self.real_disk(node).rebuilding_after_damage = true;
        self.restart_wiped(node);
    }

    /// A replica finished rebuilding.
    pub(super) fn rebuilt(&mut self, node: usize) {
        if let Some(real) = &mut self.nodes[node].real {
            if std::mem::take(&mut real.rebuilding_after_damage) {
                self.stats.rebuilds_after_damage += 1;
            }
        }
    }

    pub(super) fn begin_snapshot_real(&mut self, node: usize, handle: &SnapshotHandle) {
        let n = &mut self.nodes[node];
        let real = n.real.as_mut().expect("a real-disk seed");
        real.begin_snapshot(handle, &n.app);
    }

    pub(super) fn snapshot_written_real(&mut self, node: usize, handle: SnapshotHandle) {
        if let Err(error) = self.real_disk(node).finish_snapshot(handle.slot) {
            return self.disk_failed(node, error);
        }
        self.nodes[node]
            .engine
            .as_mut()
            .expect("alive")
            .handle_snapshot_done(handle);
        self.drain(node);
    }

    /// Catch-up: the source's newest snapshot file covering the slot asked for, shipped as bytes
    /// and installed by the receiver's storage.
    pub(super) fn snapshot_fetched_real(&mut self, node: usize, from: usize, asked: Slot) {
        let cut = self.faults_on && (self.blocked[from][node] || self.blocked[node][from]);
        let source = &mut self.nodes[from];
        let bytes = match (&source.engine, &mut source.real, cut) {
            (Some(_), Some(real), false) => real
                .storage()
                .snapshot_bytes(asked)
                .unwrap_or_else(|e| panic!("{}: cannot read a snapshot file: {e}", source.id)),
            _ => None,
        };
        let engine = self.nodes[node].engine.as_mut().expect("alive");
        let offered = bytes.filter(|bytes| {
            format::decode_snapshot_header(bytes).is_ok_and(|(h, _)| engine.wants_snapshot(h.slot))
        });
        let Some(bytes) = offered else {
            engine.handle_snapshot_fetch_failed();
            return self.drain(node);
        };
        let id = self.nodes[node].id;
        let real = self.real_disk(node);
        let handle = real
            .storage()
            .install_snapshot_bytes(&bytes)
            .unwrap_or_else(|e| panic!("{id}: cannot install a peer's snapshot file: {e}"));
        let mut app = real
            .read_register(handle.slot)
            .unwrap_or_else(|why| panic!("{id}: an installed snapshot does not read: {why}"));
        self.complete_app(&mut app);
        if Some(app.chain) != self.oracle.chain_at(handle.slot) {
            let detail = format!(
                "{} shipped a snapshot at {} whose history differs from the chosen one",
                self.nodes[from].id, handle.slot
            );
            return self.oracle.fail(Check::PrefixAgreement, self.now, detail);
        }
        self.stats.snapshots_installed += 1;
        let n = &mut self.nodes[node];
        n.app = app;
        n.last_snapshot_slot = handle.slot;
        n.engine
            .as_mut()
            .expect("alive")
            .handle_snapshot_installed(handle);
        self.drain(node);
    }

    /// Media damage to a down node's disk, of a kind storage promises to report.
    fn damage_disk(&mut self, node: usize) {
        let Ok(synced) = DurableState::recover(&self.nodes[node].disk.durable) else {
            return; // nothing acknowledged: an empty directory is a correct answer
        };
        let real = self.nodes[node].real.as_ref().expect("a real-disk seed");
        let Some(chain) = read_chain(&real.vfs) else {
            return;
        };
        let snapshot = Path::new(DATA_DIR).join(names::snapshot(synced.snapshot.slot));
        let snapshot_len = real.vfs.durable_contents(&snapshot).map_or(0, |b| b.len());
        let identity = Path::new(DATA_DIR).join(names::IDENTITY);
        let has_identity = real.vfs.durable_contents(&identity).is_some();
        let older = chain.len() - 1;
        let mut kinds = vec![0];
        if synced.snapshot.slot > Slot::ZERO && snapshot_len > 0 {
            kinds.push(1);
        }
        if older > 0 {
            kinds.extend([2, 3]);
        }
        if has_identity {
            kinds.push(4);
        }
        let kind = kinds[self.rng.below(kinds.len() as u64) as usize];
        let bit = self.rng.below(8) as u8;
        let injected = match kind {
            0 => {
                let (path, offset) = pick_wal_byte(&chain, &mut self.rng);
                real.vfs
                    .flip_bit(&path, offset, bit)
                    .expect("the file exists");
                let what = format!("bit {bit} flipped at byte {offset} of {}", path.display());
                Injected {
                    what,
                    snapshot: None,
                }
            }
            1 => {
                let offset = self.rng.below(snapshot_len as u64);
                real.vfs
                    .flip_bit(&snapshot, offset, bit)
                    .expect("the file exists");
                let what = format!(
                    "bit {bit} flipped at byte {offset} of {}",
                    snapshot.display()
                );
                let slot = Some(synced.snapshot.slot);
                Injected {
                    what,
                    snapshot: slot,
                }
            }
            2 => {
                let segment = &chain[self.rng.below(older as u64) as usize];
                let len = self.rng.below(segment.data_end());
                real.vfs
                    .truncate(&segment.path, len)
                    .expect("the file exists");
                let what = format!("{} truncated to {len} bytes", segment.path.display());
                Injected {
                    what,
                    snapshot: None,
                }
            }
            3 => {
                let segment = &chain[self.rng.below(older as u64) as usize];
                real.vfs
                    .remove_durably(&segment.path)
                    .expect("the file exists");
                let what = format!("{} removed", segment.path.display());
                Injected {
                    what,
                    snapshot: None,
                }
            }
            _ => {
                real.vfs.remove_durably(&identity).expect("the file exists");
                let what = format!("{} removed", identity.display());
                Injected {
                    what,
                    snapshot: None,
                }
            }
        };
        self.stats.disk_faults += 1;
        if self.options.trace {
            let id = self.nodes[node].id;
            println!(
                "{:.6} {id} disk damage: {}",
                self.now as f64 / 1e9,
                injected.what
            );
        }
        self.real_disk(node).injected = Some(injected);
    }
}

fn describe(injected: Option<&Injected>) -> String {
    injected.map_or(String::new(), |i| format!(" (after {})", i.what))
}

/// How many of `unsynced` (in order) the recovered state holds on top of the synced records, or
/// how it differs. The most that fit, if several do (a record may change nothing).
fn survivors(
    synced: &[Record],
    unsynced: &[(Incarnation, Record)],
    found: &DurableState,
) -> Result<usize, String> {
    let expected = match synced {
        [] => None,
        records => Some(
            DurableState::recover(records)
                .map_err(|e| format!("the synced records do not recover: {e}"))?,
        ),
    };
    let mut state = expected.clone();
    let mut kept = (state.as_ref() == Some(found)).then_some(0);
    for (i, (_, record)) in unsynced.iter().enumerate() {
        match &mut state {
            None => state = DurableState::recover(std::iter::once(record)).ok(),
            Some(state) => {
                if state.apply(record).is_err() {
                    break;
                }
            }
        }
        if state.as_ref() == Some(found) {
            kept = Some(i + 1);
        }
    }
    kept.ok_or_else(|| {
        format!(
            "storage recovered {}, but synced was {} and {} more records were appended",
            summary(Some(found)),
            summary(expected.as_ref()),
            unsynced.len()
        )
    })
}

fn summary(state: Option<&DurableState>) -> String {
    let Some(s) = state else {
        return "nothing".to_string();
    };
    format!(
        "[incarnation {}, promised {}, snapshot at {}, {} slots through {:?}{}]",
        s.incarnation.0,
        s.promised,
        s.snapshot.slot,
        s.log.len(),
        s.log.keys().next_back(),
        if s.rebuilding { ", rebuilding" } else { "" }
    )
}

/// A WAL segment as the disk holds it, and where its complete batches are.
struct SegmentImage {
    path: PathBuf,
    /// Each complete batch: its first byte and the end of its last frame (padding excluded).
    batches: Vec<(u64, u64)>,
}

impl SegmentImage {
    /// The end of the last frame (or of the checked header, if it holds no batch).
    fn data_end(&self) -> u64 {
        self.batches
            .last()
            .map_or(HEADER_CHECKED_BYTES, |(_, end)| *end)
    }
}

/// The segments recovery reads (the newest base segment and those after it), oldest first.
fn read_chain(vfs: &MemVfs) -> Option<Vec<SegmentImage>> {
    let dir = Path::new(DATA_DIR);
    let mut segments: Vec<(u64, PathBuf, Vec<u8>, SegmentHeader)> = Vec::new();
    for path in vfs.files() {
        if path.parent() != Some(dir) {
            continue;
        }
        let name = path.file_name()?.to_str()?;
        let names::Name::Segment(seq) = names::classify(name) else {
            continue;
        };
        let bytes = vfs.durable_contents(&path)?;
        let header = SegmentHeader::decode(&bytes).ok()?;
        segments.push((seq, path, bytes, header));
    }
    let base = segments.iter().rposition(|(_, _, _, h)| h.base)?;
    let chain = segments
        .split_off(base)
        .into_iter()
        .map(|(_, path, bytes, header)| SegmentImage {
            batches: complete_batches(&bytes, header.first_batch),
            path,
        })
        .collect();
    Some(chain)
}

/// The complete batches of a segment whose first batch is `first_batch`, in order. A frame of
/// another batch than the next one ends the data: past the end of a recycled segment's data lie
/// the frames of its old contents (when a crash tore away the end marker after the last batch).
fn complete_batches(bytes: &[u8], first_batch: u64) -> Vec<(u64, u64)> {
    let mut batches = Vec::new();
    let (mut at, mut start) = (SECTOR_BYTES, SECTOR_BYTES);
    while let Some(rest) = bytes.get(at as usize..) {
        let Ok(Frame::Record {
            batch,
            end_of_batch,
            bytes: frame,
            ..
        }) = format::decode_frame(rest)
        else {
            break;
        };
        if batch != first_batch + batches.len() as u64 {
            break;
        }
        at += frame;
        if end_of_batch {
            batches.push((start, at));
            at = format::align_up(at);
            start = at;
        }
    }
    batches
}

/// A byte whose damage storage must report: in a checked segment header, or in a frame of a
/// complete batch that a later complete batch follows. Never in the last batch of the last
/// segment, where a flip looks like a torn write (see the module doc).
fn pick_wal_byte(chain: &[SegmentImage], rng: &mut Rng) -> (PathBuf, u64) {
    let last = chain.len() - 1;
    let mut ranges: Vec<(&Path, u64, u64)> = Vec::new();
    for (i, segment) in chain.iter().enumerate() {
        ranges.push((&segment.path, 0, HEADER_CHECKED_BYTES));
        let batches = match i == last {
            true => &segment.batches[..segment.batches.len().saturating_sub(1)],
            false => &segment.batches[..],
        };
        ranges.extend(
            batches
                .iter()
                .map(|(s, e)| (segment.path.as_path(), *s, *e)),
        );
    }
    let total: u64 = ranges.iter().map(|(_, s, e)| e - s).sum();
    let mut pick = rng.below(total);
    for (path, start, end) in ranges {
        if pick < end - start {
            return (path.to_path_buf(), start + pick);
        }
        pick -= end - start;
    }
    unreachable!("the pick is below the total")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_round_trips_through_its_snapshot_bytes() {
        let register = Register {
            value: 7,
            applied: Slot(42),
            chain: 0xDEAD_BEEF,
            db: None,
        };
        assert_eq!(decode_register(&encode_register(&register)), Some(register));
        assert_eq!(decode_register(&[0u8; 23]), None);
    }
}
