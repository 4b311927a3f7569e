//! The replica: one state machine playing acceptor, learner and (when elected) master.
//!
//! Inputs are `handle_*` calls and `propose*`; outputs are drained with `poll_action`. Handlers for
//! each message kind live in `acceptor.rs`, `master.rs` and `learner.rs`.

use crate::action::{Action, Outgoing, ProposeError, RoleKind};
use crate::durable::{DurableState, Record, SlotState};
use crate::message::{Envelope, Message};
use crate::rng::Rng;
use crate::settings::Settings;
use crate::slot_map::SlotMap;
use crate::types::{
    Ballot, Config, Entry, EntryId, EntryKind, Epoch, Incarnation, MembershipChange, MembershipLog,
    NodeId, Slot, SnapshotHandle, Value,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A voter identity: votes count only under the incarnation the config names.
pub(crate) type Voter = (NodeId, Incarnation);

/// Deliberately broken behaviours, one per simulator checker, to show the checkers have teeth.
/// Settable only with the `planted-bugs` feature, which only the `tests` crate enables (for the
/// simulator, and through `tools/planted-bugs` for the `chubbyd` of its real-process fault tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Acceptors take accepts below their promise.
    pub acceptor_ignores_ballot: bool,
    /// Learners take their accepted value as chosen whatever ballot it was accepted under.
    pub learn_ignores_ballot: bool,
    /// The master counts its lease for the full grant, without the drift margin.
    pub lease_without_drift_margin: bool,
    /// The master serves lease reads without a valid lease.
    pub read_ignores_lease: bool,
    /// The master acknowledges a submit as soon as it proposes it.
    pub ack_before_chosen: bool,
    /// A master that loses and regains mastership keeps its old submits and acknowledges them.
    pub keep_proposals_across_epochs: bool,
    /// A replica that lost its state votes at once under its old incarnation.
    pub rebuild_votes_at_once: bool,
    /// Catch-up requests are ignored (a liveness bug).
    pub ignore_catch_up: bool,
}

/// An acceptor's grant of a master lease: it promises no other node's ballot before `until` (its
/// ticks), and moves the grant only to a higher ballot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeaseGrant {
    pub holder: Ballot,
    pub until: u64,
}

pub(crate) enum Role {
    Follower,
    /// Pre-vote: asking whether a majority would promise, without raising anyone's ballot.
    PreCandidate {
        ballot: Ballot,
        started: u64,
        oks: BTreeSet<Voter>,
    },
    /// Phase 1 in progress.
    Candidate {
        ballot: Ballot,
        started: u64,
        lease_tick: u64,
        promises: BTreeMap<Voter, crate::message::Promise>,
    },
    Master(Box<Master>),
}

pub(crate) struct InFlight {
    pub value: Value,
    /// Distinct voters that accepted.
    pub votes: Votes,
    /// When the accept was last sent: it is sent again after `retry_interval_ticks` without a quorum.
    pub sent_at: u64,
}

/// Submits not yet acknowledged or failed. Those of the master's own epoch are numbered in the
/// order they were taken, so a run of flags indexed by sequence number holds them; answers come
/// roughly in that order, so the run stays short.
#[derive(Default)]
pub(crate) struct Outstanding {
    epoch: Option<Epoch>,
    /// The sequence number of `open[0]`.
    first_seq: u64,
    /// `open[i]`: submit `first_seq + i` of `epoch` is outstanding. Invariant: empty or
    /// `open[0]` is set.
    open: VecDeque<bool>,
    /// Submits of earlier epochs (only with the planted bug `keep_proposals_across_epochs`).
    older: BTreeSet<EntryId>,
}

impl Outstanding {
    pub(crate) fn new(epoch: Epoch) -> Outstanding {
        Outstanding {
            epoch: Some(epoch),
            ..Outstanding::default()
        }
    }

    pub(crate) fn insert(&mut self, id: EntryId) {
        if Some(id.epoch) != self.epoch {
            self.older.insert(id);
            return;
        }
        if self.open.is_empty() {
            self.first_seq = id.seq;
        }
        assert!(id.seq >= self.first_seq, "submits are numbered in order");
        let index = usize::try_from(id.seq - self.first_seq).expect("fits in memory");
        if index >= self.open.len() {
            self.open.resize(index + 1, false);
        }
        self.open[index] = true;
    }

