//! The chubby-db application in the simulator: every replica's state machine is the real
//! `chubby_db::Database` (carried in `Register::db`, so snapshots, restarts, state loss and
//! catch-up move it with the register), fed each log value's entries as `Command`s, with
//!
//! - **master duties** as the real server does them (`chubby-db/src/server/duties.rs`): the first
//!   command of each tenure is `MasterChanged`, then a `Tick` whenever the database's next
//!   deadline is due on the master's wall clock. Each replica's wall clock is true time plus a
//!   fixed skew within `clock_skew_max_ms` (NTP-like bounded drift);
//! - **clients** that open sessions, keep them alive (or fall silent, or crash, so sessions
//!   expire), take and release exclusive and shared locks (try and blocking), race MultiOps
//!   (compare-and-set, creates, deletes, ephemeral nodes, a tally bumped once per request), retry
//!   a request with the same `(session, seq)` at another replica when it times out, and write to a
//!   **fenced downstream resource** with their sequencers while they believe they hold a lock;
//! - **checkers** (each failure names the seed):
//!   - `LockSafety`: the resource never sees an older grant's write after a newer grant's (two
//!     holders' exclusive work interleaved), no grant is committed while another client still
//!     believes it holds a conflicting grant, and after every slot at most one exclusive
//!     sequencer of a lock validates;
//!   - `SequencerSuperseded`: every `SequencerValid` guard that held, and every sequencer check
//!     the resource makes at a master, is judged against the grant history in log order: a
//!     sequencer whose grant was superseded never validates again;
//!   - `ExactlyOnce`: every occurrence of a `(session, seq)` in the log gets the same reply, and
//!     the tally's content generation counts each tally request once;
//!   - `DatabaseAgreement`: replicas that applied a slot returned the same replies and events,
//!     and at each consistency check (digest request) have the same digest and the same session
//!     and lock state; a snapshot restores to the same digest.
//!
//! A client's belief that it holds a lock is conservative, as a real client's is: its session is
//! believed alive until `sent + lease - guard`, where `sent` is when it sent the request that
//! renewed the lease and `guard` covers the wall-clock skew between the replica that stamped the
//! lease and the one whose tick expires it. Writes to the resource take at most
//! `downstream_delay_max_ns`, less than the lock-delay: that is what lock-delay assumes, and what
//! the planted `ignore_lock_delay` bug breaks.

use super::{Event, Sim, MS, SUBMITS_IN_FLIGHT_MAX};
use crate::app::{Fnv, Register};
use crate::hash::FastMap;
use crate::oracle::Check;
use chubby_db::{
    Applied, Branch, Command, Config, Database, EventKind, LockMode, MultiOp, NodeKind, NodePath,
    Op, OpOutput, OpResult, PlantedBugs, Rejection, Reply, RequestSeq, Sequencer, SessionId, Test,
};
use paxos_core::rng::Rng;
use paxos_core::{EntryId, EntryKind, Epoch, NodeId, Slot, Value};
use std::collections::BTreeMap;

/// Wall clocks start here, so a clock skewed backwards never reads below zero.
const BASE_MS: u64 = 1_000_000;
/// How many of each lock's latest grants are checked with `check_sequencer` after each slot.
const RECENT_GRANTS_CHECKED: usize = 4;
/// Sequencers of ended grants a client keeps, to try them again (they must not validate).
const PAST_SEQUENCERS_MAX: usize = 4;

/// What a chubby seed runs: derived from the seed, printed with a failure.
#[derive(Clone, Debug)]
pub struct ChubbyOptions {
    pub clients: usize,
    /// The lease every session asks for.
    pub lease_ms: u64,
    /// The lock-delay of the lock nodes (the database's default).
    pub lock_delay_ms: u64,
    /// Each replica's wall clock is off true time by at most this much.
    pub clock_skew_max_ms: u64,
    /// A write reaches the downstream resource within this long (less than the lock-delay).
    pub downstream_delay_max_ns: u64,
    /// A client resends a request unanswered for this long, to another replica.
    pub request_timeout_ns: u64,
    /// Mean time between a client's steps.
    pub step_mean_ns: u64,
    /// Deliberately broken database behaviours (teeth tests).
    pub bugs: ChubbyBugs,
}

/// Database bugs planted on every replica, or on the first replica only (then the replicas'
/// state machines differ, which the agreement checker must notice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChubbyBugs {
    pub all: PlantedBugs,
    pub first_replica: PlantedBugs,
}

impl ChubbyBugs {
    fn for_node(&self, node: usize) -> PlantedBugs {
        if node == 0 && self.first_replica != PlantedBugs::default() {
            self.first_replica
        } else {
            self.all
        }
    }
}

impl ChubbyOptions {
    pub fn from_seed(seed: u64, bugs: ChubbyBugs) -> ChubbyOptions {
        let mut rng = Rng::new(seed ^ 0xC4B8_7D8B_0DB5);
        let lock_delay_ms = 500 + rng.below(1_000);
        ChubbyOptions {
            clients: 3 + rng.below(6) as usize,
            lease_ms: 1_000 + rng.below(2_000),
            lock_delay_ms,
            clock_skew_max_ms: rng.below(80),
            downstream_delay_max_ns: lock_delay_ms * MS * (50 + rng.below(40)) / 100,
            request_timeout_ns: 150 * MS + rng.below(400 * MS),
            step_mean_ns: 15 * MS + rng.below(60 * MS),
            bugs,
        }
    }

    /// How much shorter than its lease a client believes its session lives (see the module doc):
    /// the stamping clock may be behind by the skew and the expiring one ahead by it, and each
    /// reading is truncated to a millisecond.
    fn guard_ms(&self) -> u64 {
        2 * self.clock_skew_max_ms + 2
    }

    fn database_config(&self) -> Config {
        Config {
            lease_ms_default: self.lease_ms,
            lock_delay_ms_default: self.lock_delay_ms,
            ..Config::default()
        }
    }
}

/// Figures of chubby seeds.
#[derive(Clone, Debug, Default)]
pub struct ChubbyStats {
    pub seeds: u64,
    pub sessions_opened: u64,
    pub sessions_expired: u64,
    pub grants: u64,
    pub multi_ops: u64,
    /// Log entries that repeated a `(session, seq)` already applied: answered from the cache.
    pub retries_deduplicated: u64,
    pub resource_writes: u64,
    /// `SequencerValid` results and resource checks judged against the grant history.
    pub sequencers_judged: u64,
    pub digest_checks: u64,
    pub client_crashes: u64,
}

impl ChubbyStats {
    pub fn add(&mut self, other: &ChubbyStats) {
        self.seeds += other.seeds;
        self.sessions_opened += other.sessions_opened;
        self.sessions_expired += other.sessions_expired;
        self.grants += other.grants;
        self.multi_ops += other.multi_ops;
        self.retries_deduplicated += other.retries_deduplicated;
        self.resource_writes += other.resource_writes;
        self.sequencers_judged += other.sequencers_judged;
        self.digest_checks += other.digest_checks;
        self.client_crashes += other.client_crashes;
    }
}

