//! Ground truth the simulator can see and no replica can: which value each slot has *really* chosen
//! (a majority of the slot's voters durably accepted it under one ballot), the history that implies,
//! and the safety checkers built on it.

use crate::app::chain;
use paxos_core::{
    Ballot, Config, EntryId, EntryKind, Incarnation, MembershipLog, NodeId, Slot, Value,
};
use std::fmt;

/// Which checker found a violation. Each one has a teeth test with a planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// At most one value is chosen per slot.
    OneValuePerSlot,
    /// Every replica applies the chosen value of every slot, in order: chosen prefixes agree.
    PrefixAgreement,
    /// At any instant of true time at most one replica holds a valid lease.
    LeaseOverlap,
    /// No lease read returns a state older than an acknowledged write or an earlier read.
    StaleRead,
    /// Every acknowledged submit is in the chosen value of the slot it was acknowledged for.
    AckedLost,
    /// A submit is acknowledged only by a master continuously in the epoch it was submitted under.
    Epoch,
    /// A replica that lost its state never promises or accepts before it votes again.
    RebuildVoted,
    /// After faults heal, a master is elected, new submits are chosen, and every member catches up.
    Liveness,
    /// Real disk: a replica that recovers from its storage holds every record a `sync` acknowledged
    /// (plus at most a prefix of what it appended after), and storage reports exactly the damage
    /// dealt to the disk (see `sim/disk.rs`).
    SyncedLost,
    /// An assertion in the engine (an invariant) or the simulator failed.
    Panic,
    /// Chubby seeds: never two exclusive holders at once whose sequencers validate, no grant
    /// while another client still believes it holds a conflicting one, and no older holder's
    /// write at the downstream resource after a newer holder's (see `sim/chubby.rs`).
    LockSafety,
    /// Chubby seeds: a sequencer whose grant was superseded never validates again.
    SequencerSuperseded,
    /// Chubby seeds: a MultiOp retried with the same `(session, seq)` is applied once.
    ExactlyOnce,
    /// Chubby seeds: replicas that applied a slot agree on its replies and events, and on the
    /// database digest and session and lock state at each consistency check.
    DatabaseAgreement,
}

impl Check {
    pub const ALL: [Check; 14] = [
        Check::OneValuePerSlot,
        Check::PrefixAgreement,
        Check::LeaseOverlap,
        Check::StaleRead,
        Check::AckedLost,
        Check::Epoch,
        Check::RebuildVoted,
        Check::Liveness,
        Check::SyncedLost,
        Check::Panic,
        Check::LockSafety,
        Check::SequencerSuperseded,
        Check::ExactlyOnce,
        Check::DatabaseAgreement,
    ];
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub check: Check,
    pub at_ns: u64,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} violated at t={:.6}s: {}",
            self.check,
            self.at_ns as f64 / 1e9,
            self.detail
        )
    }
}

type Voter = (NodeId, Incarnation);

/// A map keyed by slot, stored densely: the oracle touches every slot of a run, several times.
struct SlotMap<T> {
    items: Vec<Option<T>>,
}

impl<T> SlotMap<T> {
    fn new() -> SlotMap<T> {
        SlotMap { items: Vec::new() }
    }
    fn get(&self, slot: &Slot) -> Option<&T> {
        self.items.get(slot.0 as usize).and_then(Option::as_ref)
    }
    fn insert(&mut self, slot: Slot, item: T) {
        let index = slot.0 as usize;
        if index >= self.items.len() {
            self.items.resize_with(index + 1, || None);
        }
        self.items[index] = Some(item);
    }
    fn get_or_insert_with(&mut self, slot: Slot, make: impl FnOnce() -> T) -> &mut T {
        if self.get(&slot).is_none() {
            self.insert(slot, make());
        }
        self.items[slot.0 as usize].as_mut().expect("just inserted")
    }
    fn iter(&self) -> impl Iterator<Item = (Slot, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| item.as_ref().map(|t| (Slot(i as u64), t)))
    }
}

/// Durable accepts for one slot by ballot: the value and who accepted it (each voter once). A slot
/// sees a ballot or two and a handful of voters: the lowest ballot is kept inline, the others in a
/// vector in ballot order.
struct SlotVotes {
    first: (Ballot, Value, Voters),
    /// Ballots above `first`'s, in order.
    rest: Vec<(Ballot, Value, Voters)>,
}

impl SlotVotes {
    fn new(ballot: Ballot, value: &Value) -> SlotVotes {
        SlotVotes {
            first: (ballot, value.clone(), Voters::new()),
            rest: Vec::new(),
        }
    }