    /// Removes `id`; true if it was outstanding.
    pub(crate) fn remove(&mut self, id: EntryId) -> bool {
        if Some(id.epoch) != self.epoch {
            return self.older.remove(&id);
        }
        let Some(index) = id
            .seq
            .checked_sub(self.first_seq)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        match self.open.get_mut(index) {
            Some(open) if *open => *open = false,
            _ => return false,
        }
        while self.open.front() == Some(&false) {
            self.open.pop_front();
            self.first_seq += 1;
        }
        true
    }

    /// Every outstanding submit, in id order.
    pub(crate) fn into_sorted(self) -> Vec<EntryId> {
        let mut ids: Vec<EntryId> = self.older.into_iter().collect();
        if let Some(epoch) = self.epoch {
            let first_seq = self.first_seq;
            ids.extend(
                self.open
                    .iter()
                    .enumerate()
                    .filter(|(_, open)| **open)
                    .map(|(i, _)| EntryId {
                        epoch,
                        seq: first_seq + i as u64,
                    }),
            );
        }
        ids.sort();
        ids
    }
}

/// The members and the voters of every config in the window, each sorted and without repeats:
/// where broadcasts go and whom elections ask. Recomputed only when the window's configs change.
#[derive(Default)]
pub(crate) struct WindowPeers {
    /// The membership version and the range of `membership.entries` these were computed from.
    key: Option<(u64, usize, usize)>,
    pub members: Vec<NodeId>,
    pub voters: Vec<NodeId>,
}

/// Distinct voters, the first few stored inline: a slot's votes come from a handful of voters, and
/// a proposal should not cost an allocation for them.
pub(crate) struct Votes {
    inline: [Voter; VOTES_INLINE],
    len: usize,
    more: Vec<Voter>,
}

const VOTES_INLINE: usize = 5;