#[derive(Debug)]
pub(crate) enum ChubbyEvent {
    /// A client decides what to do next.
    Step { client: usize, life: u64 },
    /// A client's request reaches a replica.
    Request {
        client: usize,
        request: u64,
        node: usize,
        wire: Wire,
    },
    /// A replica's answer reaches a client.
    Answer {
        client: usize,
        request: u64,
        answer: Answer,
    },
    /// Events of one applied slot reach a client from the replica it talks to.
    Events {
        client: usize,
        events: Vec<chubby_db::Event>,
    },
    /// A client's write reaches the downstream resource.
    Write {
        client: usize,
        life: u64,
        sequencer: Sequencer,
        sent_at: u64,
    },
}

impl ChubbyEvent {
    pub(crate) fn trace_key(&self) -> usize {
        match self {
            ChubbyEvent::Step { client, .. }
            | ChubbyEvent::Answer { client, .. }
            | ChubbyEvent::Events { client, .. }
            | ChubbyEvent::Write { client, .. } => *client,
            ChubbyEvent::Request { node, .. } => 1000 + *node,
        }
    }
}

/// A request as a client sends it; the replica stamps the time.
#[derive(Clone, Debug)]
pub(crate) enum Wire {
    Open,
    KeepAlive(SessionId),
    Close(SessionId),
    Multi {
        session: SessionId,
        seq: RequestSeq,
        op: MultiOp,
    },
}

#[derive(Debug)]
pub(crate) enum Answer {
    Applied(Reply),
    /// Not master (or the request could not be proposed): try another replica.
    NotMaster,
    /// Master, but its tenure is not announced yet: try again.
    TenureStarting,
}

/// What a client meant by a request, to act on the reply.
#[derive(Clone, Debug)]
enum Purpose {
    Open,
    KeepAlive,
    Close,
    Setup,
    Acquire,
    Release,
    Fenced,
    Stale,
    Tally,
    CasRead,
    Cas,
    Namespace,
}

#[derive(Debug)]
struct Outstanding {
    request: u64,
    wire: Wire,
    purpose: Purpose,
    /// When the first attempt left: the lease a reply grants is counted from here.
    first_sent: u64,
    deadline: u64,
}

#[derive(Debug)]
struct ClientSession {
    id: SessionId,
    /// True time until which the client believes the session alive (conservative).
    believed_until: u64,
    next_seq: u64,
    last_keep_alive: u64,
}

#[derive(Debug)]
struct Hold {
    sequencer: Sequencer,
}

#[derive(Debug)]
struct Waiting {
    path: NodePath,
    since: u64,
}

#[derive(Debug, Default)]
struct Client {
    /// Bumped when the client crashes: steps of an earlier life are ignored.
    life: u64,
    session: Option<ClientSession>,
    outstanding: Option<Outstanding>,
    next_request: u64,
    /// The replica it talks to (and hears events from).
    target: usize,
    holds: Vec<Hold>,
    waiting: Option<Waiting>,
    past: Vec<Sequencer>,
    /// Cut off from the cell until then (it still reaches the downstream resource).
    silent_until: u64,
    writes_in_flight: u64,
    setup_done: bool,
    cas_generation: Option<u64>,
}

impl Client {
    fn believes_session(&self, now: u64) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.believed_until > now)
    }

    /// Stops believing in every grant (they go to `past`).
    fn drop_holds(&mut self) {
        for hold in self.holds.drain(..) {
            self.past.push(hold.sequencer);
        }
        let excess = self.past.len().saturating_sub(PAST_SEQUENCERS_MAX);
        self.past.drain(..excess);
    }

    fn drop_hold(&mut self, path: &NodePath) {
        if let Some(at) = self.holds.iter().position(|h| h.sequencer.path == *path) {
            let hold = self.holds.remove(at);
            self.past.push(hold.sequencer);
            if self.past.len() > PAST_SEQUENCERS_MAX {
                self.past.remove(0);
            }
        }
    }

    /// The session ended, or the client stopped believing in it.
    fn drop_session(&mut self) {
        self.session = None;
        self.drop_holds();
        self.waiting = None;
        self.outstanding = None;
    }
}

/// Each replica's wall clock and its master duties.
#[derive(Debug, Default, Clone)]
struct Duty {
    /// Wall clock = true time + `BASE_MS - skew_max + offset_ms`.
    offset_ms: u64,
    announced: Option<Epoch>,
    announcing: Option<(Epoch, EntryId)>,
    tick: Option<EntryId>,
}

#[derive(Debug)]
struct Pending {
    client: usize,
    request: u64,
    generation: u64,
}

/// A position in the log: a slot and an entry within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    slot: u64,
    index: u64,
}

#[derive(Debug)]
struct Grant {
    instance: u64,
    mode: LockMode,
    session: SessionId,
    at: Pos,
    /// Where a conflicting later grant of the same lock was committed.
    superseded_at: Option<Pos>,
}

/// The newest write the downstream resource accepted for one lock.
#[derive(Debug)]
struct Accepted {
    generation: u64,
    client: usize,
    sent_at: u64,
    at: u64,
}

/// The fixed names the clients use.
#[derive(Debug)]
struct Paths {
    locks_dir: NodePath,
    locks: [NodePath; 2],
    data_dir: NodePath,
    data: [NodePath; 2],
    tally: NodePath,
    cas: NodePath,
    tmp_dir: NodePath,
    tmp: Vec<NodePath>,
    eph_dir: NodePath,
}

impl Paths {
    fn new() -> Paths {
        let p = |s: &str| NodePath::new(s).expect("a valid path");
        Paths {
            locks_dir: p("/locks"),
            locks: [p("/locks/a"), p("/locks/b")],
            data_dir: p("/data"),
            data: [p("/data/a"), p("/data/b")],
            tally: p("/tally"),
            cas: p("/cas"),
            tmp_dir: p("/tmp"),
            tmp: (0..4).map(|k| p(&format!("/tmp/n{k}"))).collect(),
            eph_dir: p("/eph"),
        }
    }
}

/// The clients, the resource, the duties and the checkers' memory of one chubby seed.
#[allow(missing_debug_implementations)]
pub(crate) struct World {
    options: ChubbyOptions,
    seed: u64,
    rng: Rng,
    paths: Paths,
    clients: Vec<Client>,
    /// Which client opened each session (for routing events).
    owners: FastMap<SessionId, usize>,
    duties: Vec<Duty>,
    /// Client requests a replica proposed, by entry.
    pending: FastMap<EntryId, Pending>,
    /// Every slot through here was applied by some replica (the first applier observes it).
    observed_through: Slot,
    /// Hash of each slot's replies and events, as the first replica to apply it returned them.
    outputs: Vec<u64>,
    /// Digest and session/lock fingerprint at each digest request, by slot.
    digests: BTreeMap<u64, (u64, u64, NodeId)>,
    /// Every grant of every lock, in log order, by path and generation.
    grants: BTreeMap<NodePath, BTreeMap<u64, Grant>>,
    /// The first log position and reply hash of each `(session, seq)`.
    first_seen: FastMap<(SessionId, RequestSeq), (Pos, u64)>,
    /// Tally requests executed so far, in log order.
    tally: u64,
    resource: BTreeMap<NodePath, Accepted>,
    failures: Vec<(Check, String)>,
    pub(crate) stats: ChubbyStats,
}