    /// The votes under `ballot`, made with `value` if there were none.
    fn entry(&mut self, ballot: Ballot, value: &Value) -> &mut (Ballot, Value, Voters) {
        if ballot < self.first.0 {
            let first = std::mem::replace(&mut self.first, (ballot, value.clone(), Voters::new()));
            self.rest.insert(0, first);
        }
        if ballot == self.first.0 {
            return &mut self.first;
        }
        let index = match self.rest.binary_search_by_key(&ballot, |(b, _, _)| *b) {
            Ok(index) => index,
            Err(index) => {
                self.rest
                    .insert(index, (ballot, value.clone(), Voters::new()));
                index
            }
        };
        &mut self.rest[index]
    }

    /// Every ballot's votes, in ballot order.
    fn iter(&self) -> impl Iterator<Item = &(Ballot, Value, Voters)> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }
}

/// Distinct voters, the first few stored inline (a slot's votes come from a handful of voters).
#[derive(Clone)]
struct Voters {
    inline: [Voter; VOTERS_INLINE],
    len: usize,
    spilled: Vec<Voter>,
}

const VOTERS_INLINE: usize = 7;

impl Voters {
    fn new() -> Voters {
        Voters {
            inline: [(NodeId(0), Incarnation(0)); VOTERS_INLINE],
            len: 0,
            spilled: Vec::new(),
        }
    }
    fn len(&self) -> usize {
        self.len + self.spilled.len()
    }
    fn iter(&self) -> impl Iterator<Item = &Voter> + Clone {
        self.inline[..self.len].iter().chain(self.spilled.iter())
    }
    fn insert(&mut self, voter: Voter) {
        if self.inline[..self.len].contains(&voter) || self.spilled.contains(&voter) {
            return;
        }
        if self.len < VOTERS_INLINE {
            self.inline[self.len] = voter;
            self.len += 1;
        } else {
            self.spilled.push(voter);
        }
    }
}

#[allow(missing_debug_implementations)]
pub struct Oracle {
    /// Checks that may fail (all by default; a teeth test enables one at a time).
    enabled: Vec<Check>,
    window: u64,
    votes: SlotMap<SlotVotes>,
    /// Slots a majority really chose, and their values.
    chosen: SlotMap<Value>,
    /// Every slot through here is chosen.
    pub prefix: Slot,
    /// Hash chain of the chosen history at each slot of the prefix.
    chains: SlotMap<u64>,
    /// Membership as the chosen prefix decides it.
    pub membership: MembershipLog,
    /// How many submits were acknowledged.
    acked: usize,
    /// Acknowledged submits not yet found in their slot's chosen value, by the slot they were
    /// acknowledged for: judged when the slot is chosen, and at the end of the run. (One found
    /// there at once needs no second look: a slot's chosen value never changes.)
    acked_by_slot: SlotMap<Vec<EntryId>>,
    pub max_acked_slot: Slot,
    pub max_read_slot: Slot,
    pub violation: Option<Violation>,
}

impl Oracle {
    pub fn new(config: Config, window: u64, enabled: Vec<Check>) -> Oracle {
        Oracle {
            enabled,
            window,
            votes: SlotMap::new(),
            chosen: SlotMap::new(),
            prefix: Slot::ZERO,
            chains: {
                let mut chains = SlotMap::new();
                chains.insert(Slot::ZERO, 0);
                chains
            },
            membership: MembershipLog::initial(config),
            acked: 0,
            acked_by_slot: SlotMap::new(),
            max_acked_slot: Slot::ZERO,
            max_read_slot: Slot::ZERO,
            violation: None,
        }
    }

    pub fn fail(&mut self, check: Check, at_ns: u64, detail: String) {
        if self.violation.is_none() && self.enabled.contains(&check) {
            self.violation = Some(Violation {
                check,
                at_ns,
                detail,
            });
        }
    }

    /// The expected hash chain after applying the chosen history through `slot`.
    pub fn chain_at(&self, slot: Slot) -> Option<u64> {
        self.chains.get(&slot).copied()
    }

    /// An acceptor made an accept durable.
    pub fn on_durable_accept(
        &mut self,
        now: u64,
        voter: Voter,
        slot: Slot,
        ballot: Ballot,
        value: &Value,
    ) {
        let votes = self
            .votes
            .get_or_insert_with(slot, || SlotVotes::new(ballot, value));
        let (_, held, voters) = votes.entry(ballot, value);
        if held != value {
            let detail = format!("two values accepted for {slot} under one ballot {ballot}");
            self.fail(Check::OneValuePerSlot, now, detail);
            return;
        }
        voters.insert(voter);
        if self.chosen.get(&slot) == Some(value) {
            return; // more votes for the chosen value change nothing
        }
        self.evaluate(now, slot);
    }