impl Votes {
    pub(crate) fn new() -> Votes {
        Votes {
            inline: [(NodeId(0), Incarnation(0)); VOTES_INLINE],
            len: 0,
            more: Vec::new(),
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.len + self.more.len()
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Voter> + Clone {
        self.inline[..self.len].iter().chain(self.more.iter())
    }
    /// Adds `voter` unless it is there already.
    pub(crate) fn insert(&mut self, voter: Voter) {
        if self.inline[..self.len].contains(&voter) || self.more.contains(&voter) {
            return;
        }
        if self.len < VOTES_INLINE {
            self.inline[self.len] = voter;
            self.len += 1;
        } else {
            self.more.push(voter);
        }
    }
}

/// One config's members (voters, then learners, as `Config::members` lists them) and whether this
/// replica votes in it: asked on every accept, recomputed only when the config in force changes.
#[derive(Default)]
pub(crate) struct SlotConfig {
    /// The membership version, the config's start slot and this replica's incarnation.
    key: Option<(u64, Slot, Incarnation)>,
    pub members: Vec<NodeId>,
    pub voter: bool,
}

/// A master's state, owned by the `Role::Master` variant.
pub(crate) struct Master {
    pub ballot: Ballot,
    /// Phase-1 promises by voter: what each reported, by slot. Promises are only ever added.
    pub promises: BTreeMap<Voter, BTreeMap<Slot, crate::message::Reported>>,
    /// The highest slot any of `promises` reported (slots above it have no reports to recover).
    pub reports_through: Slot,
    /// The config (membership version, start slot) whose voters' promises were last found to make
    /// a quorum: since promises are never removed, that stays true for as long as the config does.
    pub promised_config: Option<(u64, Slot)>,
    /// The highest slot any promise reported: lease reads wait until it is chosen.
    pub recover_through: Slot,
    pub next_slot: Slot,
    pub in_flight: SlotMap<InFlight>,
    /// Submits not yet in a slot.
    pub queue: VecDeque<Entry>,
    /// Submits of this epoch not yet acknowledged or failed.
    pub outstanding: Outstanding,
    pub next_seq: u64,
    /// Lease requests by the tick they were sent: who granted each.
    pub lease_rounds: BTreeMap<u64, BTreeSet<Voter>>,
    /// The lease holds while `now < lease_until`.
    pub lease_until: u64,
    /// The latest end any lease of this tenure had: a master that stays without a lease for an
    /// election timeout after it steps down.
    pub last_lease_end: u64,
    pub last_heartbeat: u64,
    pub last_digest: u64,
    pub last_prepare_retry: u64,
    /// Nodes whose rejoin (reincarnation) is being proposed.
    pub rejoining: BTreeSet<NodeId>,
}

pub(crate) enum Rebuild {
    /// Asking peers what they know of the group and of us.
    Probing {
        replies: BTreeMap<NodeId, crate::message::RebuildProbeReply>,
        last_probe: Option<u64>,
    },
    /// Learning the log up to `target` without voting.
    CatchingUp { target: Slot },
    /// Caught up; waiting for a reincarnation chosen through the log to take effect.
    AwaitingVote { last_rejoin: Option<u64> },
}

pub(crate) struct CatchUp {
    pub last_request: Option<u64>,
    pub fetching_snapshot: Option<u64>,
}

impl Master {
    /// The tenure is the ballot that won phase 1.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.ballot)
    }
}

/// One Multi-Paxos replica. See the crate docs for the input/output contract.
pub struct Replica {
    pub(crate) node: NodeId,
    pub(crate) incarnation: Incarnation,
    pub(crate) settings: Settings,
    pub(crate) rng: Rng,
    /// Ticks of this replica's clock since it started.
    pub(crate) now: u64,
    /// Invariant: never decreases while the replica runs.
    pub(crate) promised: Ballot,
    pub(crate) max_ballot_seen: Ballot,
    /// Slots after `snapshot.slot`.
    pub(crate) log: SlotMap<SlotState>,
    pub(crate) snapshot: SnapshotHandle,
    /// Configs for slots after `chosen_through`, as decided by the chosen prefix. Changed only
    /// through `membership_changed` paths, which bump `membership_version`.
    pub(crate) membership: MembershipLog,
    /// Bumped on every change of `membership`: the key of `window_peers`.
    pub(crate) membership_version: u64,
    pub(crate) window_peers: WindowPeers,
    /// The config of the slot last asked about (see `slot_config`).
    pub(crate) slot_config: SlotConfig,
    /// Invariant: every slot up to here is chosen and was emitted as `Apply`; `snapshot.slot <= chosen_through`.
    pub(crate) chosen_through: Slot,
    /// The highest chosen prefix any peer announced.
    pub(crate) known_chosen: Slot,
    pub(crate) lease_granted: Option<LeaseGrant>,
    /// After a restart or a rebuild the replica may have granted a lease it no longer remembers: it
    /// promises nothing to anyone before this tick.
    pub(crate) restart_guard_until: u64,
    pub(crate) election_due: u64,
    pub(crate) leader_hint: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) rebuild: Option<Rebuild>,
    pub(crate) catch_up: CatchUp,
    pub(crate) digests: BTreeMap<Slot, BTreeMap<NodeId, u64>>,
    /// Digest slots already reported as mismatched (reported once each).
    pub(crate) digest_mismatches: BTreeSet<Slot>,
    pub(crate) corrupt: bool,
    /// Submits kept across epochs (only with the planted bug).
    pub(crate) stash: Vec<Entry>,
    /// Peers the driver named: whom a rebuilding replica asks before it knows the group.
    pub(crate) seed_peers: Vec<NodeId>,
    pub(crate) actions: VecDeque<Action>,
    /// Emptied vectors of executed `Action::Persist`s the driver handed back, reused for new ones.
    pub(crate) spare_records: Vec<Vec<Record>>,
    pub(crate) spare_messages: Vec<Vec<Outgoing>>,
    /// Submits were queued since the window was last filled: the next `poll_action` or
    /// `drain_actions` proposes them. Deferring the fill packs every submit the host hands over
    /// in one go into one slot, instead of one slot each while the window has room.
    pub(crate) fill_due: bool,
    #[cfg(feature = "planted-bugs")]
    pub(crate) planted: PlantedBugs,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("node", &self.node)
            .field("incarnation", &self.incarnation)
            .field("role", &self.role_kind())
            .field("promised", &self.promised)
            .field("chosen_through", &self.chosen_through)
            .field("rebuilding", &self.rebuild.is_some())
            .finish()
    }
}