impl World {
    pub(crate) fn new(options: ChubbyOptions, seed: u64) -> World {
        let clients = (0..options.clients).map(|_| Client::default()).collect();
        World {
            rng: Rng::new(seed ^ 0x0C11_E475),
            seed,
            paths: Paths::new(),
            clients,
            owners: FastMap::default(),
            duties: Vec::new(),
            pending: FastMap::default(),
            observed_through: Slot::ZERO,
            outputs: Vec::new(),
            digests: BTreeMap::new(),
            grants: BTreeMap::new(),
            first_seen: FastMap::default(),
            tally: 0,
            resource: BTreeMap::new(),
            failures: Vec::new(),
            stats: ChubbyStats {
                seeds: 1,
                ..ChubbyStats::default()
            },
            options,
        }
    }

    fn fail(&mut self, check: Check, detail: String) {
        let detail = format!("seed {}: {detail}", self.seed);
        self.failures.push((check, detail));
    }

    fn duty(&mut self, node: usize) -> &mut Duty {
        while self.duties.len() <= node {
            let offset_ms = self.rng.below(2 * self.options.clock_skew_max_ms + 1);
            self.duties.push(Duty {
                offset_ms,
                ..Duty::default()
            });
        }
        &mut self.duties[node]
    }

    /// A replica's wall clock, in milliseconds.
    fn wall_ms(&mut self, node: usize, now: u64) -> u64 {
        let skew_max = self.options.clock_skew_max_ms;
        let offset = self.duty(node).offset_ms;
        now / MS + BASE_MS - skew_max + offset
    }

    /// How long a client believes a lease renewed by a request sent at `sent` lasts.
    fn believed_until(&self, sent: u64) -> u64 {
        sent + (self.options.lease_ms - self.options.guard_ms()) * MS
    }

    fn link_delay(&mut self, min: u64, max: u64) -> u64 {
        min + self.rng.below(max - min)
    }

    // ----- the observer: log order, at the first replica to apply each slot -----

    /// Judges a command's outcome at `pos` (on every replica), and records it in the history
    /// when this replica is the first to apply the slot.
    fn on_applied(
        &mut self,
        first: bool,
        pos: Pos,
        command: Option<&Command>,
        applied: &Applied,
        now: u64,
    ) {
        if let (Some(Command::MultiOp { session, seq, op }), Reply::MultiOp(reply)) =
            (command, &applied.reply)
        {
            let hash = hash_bytes(&applied.reply.encode());
            let fresh = match self.first_seen.get(&(*session, *seq)) {
                None => {
                    self.first_seen.insert((*session, *seq), (pos, hash));
                    self.stats.multi_ops += 1;
                    true
                }
                Some((at, seen)) => {
                    let (at, seen) = (*at, *seen);
                    if seen != hash {
                        self.fail(
                            Check::ExactlyOnce,
                            format!(
                                "{session} request {} got one reply at {at:?} and another at {pos:?}: it was applied twice",
                                seq.0
                            ),
                        );
                    }
                    if first && at != pos {
                        self.stats.retries_deduplicated += 1;
                    }
                    at == pos
                }
            };
            if fresh {
                self.judge_guards(pos, op, &reply.guards);
                if first {
                    self.record_multi_op(pos, *session, op, reply, now);
                }
            }
        }
        if !first {
            return;
        }
        match &applied.reply {
            Reply::Ticked { expired } => self.stats.sessions_expired += expired.len() as u64,
            Reply::SessionOpened { .. } => self.stats.sessions_opened += 1,
            _ => {}
        }
        for event in &applied.events {
            if let EventKind::LockGranted(sequencer) = &event.kind {
                self.record_grant(pos, sequencer, event.session, now);
            }
        }
    }

    fn judge_guards(&mut self, pos: Pos, op: &MultiOp, held: &[bool]) {
        for (test, held) in op.guard.iter().zip(held) {
            if let (Test::SequencerValid(sequencer), true) = (test, held) {
                self.judge(sequencer, pos, "a SequencerValid guard");
            }
        }
    }

    /// A sequencer validated at `pos`: its grant must exist and not be superseded before `pos`.
    fn judge(&mut self, sequencer: &Sequencer, pos: Pos, what: &str) {
        self.stats.sequencers_judged += 1;
        let grant = self
            .grants
            .get(&sequencer.path)
            .and_then(|g| g.get(&sequencer.lock_generation));
        let why = match grant {
            None => Some("no such grant was ever committed".to_string()),
            Some(g) if g.mode != sequencer.mode || g.instance != sequencer.instance => Some(
                format!("the grant was {:?} of instance {}", g.mode, g.instance),
            ),
            Some(g) => g.superseded_at.filter(|at| *at < pos).map(|at| {
                format!(
                    "the grant (to {}, at {:?}) was superseded at {at:?}",
                    g.session, g.at
                )
            }),
        };
        if let Some(why) = why {
            self.fail(
                Check::SequencerSuperseded,
                format!(
                    "{what} validated sequencer {} gen {} ({:?}) at {pos:?}, but {why}",
                    sequencer.path, sequencer.lock_generation, sequencer.mode
                ),
            );
        }
    }

    fn record_multi_op(
        &mut self,
        pos: Pos,
        session: SessionId,
        op: &MultiOp,
        reply: &chubby_db::MultiOpReply,
        now: u64,
    ) {
        for result in &reply.ops {
            if let OpResult::Done(OpOutput::Acquired(sequencer)) = result {
                self.record_grant(pos, sequencer, session, now);
            }
        }
        let tally_set =
            matches!(op.top.as_slice(), [Op::Set { path, .. }] if *path == self.paths.tally);
        if let (
            true,
            Branch::Top,
            [OpResult::Done(OpOutput::Set {
                content_generation, ..
            })],
        ) = (tally_set, reply.branch, reply.ops.as_slice())
        {
            self.tally += 1;
            if *content_generation != self.tally + 1 {
                self.fail(
                    Check::ExactlyOnce,
                    format!(
                        "the tally's content generation is {content_generation} after {} distinct tally requests (expected {}): a request was applied more than once or lost",
                        self.tally,
                        self.tally + 1
                    ),
                );
            }
        }
    }

