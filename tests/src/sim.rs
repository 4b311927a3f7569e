//! The deterministic simulator: one thread, one seed, virtual time.
//!
//! It runs the real engine on every replica with a virtual clock each (drifting within the bound the
//! lease math assumes), a network that loses, delays, duplicates, reorders and partitions messages
//! (symmetric, one-way and partial), disks that lose unsynced records on a crash, replicas that lose
//! their whole state and must rebuild, membership changes, snapshots with log truncation, and a
//! register state machine with clients. The oracle checks safety after every event; liveness mode
//! heals every fault and requires progress within a bound. Same seed, same run, bit for bit.
//!
//! About half the seeds run the real storage code (`replicated_log::storage`) over a faulty
//! in-memory disk instead of the model disk: see `sim/disk.rs`.
//!
//! A chubby seed (`Options::chubby`) runs the real `chubby_db::Database` on every replica instead
//! of the register's clients, with simulated master duties, clients, a fenced downstream resource
//! and the lock-safety, sequencer, exactly-once and database-agreement checkers: see
//! `sim/chubby.rs`.

mod chubby;
mod disk;

pub use chubby::{ChubbyBugs, ChubbyOptions};
pub use disk::{DiskBugs, DiskChoice, RealDiskOptions};

use crate::app::{encode, Fnv, Register};
use crate::hash::{FastMap, FastSet};
use crate::oracle::{Check, Oracle, Violation};
use crate::queue::{EventQueue, Scheduled};
use disk::RealDisk;
use paxos_core::rng::Rng;
use paxos_core::{
    Action, Config, DurableState, EntryId, Envelope, Epoch, Incarnation, MembershipChange, Message,
    NodeId, PlantedBugs, Record, Replica, RoleKind, Settings, Slot, SnapshotHandle,
};
use std::collections::{BTreeMap, VecDeque};

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000_000_000;
/// Most submits the simulated clients keep in flight at one replica.
const SUBMITS_IN_FLIGHT_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Faults all the way; safety checked after every event.
    Safety,
    /// Faults, then every fault healed; the cluster must make progress within a bound.
    Liveness,
}

/// Everything a run depends on. All of it derives from the seed (and the planted bugs), and all of
/// it is printed with a failure.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub mode: Mode,
    pub bugs: PlantedBugs,
    pub voters: u64,
    pub tick_ns: u64,
    pub settings: Settings,
    pub drop_ppm: u64,
    pub duplicate_ppm: u64,
    pub delay_min_ns: u64,
    pub delay_max_ns: u64,
    /// Rarely a message is held back for up to `long_delay_max_ns` (a stuck queue, a retransmission
    /// after a reconnect): stale messages from old ballots arrive late.
    pub long_delay_ppm: u64,
    pub long_delay_max_ns: u64,
    pub fault_phase_ns: u64,
    pub liveness_bound_ns: u64,
    pub crash_mean_interval_ns: u64,
    pub partition_mean_interval_ns: u64,
    pub membership_mean_interval_ns: u64,
    pub wipe_ppm: u64,
    pub submit_interval_ns: u64,
    /// How many client submits arrive together at each client event.
    pub submits_per_event: u64,
    pub snapshot_every_slots: u64,
    /// Each node's disk is the real storage over a faulty in-memory disk (`None`: the model disk).
    pub real_disk: Option<RealDiskOptions>,
    /// Print every event (for replaying a failure by eye).
    pub trace: bool,
    /// The checks that may report a violation (all, unless a teeth test isolates one).
    pub checks: Vec<Check>,
    /// Run the chubby-db database and its clients instead of the register's (`None`: register).
    pub chubby: Option<ChubbyOptions>,
}

impl Options {
    pub fn from_seed(seed: u64, mode: Mode, bugs: PlantedBugs) -> Options {
        let mut rng = Rng::new(seed ^ 0x05EE_D0F0_B1A5);
        let settings = Settings {
            heartbeat_interval_ticks: 5,
            election_timeout_ticks: 30,
            election_jitter_ticks: 30,
            lease_ticks: 100,
            clock_drift_ppm: [10_000, 50_000, 100_000][rng.below(3) as usize],
            lease_margin_ticks: 1,
            window_slots: 4 + rng.below(8),
            digest_interval_ticks: 200,
            retry_interval_ticks: 10,
            batch_entries_max: 1 + rng.below(16) as usize,
            batch_bytes_max: 64 * 1024,
        };
        Options {
            seed,
            mode,
            bugs,
            voters: if rng.chance(300_000) { 5 } else { 3 },
            tick_ns: 10 * MS,
            settings,
            drop_ppm: rng.below(100_000),
            duplicate_ppm: rng.below(50_000),
            delay_min_ns: MS / 10,
            delay_max_ns: MS / 2 + rng.below(30 * MS),
            long_delay_ppm: rng.below(5_000),
            long_delay_max_ns: 2 * SECOND,
            fault_phase_ns: 20 * SECOND + rng.below(20 * SECOND),
            liveness_bound_ns: 30 * SECOND,
            crash_mean_interval_ns: SECOND + rng.below(4 * SECOND),
            partition_mean_interval_ns: SECOND + rng.below(4 * SECOND),
            membership_mean_interval_ns: 3 * SECOND + rng.below(6 * SECOND),
            wipe_ppm: 150_000 + rng.below(250_000),
            submit_interval_ns: MS + rng.below(10 * MS),
            submits_per_event: 1,
            snapshot_every_slots: 20 + rng.below(100),
            real_disk: RealDiskOptions::from_seed(seed, DiskChoice::Mixed),
            trace: false,
            checks: Check::ALL.to_vec(),
            chubby: None,
        }
    }

    /// As [`Options::from_seed`], on the disk asked for (`Mixed` draws it from the seed).
    pub fn from_seed_on(seed: u64, mode: Mode, bugs: PlantedBugs, disk: DiskChoice) -> Options {
        let mut options = Options::from_seed(seed, mode, bugs);
        options.real_disk = RealDiskOptions::from_seed(seed, disk);
        options
    }
}

impl Options {
    /// A chubby seed: the seed's engine, network and disk options (a shorter run, so a sweep of
    /// a thousand fits the CI budget), with the chubby-db database and its clients instead of
    /// the register's, `bugs` planted in the database.
    pub fn chubby_from_seed(seed: u64, mode: Mode, bugs: ChubbyBugs, disk: DiskChoice) -> Options {
        let mut options = Options::from_seed_on(seed, mode, PlantedBugs::default(), disk);
        let mut rng = Rng::new(seed ^ 0xC4B8_F0A5);
        options.fault_phase_ns = 10 * SECOND + rng.below(12 * SECOND);
        // Faults a little rarer than on register seeds, so sessions live long enough for locks to
        // move between clients (crashes and partitions still come every few seconds).
        options.crash_mean_interval_ns *= 2;
        options.partition_mean_interval_ns *= 2;
        options.chubby = Some(ChubbyOptions::from_seed(seed, bugs));
        options
    }