    fn evaluate(&mut self, now: u64, slot: Slot) {
        if slot > self.prefix.plus(self.window) {
            return; // its config is not decided yet; evaluated when the prefix gets there
        }
        let Some(votes) = self.votes.get(&slot) else {
            return;
        };
        let config = self.membership.config_at(slot);
        let mut newly: Option<Value> = None;
        let mut second: Option<Ballot> = None;
        for (ballot, value, voters) in votes.iter() {
            // Fewer voters than a quorum cannot hold a quorum of the config's voters.
            if voters.len() < config.quorum()
                || config.count_voters(voters.iter()) < config.quorum()
            {
                continue;
            }
            match self.chosen.get(&slot).or(newly.as_ref()) {
                Some(chosen) if chosen != value => {
                    second = Some(*ballot);
                    break;
                }
                Some(_) => {}
                None => newly = Some(value.clone()),
            }
        }
        if let Some(ballot) = second {
            let detail = format!("{slot} chose two values (the second under {ballot})");
            self.fail(Check::OneValuePerSlot, now, detail);
            return;
        }
        if let Some(value) = newly {
            self.on_chosen(now, slot, value);
        }
    }

    fn on_chosen(&mut self, now: u64, slot: Slot, value: Value) {
        if let Some(ids) = self.acked_by_slot.get(&slot) {
            if let Some(id) = ids.iter().find(|id| !contains(&value, **id)) {
                let detail = format!(
                    "entry {id:?} was acknowledged at {slot}, but {slot} chose another value"
                );
                self.fail(Check::AckedLost, now, detail);
            }
        }
        self.chosen.insert(slot, value);
        let before = self.prefix;
        while let Some(value) = self.chosen.get(&self.prefix.next()) {
            let slot = self.prefix.next();
            let previous = *self
                .chains
                .get(&self.prefix)
                .expect("the prefix has a chain");
            self.chains.insert(slot, chain(previous, slot, value));
            let reconfigures = value
                .entries
                .iter()
                .any(|e| matches!(e.kind, EntryKind::Reconfigure(_)));
            let mut config = if reconfigures {
                self.membership.latest().clone()
            } else {
                Config::default()
            };
            let mut changed = false;
            for entry in value.entries.iter() {
                if let EntryKind::Reconfigure(change) = &entry.kind {
                    if let Ok(next) = config.apply(change) {
                        config = next;
                        changed = true;
                    }
                }
            }
            if changed {
                self.membership.push(slot.plus(self.window), config);
            }
            self.prefix = slot;
        }
        if self.prefix > before {
            // Slots whose config just became decided: evaluate those that have votes.
            let mut slot = before.plus(self.window).next();
            while slot <= self.prefix.plus(self.window) {
                if self.votes.get(&slot).is_some() {
                    self.evaluate(now, slot);
                }
                slot = slot.next();
            }
        }
    }

    /// A replica applied `value` at `slot`: it must be the chosen value.
    pub fn on_apply(&mut self, now: u64, node: NodeId, slot: Slot, value: &Value) {
        match self.chosen.get(&slot) {
            Some(chosen) if chosen == value => {}
            Some(_) => self.fail(
                Check::PrefixAgreement,
                now,
                format!("{node} applied a value at {slot} that is not the chosen one"),
            ),
            None => self.fail(
                Check::PrefixAgreement,
                now,
                format!("{node} applied a value at {slot}, where nothing is chosen"),
            ),
        }
    }

    /// A master acknowledged `id` as chosen at `slot`.
    pub fn on_ack(&mut self, now: u64, id: EntryId, slot: Slot) {
        self.acked += 1;
        self.max_acked_slot = self.max_acked_slot.max(slot);
        match self.chosen.get(&slot) {
            Some(value) if contains(value, id) => return,
            Some(_) => self.fail(
                Check::AckedLost,
                now,
                format!("entry {id:?} acknowledged at {slot}, which chose another value"),
            ),
            None => {} // judged when the slot is chosen, and at the end of the run
        }
        self.acked_by_slot
            .get_or_insert_with(slot, Vec::new)
            .push(id);
    }

    /// A lease read at `node` saw the state applied through `applied`.
    pub fn on_lease_read(&mut self, now: u64, node: NodeId, applied: Slot) {
        if applied < self.max_acked_slot || applied < self.max_read_slot {
            let detail = format!(
                "{node} served a lease read at {applied}, but {} was acknowledged and {} already read",
                self.max_acked_slot, self.max_read_slot
            );
            self.fail(Check::StaleRead, now, detail);
        }
        self.max_read_slot = self.max_read_slot.max(applied);
    }

    /// At the end of a run: every acknowledged entry must be chosen where it was acknowledged.
    pub fn check_acks_final(&mut self, now: u64) {
        let missing = self.acked_by_slot.iter().find_map(|(slot, ids)| {
            let chosen = self.chosen.get(&slot);
            ids.iter()
                .find(|id| !chosen.is_some_and(|v| contains(v, **id)))
                .map(|id| (*id, slot))
        });
        if let Some((id, slot)) = missing {
            let detail = format!(
                "entry {id:?} was acknowledged at {slot} but is not chosen there by the end"
            );
            self.fail(Check::AckedLost, now, detail);
        }
    }

    pub fn acked_count(&self) -> usize {
        self.acked
    }
}

fn contains(value: &Value, id: EntryId) -> bool {
    value.entries.iter().any(|e| e.id == id)
}