    /// A grant committed at `pos`: it supersedes every conflicting earlier grant of the lock, and
    /// no other client may still believe it holds a conflicting one.
    fn record_grant(&mut self, pos: Pos, sequencer: &Sequencer, session: SessionId, now: u64) {
        self.stats.grants += 1;
        let grants = self.grants.entry(sequencer.path.clone()).or_default();
        for grant in grants.values_mut().rev() {
            if grant.superseded_at.is_some() {
                // Grants before a superseded exclusive one are superseded too; shared ones
                // between may not be, so keep looking only past shared grants.
                if grant.mode == LockMode::Exclusive {
                    break;
                }
                continue;
            }
            if grant.mode == LockMode::Exclusive || sequencer.mode == LockMode::Exclusive {
                grant.superseded_at = Some(pos);
            }
        }
        grants.insert(
            sequencer.lock_generation,
            Grant {
                instance: sequencer.instance,
                mode: sequencer.mode,
                session,
                at: pos,
                superseded_at: None,
            },
        );
        let mut conflicts = Vec::new();
        for (index, client) in self.clients.iter().enumerate() {
            let Some(own) = &client.session else { continue };
            if own.id == session || !client.believes_session(now) {
                continue;
            }
            for hold in &client.holds {
                let h = &hold.sequencer;
                let conflict =
                    h.mode == LockMode::Exclusive || sequencer.mode == LockMode::Exclusive;
                if h.path == sequencer.path && conflict {
                    conflicts.push((index, own.id, h.lock_generation, h.mode));
                }
            }
        }
        for (client, own, generation, mode) in conflicts {
            self.fail(
                Check::LockSafety,
                format!(
                    "{} gen {} ({:?}) was granted to {session} at {pos:?} while client {client} ({own}) still believes it holds gen {generation} ({mode:?}) and its lease",
                    sequencer.path, sequencer.lock_generation, sequencer.mode
                ),
            );
        }
    }

    /// After a slot, at its first applier: of each lock's latest grants, at most one exclusive
    /// sequencer validates, and none that was superseded.
    fn check_sequencers_after(&mut self, db: &Database, slot: Slot) {
        let mut failures = Vec::new();
        for (path, grants) in &self.grants {
            let mut exclusive_valid = Vec::new();
            for (generation, grant) in grants.iter().rev().take(RECENT_GRANTS_CHECKED) {
                let sequencer = Sequencer {
                    path: path.clone(),
                    instance: grant.instance,
                    mode: grant.mode,
                    lock_generation: *generation,
                };
                if db.check_sequencer(&sequencer).is_err() {
                    continue;
                }
                if let Some(at) = grant.superseded_at {
                    failures.push((
                        Check::SequencerSuperseded,
                        format!(
                            "after {slot}, sequencer {path} gen {generation} ({:?}, granted to {} at {:?}) validates, but it was superseded at {at:?}",
                            grant.mode, grant.session, grant.at
                        ),
                    ));
                }
                if grant.mode == LockMode::Exclusive {
                    exclusive_valid.push((*generation, grant.session));
                }
            }
            if exclusive_valid.len() > 1 {
                failures.push((
                    Check::LockSafety,
                    format!(
                        "after {slot}, {path} has two exclusive holders whose sequencers validate: {exclusive_valid:?}"
                    ),
                ));
            }
        }
        for (check, detail) in failures {
            self.fail(check, detail);
        }
    }

    fn check_outputs(&mut self, node: NodeId, slot: Slot, hash: u64) {
        let index = slot.0 as usize;
        if self.outputs.len() <= index {
            self.outputs.resize(index + 1, 0);
        }
        match self.outputs[index] {
            0 => self.outputs[index] = hash | 1,
            seen if seen == hash | 1 => {}
            _ => self.fail(
                Check::DatabaseAgreement,
                format!("{node} applied {slot} with replies or events that differ from another replica's"),
            ),
        }
    }

    fn check_digest(&mut self, node: NodeId, slot: Slot, digest: u64, db: &Database) {
        self.stats.digest_checks += 1;
        let fingerprint = fingerprint(db, &self.paths);
        match self.digests.get(&slot.0) {
            None => {
                self.digests.insert(slot.0, (digest, fingerprint, node));
            }
            Some((d, f, other)) if (*d, *f) != (digest, fingerprint) => {
                let detail = format!(
                    "consistency check at {slot}: {node} has digest {digest:016x} (sessions and locks {fingerprint:016x}), {other} had {d:016x} ({f:016x})"
                );
                self.fail(Check::DatabaseAgreement, detail);
            }
            Some(_) => {}
        }
    }

    // ----- the downstream resource -----

    fn on_write(&mut self, client: usize, life: u64, sequencer: Sequencer, sent_at: u64, now: u64) {
        self.stats.resource_writes += 1;
        let c = &mut self.clients[client];
        if c.life == life {
            c.writes_in_flight -= 1;
        }
        let generation = sequencer.lock_generation;
        match self.resource.get(&sequencer.path) {
            Some(top) if generation < top.generation => {
                let detail = format!(
                    "the downstream resource accepted {} gen {} from client {} (sent at {:.6}s, arrived {:.6}s), then got gen {generation} from client {client} sent at {:.6}s while it believed it held the lock: two exclusive holders' work overlapped (the fence rejects it; lock-delay should have made it impossible)",
                    sequencer.path,
                    top.generation,
                    top.client,
                    top.sent_at as f64 / 1e9,
                    top.at as f64 / 1e9,
                    sent_at as f64 / 1e9
                );
                self.fail(Check::LockSafety, detail);
            }
            Some(top) if generation == top.generation => {}
            _ => {
                let accepted = Accepted {
                    generation,
                    client,
                    sent_at,
                    at: now,
                };
                self.resource.insert(sequencer.path.clone(), accepted);
            }
        }
    }
}

/// Session and lock state as queries see it, hashed.
fn fingerprint(db: &Database, paths: &Paths) -> u64 {
    let mut text = String::new();
    for session in db.sessions() {
        text.push_str(&format!("{:?};", db.session(session)));
    }
    for path in paths.locks.iter().chain([&paths.tally, &paths.cas]) {
        text.push_str(&format!("{:?};{:?};", db.lock(path), db.stat(path)));
    }
    hash_bytes(text.as_bytes())
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = Fnv::new(bytes.len() as u64);
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h.write(u64::from_le_bytes(word));
    }
    h.finish()
}

fn hash_applied(h: &mut Fnv, applied: &Applied) {
    h.write(hash_bytes(&applied.reply.encode()));
    for event in &applied.events {
        h.write(hash_bytes(&event.encode()));
    }
}

/// The database's epoch for a tenure, as the real server names it (`round << 20 | node`).
fn db_epoch(epoch: Epoch) -> chubby_db::Epoch {
    chubby_db::Epoch(epoch.0.round << 20 | (epoch.0.node.0 & 0xF_FFFF))
}

// ----- the simulator's side -----

impl Sim {
    fn world(&mut self) -> &mut World {
        self.chubby.as_mut().expect("a chubby seed")
    }

    /// Moves the world's findings into the oracle.
    fn report(&mut self) {
        let Some(world) = self.chubby.as_mut() else {
            return;
        };
        let failures = std::mem::take(&mut world.failures);
        for (check, detail) in failures {
            self.oracle.fail(check, self.now, detail);
        }
    }