    /// The simulator's throughput benchmark: five voters and a steady client load over a network
    /// that delays and reorders but does not fail, so the figure is the cost of the engine, the
    /// network model and the checkers per message delivered.
    pub fn benchmark(seed: u64) -> Options {
        let mut options = Options::from_seed(seed, Mode::Safety, PlantedBugs::default());
        options.voters = 5;
        options.drop_ppm = 0;
        options.duplicate_ppm = 0;
        options.long_delay_ppm = 0;
        options.crash_mean_interval_ns = u64::MAX / 8;
        options.partition_mean_interval_ns = u64::MAX / 8;
        options.membership_mean_interval_ns = u64::MAX / 8;
        options.wipe_ppm = 0;
        options.submit_interval_ns = 4 * MS;
        options.submits_per_event = 8;
        options.fault_phase_ns = 20 * SECOND;
        // The model disk, so the figure stays comparable across versions.
        options.real_disk = None;
        options
    }
}

#[derive(Debug)]
enum Event {
    Tick {
        node: usize,
        generation: u64,
    },
    Deliver {
        to: usize,
        envelope: Envelope,
    },
    SyncDone {
        node: usize,
        generation: u64,
    },
    SnapshotWritten {
        node: usize,
        generation: u64,
        handle: SnapshotHandle,
        state: Register,
    },
    SnapshotFetched {
        node: usize,
        generation: u64,
        from: usize,
        handle: SnapshotHandle,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Partition,
    Heal,
    Submit,
    Read,
    Membership,
    StartLiveness,
    /// Something in the chubby world: a client's step, a message between a client and a replica,
    /// a write reaching the downstream resource.
    Chubby(chubby::ChubbyEvent),
}

/// One batch of records waiting for its sync, and the messages it releases.
struct PendingSync {
    records: Vec<Record>,
    messages: Vec<paxos_core::Outgoing>,
    incarnation: Incarnation,
}

#[derive(Default)]
struct Disk {
    durable: Vec<Record>,
    /// Written but not yet synced, in order.
    pending: VecDeque<PendingSync>,
    /// How many of `pending` the sync in progress covers.
    syncing: usize,
    /// Durable snapshot files by slot.
    snapshots: BTreeMap<Slot, Register>,
}

struct Node {
    id: NodeId,
    engine: Option<Replica>,
    /// Bumped on every crash so events of an earlier life are ignored.
    generation: u64,
    disk: Disk,
    app: Register,
    /// This life's clock rate error, in ppm (negative: slow).
    rate_ppm: i64,
    /// Set once the node was removed from the group for good.
    retired: bool,
    /// Set once the node appeared in the group's config.
    was_member: bool,
    /// Submits this node took that are neither acknowledged nor failed.
    open_submits: FastSet<EntryId>,
    /// Highest incarnation of this node whose state was lost.
    lost_incarnation: Option<Incarnation>,
    /// Lost its state and has not finished rebuilding yet (crashes in between included).
    impaired: bool,
    /// Current master tenure and when it began (true time).
    tenure: Option<(Epoch, u64)>,
    last_snapshot_slot: Slot,
    /// The real storage, on a real-disk seed (then `disk` keeps only what it acknowledged).
    real: Option<RealDisk>,
}

/// Figures of a finished run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub deliveries: u64,
    pub virtual_ns: u64,
    pub chosen: u64,
    pub acked: u64,
    pub crashes: u64,
    pub wipes: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    pub lease_reads: u64,
    pub snapshots_installed: u64,
    /// 1 if the run used the real storage.
    pub real_disk_seeds: u64,
    /// Damage dealt to a down node's disk (real disk only).
    pub disk_faults: u64,
    /// Opens that reported damage, and snapshots that did not read back (real disk only). Fewer
    /// than `disk_faults` only when a damaged snapshot file was superseded by a snapshot record
    /// that survived the crash unsynced: `open` removes such a file unread.
    pub damages_detected: u64,
    /// Replicas that completed a rebuild after their storage found damage.
    pub rebuilds_after_damage: u64,
    /// Torn tails storage cut off at open (real disk only).
    pub torn_tails: u64,
    /// Failed fdatasyncs (fatal: the node restarted).
    pub sync_failures: u64,
    /// Chubby seeds: what the database and its clients did.
    pub chubby: chubby::ChubbyStats,
    pub trace_hash: u64,
}

impl Stats {
    /// Adds another run's figures (the trace hash is not a sum and stays).
    pub fn add(&mut self, other: &Stats) {
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.virtual_ns += other.virtual_ns;
        self.chosen += other.chosen;
        self.acked += other.acked;
        self.crashes += other.crashes;
        self.wipes += other.wipes;
        self.partitions += other.partitions;
        self.membership_changes += other.membership_changes;
        self.lease_reads += other.lease_reads;
        self.snapshots_installed += other.snapshots_installed;
        self.real_disk_seeds += other.real_disk_seeds;
        self.disk_faults += other.disk_faults;
        self.damages_detected += other.damages_detected;
        self.rebuilds_after_damage += other.rebuilds_after_damage;
        self.torn_tails += other.torn_tails;
        self.sync_failures += other.sync_failures;
        self.chubby.add(&other.chubby);
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub options: Options,
    pub violation: Option<Violation>,
    pub stats: Stats,
}

#[allow(missing_debug_implementations)]
pub struct Sim {
    options: Options,
    rng: Rng,
    now: u64,
    seq: u64,
    /// When each event in the slab is due.
    queue: EventQueue,
    slab: Vec<Option<Event>>,
    free: Vec<usize>,
    nodes: Vec<Node>,
    /// blocked[a][b]: messages from a to b are dropped.
    blocked: Vec<Vec<bool>>,
    faults_on: bool,
    oracle: Oracle,
    /// Submits not yet answered: who took them and when (true time).
    submits: FastMap<EntryId, (usize, u64)>,
    next_value: u64,
    liveness: Option<Liveness>,
    last_membership_change: u64,
    retire_checked_at: Slot,
    stats: Stats,
    trace: Fnv,
    /// The chubby world, on a chubby seed.
    chubby: Option<Box<chubby::World>>,
}

struct Liveness {
    deadline: u64,
    probe: Option<EntryId>,
    probe_slot: Option<Slot>,
}

impl Sim {
    pub fn new(options: Options) -> Sim {
        let mut rng = Rng::new(options.seed);
        let ids: Vec<NodeId> = (1..=options.voters).map(NodeId).collect();
        let config = Config::new(ids.iter().copied());
        let mut nodes = Vec::new();
        for id in &ids {
            let mut engine =
                Replica::bootstrap(*id, config.clone(), options.settings.clone(), options.seed);
            engine.plant_bugs(options.bugs);
            let rate_ppm = pick_rate(&mut rng, options.settings.clock_drift_ppm);
            let real = options.real_disk.as_ref().map(RealDisk::new);
            nodes.push(Node::new(*id, engine, rate_ppm, real));
        }
        let oracle = Oracle::new(
            config,
            options.settings.window_slots,
            options.checks.clone(),
        );
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: EventQueue::new(),
            slab: Vec::new(),
            free: Vec::new(),
            blocked: vec![vec![false; 16]; 16],
            faults_on: true,
            oracle,
            submits: FastMap::default(),
            next_value: 1,
            liveness: None,
            last_membership_change: 0,
            retire_checked_at: Slot(u64::MAX),
            stats: Stats {
                real_disk_seeds: u64::from(options.real_disk.is_some()),
                ..Stats::default()
            },
            trace: Fnv::new(options.seed),
            chubby: options
                .chubby
                .clone()
                .map(|o| Box::new(chubby::World::new(o, options.seed))),
            nodes,
            options,
        };
        for node in 0..sim.nodes.len() {
            let mut app = Register::default();
            sim.complete_app(&mut app);
            sim.nodes[node].app = app;
            sim.schedule_tick(node);
            sim.drain(node);
        }
        if sim.chubby.is_some() {
            sim.start_chubby();
        } else {
            sim.schedule(sim.options.submit_interval_ns, Event::Submit);
        }
        sim.schedule(20 * MS, Event::Read);
        let crash_at = sim.spread_around(sim.options.crash_mean_interval_ns);
        sim.schedule(crash_at, Event::Crash { node: usize::MAX });
        let partition_at = sim.spread_around(sim.options.partition_mean_interval_ns);
        sim.schedule(partition_at, Event::Partition);
        let membership_at = sim.spread_around(sim.options.membership_mean_interval_ns);
        sim.schedule(membership_at, Event::Membership);
        if sim.options.mode == Mode::Liveness {
            sim.schedule(sim.options.fault_phase_ns, Event::StartLiveness);
        }
        sim
    }