impl Replica {
    fn blank(
        node: NodeId,
        incarnation: Incarnation,
        settings: Settings,
        seed: u64,
        membership: MembershipLog,
    ) -> Replica {
        assert_eq!(settings.invalid(), None, "invalid settings");
        let mut replica = Replica {
            node,
            incarnation,
            settings,
            rng: Rng::new(seed ^ node.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            now: 0,
            promised: Ballot::ZERO,
            max_ballot_seen: Ballot::ZERO,
            log: SlotMap::new(),
            snapshot: SnapshotHandle {
                slot: Slot::ZERO,
                membership: membership.clone(),
            },
            membership,
            membership_version: 0,
            window_peers: WindowPeers::default(),
            slot_config: SlotConfig::default(),
            chosen_through: Slot::ZERO,
            known_chosen: Slot::ZERO,
            lease_granted: None,
            restart_guard_until: 0,
            election_due: 0,
            leader_hint: None,
            role: Role::Follower,
            rebuild: None,
            catch_up: CatchUp {
                last_request: None,
                fetching_snapshot: None,
            },
            digests: BTreeMap::new(),
            digest_mismatches: BTreeSet::new(),
            corrupt: false,
            stash: Vec::new(),
            seed_peers: Vec::new(),
            actions: VecDeque::new(),
            spare_records: Vec::new(),
            spare_messages: Vec::new(),
            fill_due: false,
            #[cfg(feature = "planted-bugs")]
            planted: PlantedBugs::default(),
        };
        replica.reset_election_timer();
        replica
    }

    /// A member of a brand-new cluster. Emits the bootstrap record to persist.
    pub fn bootstrap(node: NodeId, config: Config, settings: Settings, seed: u64) -> Replica {
        let incarnation = config
            .incarnation_of(node)
            .expect("a bootstrapping node is in the initial config");
        let membership = MembershipLog::initial(config);
        let mut replica = Replica::blank(node, incarnation, settings, seed, membership.clone());
        replica.persist(
            vec![Record::Bootstrap {
                node,
                incarnation,
                membership,
            }],
            Vec::new(),
        );
        replica
    }

    /// A replica restarting from the records that survived on its disk. It refuses to promise for one
    /// full lease after the restart, since it may have granted a lease it no longer remembers.
    pub fn recover(
        state: DurableState,
        peers: Vec<NodeId>,
        settings: Settings,
        seed: u64,
    ) -> Replica {
        let known_group = !state.snapshot.membership.latest().voters.is_empty();
        if state.rebuilding && !known_group {
            // Interrupted before it learned anything: start over (the new incarnation will be higher).
            let mut replica = Replica::rebuild(state.node, peers, settings, seed);
            replica.incarnation = state.incarnation;
            return replica;
        }
        let mut replica = Replica::blank(
            state.node,
            state.incarnation,
            settings,
            seed,
            state.snapshot.membership.clone(),
        );
        replica.seed_peers = peers;
        if state.rebuilding {
            // This incarnation never voted (votes follow RebuildDone on disk): finish the rebuild
            // under it, from what was caught up so far.
            replica.rebuild = Some(Rebuild::CatchingUp { target: Slot::ZERO });
        }
        replica.promised = state.promised;
        replica.max_ballot_seen = state.promised;
        replica.snapshot = state.snapshot;
        replica.chosen_through = replica.snapshot.slot;
        replica.log = state.log.into_iter().collect();
        replica.restart_guard_until = replica.settings.lease_ticks + 1;
        replica.advance_chosen();
        replica
    }

    /// A replica whose state was lost or found corrupt (PML 5.1): it asks its peers what they know,
    /// takes a new incarnation, catches up without voting, and votes again only once a reincarnation
    /// chosen after this moment takes effect. Its application state must start empty.
    pub fn rebuild(node: NodeId, peers: Vec<NodeId>, settings: Settings, seed: u64) -> Replica {
        let placeholder = MembershipLog::initial(Config::default());
        let mut replica = Replica::blank(node, Incarnation(0), settings, seed, placeholder);
        replica.seed_peers = peers;
        replica.rebuild = Some(Rebuild::Probing {
            replies: BTreeMap::new(),
            last_probe: None,
        });
        replica.restart_guard_until = replica.settings.lease_ticks + 1;
        replica
    }

    /// Turns on deliberately broken behaviours (simulator teeth tests only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bugs(&mut self, bugs: PlantedBugs) {
        self.planted = bugs;
    }