    /// On a chubby seed, gives a register without a database a fresh one (slot zero) and plants
    /// the database bugs asked for.
    pub(super) fn complete_app(&self, app: &mut Register) {
        let Some(world) = &self.chubby else {
            return;
        };
        let db = app.db.get_or_insert_with(|| {
            assert_eq!(
                app.applied,
                Slot::ZERO,
                "a chubby state at {} without its database",
                app.applied
            );
            Box::new(Database::new(world.options.database_config()))
        });
        db.plant_bugs(world.options.bugs.all);
    }

    pub(super) fn start_chubby(&mut self) {
        let nodes = self.nodes.len() as u64;
        for client in 0..self.world().clients.len() {
            let world = self.world();
            let mean = world.options.step_mean_ns;
            let at = world.rng.below(mean);
            world.clients[client].target = world.rng.below(nodes) as usize;
            self.schedule(at, Event::Chubby(ChubbyEvent::Step { client, life: 0 }));
        }
    }

    pub(super) fn on_chubby(&mut self, event: ChubbyEvent) {
        match event {
            ChubbyEvent::Step { client, life } => self.client_step(client, life),
            ChubbyEvent::Request {
                client,
                request,
                node,
                wire,
            } => self.on_client_request(client, request, node, wire),
            ChubbyEvent::Answer {
                client,
                request,
                answer,
            } => self.on_answer(client, request, answer),
            ChubbyEvent::Events { client, events } => self.on_client_events(client, events),
            ChubbyEvent::Write {
                client,
                life,
                sequencer,
                sent_at,
            } => {
                let now = self.now;
                self.validate_at_master(&sequencer);
                self.world().on_write(client, life, sequencer, sent_at, now);
            }
        }
        self.report();
    }

    /// Sometimes the resource also asks a master that may serve lease reads whether a write's
    /// sequencer still validates (a stale one, from an in-flight write, must not once
    /// superseded); a yes is judged against the grant history.
    fn validate_at_master(&mut self, sequencer: &Sequencer) {
        if !self.world().rng.chance(300_000) {
            return;
        }
        let Some(node) = (0..self.nodes.len()).find(|i| {
            let n = &self.nodes[*i];
            !n.retired && n.engine.as_ref().is_some_and(|e| e.lease_read_ok())
        }) else {
            return;
        };
        let db = self.nodes[node].app.db.as_ref().expect("a chubby replica");
        if db.check_sequencer(sequencer).is_ok() {
            let pos = Pos {
                slot: db.applied().0,
                index: u64::MAX,
            };
            let what = "a check by the downstream resource at the master";
            self.chubby
                .as_mut()
                .expect("a chubby seed")
                .judge(sequencer, pos, what);
        }
    }

    // ----- replicas -----

    /// Applies one log value to the node's database; returns the digest if the value held a
    /// digest request.
    pub(super) fn apply_chubby(&mut self, node: usize, slot: Slot, value: &Value) -> Option<u64> {
        let now = self.now;
        let (id, generation) = (self.nodes[node].id, self.nodes[node].generation);
        let mut db = self.nodes[node]
            .app
            .db
            .take()
            .expect("a chubby replica has its database");
        let world = self.chubby.as_mut().expect("a chubby seed");
        db.plant_bugs(world.options.bugs.for_node(node));
        let first = slot > world.observed_through;
        if first {
            world.observed_through = slot;
        }
        let mut outputs = Fnv::new(slot.0);
        let mut digest = None;
        let mut answers = Vec::new();
        let mut events: Vec<(usize, chubby_db::Event)> = Vec::new();
        for (index, entry) in value.entries.iter().enumerate() {
            match &entry.kind {
                EntryKind::App(bytes) => {
                    let applied = db.apply_bytes(chubby_db::Slot(slot.0), bytes);
                    hash_applied(&mut outputs, &applied);
                    let command = Command::decode(bytes).ok();
                    let pos = Pos {
                        slot: slot.0,
                        index: index as u64,
                    };
                    world.on_applied(first, pos, command.as_ref(), &applied, now);
                    if entry.id.epoch.0.node == id {
                        if let Some(p) = world.pending.remove(&entry.id) {
                            if p.generation == generation {
                                answers.push((p.client, p.request, applied.reply.clone()));
                            }
                        }
                    }
                    for event in applied.events {
                        if let Some(client) = world.owners.get(&event.session).copied() {
                            if world.clients[client].target == node {
                                events.push((client, event));
                            }
                        }
                    }
                }
                EntryKind::DigestRequest => {
                    let d = db.digest();
                    digest = Some(d);
                    world.check_digest(id, slot, d, &db);
                }
                EntryKind::Reconfigure(_) => {}
            }
        }
        if first {
            world.check_sequencers_after(&db, slot);
            db.check_invariants();
        }
        world.check_outputs(id, slot, outputs.finish());
        self.nodes[node].app.db = Some(db);
        for (client, request, reply) in answers {
            self.send_answer(client, request, Answer::Applied(reply));
        }
        self.send_events(events);
        self.report();
        digest
    }

    /// A snapshot goes through the database's real snapshot bytes: the state restored from them
    /// must have the same digest.
    pub(super) fn snapshot_round_trip(&mut self, node: usize, state: &mut Register) {
        let Some(db) = &state.db else { return };
        let bytes = db.snapshot().to_bytes();
        let id = self.nodes[node].id;
        match Database::from_snapshot(&mut &bytes[..]) {
            Ok(restored) if restored.digest() == db.digest() => {
                state.db = Some(Box::new(restored));
                self.complete_app(state);
            }
            Ok(_) => {
                let detail = format!(
                    "{id}'s snapshot at {} restores to another digest",
                    state.applied
                );
                self.world().fail(Check::DatabaseAgreement, detail);
            }
            Err(error) => {
                let detail = format!(
                    "{id}'s snapshot at {} does not restore: {error}",
                    state.applied
                );
                self.world().fail(Check::DatabaseAgreement, detail);
            }
        }
        self.report();
    }

    /// The master's duties after each tick of its engine: announce the tenure, then keep time.
    pub(super) fn master_duties(&mut self, node: usize) {
        let Some((epoch, _)) = self.nodes[node].tenure else {
            return;
        };
        let now = self.now;
        let now_ms = self.world().wall_ms(node, now);
        let duty = self.world().duty(node).clone();
        if duty.announced != Some(epoch) {
            if duty.announcing.is_some_and(|(e, _)| e == epoch) {
                return; // waiting for the announcement to commit
            }
            let command = Command::MasterChanged {
                epoch: db_epoch(epoch),
                now_ms,
            };
            if let Some(id) = self.propose_app(node, command.encode()) {
                self.world().duty(node).announcing = Some((epoch, id));
            }
            return;
        }
        if duty.tick.is_some() {
            return;
        }
        let db = self.nodes[node].app.db.as_ref().expect("a chubby replica");
        if db
            .next_deadline_ms()
            .is_some_and(|deadline| deadline <= now_ms)
        {
            let command = Command::Tick { now_ms };
            if let Some(id) = self.propose_app(node, command.encode()) {
                self.world().duty(node).tick = Some(id);
            }
        }
    }