    /// Runs to the end (or the first violation).
    pub fn run(mut self) -> Outcome {
        let end = match self.options.mode {
            Mode::Safety => self.options.fault_phase_ns,
            Mode::Liveness => self.options.fault_phase_ns + self.options.liveness_bound_ns,
        };
        while let Some(Scheduled { at, index, .. }) = self.queue.pop() {
            if at > end || self.oracle.violation.is_some() {
                break;
            }
            let event = self.slab[index]
                .take()
                .expect("scheduled events are in the slab");
            self.free.push(index);
            self.now = at;
            self.stats.events += 1;
            self.trace_event(&event);
            self.step(event);
            self.check_after_step();
            if self.liveness_done() {
                break;
            }
        }
        self.finish(end);
        self.stats.virtual_ns = self.now;
        self.stats.trace_hash = self.trace.finish();
        if let Some(world) = &self.chubby {
            self.stats.chubby = world.stats.clone();
        }
        self.stats.chosen = self.oracle.prefix.0;
        self.stats.acked = self.oracle.acked_count() as u64;
        Outcome {
            options: self.options,
            violation: self.oracle.violation,
            stats: self.stats,
        }
    }

    fn finish(&mut self, end: u64) {
        if self.oracle.violation.is_some() {
            return;
        }
        if let Some(liveness) = &self.liveness {
            if !self.liveness_done() {
                let detail = format!(
                    "no progress within {:.1}s after healing (probe {:?} at {:?}, deadline {:.1}s): {}",
                    self.options.liveness_bound_ns as f64 / 1e9,
                    liveness.probe,
                    liveness.probe_slot,
                    liveness.deadline as f64 / 1e9,
                    self.describe_nodes()
                );
                self.oracle.fail(Check::Liveness, end, detail);
                return;
            }
        }
        if self.liveness.is_some() {
            self.oracle.check_acks_final(self.now);
        }
    }

    fn print_event(&self, event: &Event) {
        let t = self.now as f64 / 1e9;
        match event {
            Event::Tick { .. } | Event::Submit | Event::Read => {}
            Event::Deliver { to, envelope } => {
                let to = self.nodes[*to].id;
                println!("{t:.6} {} -> {to}: {:?}", envelope.from, envelope.message);
            }
            other => println!("{t:.6} {other:?}"),
        }
        if matches!(event, Event::Tick { node: 0, .. }) && (self.now / 10_000_000) % 100 == 0 {
            println!("{t:.6} state: {}", self.describe_nodes());
        }
    }

    fn describe_nodes(&self) -> String {
        let mut out = Vec::new();
        for node in &self.nodes {
            let text = match &node.engine {
                Some(e) if !node.retired => format!(
                    "{}:{:?}/{}/chosen {}/inc {}/promised {}/sees {:?}",
                    node.id,
                    e.role_kind(),
                    if e.is_rebuilding() {
                        "rebuilding"
                    } else {
                        "voting"
                    },
                    e.chosen_through(),
                    e.incarnation().0,
                    e.promised(),
                    e.membership()
                        .entries
                        .iter()
                        .map(|(s, c)| (
                            s.0,
                            c.voters.iter().map(|(n, i)| (n.0, i.0)).collect::<Vec<_>>()
                        ))
                        .collect::<Vec<_>>()
                ),
                Some(_) => format!("{}:retired", node.id),
                None => format!("{}:down", node.id),
            };
            out.push(text);
        }
        format!(
            "{} (oracle prefix {}, config {:?})",
            out.join(" "),
            self.oracle.prefix,
            self.oracle.membership.latest()
        )
    }