    pub(crate) fn bugs(&self) -> PlantedBugs {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            PlantedBugs::default()
        }
    }

    // ----- inputs -----

    /// One tick of this replica's clock passed.
    pub fn handle_tick(&mut self) {
        self.now += 1;
        if self.corrupt {
            return;
        }
        if self.rebuild.is_some() {
            self.tick_rebuild();
        }
        match self.role {
            Role::Follower => self.tick_follower(),
            Role::PreCandidate { started, .. } | Role::Candidate { started, .. } => {
                if self.now >= started + self.settings.election_timeout_ticks {
                    self.become_follower();
                } else if (self.now - started) % self.settings.retry_interval_ticks == 0 {
                    // Voters whose lease grant had not yet run out may say yes now.
                    self.retry_election();
                }
            }
            Role::Master(_) => self.tick_master(),
        }
        self.tick_catch_up();
    }

    /// A message from a peer (or from this replica to itself). Invalid messages are dropped.
    pub fn handle_message(&mut self, envelope: Envelope) {
        if self.corrupt || envelope.message.invalid().is_some() {
            return;
        }
        let Envelope {
            from,
            incarnation,
            message,
        } = envelope;
        let voter = (from, incarnation);
        match message {
            Message::Probe(m) => self.on_probe(from, m),
            Message::ProbeReply(m) => self.on_probe_reply(voter, m),
            Message::Prepare(m) => self.on_prepare(from, m),
            Message::Promise(m) => self.on_promise(voter, m),
            Message::Accept(m) => self.on_accept(from, m),
            Message::Accepted(m) => self.on_accepted(voter, m),
            Message::Nack(m) => self.on_nack(voter, m),
            Message::Heartbeat(m) => self.on_heartbeat(from, m),
            Message::HeartbeatAck(m) => self.on_heartbeat_ack(voter, m),
            Message::CatchUpRequest(m) => self.on_catch_up_request(from, m),
            Message::CatchUpReply(m) => self.on_catch_up_reply(from, m),
            Message::SnapshotRequired(m) => self.on_snapshot_required(from, m),
            Message::DigestReport(m) => self.on_digest_report(from, m),
            Message::RebuildProbe(_) => self.on_rebuild_probe(from),
            Message::RebuildProbeReply(m) => self.on_rebuild_probe_reply(from, m),
            Message::Rejoin(_) => self.on_rejoin(voter),
        }
    }

    /// Submits application bytes. Only the master accepts; the entry is acknowledged with
    /// `Action::Committed` or refused with `Action::Failed`. It is proposed at the next
    /// `poll_action` or `drain_actions`, with every other submit made before it: a host that
    /// hands over all the submits it has, then polls, gets them batched into one slot.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<EntryId, ProposeError> {
        let bytes = data.len();
        if bytes > self.settings.batch_bytes_max {
            return Err(ProposeError::TooLarge {
                bytes,
                max: self.settings.batch_bytes_max,
            });
        }
        self.submit(EntryKind::App(data))
    }

    /// Submits a membership change (one at a time; it takes effect `window_slots` after its slot).
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<EntryId, ProposeError> {
        if self.membership_change_pending() {
            return Err(ProposeError::Membership(
                "another membership change is in progress",
            ));
        }
        self.membership
            .latest()
            .apply(&change)
            .map_err(ProposeError::Membership)?;
        self.submit(EntryKind::Reconfigure(change))
    }

    /// Puts a consistency-check request (PML 6) in the log now, besides the periodic ones, and
    /// restarts the periodic interval. Master only. Every replica that applies it computes a
    /// digest of its state ([`Replica::handle_digest`]); the entry is acknowledged with
    /// `Action::Committed`, whose slot is the one to look up in [`Replica::digest_reports`].
    pub fn request_digest(&mut self) -> Result<EntryId, ProposeError> {
        let id = self.submit(EntryKind::DigestRequest)?;
        if let Role::Master(master) = &mut self.role {
            master.last_digest = self.now;
        }
        Ok(id)
    }

    /// The application finished a snapshot taken with `snapshot_handle`: the log before it may go.
    pub fn handle_snapshot_done(&mut self, handle: SnapshotHandle) {
        assert!(
            handle.slot <= self.chosen_through,
            "snapshot of a slot not yet applied"
        );
        if handle.slot <= self.snapshot.slot {
            return;
        }
        self.log.remove_through(handle.slot);
        self.snapshot = handle.clone();
        self.persist(vec![Record::Snapshot(handle)], Vec::new());
    }

    // ----- outputs and getters -----

    /// The next thing the host must do. Submits made since the last call are proposed first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.fill_if_due();
        self.actions.pop_front()
    }

    pub fn drain_actions(&mut self) -> impl Iterator<Item = Action> + '_ {
        self.fill_if_due();
        self.actions.drain(..)
    }

    fn fill_if_due(&mut self) {
        if std::mem::take(&mut self.fill_due) {
            self.fill_window();
        }
    }

    /// Optional: hands back the vectors of an executed [`Action::Persist`] so that later actions
    /// reuse their memory instead of allocating. Whatever they still hold is dropped.
    pub fn recycle_persist_buffers(
        &mut self,
        mut records: Vec<Record>,
        mut messages: Vec<Outgoing>,
    ) {
        use crate::limits::{SPARE_BUFFERS_MAX, SPARE_BUFFER_ENTRIES_MAX};
        let keep = |capacity: usize| (1..=SPARE_BUFFER_ENTRIES_MAX).contains(&capacity);
        if keep(records.capacity()) && self.spare_records.len() < SPARE_BUFFERS_MAX {
            records.clear();
            self.spare_records.push(records);
        }
        if keep(messages.capacity()) && self.spare_messages.len() < SPARE_BUFFERS_MAX {
            messages.clear();
            self.spare_messages.push(messages);
        }
    }

    /// A handle for a snapshot of the application state as applied through `chosen_through()`. Take
    /// it between steps, once the application has applied every `Apply` emitted so far.
    pub fn snapshot_handle(&self) -> SnapshotHandle {
        let mut membership = self.membership.clone();
        membership.forget_before(self.chosen_through.next());
        SnapshotHandle {
            slot: self.chosen_through,
            membership,
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }
    pub fn now(&self) -> u64 {
        self.now
    }
    pub fn chosen_through(&self) -> Slot {
        self.chosen_through
    }
    pub fn promised(&self) -> Ballot {
        self.promised
    }
    pub fn snapshot_slot(&self) -> Slot {
        self.snapshot.slot
    }
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader_hint
    }
    pub fn is_rebuilding(&self) -> bool {
        self.rebuild.is_some()
    }
    pub fn is_corrupt(&self) -> bool {
        self.corrupt
    }
    /// The config in force for the next slot to be chosen.
    pub fn config(&self) -> &Config {
        self.membership.config_at(self.chosen_through.next())
    }
    pub fn membership(&self) -> &MembershipLog {
        &self.membership
    }
    pub fn role_kind(&self) -> RoleKind {
        match self.role {
            // Pre-vote changes nothing anyone can see: still a follower.
            Role::Follower | Role::PreCandidate { .. } => RoleKind::Follower,
            Role::Candidate { .. } => RoleKind::Candidate,
            Role::Master(_) => RoleKind::Master,
        }
    }
    pub fn epoch(&self) -> Option<Epoch> {
        match &self.role {
            Role::Master(m) => Some(m.epoch()),
            _ => None,
        }
    }

    /// True while this replica is master under a lease that a majority granted and that has not run
    /// out on its clock (drift margin included).
    pub fn holds_lease(&self) -> bool {
        match &self.role {
            Role::Master(m) => self.now < m.lease_until,
            _ => false,
        }
    }

    /// True when a read of the local application state is linearizable without a log round (PML
    /// 5.2): master, valid lease, and every slot that could have been chosen before this tenure is
    /// chosen and applied here.
    pub fn lease_read_ok(&self) -> bool {
        match &self.role {
            Role::Master(m) => {
                (self.bugs().read_ignores_lease || self.now < m.lease_until)
                    && self.chosen_through >= m.recover_through
            }
            _ => false,
        }
    }

    // ----- shared helpers -----

    pub(crate) fn envelope(&self, message: Message) -> Envelope {
        Envelope {
            from: self.node,
            incarnation: self.incarnation,
            message,
        }
    }

    pub(crate) fn outgoing(&self, to: NodeId, message: Message) -> Outgoing {
        Outgoing {
            to,
            envelope: self.envelope(message),
        }
    }

    pub(crate) fn send(&mut self, to: NodeId, message: Message) {
        let outgoing = self.outgoing(to, message);
        self.actions.push_back(Action::Send(outgoing));
    }

    pub(crate) fn send_all(&mut self, to: &[NodeId], message: Message) {
        queue_sends(
            &mut self.actions,
            (self.node, self.incarnation),
            to.iter().copied(),
            message,
        );
    }

    /// Sends `message` to every member of every config in the window.
    pub(crate) fn send_to_members(&mut self, message: Message) {
        self.refresh_window_peers();
        queue_sends(
            &mut self.actions,
            (self.node, self.incarnation),
            self.window_peers.members.iter().copied(),
            message,
        );
    }

    pub(crate) fn persist(&mut self, records: Vec<Record>, messages: Vec<Outgoing>) {
        self.actions
            .push_back(Action::Persist { records, messages });
    }

    /// An empty vector for the records of a new `Action::Persist`, reused if the driver handed
    /// one back.
    pub(crate) fn record_buffer(&mut self) -> Vec<Record> {
        self.spare_records.pop().unwrap_or_default()
    }

    /// An empty vector for the messages of a new `Action::Persist` (see `record_buffer`).
    pub(crate) fn message_buffer(&mut self) -> Vec<Outgoing> {
        self.spare_messages.pop().unwrap_or_default()
    }

    /// Persists one record that releases no message, joining the previous such action if it is
    /// the last one queued (fewer, larger writes; order is kept).
    pub(crate) fn persist_quietly(&mut self, record: Record) {
        if let Some(Action::Persist { records, messages }) = self.actions.back_mut() {
            if messages.is_empty() {
                records.push(record);
                return;
            }
        }
        let mut records = self.record_buffer();
        records.push(record);
        self.persist(records, Vec::new());
    }

    /// Every voter of every config in the window (whom elections ask).
    pub(crate) fn window_voters(&mut self) -> Vec<NodeId> {
        self.refresh_window_peers();
        self.window_peers.voters.clone()
    }

    /// Recomputes `window_peers` if the configs in the window changed.
    pub(crate) fn refresh_window_peers(&mut self) {
        let (first, end) = self.window_config_range();
        let key = (self.membership_version, first, end);
        if self.window_peers.key == Some(key) {
            return;
        }
        let configs = &self.membership.entries[first..end];
        let members: BTreeSet<NodeId> = configs.iter().flat_map(|(_, c)| c.members()).collect();
        let voters: BTreeSet<NodeId> = configs
            .iter()
            .flat_map(|(_, c)| c.voters.keys().copied())
            .collect();
        self.window_peers = WindowPeers {
            key: Some(key),
            members: members.into_iter().collect(),
            voters: voters.into_iter().collect(),
        };
    }

    /// Recomputes `slot_config` for the config in force at `slot` if it is another one.
    pub(crate) fn refresh_slot_config(&mut self, slot: Slot) {
        let entries = &self.membership.entries;
        let index = entries
            .partition_point(|(start, _)| *start <= slot)
            .saturating_sub(1);
        let (start, config) = &entries[index];
        let key = (self.membership_version, *start, self.incarnation);
        if self.slot_config.key == Some(key) {
            return;
        }
        self.slot_config = SlotConfig {
            key: Some(key),
            members: config.members().collect(),
            voter: config.is_voter(self.node, self.incarnation),
        };
    }

    /// Which entries of the membership log are the window's configs (as `configs_between`).
    fn window_config_range(&self) -> (usize, usize) {
        let from = self.chosen_through.next();
        let to = self.chosen_through.plus(self.settings.window_slots);
        let entries = &self.membership.entries;
        let first = entries
            .partition_point(|(start, _)| *start <= from)
            .saturating_sub(1);
        let end = entries
            .partition_point(|(start, _)| *start <= to)
            .max(first);
        (first, end)
    }

    /// Call after every change of `membership`.
    pub(crate) fn membership_changed(&mut self) {
        self.membership_version += 1;
    }

    /// The configs in force for the slots a master may have in flight.
    pub(crate) fn window_configs(&self) -> impl Iterator<Item = &Config> {
        let from = self.chosen_through.next();
        self.membership
            .configs_between(from, self.chosen_through.plus(self.settings.window_slots))
    }

    /// True if `voters` hold a majority of every config in the window.
    pub(crate) fn quorum_of_window(&self, voters: &BTreeSet<Voter>) -> bool {
        // Fewer voters than a quorum cannot hold one: skip the count.
        self.window_configs().all(|config| {
            voters.len() >= config.quorum() && config.count_voters(voters) >= config.quorum()
        })
    }

    pub(crate) fn is_voter_now(&self) -> bool {
        self.rebuild.is_none() && self.config().is_voter(self.node, self.incarnation)
    }

    pub(crate) fn reset_election_timer(&mut self) {
        let jitter = self.rng.below(self.settings.election_jitter_ticks + 1);
        self.election_due = self.now + self.settings.election_timeout_ticks + jitter;
    }

    /// Leaves any master or candidate role. Submits of the ended tenure fail (PML 5.3).
    pub(crate) fn become_follower(&mut self) {
        let previous = std::mem::replace(&mut self.role, Role::Follower);
        self.reset_election_timer();
        match previous {
            Role::Follower | Role::PreCandidate { .. } => return,
            Role::Master(master) => self.fail_tenure(*master),
            Role::Candidate { .. } => {}
        }
        self.actions.push_back(Action::RoleChanged {
            role: RoleKind::Follower,
            epoch: None,
        });
    }

    fn fail_tenure(&mut self, master: Master) {
        let epoch = master.epoch();
        if self.bugs().keep_proposals_across_epochs {
            self.stash.extend(master.queue);
            for flight in master.in_flight.into_values() {
                self.stash.extend(
                    flight
                        .value
                        .entries
                        .iter()
                        .filter(|e| e.id.epoch == epoch)
                        .cloned(),
                );
            }
            return;
        }
        for id in master.outstanding.into_sorted() {
            self.actions.push_back(Action::Failed {
                id,
                error: ProposeError::EpochChanged { submitted: epoch },
            });
        }
    }

    fn submit(&mut self, kind: EntryKind) -> Result<EntryId, ProposeError> {
        let hint = self.leader_hint.filter(|n| *n != self.node);
        let Role::Master(master) = &mut self.role else {
            return Err(ProposeError::NotMaster { hint });
        };
        if master.queue.len() >= crate::limits::PENDING_ENTRIES_MAX {
            return Err(ProposeError::Overloaded);
        }
        let id = EntryId {
            epoch: master.epoch(),
            seq: master.next_seq,
        };
        master.next_seq += 1;
        master.queue.push_back(Entry { id, kind });
        master.outstanding.insert(id);
        self.fill_due = true;
        Ok(id)
    }

    fn membership_change_pending(&self) -> bool {
        let last_start = self
            .membership
            .entries
            .last()
            .map(|(s, _)| *s)
            .unwrap_or(Slot::ZERO);
        if last_start > self.chosen_through.next() {
            return true;
        }
        let Role::Master(master) = &self.role else {
            return false;
        };
        let reconfigure = |e: &Entry| matches!(e.kind, EntryKind::Reconfigure(_));
        master.queue.iter().any(reconfigure)
            || master
                .in_flight
                .values()
                .any(|f| f.value.entries.iter().any(reconfigure))
    }

    /// Checks the invariants that must hold between any two steps. Cheap enough to run after every
    /// step in tests and simulation; violations are programmer errors and panic.
    pub fn check_invariants(&self) {
        assert!(
            self.snapshot.slot <= self.chosen_through,
            "snapshot beyond chosen prefix"
        );
        assert!(
            self.max_ballot_seen >= self.promised,
            "promise above the highest ballot seen"
        );
        if let Some((first, _)) = self.log.first() {
            assert!(
                first > self.snapshot.slot,
                "log holds a slot behind the snapshot"
            );
        }
        if let Some(state) = self.log.get(self.chosen_through.next()) {
            assert!(
                !state.is_chosen(),
                "chosen prefix not advanced over a chosen slot"
            );
        }
        if let Role::Master(m) = &self.role {
            assert!(
                m.next_slot > self.chosen_through || m.in_flight.is_empty(),
                "master window behind"
            );
            assert!(
                m.ballot <= self.max_ballot_seen,
                "master ballot above the highest seen"
            );
            // In flight: strictly inside the window (the map is ordered: its ends suffice).
            if let (Some((first, _)), Some((last, _))) = (m.in_flight.first(), m.in_flight.last()) {
                assert!(first > self.chosen_through, "a chosen slot still in flight");
                assert!(
                    last <= self.chosen_through.plus(self.settings.window_slots),
                    "slot beyond the window"
                );
            }
        }
        assert!(
            !(self.rebuild.is_some() && matches!(self.role, Role::Master(_))),
            "rebuilding master"
        );
    }
}

/// Queues `message` for each of `to`, moving it into the last one.
pub(crate) fn queue_sends(
    actions: &mut VecDeque<Action>,
    (from, incarnation): (NodeId, Incarnation),
    to: impl Iterator<Item = NodeId>,
    message: Message,
) {
    let mut to = to.peekable();
    let mut message = Some(message);
    while let Some(node) = to.next() {
        let message = if to.peek().is_some() {
            message.clone()
        } else {
            message.take()
        };
        let message = message.expect("moved only into the last send");
        actions.push_back(Action::Send(Outgoing {
            to: node,
            envelope: Envelope {
                from,
                incarnation,
                message,
            },
        }));
    }
}