    pub(super) fn chubby_committed(&mut self, node: usize, id: EntryId) {
        let duty = self.world().duty(node);
        if duty
            .announcing
            .is_some_and(|(e, i)| i == id && id.epoch == e)
        {
            duty.announced = Some(id.epoch);
            duty.announcing = None;
        }
        if duty.tick == Some(id) {
            duty.tick = None;
        }
    }

    pub(super) fn chubby_failed(&mut self, node: usize, id: EntryId) {
        let world = self.world();
        let duty = world.duty(node);
        if duty.announcing.is_some_and(|(_, i)| i == id) {
            duty.announcing = None;
        }
        if duty.tick == Some(id) {
            duty.tick = None;
        }
        if let Some(p) = world.pending.remove(&id) {
            self.send_answer(p.client, p.request, Answer::NotMaster);
        }
    }

    pub(super) fn chubby_crashed(&mut self, node: usize) {
        let generation = self.nodes[node].generation;
        let world = self.world();
        let duty = world.duty(node);
        duty.announced = None;
        duty.announcing = None;
        duty.tick = None;
        // Requests the crashed process proposed are never answered: their clients time out.
        let id = self.nodes[node].id;
        let world = self.chubby.as_mut().expect("a chubby seed");
        world
            .pending
            .retain(|entry, p| !(entry.epoch.0.node == id && p.generation == generation));
    }

    /// Proposes an application entry at `node`, with the bookkeeping the checkers need.
    fn propose_app(&mut self, node: usize, bytes: Vec<u8>) -> Option<EntryId> {
        self.forget_orphaned_probe();
        let n = &mut self.nodes[node];
        if n.retired || n.open_submits.len() >= SUBMITS_IN_FLIGHT_MAX {
            return None;
        }
        let engine = n.engine.as_mut()?;
        let id = engine.propose(bytes).ok()?;
        n.open_submits.insert(id);
        self.submits.insert(id, (node, self.now));
        if let Some(liveness) = &mut self.liveness {
            if liveness.probe.is_none() && liveness.probe_slot.is_none() {
                liveness.probe = Some(id);
            }
        }
        self.drain(node);
        Some(id)
    }

    fn on_client_request(&mut self, client: usize, request: u64, node: usize, wire: Wire) {
        let now = self.now;
        if self.world().clients[client].silent_until > now {
            return; // the client is cut off from the cell
        }
        let n = &self.nodes[node];
        if n.retired || n.engine.is_none() {
            return; // nobody answers: the client times out
        }
        let Some((epoch, _)) = n.tenure else {
            return self.send_answer(client, request, Answer::NotMaster);
        };
        if self.world().duty(node).announced != Some(epoch) {
            return self.send_answer(client, request, Answer::TenureStarting);
        }
        let now_ms = self.world().wall_ms(node, now);
        let lease_ms = self.world().options.lease_ms;
        let command = match wire {
            Wire::Open => Command::OpenSession {
                now_ms,
                lease_ms: Some(lease_ms),
            },
            Wire::KeepAlive(session) => Command::KeepAlive { session, now_ms },
            Wire::Close(session) => Command::CloseSession { session },
            Wire::Multi { session, seq, op } => Command::MultiOp { session, seq, op },
        };
        let generation = self.nodes[node].generation;
        match self.propose_app(node, command.encode()) {
            Some(id) => {
                let pending = Pending {
                    client,
                    request,
                    generation,
                };
                self.world().pending.insert(id, pending);
            }
            None => self.send_answer(client, request, Answer::NotMaster),
        }
    }

    fn send_answer(&mut self, client: usize, request: u64, answer: Answer) {
        if self.faults_on && self.rng.chance(self.options.drop_ppm) {
            return;
        }
        let (min, max) = (self.options.delay_min_ns, self.options.delay_max_ns);
        let delay = self.world().link_delay(min, max);
        let event = ChubbyEvent::Answer {
            client,
            request,
            answer,
        };
        self.schedule(delay, Event::Chubby(event));
    }

    fn send_events(&mut self, events: Vec<(usize, chubby_db::Event)>) {
        let mut by_client: BTreeMap<usize, Vec<chubby_db::Event>> = BTreeMap::new();
        for (client, event) in events {
            by_client.entry(client).or_default().push(event);
        }
        for (client, events) in by_client {
            if self.faults_on && self.rng.chance(self.options.drop_ppm) {
                continue;
            }
            let (min, max) = (self.options.delay_min_ns, self.options.delay_max_ns);
            let delay = self.world().link_delay(min, max);
            self.schedule(delay, Event::Chubby(ChubbyEvent::Events { client, events }));
        }
    }

    // ----- clients -----

    fn client_step(&mut self, client: usize, life: u64) {
        let now = self.now;
        let world = self.world();
        if world.clients[client].life != life {
            return;
        }
        let mean = world.options.step_mean_ns;
        let next = mean / 2 + world.rng.below(mean);
        self.schedule(next, Event::Chubby(ChubbyEvent::Step { client, life }));
        let world = self.world();
        let c = &mut world.clients[client];
        if c.session.is_some() && !c.believes_session(now) {
            c.drop_session();
        }
        self.maybe_write(client);
        let world = self.world();
        let c = &world.clients[client];
        if c.silent_until > now {
            return;
        }
        if let Some(out) = &c.outstanding {
            if out.deadline <= now {
                self.resend(client, true);
            }
            return;
        }
        self.next_request(client);
    }

    /// While it believes it holds an exclusive lock, a client writes to the downstream resource
    /// with its sequencer. Some writes take long (a slow network, a paused process).
    fn maybe_write(&mut self, client: usize) {
        let now = self.now;
        let world = self.world();
        let c = &world.clients[client];
        if !c.believes_session(now) {
            return;
        }
        let Some(hold) = c
            .holds
            .iter()
            .find(|h| h.sequencer.mode == LockMode::Exclusive)
        else {
            return;
        };
        let sequencer = hold.sequencer.clone();
        let life = c.life;
        if !world.rng.chance(700_000) {
            return;
        }
        let delay = if world.rng.chance(500_000) {
            100_000 + world.rng.below(5 * MS)
        } else {
            world.rng.below(world.options.downstream_delay_max_ns)
        };
        world.clients[client].writes_in_flight += 1;
        let event = ChubbyEvent::Write {
            client,
            life,
            sequencer,
            sent_at: now,
        };
        self.schedule(delay, Event::Chubby(event));
    }