    // ----- scheduling -----

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        let index = match self.free.pop() {
            Some(index) => {
                self.slab[index] = Some(event);
                index
            }
            None => {
                self.slab.push(Some(event));
                self.slab.len() - 1
            }
        };
        self.queue.push(Scheduled {
            at: self.now + after,
            seq: self.seq,
            index,
        });
    }

    /// A random interval averaging `mean`: uniform in `[0, 2 * mean)`.
    fn spread_around(&mut self, mean: u64) -> u64 {
        self.rng.below(2 * mean.max(1))
    }

    fn schedule_tick(&mut self, node: usize) {
        let n = &self.nodes[node];
        let interval = (u128::from(self.options.tick_ns) * 1_000_000
            / (1_000_000 + n.rate_ppm) as u128) as u64;
        let generation = n.generation;
        self.schedule(interval, Event::Tick { node, generation });
    }

    fn trace_event(&mut self, event: &Event) {
        self.trace.write(self.now);
        let (kind, node) = match event {
            Event::Tick { node, .. } => (1, *node),
            Event::Deliver { to, .. } => (2, *to),
            Event::SyncDone { node, .. } => (3, *node),
            Event::SnapshotWritten { node, .. } => (4, *node),
            Event::SnapshotFetched { node, .. } => (5, *node),
            Event::Crash { node } => (6, *node),
            Event::Restart { node } => (7, *node),
            Event::Partition => (8, 0),
            Event::Heal => (9, 0),
            Event::Submit => (10, 0),
            Event::Read => (11, 0),
            Event::Membership => (12, 0),
            Event::StartLiveness => (13, 0),
            Event::Chubby(event) => (14, event.trace_key()),
        };
        self.trace.write(kind);
        self.trace.write(node as u64);
    }

    // ----- the step -----

    fn step(&mut self, event: Event) {
        if self.options.trace {
            self.print_event(&event);
        }
        match event {
            Event::Tick { node, generation } => self.on_tick(node, generation),
            Event::Deliver { to, envelope } => self.on_deliver(to, envelope),
            Event::SyncDone { node, generation } => self.on_sync_done(node, generation),
            Event::SnapshotWritten {
                node,
                generation,
                handle,
                state,
            } => self.on_snapshot_written(node, generation, handle, state),
            Event::SnapshotFetched {
                node,
                generation,
                from,
                handle,
            } => self.on_snapshot_fetched(node, generation, from, handle),
            Event::Crash { node } => self.on_crash(node),
            Event::Restart { node } => self.on_restart(node),
            Event::Partition => self.on_partition(),
            Event::Heal => self.heal_links(),
            Event::Submit => self.on_submit(),
            Event::Read => self.on_read(),
            Event::Membership => self.on_membership(),
            Event::StartLiveness => self.start_liveness(),
            Event::Chubby(event) => self.on_chubby(event),
        }
    }

    fn on_tick(&mut self, node: usize, generation: u64) {
        if self.nodes[node].generation != generation || self.nodes[node].retired {
            return;
        }
        let Some(engine) = self.nodes[node].engine.as_mut() else {
            return;
        };
        engine.handle_tick();
        self.drain(node);
        if self.chubby.is_some() {
            self.master_duties(node);
        }
        self.schedule_tick(node);
    }

    fn on_deliver(&mut self, to: usize, envelope: Envelope) {
        let node = &mut self.nodes[to];
        if node.retired {
            return;
        }
        let Some(engine) = node.engine.as_mut() else {
            return;
        };
        self.stats.deliveries += 1;
        engine.handle_message(envelope);
        self.drain(to);
    }

    /// Executes everything the engine asked for, in order.
    fn drain(&mut self, node: usize) {
        loop {
            let Some(engine) = self.nodes[node].engine.as_mut() else {
                return;
            };
            let Some(action) = engine.poll_action() else {
                break;
            };
            self.execute(node, action);
        }
        let Some(engine) = self.nodes[node].engine.as_ref() else {
            return;
        };
        engine.check_invariants();
        let (rebuilding, holds_lease) = (engine.is_rebuilding(), engine.holds_lease());
        if !rebuilding && self.nodes[node].impaired {
            self.nodes[node].impaired = false;
            self.rebuilt(node);
        }
        if holds_lease {
            self.check_lease_overlap();
        }
        self.maybe_snapshot(node);
    }

    fn execute(&mut self, node: usize, action: Action) {
        match action {
            Action::Persist { records, messages } => self.persist(node, records, messages),
            Action::Send(outgoing) => self.transmit(node, outgoing),
            Action::Apply { slot, value } => self.apply(node, slot, value),
            Action::Committed { id, slot } => self.on_committed(node, id, slot),
            Action::Failed { id, .. } => {
                self.nodes[node].open_submits.remove(&id);
                self.submits.remove(&id);
                if self.chubby.is_some() {
                    self.chubby_failed(node, id);
                }
                if let Some(liveness) = &mut self.liveness {
                    if liveness.probe == Some(id) {
                        liveness.probe = None; // the probe's tenure ended: the next submit probes again
                    }
                }
            }
            Action::RoleChanged { role, epoch } => {
                if self.options.trace {
                    println!(
                        "{:.6} {} becomes {role:?} {epoch:?}",
                        self.now as f64 / 1e9,
                        self.nodes[node].id
                    );
                }
                self.nodes[node].tenure = match (role, epoch) {
                    (RoleKind::Master, Some(epoch)) => Some((epoch, self.now)),
                    _ => None,
                };
            }
            Action::FetchSnapshot { from, handle } => self.fetch_snapshot(node, from, handle),
            Action::DigestMismatch { .. } => {}
            Action::Corrupt { .. } => {
                // The digest check found this replica wrong: discard its state and rebuild.
                self.crash(node);
                self.restart_wiped(node);
            }
        }
    }

    fn persist(&mut self, node: usize, records: Vec<Record>, messages: Vec<paxos_core::Outgoing>) {
        if self.nodes[node].real.is_some() {
            self.append_real(node, &records, &messages);
        }
        let n = &mut self.nodes[node];
        let incarnation = n.engine.as_ref().expect("alive").incarnation();
        // Identity and rebuild records are synced at once (see `syncs_at_once`).
        let identity = records.iter().any(syncs_at_once);
        let releases = !messages.is_empty() || identity;
        n.disk.pending.push_back(PendingSync {
            records,
            messages,
            incarnation,
        });
        // Records that release no message ride along with the next sync (group commit).
        if releases && n.disk.syncing == 0 {
            self.start_sync(node);
        }
    }

    fn start_sync(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.disk.syncing = n.disk.pending.len();
        let generation = n.generation;
        // One fdatasync covers every batch queued so far (group commit).
        let latency = 200_000 + self.rng.below(2 * MS);
        self.schedule(latency, Event::SyncDone { node, generation });
    }

    fn on_sync_done(&mut self, node: usize, generation: u64) {
        if self.nodes[node].generation != generation {
            return;
        }
        if self.nodes[node].real.is_some() && !self.sync_real(node) {
            return;
        }
        let count = self.nodes[node].disk.syncing;
        for _ in 0..count {
            let PendingSync {
                mut records,
                mut messages,
                incarnation,
            } = self.nodes[node]
                .disk
                .pending
                .pop_front()
                .expect("syncing batches are queued");
            self.make_durable(node, incarnation, &records);
            self.nodes[node].disk.durable.append(&mut records);
            for outgoing in messages.drain(..) {
                self.transmit(node, outgoing);
            }
            if let Some(engine) = self.nodes[node].engine.as_mut() {
                engine.recycle_persist_buffers(records, messages);
            }
        }
        self.nodes[node].disk.syncing = 0;
        let waiting =
            |b: &PendingSync| !b.messages.is_empty() || b.records.iter().any(syncs_at_once);
        if self.nodes[node].disk.pending.iter().any(waiting) {
            self.start_sync(node);
        }
    }

    fn make_durable(&mut self, node: usize, incarnation: Incarnation, records: &[Record]) {
        let id = self.nodes[node].id;
        for record in records {
            match record {
                Record::Accepted {
                    slot,
                    ballot,
                    value,
                } => {
                    self.oracle.on_durable_accept(
                        self.now,
                        (id, incarnation),
                        *slot,
                        *ballot,
                        value,
                    );
                }
                // Older snapshot files and log records go once a newer snapshot is recorded durably
                // (as real storage does).
                Record::Snapshot(handle) => {
                    let disk = &mut self.nodes[node].disk;
                    disk.snapshots.retain(|slot, _| *slot >= handle.slot);
                    compact(&mut disk.durable, handle.slot);
                }
                _ => {}
            }
        }
    }

    fn transmit(&mut self, from: usize, outgoing: paxos_core::Outgoing) {
        self.check_rebuild_vote(from, &outgoing.envelope);
        let Some(to) = self.index_of(outgoing.to) else {
            return;
        };
        if to == from {
            self.schedule(
                0,
                Event::Deliver {
                    to,
                    envelope: outgoing.envelope,
                },
            );
            return;
        }
        if self.faults_on && (self.blocked[from][to] || self.rng.chance(self.options.drop_ppm)) {
            return;
        }
        let copies = if self.faults_on && self.rng.chance(self.options.duplicate_ppm) {
            2
        } else {
            1
        };
        let envelope = outgoing.envelope;
        if copies == 2 {
            let delay = self.network_delay();
            let envelope = envelope.clone();
            self.schedule(delay, Event::Deliver { to, envelope });
        }
        let delay = self.network_delay();
        self.schedule(delay, Event::Deliver { to, envelope });
    }

    /// How long one copy of a message takes.
    fn network_delay(&mut self) -> u64 {
        let span = self.options.delay_max_ns - self.options.delay_min_ns;
        let mut delay = self.options.delay_min_ns + self.rng.below(span);
        if self.faults_on && self.rng.chance(self.options.long_delay_ppm) {
            delay += self.rng.below(self.options.long_delay_max_ns);
        }
        delay
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        // Node ids are handed out as 1, 2, 3, ... in the order nodes are added: try that first.
        let guess = usize::try_from(id.0).ok()?.checked_sub(1);
        match guess.and_then(|i| self.nodes.get(i).map(|n| (i, n))) {
            Some((i, node)) if node.id == id => Some(i),
            _ => self.nodes.iter().position(|n| n.id == id),
        }
    }

    fn check_rebuild_vote(&mut self, from: usize, envelope: &Envelope) {
        let votes = matches!(envelope.message, Message::Promise(_) | Message::Accepted(_));
        if !votes {
            return;
        }
        let node = &self.nodes[from];
        if node
            .lost_incarnation
            .is_some_and(|lost| envelope.incarnation <= lost)
        {
            let detail = format!(
                "{} lost incarnation {:?} but sent {:?} as incarnation {}",
                node.id,
                node.lost_incarnation,
                kind_of(&envelope.message),
                envelope.incarnation.0
            );
            self.oracle.fail(Check::RebuildVoted, self.now, detail);
        }
    }

    fn apply(&mut self, node: usize, slot: Slot, value: paxos_core::Value) {
        let id = self.nodes[node].id;
        self.oracle.on_apply(self.now, id, slot, &value);
        let n = &mut self.nodes[node];
        if slot != n.app.applied.next() {
            let detail = format!("{id} applied {slot} right after {}", n.app.applied);
            self.oracle.fail(Check::PrefixAgreement, self.now, detail);
            return;
        }
        let mut applied = n.app.apply(slot, &value);
        if self.chubby.is_some() {
            // The database's digest, as the real server reports it, replaces the register's.
            applied.digest = self.apply_chubby(node, slot, &value);
        }
        let n = &mut self.nodes[node];
        if let Some(digest) = applied.digest {
            n.engine
                .as_mut()
                .expect("alive")
                .handle_digest(slot, digest);
        }
    }

    /// Takes a snapshot when enough was applied since the last one. Called between steps, when the
    /// application has applied everything the engine emitted.
    fn maybe_snapshot(&mut self, node: usize) {
        let every = self.options.snapshot_every_slots;
        let n = &mut self.nodes[node];
        let Some(engine) = n.engine.as_ref() else {
            return;
        };
        if n.app.applied != engine.chosen_through()
            || n.app.applied.0 < n.last_snapshot_slot.0 + every
        {
            return;
        }
        n.last_snapshot_slot = n.app.applied;
        let handle = engine.snapshot_handle();
        let mut state = n.app.clone();
        let (generation, real) = (n.generation, n.real.is_some());
        if self.chubby.is_some() {
            self.snapshot_round_trip(node, &mut state);
        }
        if real {
            self.begin_snapshot_real(node, &handle);
        }
        let delay = MS + self.rng.below(20 * MS);
        self.schedule(
            delay,
            Event::SnapshotWritten {
                node,
                generation,
                handle,
                state,
            },
        );
    }

    fn on_snapshot_written(
        &mut self,
        node: usize,
        generation: u64,
        handle: SnapshotHandle,
        state: Register,
    ) {
        let n = &mut self.nodes[node];
        if n.generation != generation {
            return;
        }
        assert_eq!(
            state.applied, handle.slot,
            "snapshot state and handle disagree"
        );
        if n.real.is_some() {
            return self.snapshot_written_real(node, handle);
        }
        n.disk.snapshots.insert(handle.slot, state);
        n.engine
            .as_mut()
            .expect("alive")
            .handle_snapshot_done(handle);
        self.drain(node);
    }

    fn fetch_snapshot(&mut self, node: usize, from: NodeId, handle: SnapshotHandle) {
        let generation = self.nodes[node].generation;
        let Some(from) = self.index_of(from) else {
            return;
        };
        let delay = 5 * MS + self.rng.below(50 * MS);
        self.schedule(
            delay,
            Event::SnapshotFetched {
                node,
                generation,
                from,
                handle,
            },
        );
    }

    fn on_snapshot_fetched(
        &mut self,
        node: usize,
        generation: u64,
        from: usize,
        handle: SnapshotHandle,
    ) {
        if self.nodes[node].generation != generation || self.nodes[node].engine.is_none() {
            return;
        }
        if self.nodes[node].real.is_some() {
            return self.snapshot_fetched_real(node, from, handle.slot);
        }
        let cut = self.faults_on && (self.blocked[from][node] || self.blocked[node][from]);
        let source = &self.nodes[from];
        let file = source.disk.snapshots.get(&handle.slot).cloned();
        let wanted = self.nodes[node]
            .engine
            .as_ref()
            .expect("alive")
            .wants_snapshot(handle.slot);
        let (Some(state), false, true) = (file, cut || source.engine.is_none(), wanted) else {
            self.nodes[node]
                .engine
                .as_mut()
                .expect("alive")
                .handle_snapshot_fetch_failed();
            self.drain(node);
            return;
        };
        if Some(state.chain) != self.oracle.chain_at(handle.slot) {
            let detail = format!(
                "{} shipped a snapshot at {} whose history differs from the chosen one",
                source.id, handle.slot
            );
            self.oracle.fail(Check::PrefixAgreement, self.now, detail);
            return;
        }
        self.stats.snapshots_installed += 1;
        let mut state = state;
        self.complete_app(&mut state);
        let n = &mut self.nodes[node];
        n.app = state.clone();
        n.last_snapshot_slot = handle.slot;
        n.disk.snapshots.insert(handle.slot, state);
        n.engine
            .as_mut()
            .expect("alive")
            .handle_snapshot_installed(handle);
        self.drain(node);
    }

    fn on_committed(&mut self, node: usize, id: EntryId, slot: Slot) {
        if self.chubby.is_some() {
            self.chubby_committed(node, id);
        }
        self.nodes[node].open_submits.remove(&id);
        self.oracle.on_ack(self.now, id, slot);
        let tenure = self.nodes[node].tenure;
        let submitted = self.submits.remove(&id);
        let continuous = match (tenure, submitted) {
            (Some((epoch, since)), Some((at_node, at))) => {
                epoch == id.epoch && at_node == node && since <= at
            }
            (Some((epoch, _)), None) => epoch == id.epoch, // the engine's own entries
            _ => false,
        };
        if !continuous {
            let detail = format!(
                "{} acknowledged {id:?} at {slot}, but its tenure is {:?} (submitted {:?})",
                self.nodes[node].id, tenure, submitted
            );
            self.oracle.fail(Check::Epoch, self.now, detail);
        }
        if let Some(liveness) = &mut self.liveness {
            if liveness.probe == Some(id) {
                liveness.probe_slot = Some(slot);
            }
        }
    }

    // ----- clients -----

    fn master_index(&self) -> Option<usize> {
        let mut best: Option<(usize, Epoch)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if let (Some(engine), false) = (&node.engine, node.retired) {
                if let Some(epoch) = engine.epoch() {
                    if best.is_none_or(|(_, e)| epoch > e) {
                        best = Some((i, epoch));
                    }
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn on_submit(&mut self) {
        let interval = self.options.submit_interval_ns;
        let next = interval / 2 + self.rng.below(interval);
        self.schedule(next, Event::Submit);
        // Clients go to a replica that believes it is master (stale ones included), sometimes anywhere.
        let is_master = |n: &Node| n.engine.as_ref().is_some_and(|e| e.epoch().is_some());
        let masters = self.nodes.iter().filter(|n| is_master(n)).count();
        let target = if masters > 0 && self.rng.chance(900_000) {
            let nth = self.rng.below(masters as u64) as usize;
            (0..self.nodes.len())
                .filter(|i| is_master(&self.nodes[*i]))
                .nth(nth)
        } else {
            Some(self.rng.below(self.nodes.len() as u64) as usize)
        };
        let Some(node) = target else { return };
        if self
            .liveness
            .as_ref()
            .is_some_and(|l| l.probe_slot.is_some())
        {
            return;
        }
        self.forget_orphaned_probe();
        for _ in 0..self.options.submits_per_event {
            let value = self.next_value;
            self.next_value += 1;
            let n = &mut self.nodes[node];
            let Some(engine) = n.engine.as_mut().filter(|_| !n.retired) else {
                return;
            };
            // A client keeps a bounded number of submits in flight, as real ones do.
            if n.open_submits.len() >= SUBMITS_IN_FLIGHT_MAX {
                break;
            }
            if let Ok(id) = engine.propose(encode(value)) {
                n.open_submits.insert(id);
                self.submits.insert(id, (node, self.now));
                if let Some(liveness) = &mut self.liveness {
                    if liveness.probe.is_none() {
                        liveness.probe = Some(id);
                    }
                }
            }
        }
        self.drain(node);
    }

    /// A probe whose master crashed, was retired or lost its tenure will never be answered.
    fn forget_orphaned_probe(&mut self) {
        let Some(Liveness {
            probe: Some(id), ..
        }) = &self.liveness
        else {
            return;
        };
        let holder = self.submits.get(id).map(|(node, _)| *node);
        let alive = holder.is_some_and(|n| {
            let node = &self.nodes[n];
            !node.retired
                && node
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.epoch() == Some(id.epoch))
        });
        if !alive {
            if let Some(liveness) = &mut self.liveness {
                liveness.probe = None;
            }
        }
    }

    fn on_read(&mut self) {
        let next = 5 * MS + self.rng.below(20 * MS);
        self.schedule(next, Event::Read);
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let Some(engine) = &node.engine else { continue };
            if node.retired || !engine.lease_read_ok() {
                continue;
            }
            self.stats.lease_reads += 1;
            let (id, applied) = (node.id, node.app.applied);
            if self.options.trace && !engine.holds_lease() {
                println!(
                    "{:.6} {id} reads at {applied} WITHOUT a lease (acked through {})",
                    self.now as f64 / 1e9,
                    self.oracle.max_acked_slot
                );
            }
            self.oracle.on_lease_read(self.now, id, applied);
        }
    }

    // ----- faults -----

    fn on_crash(&mut self, _: usize) {
        if !self.faults_on {
            return;
        }
        let next = self.spread_around(self.options.crash_mean_interval_ns);
        self.schedule(next, Event::Crash { node: usize::MAX });
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].engine.is_some() && !self.nodes[*i].retired)
            .collect();
        if alive.len() <= 1 {
            return;
        }
        let victim = alive[self.rng.below(alive.len() as u64) as usize];
        self.crash(victim);
        let down_for = 50 * MS + self.rng.below(3 * SECOND);
        self.schedule(down_for, Event::Restart { node: victim });
    }

    /// The process dies: memory is gone, and only a prefix of what was written but not synced survives.
    fn crash(&mut self, node: usize) {
        self.stats.crashes += 1;
        self.nodes[node].open_submits.clear();
        if self.chubby.is_some() {
            self.chubby_crashed(node);
        }
        if self.options.trace {
            println!(
                "{:.6} {} crashes",
                self.now as f64 / 1e9,
                self.nodes[node].id
            );
        }
        let n = &mut self.nodes[node];
        n.engine = None;
        n.generation += 1;
        n.tenure = None;
        let pending: Vec<PendingSync> = n.disk.pending.drain(..).collect();
        n.disk.syncing = 0;
        let records: Vec<(Incarnation, Record)> = pending
            .into_iter()
            .flat_map(|b| b.records.into_iter().map(move |r| (b.incarnation, r)))
            .collect();
        if self.nodes[node].real.is_some() {
            return self.crash_real(node, records);
        }
        let survive = self.rng.below(records.len() as u64 + 1) as usize;
        for (incarnation, record) in records.into_iter().take(survive) {
            self.make_durable(node, incarnation, std::slice::from_ref(&record));
            self.nodes[node].disk.durable.push(record);
        }
    }

    fn on_restart(&mut self, node: usize) {
        if self.nodes[node].engine.is_some() || self.nodes[node].retired {
            return;
        }
        if self.faults_on && self.rng.chance(self.options.wipe_ppm) && self.wipe_allowed(node) {
            if self.options.trace {
                let lost: Vec<usize> = self
                    .configs_in_play()
                    .iter()
                    .map(|c| self.lost_voters(c))
                    .collect();
                println!(
                    "{:.6} wiping {}: configs in play {:?}, lost {lost:?}",
                    self.now as f64 / 1e9,
                    self.nodes[node].id,
                    self.configs_in_play()
                );
            }
            if let Some(real) = &mut self.nodes[node].real {
                real.wipe();
            }
            self.restart_wiped(node);
            return;
        }
        if self.nodes[node].real.is_some() {
            return self.restart_real(node);
        }
        let peers = self.peer_ids();
        let n = &mut self.nodes[node];
        let state = match DurableState::recover(&n.disk.durable) {
            Ok(state) => state,
            Err(error) => {
                // Nothing usable on disk (e.g. it crashed before its first sync): rebuild.
                if self.options.trace {
                    println!(
                        "{:.6} {} cannot recover: {error}",
                        self.now as f64 / 1e9,
                        self.nodes[node].id
                    );
                }
                return self.restart_wiped(node);
            }
        };
        let mut app = match n.disk.snapshots.get(&state.snapshot.slot) {
            Some(snapshot) => snapshot.clone(),
            None if state.snapshot.slot == Slot::ZERO => Register::default(),
            None => panic!(
                "{} has a snapshot record at {} without its file",
                n.id, state.snapshot.slot
            ),
        };
        self.complete_app(&mut app);
        let n = &mut self.nodes[node];
        n.app = app;
        n.last_snapshot_slot = state.snapshot.slot;
        n.rate_ppm = pick_rate(&mut self.rng, self.options.settings.clock_drift_ppm);
        let seed = self.rng.next_u64();
        let mut engine = Replica::recover(state, peers, self.options.settings.clone(), seed);
        engine.plant_bugs(self.options.bugs);
        n.engine = Some(engine);
        self.schedule_tick(node);
        self.drain(node);
    }

    /// Wiping is allowed only while every config still in play keeps a majority of identities that
    /// remember (TigerBeetle's "faults constrained by recoverability"): otherwise the group could
    /// rightly never decide again, and liveness mode would report it.
    fn wipe_allowed(&self, node: usize) -> bool {
        if self.now < self.last_membership_change + 5 * SECOND {
            return false; // the change in flight may make this node a voter: wait until it settles
        }
        let id = self.nodes[node].id;
        self.configs_in_play().iter().all(|config| {
            let extra = usize::from(config.voters.contains_key(&id));
            self.lost_voters(config) + extra <= config.voters.len() - config.quorum()
        })
    }

    /// The configs of slots that some live replica has not learned yet (a chosen slot nobody
    /// remembers learning can only be learned again through a quorum of its config), and of those a
    /// master may propose next.
    fn configs_in_play(&self) -> Vec<Config> {
        let learned = self
            .nodes
            .iter()
            .filter(|n| !n.retired)
            .filter_map(|n| {
                n.engine
                    .as_ref()
                    .filter(|e| !e.is_rebuilding())
                    .map(Replica::chosen_through)
            })
            .min()
            .unwrap_or(Slot::ZERO);
        let from = self.oracle.prefix.min(learned).next();
        let to = from.plus(self.options.settings.window_slots);
        let mut configs: Vec<Config> = self
            .oracle
            .membership
            .configs_between(from, to)
            .cloned()
            .collect();
        configs.push(self.oracle.membership.latest().clone());
        configs
    }

    /// How many voters of the latest config lost their state and have not rejoined.
    fn lost_voters(&self, config: &Config) -> usize {
        config
            .voters
            .iter()
            .filter(|(n, inc)| self.impaired(**n, **inc))
            .count()
    }

    /// A voter identity that cannot vote until a rebuild completes: its state was lost, or its
    /// replica is rebuilding.
    fn impaired(&self, node: NodeId, incarnation: Incarnation) -> bool {
        self.index_of(node).is_some_and(|i| {
            let n = &self.nodes[i];
            n.impaired
                || n.lost_incarnation.is_some_and(|l| l >= incarnation)
                || match &n.engine {
                    Some(engine) => engine.is_rebuilding(),
                    // Down: it comes back rebuilding if that is what its disk says.
                    None => DurableState::recover(&n.disk.durable)
                        .map_or(true, |state| state.rebuilding),
                }
        })
    }

    /// The node's whole state is lost (or found corrupt): it restarts empty, in rebuild mode.
    fn restart_wiped(&mut self, node: usize) {
        self.stats.wipes += 1;
        if self.options.trace {
            println!(
                "{:.6} {} restarts with its state lost",
                self.now as f64 / 1e9,
                self.nodes[node].id
            );
        }
        let peers = self.peer_ids();
        let n = &mut self.nodes[node];
        let known = self.oracle.membership.latest().incarnation_of(n.id);
        let lost = n.lost_incarnation.max(known);
        n.lost_incarnation = lost;
        n.impaired = true;
        n.disk = Disk::default();
        if let Some(real) = &mut n.real {
            real.start_empty();
        }
        n.app = Register::default();
        n.last_snapshot_slot = Slot::ZERO;
        let mut app = Register::default();
        self.complete_app(&mut app);
        let n = &mut self.nodes[node];
        n.app = app;
        n.rate_ppm = pick_rate(&mut self.rng, self.options.settings.clock_drift_ppm);
        let seed = self.rng.next_u64();
        let mut engine = Replica::rebuild(n.id, peers, self.options.settings.clone(), seed);
        engine.plant_bugs(self.options.bugs);
        n.engine = Some(engine);
        self.schedule_tick(node);
        self.drain(node);
    }

    fn peer_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| !n.retired)
            .map(|n| n.id)
            .collect()
    }

    fn on_partition(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.spread_around(self.options.partition_mean_interval_ns);
        self.schedule(next, Event::Partition);
        self.stats.partitions += 1;
        let count = self.nodes.len();
        self.heal_links();
        let lease_ns = self.options.settings.lease_ticks * self.options.tick_ns;
        let mut duration = 100 * MS + self.rng.below(4 * SECOND);
        match self.rng.below(5) {
            0 => {
                // Symmetric: split the nodes in two.
                let side: Vec<bool> = (0..count).map(|_| self.rng.chance(500_000)).collect();
                for a in 0..count {
                    for b in 0..count {
                        self.blocked[a][b] = side[a] != side[b];
                    }
                }
            }
            1 => {
                // One-way: one node cannot send to (or cannot hear from) everyone else.
                let victim = self.rng.below(count as u64) as usize;
                let outbound = self.rng.chance(500_000);
                self.cut_one_way(victim, outbound);
            }
            2 => {
                // Partial: random links cut in both directions.
                for a in 0..count {
                    for b in (a + 1)..count {
                        if self.rng.chance(300_000) {
                            self.blocked[a][b] = true;
                            self.blocked[b][a] = true;
                        }
                    }
                }
            }
            kind => {
                // The master cut off (both ways, or unable to hear), for about one lease: the window
                // where a stale master, a new one and leases meet.
                let Some(master) = self.master_index() else {
                    return;
                };
                if kind == 3 {
                    self.cut_one_way(master, true);
                }
                self.cut_one_way(master, false);
                duration = lease_ns / 2 + self.rng.below(lease_ns);
            }
        }
        if self.options.trace {
            println!(
                "{:.6} partition for {:.3}s: {:?}",
                self.now as f64 / 1e9,
                duration as f64 / 1e9,
                &self.blocked[..count]
                    .iter()
                    .map(|r| r[..count].to_vec())
                    .collect::<Vec<_>>()
            );
        }
        self.schedule(duration, Event::Heal);
    }

    fn cut_one_way(&mut self, victim: usize, outbound: bool) {
        for other in (0..self.nodes.len()).filter(|o| *o != victim) {
            if outbound {
                self.blocked[victim][other] = true;
            } else {
                self.blocked[other][victim] = true;
            }
        }
    }

    fn heal_links(&mut self) {
        for row in &mut self.blocked {
            row.iter_mut().for_each(|b| *b = false);
        }
    }

    fn on_membership(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.spread_around(self.options.membership_mean_interval_ns);
        self.schedule(next, Event::Membership);
        let Some(master) = self.master_index() else {
            return;
        };
        let config = self.oracle.membership.latest().clone();
        // An operator promotes a learner that joined and is healthy (not one that lost its state since).
        let joined_learner = config
            .learners
            .iter()
            .find(|(n, inc)| inc.0 > 0 && !self.impaired(**n, **inc))
            .map(|(n, _)| *n);
        let change = if let Some(learner) = joined_learner {
            MembershipChange::Promote(learner)
        } else if config.voters.len() < 5
            && self.nodes.len() < 12
            && config.learners.is_empty()
            && self.rng.chance(600_000)
        {
            MembershipChange::AddLearner(NodeId(self.nodes.len() as u64 + 1))
        } else if config.voters.len() > 3 {
            let voters: Vec<NodeId> = config.voters.keys().copied().collect();
            let victim = voters[self.rng.below(voters.len() as u64) as usize];
            let smaller = config
                .apply(&MembershipChange::Remove(victim))
                .expect("a voter can be removed");
            let lost = self
                .configs_in_play()
                .iter()
                .map(|c| self.lost_voters(c))
                .max()
                .unwrap_or(0);
            if lost > smaller.voters.len() - smaller.quorum() {
                return; // removing a healthy voter would leave too few that remember
            }
            MembershipChange::Remove(victim)
        } else {
            return;
        };
        let engine = self.nodes[master].engine.as_mut().expect("master is alive");
        if engine.propose_membership(change.clone()).is_err() {
            return;
        }
        self.stats.membership_changes += 1;
        self.last_membership_change = self.now;
        self.drain(master);
        if let MembershipChange::AddLearner(id) = change {
            // The new node starts empty and joins through the rebuild path.
            let peers: Vec<NodeId> = self.peer_ids();
            let rate = pick_rate(&mut self.rng, self.options.settings.clock_drift_ppm);
            let seed = self.rng.next_u64();
            let mut engine = Replica::rebuild(id, peers, self.options.settings.clone(), seed);
            engine.plant_bugs(self.options.bugs);
            let real = self.options.real_disk.as_ref().map(RealDisk::new);
            self.nodes.push(Node::new(id, engine, rate, real));
            let index = self.nodes.len() - 1;
            let mut app = Register::default();
            self.complete_app(&mut app);
            self.nodes[index].app = app;
            self.nodes[index].lost_incarnation = None;
            self.schedule_tick(index);
            self.drain(index);
        }
    }

    // ----- liveness mode -----

    fn start_liveness(&mut self) {
        self.faults_on = false;
        self.heal_links();
        for node in 0..self.nodes.len() {
            if self.nodes[node].engine.is_none() && !self.nodes[node].retired {
                self.on_restart(node);
            }
        }
        self.liveness = Some(Liveness {
            deadline: self.now + self.options.liveness_bound_ns,
            probe: None,
            probe_slot: None,
        });
    }

    fn liveness_done(&self) -> bool {
        let Some(Liveness {
            probe_slot: Some(slot),
            ..
        }) = &self.liveness
        else {
            return false;
        };
        let config = self.oracle.membership.latest();
        self.nodes
            .iter()
            .filter(|n| config.contains(n.id))
            .all(|n| {
                n.engine
                    .as_ref()
                    .is_some_and(|e| !e.is_rebuilding() && e.chosen_through() >= *slot)
            })
    }

    // ----- checks after every step -----

    fn check_after_step(&mut self) {
        if self.oracle.prefix != self.retire_checked_at {
            self.retire_checked_at = self.oracle.prefix;
            self.retire_removed();
        }
    }

    /// At most one replica may hold a lease at any instant of true time. A replica's belief changes
    /// only when it takes a step, so checking after each step that ends with a lease covers every
    /// instant.
    fn check_lease_overlap(&mut self) {
        let holding = |n: &&Node| !n.retired && n.engine.as_ref().is_some_and(Replica::holds_lease);
        if self.nodes.iter().filter(holding).count() > 1 {
            let holders: Vec<NodeId> = self.nodes.iter().filter(holding).map(|n| n.id).collect();
            let detail = format!("{holders:?} all hold a valid master lease");
            self.oracle.fail(Check::LeaseOverlap, self.now, detail);
        }
    }

    /// A node removed from the group is stopped for good once the new config is in force and a
    /// majority of it has learned every slot before it: from then on nothing needs the old node (an
    /// operator does the same: stop a removed replica once the others have caught up).
    fn retire_removed(&mut self) {
        let (start, config) = self.oracle.membership.entries.last().expect("never empty");
        if *start > self.oracle.prefix.next() {
            return;
        }
        let caught_up = self
            .nodes
            .iter()
            .filter(|n| {
                config.is_voter(
                    n.id,
                    n.engine
                        .as_ref()
                        .map_or(Incarnation(0), Replica::incarnation),
                )
            })
            .filter(|n| {
                n.engine
                    .as_ref()
                    .is_some_and(|e| !e.is_rebuilding() && e.chosen_through().next() >= *start)
            })
            .count();
        let settled = caught_up >= config.quorum();
        for node in &mut self.nodes {
            if config.contains(node.id) {
                node.was_member = true;
            } else if node.was_member && !node.retired && settled {
                node.retired = true;
                node.open_submits.clear();
                node.engine = None;
                node.generation += 1;
                node.tenure = None;
            }
        }
    }
}