    fn next_request(&mut self, client: usize) {
        let now = self.now;
        let world = self.world();
        let c = &world.clients[client];
        let keep_alive_every = world.options.lease_ms * MS / 4;
        let Some(session) = &c.session else {
            return self.send_new(client, Wire::Open, Purpose::Open);
        };
        let (id, last_keep_alive) = (session.id, session.last_keep_alive);
        if !c.setup_done {
            let op = world.setup_op();
            return self.send_multi(client, op, Purpose::Setup);
        }
        if now >= last_keep_alive + keep_alive_every {
            let world = self.world();
            if let Some(s) = &mut world.clients[client].session {
                s.last_keep_alive = now;
            }
            return self.send_new(client, Wire::KeepAlive(id), Purpose::KeepAlive);
        }
        let roll = self.world().rng.below(1000);
        match roll {
            0..=299 => self.lock_request(client),
            300..=449 => self.fenced_request(client),
            450..=579 => {
                let tally = self.world().paths.tally.clone();
                let op = MultiOp::new().then(Op::Set {
                    path: tally,
                    contents: format!("client {client}").into_bytes(),
                });
                self.send_multi(client, op, Purpose::Tally);
            }
            580..=719 => self.cas_request(client),
            720..=879 => self.namespace_request(client),
            880..=954 => {
                // Close the session cleanly, once no write is in flight.
                let c = &mut self.world().clients[client];
                if c.writes_in_flight == 0 {
                    c.drop_session();
                    self.send_new(client, Wire::Close(id), Purpose::Close);
                }
            }
            955..=984 => {
                // Fall silent: no KeepAlives, no requests, for up to three leases. Writes under
                // the locks it believes it holds go on until its lease runs out in its view.
                let world = self.world();
                let lease = world.options.lease_ms * MS;
                let until = now + lease / 2 + world.rng.below(3 * lease);
                world.clients[client].silent_until = until;
            }
            _ => {
                // Crash: the client forgets everything; what it had sent is still on its way.
                let world = self.world();
                world.stats.client_crashes += 1;
                let c = &mut world.clients[client];
                let life = c.life + 1;
                *c = Client {
                    life,
                    target: c.target,
                    silent_until: now + 100 * MS,
                    ..Client::default()
                };
                self.schedule(100 * MS, Event::Chubby(ChubbyEvent::Step { client, life }));
            }
        }
    }

    fn lock_request(&mut self, client: usize) {
        let now = self.now;
        let world = self.world();
        let k = world.rng.below(2) as usize;
        let path = world.paths.locks[k].clone();
        let lease = world.options.lease_ms * MS;
        let c = &world.clients[client];
        let held = c.holds.iter().any(|h| h.sequencer.path == path);
        let waiting_since = c
            .waiting
            .as_ref()
            .filter(|w| w.path == path)
            .map(|w| w.since);
        let (idle, waits_elsewhere) = (c.writes_in_flight == 0, c.waiting.is_some());
        if held || waiting_since.is_some() {
            // Release a hold once its writes landed; give up a wait that took too long.
            let release = if held {
                idle && world.rng.chance(400_000)
            } else {
                waiting_since.is_some_and(|since| now > since + 2 * lease)
            };
            if release {
                let c = &mut world.clients[client];
                c.drop_hold(&path);
                c.waiting = None;
                self.send_multi(
                    client,
                    MultiOp::new().then(Op::Release { path }),
                    Purpose::Release,
                );
            }
            return;
        }
        if waits_elsewhere {
            return; // one wait at a time
        }
        let mode = if world.rng.chance(700_000) {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        };
        let wait = world.rng.chance(500_000);
        let op = MultiOp::new().then(Op::Acquire { path, mode, wait });
        self.send_multi(client, op, Purpose::Acquire);
    }

    /// A write through the database fenced by the client's sequencer, or a stale sequencer
    /// tried again (it must not validate).
    fn fenced_request(&mut self, client: usize) {
        let world = self.world();
        let c = &world.clients[client];
        let (sequencer, purpose) = match (c.holds.first(), c.past.last()) {
            (Some(hold), _) => (hold.sequencer.clone(), Purpose::Fenced),
            (None, Some(past)) => (past.clone(), Purpose::Stale),
            (None, None) => return,
        };
        let k = usize::from(sequencer.path == world.paths.locks[1]);
        let data = world.paths.data[k].clone();
        let op = MultiOp::new()
            .guard(Test::SequencerValid(sequencer.clone()))
            .then(Op::Set {
                path: data.clone(),
                contents: format!("gen {}", sequencer.lock_generation).into_bytes(),
            })
            .otherwise(Op::Read { path: data });
        self.send_multi(client, op, purpose);
    }

    fn cas_request(&mut self, client: usize) {
        let world = self.world();
        let path = world.paths.cas.clone();
        let op = match world.clients[client].cas_generation {
            Some(generation) if world.rng.chance(800_000) => MultiOp::compare_and_set(
                path,
                generation,
                format!("client {client} after {generation}").into_bytes(),
            ),
            _ => MultiOp::new().then(Op::Read { path }),
        };
        let purpose = if op.guard.is_empty() {
            Purpose::CasRead
        } else {
            Purpose::Cas
        };
        self.send_multi(client, op, purpose);
    }

    /// Creates and deletes that race other clients', and ephemeral nodes that go with the session.
    fn namespace_request(&mut self, client: usize) {
        let world = self.world();
        let k = world.rng.below(world.paths.tmp.len() as u64) as usize;
        let op = match world.rng.below(3) {
            0 => Op::Create {
                path: world.paths.tmp[k].clone(),
                kind: NodeKind::File,
                ephemeral: false,
                contents: vec![client as u8],
                lock_delay_ms: None,
            },
            1 => Op::Delete {
                path: world.paths.tmp[k].clone(),
            },
            _ => Op::Create {
                path: world
                    .paths
                    .eph_dir
                    .join(&format!("c{client}-{k}"))
                    .expect("a valid name"),
                kind: NodeKind::File,
                ephemeral: true,
                contents: Vec::new(),
                lock_delay_ms: None,
            },
        };
        self.send_multi(client, MultiOp::new().then(op), Purpose::Namespace);
    }

    fn send_multi(&mut self, client: usize, op: MultiOp, purpose: Purpose) {
        let c = &mut self.world().clients[client];
        let Some(session) = &mut c.session else {
            return;
        };
        let seq = RequestSeq(session.next_seq);
        session.next_seq += 1;
        let wire = Wire::Multi {
            session: session.id,
            seq,
            op,
        };
        self.send_new(client, wire, purpose);
    }

    fn send_new(&mut self, client: usize, wire: Wire, purpose: Purpose) {
        let now = self.now;
        let world = self.world();
        let timeout = world.options.request_timeout_ns;
        let c = &mut world.clients[client];
        c.next_request += 1;
        c.outstanding = Some(Outstanding {
            request: c.next_request,
            wire,
            purpose,
            first_sent: now,
            deadline: now + timeout,
        });
        self.resend(client, false);
    }

    /// Sends the outstanding request (again): after a timeout or a redirect, to another replica.
    fn resend(&mut self, client: usize, elsewhere: bool) {
        let now = self.now;
        let nodes = self.nodes.len() as u64;
        let drop = self.faults_on && self.rng.chance(self.options.drop_ppm);
        let (min, max) = (self.options.delay_min_ns, self.options.delay_max_ns);
        let world = self.world();
        let timeout = world.options.request_timeout_ns;
        if elsewhere {
            let hop = 1 + world.rng.below(nodes.max(2) - 1);
            let c = &mut world.clients[client];
            c.target = (c.target + hop as usize) % nodes as usize;
        }
        let delay = world.link_delay(min, max);
        let c = &mut world.clients[client];
        let node = c.target;
        let Some(out) = &mut c.outstanding else {
            return;
        };
        out.deadline = now + timeout;
        let event = ChubbyEvent::Request {
            client,
            request: out.request,
            node,
            wire: out.wire.clone(),
        };
        if !drop {
            self.schedule(delay, Event::Chubby(event));
        }
    }

    fn on_answer(&mut self, client: usize, request: u64, answer: Answer) {
        let now = self.now;
        let c = &mut self.world().clients[client];
        if c.silent_until > now || c.outstanding.as_ref().is_none_or(|o| o.request != request) {
            return;
        }
        match answer {
            // Try another replica at the next step (no redirect storm while nobody is master).
            Answer::NotMaster => {
                if let Some(out) = &mut c.outstanding {
                    out.deadline = now;
                }
            }
            Answer::TenureStarting => {
                if let Some(out) = &mut c.outstanding {
                    out.deadline = now + 20 * MS; // the next step tries again
                }
            }
            Answer::Applied(reply) => {
                let out = c.outstanding.take().expect("checked above");
                self.on_reply(client, out, reply);
            }
        }
    }

    fn on_reply(&mut self, client: usize, out: Outstanding, reply: Reply) {
        let now = self.now;
        let believed = self.world().believed_until(out.first_sent);
        let world = self.world();
        let c = &mut world.clients[client];
        if let Reply::Rejected(Rejection::SessionUnknown(_)) = reply {
            c.drop_session();
            return;
        }
        let request_session = match &out.wire {
            Wire::KeepAlive(s) | Wire::Close(s) | Wire::Multi { session: s, .. } => Some(*s),
            Wire::Open => None,
        };
        if request_session.is_some() && request_session != c.session.as_ref().map(|s| s.id) {
            return; // an answer about a session the client no longer has
        }
        match (out.purpose, reply) {
            // A spare session (a retried open, or one whose lease the client already doubts)
            // goes unused and expires.
            (Purpose::Open, Reply::SessionOpened { session, .. })
                if c.session.is_none() && believed > now =>
            {
                c.session = Some(ClientSession {
                    id: session,
                    believed_until: believed,
                    next_seq: 1,
                    last_keep_alive: out.first_sent,
                });
                world.owners.insert(session, client);
            }
            (Purpose::KeepAlive, Reply::KeptAlive { .. }) => {
                if let Some(s) = &mut c.session {
                    s.believed_until = s.believed_until.max(believed);
                }
            }
            (Purpose::Setup, Reply::MultiOp(_)) => c.setup_done = true,
            (Purpose::Acquire, Reply::MultiOp(r)) => match r.ops.first() {
                Some(OpResult::Done(OpOutput::Acquired(sequencer))) if c.believes_session(now) => {
                    let sequencer = sequencer.clone();
                    c.holds.push(Hold { sequencer });
                }
                Some(OpResult::Done(OpOutput::Queued { .. })) => {
                    if let Wire::Multi { op, .. } = &out.wire {
                        if let Some(Op::Acquire { path, .. }) = op.top.first() {
                            c.waiting = Some(Waiting {
                                path: path.clone(),
                                since: now,
                            });
                        }
                    }
                }
                _ => {}
            },
            (Purpose::CasRead, Reply::MultiOp(r)) | (Purpose::Cas, Reply::MultiOp(r)) => {
                match r.ops.first() {
                    Some(OpResult::Done(OpOutput::Read(view))) => {
                        c.cas_generation = Some(view.stat.content_generation);
                    }
                    Some(OpResult::Done(OpOutput::Set {
                        content_generation, ..
                    })) => c.cas_generation = Some(*content_generation),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn on_client_events(&mut self, client: usize, events: Vec<chubby_db::Event>) {
        let now = self.now;
        let world = self.world();
        let c = &mut world.clients[client];
        if c.silent_until > now {
            return;
        }
        for event in events {
            if c.session.as_ref().map(|s| s.id) != Some(event.session) {
                continue;
            }
            match event.kind {
                EventKind::LockGranted(sequencer) => {
                    let waited = c.waiting.as_ref().is_some_and(|w| w.path == sequencer.path);
                    if waited {
                        c.waiting = None;
                        if c.believes_session(now) {
                            c.holds.push(Hold { sequencer });
                        }
                    }
                }
                EventKind::LockLost { path } => c.drop_hold(&path),
                EventKind::LockWaitCancelled { path }
                    if c.waiting.as_ref().is_some_and(|w| w.path == path) =>
                {
                    c.waiting = None;
                }
                EventKind::SessionExpired => c.drop_session(),
                _ => {}
            }
        }
    }
}

impl World {
    /// Creates the names the clients use, once (whoever runs it first).
    fn setup_op(&self) -> MultiOp {
        let p = &self.paths;
        let dir = |path: &NodePath| Op::Create {
            path: path.clone(),
            kind: NodeKind::Directory,
            ephemeral: false,
            contents: Vec::new(),
            lock_delay_ms: None,
        };
        let file = |path: &NodePath| Op::Create {
            path: path.clone(),
            kind: NodeKind::File,
            ephemeral: false,
            contents: b"0".to_vec(),
            lock_delay_ms: None,
        };
        let mut op = MultiOp::new()
            .guard(Test::Absent {
                path: p.locks_dir.clone(),
            })
            .then(dir(&p.locks_dir))
            .then(dir(&p.data_dir))
            .then(dir(&p.tmp_dir))
            .then(dir(&p.eph_dir))
            .then(file(&p.tally))
            .then(file(&p.cas));
        for path in p.locks.iter().chain(&p.data) {
            op = op.then(file(path));
        }
        op
    }
}

#[cfg(test)]
mod tests {
    use super::super::SECOND;
    use super::*;

    #[test]
    fn epochs_map_like_the_server_names_them() {
        let epoch = Epoch(paxos_core::Ballot {
            round: 3,
            node: NodeId(2),
        });
        assert_eq!(db_epoch(epoch), chubby_db::Epoch(3 << 20 | 2));
    }

    #[test]
    fn a_client_believes_its_lease_for_less_than_the_lease() {
        let options = ChubbyOptions::from_seed(7, ChubbyBugs::default());
        let world = World::new(options.clone(), 7);
        let until = world.believed_until(SECOND);
        assert!(until < SECOND + options.lease_ms * MS);
        assert!(options.downstream_delay_max_ns < options.lock_delay_ms * MS);
    }
}