impl Node {
    fn new(id: NodeId, engine: Replica, rate_ppm: i64, real: Option<RealDisk>) -> Node {
        Node {
            id,
            engine: Some(engine),
            generation: 0,
            disk: Disk::default(),
            app: Register::default(),
            rate_ppm,
            retired: false,
            was_member: false,
            open_submits: Default::default(),
            lost_incarnation: None,
            impaired: false,
            tenure: None,
            last_snapshot_slot: Slot::ZERO,
            real,
        }
    }
}

/// Drops records a snapshot at `through` made useless, keeping what recovery folds the same way:
/// the identity record first, the last promise, and everything after the snapshot.
fn compact(records: &mut Vec<Record>, through: Slot) {
    let last_promise = records
        .iter()
        .rposition(|r| matches!(r, Record::Promised(_)));
    let mut index = 0;
    records.retain(|record| {
        index += 1;
        match record {
            Record::Accepted { slot, .. }
            | Record::Chosen { slot, .. }
            | Record::Learned { slot, .. } => *slot > through,
            Record::Promised(_) => Some(index - 1) == last_promise,
            _ => true,
        }
    });
}

/// Records synced at once even though they release no message: the identity record, as storage
/// creates it (a replica that crashed before would otherwise come back as a stranger), and the
/// start and end of a rebuild, so that a replica the fault budget (`wipe_allowed`) counts as voting
/// again still is after a crash. The driver's writer syncs every persist promptly, so a real replica
/// loses them only in that moment too.
fn syncs_at_once(record: &Record) -> bool {
    matches!(
        record,
        Record::Bootstrap { .. } | Record::RebuildBegan { .. } | Record::RebuildDone
    )
}

/// A clock rate within the bound, often at its edges (where lease bugs show).
fn pick_rate(rng: &mut Rng, bound_ppm: u64) -> i64 {
    let bound = bound_ppm as i64;
    match rng.below(4) {
        0 => bound,
        1 => -bound,
        _ => rng.below(2 * bound_ppm + 1) as i64 - bound,
    }
}

fn kind_of(message: &Message) -> &'static str {
    match message {
        Message::Promise(_) => "a promise",
        Message::Accepted(_) => "an accepted vote",
        _ => "a message",
    }
}

/// Runs one seed.
pub fn run(options: Options) -> Outcome {
    Sim::new(options).run()
}
