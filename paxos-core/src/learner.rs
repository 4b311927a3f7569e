//! Learner side: chosen-ness, ordered apply, catch-up (log and snapshot), digest comparison, and the
//! rebuild of a replica that lost its state.

use crate::action::Action;
use crate::durable::{Record, SlotState};
use crate::limits;
use crate::message::{
    CatchUpReply, CatchUpRequest, DigestReport, Message, RebuildProbe, RebuildProbeReply, Rejoin,
    SnapshotRequired,
};
use crate::replica::{Rebuild, Replica, Role};
use crate::types::{
    Ballot, EntryId, EntryKind, Incarnation, MembershipChange, NodeId, Slot, SnapshotHandle, Value,
};
use std::collections::{BTreeMap, BTreeSet};

/// How many consistency-check rounds a replica remembers.
const DIGEST_ROUNDS_MAX: usize = 16;

impl Replica {
    /// `from` (master of `ballot`) says every slot through `through` is chosen. Our accepted value
    /// for a slot is the chosen one only if we accepted it under that same ballot; otherwise ask.
    pub(crate) fn learn_chosen(&mut self, from: NodeId, ballot: Ballot, through: Slot) {
        self.known_chosen = self.known_chosen.max(through);
        if self.catch_up.fetching_snapshot.is_some() {
            return;
        }
        let ignore_ballot = self.bugs().learn_ignores_ballot;
        let mut slot = self.chosen_through.next();
        while slot <= through {
            match self.log.get(slot) {
                Some(SlotState::Accepted { ballot: b, .. }) if *b == ballot || ignore_ballot => {
                    self.choose_accepted(slot);
                }
                Some(SlotState::Chosen { .. }) => {}
                _ => break,
            }
            slot = slot.next();
        }
        self.advance_chosen();
        if self.chosen_through < through {
            self.request_catch_up(from);
        }
    }

    /// The value this replica accepted for `slot` (not behind the snapshot) is chosen: as
    /// `record_chosen`, turning the log's state over in place.
    fn choose_accepted(&mut self, slot: Slot) {
        let mut accepted_under = None;
        self.log.replace_with(slot, |state| match state {
            SlotState::Accepted { ballot, value } => {
                accepted_under = Some(ballot);
                SlotState::Chosen { value }
            }
            chosen @ SlotState::Chosen { .. } => chosen,
        });
        let ballot = accepted_under.expect("the slot holds an accepted value");
        // The value is on disk already (its Accepted record): name it, do not write it again.
        self.persist_quietly(Record::Learned { slot, ballot });
    }

    pub(crate) fn record_chosen(&mut self, slot: Slot, value: Value) {
        if slot <= self.snapshot.slot || self.log.get(slot).is_some_and(SlotState::is_chosen) {
            return;
        }
        if let Some(SlotState::Accepted { value: mine, .. }) = self.log.get(slot) {
            if *mine == value {
                self.choose_accepted(slot);
                return;
            }
        }
        self.log.insert(
            slot,
            SlotState::Chosen {
                value: value.clone(),
            },
        );
        self.persist_quietly(Record::Chosen { slot, value });
    }

    /// Extends the chosen prefix over every contiguous chosen slot, applying each in order.
    pub(crate) fn advance_chosen(&mut self) {
        while let Some(SlotState::Chosen { value }) = self.log.get(self.chosen_through.next()) {
            let value = value.clone();
            self.chosen_through = self.chosen_through.next();
            let slot = self.chosen_through;
            let refused = self.apply_membership(slot, &value);
            if matches!(self.role, Role::Master(_)) {
                self.actions.push_back(Action::Apply {
                    slot,
                    value: value.clone(),
                });
                self.acknowledge(slot, &value, &refused);
            } else {
                // Only a master acknowledges: nothing else needs the value.
                self.actions.push_back(Action::Apply { slot, value });
            }
        }
        self.known_chosen = self.known_chosen.max(self.chosen_through);
        if let Role::Master(master) = &mut self.role {
            let chosen = self.chosen_through;
            master.in_flight.remove_through(chosen);
        }
        let configs = self.membership.entries.len();
        self.membership.forget_before(self.chosen_through.next());
        if self.membership.entries.len() != configs {
            self.membership_changed();
        }
        self.check_rebuild_progress();
    }

    /// Applies the membership changes in a chosen value; returns those that did not apply (each
    /// replica decides the same, deterministically), with why.
    fn apply_membership(&mut self, slot: Slot, value: &Value) -> Vec<(EntryId, &'static str)> {
        let mut refused = Vec::new();
        if !value
            .entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::Reconfigure(_)))
        {
            return refused;
        }
        let mut config = self.membership.latest().clone();
        let mut changed = false;
        for entry in value.entries.iter() {
            if let EntryKind::Reconfigure(change) = &entry.kind {
                match config.apply(change) {
                    Ok(next) => {
                        config = next;
                        changed = true;
                    }
                    Err(why) => refused.push((entry.id, why)),
                }
            }
        }
        if changed {
            self.membership
                .push(slot.plus(self.settings.window_slots), config);
            self.membership_changed();
        }
        refused
    }

    pub(crate) fn request_catch_up(&mut self, from: NodeId) {
        if from == self.node || self.catch_up.fetching_snapshot.is_some() {
            return;
        }
        let recent = self
            .catch_up
            .last_request
            .is_some_and(|t| self.now < t + self.settings.retry_interval_ticks);
        if recent {
            return;
        }
        self.catch_up.last_request = Some(self.now);
        self.send(
            from,
            Message::CatchUpRequest(CatchUpRequest {
                from: self.chosen_through.next(),
            }),
        );
    }

    pub(crate) fn tick_catch_up(&mut self) {
        if let Some(started) = self.catch_up.fetching_snapshot {
            // A fetch that never finished is given up so another peer can be asked.
            if self.now > started + self.settings.election_timeout_ticks * 4 {
                self.catch_up.fetching_snapshot = None;
            }
            return;
        }
        if self.known_chosen > self.chosen_through {
            // Ask the master most of the time, a random member otherwise: the master may be gone.
            self.refresh_window_peers();
            let members = &self.window_peers.members;
            let random = members
                .get(self.rng.below(members.len() as u64) as usize)
                .copied();
            let target = match self.leader_hint {
                Some(hint) if self.rng.chance(600_000) => Some(hint),
                _ => random.or(self.leader_hint),
            };
            if let Some(target) = target {
                self.request_catch_up(target);
            }
        }
    }

    pub(crate) fn on_catch_up_request(&mut self, from: NodeId, request: CatchUpRequest) {
        if self.bugs().ignore_catch_up || self.rebuild.is_some() {
            return;
        }
        self.serve_catch_up(from, request.from);
    }

    pub(crate) fn serve_catch_up(&mut self, to: NodeId, from: Slot) {
        if from <= self.snapshot.slot {
            let handle = self.snapshot.clone();
            self.send(to, Message::SnapshotRequired(SnapshotRequired { handle }));
            return;
        }
        if from > self.chosen_through {
            return;
        }
        let entries: Vec<(Slot, Value)> = self
            .log
            .range_from(from)
            .take_while(|(slot, _)| *slot <= self.chosen_through)
            .take(limits::CATCH_UP_ENTRIES_MAX)
            .map(|(slot, state)| (slot, state.value().clone()))
            .collect();
        if entries.is_empty() {
            return;
        }
        let reply = CatchUpReply {
            entries,
            chosen_through: self.chosen_through,
        };
        self.send(to, Message::CatchUpReply(reply));
    }

    pub(crate) fn on_catch_up_reply(&mut self, from: NodeId, reply: CatchUpReply) {
        if self.catch_up.fetching_snapshot.is_some() || self.incarnation_unknown() {
            return;
        }
        self.known_chosen = self.known_chosen.max(reply.chosen_through);
        for (slot, value) in reply.entries {
            if slot > self.chosen_through {
                self.record_chosen(slot, value);
            }
        }
        self.advance_chosen();
        if self.chosen_through < self.known_chosen {
            self.catch_up.last_request = None;
            self.request_catch_up(from);
        }
    }

    pub(crate) fn on_snapshot_required(&mut self, from: NodeId, required: SnapshotRequired) {
        if required.handle.slot <= self.chosen_through
            || self.catch_up.fetching_snapshot.is_some()
            || self.incarnation_unknown()
        {
            return;
        }
        self.catch_up.fetching_snapshot = Some(self.now);
        self.actions.push_back(Action::FetchSnapshot {
            from,
            handle: required.handle,
        });
    }

    /// The driver installed a peer's snapshot into the application (durably). The log continues after it.
    pub fn handle_snapshot_installed(&mut self, handle: SnapshotHandle) {
        self.catch_up.fetching_snapshot = None;
        self.catch_up.last_request = None;
        assert!(
            handle.slot > self.chosen_through,
            "installed a snapshot that is not ahead: check wants_snapshot first"
        );
        self.log.remove_through(handle.slot);
        self.chosen_through = handle.slot;
        self.membership = handle.membership.clone();
        self.membership_changed();
        self.snapshot = handle.clone();
        self.persist(vec![Record::Snapshot(handle)], Vec::new());
        if let Role::Master(_) = self.role {
            self.become_follower();
        }
        self.advance_chosen();
        if let Some(hint) = self.leader_hint {
            self.request_catch_up(hint);
        }
    }

    /// The snapshot fetch failed; catch-up will try again.
    pub fn handle_snapshot_fetch_failed(&mut self) {
        self.catch_up.fetching_snapshot = None;
    }

    /// Whether a fetched snapshot at `slot` is still worth installing.
    pub fn wants_snapshot(&self, slot: Slot) -> bool {
        slot > self.chosen_through
    }

    // ----- runtime consistency checks (PML 6) -----

    /// The application computed `digest` of its state right after applying the digest request at `slot`.
    pub fn handle_digest(&mut self, slot: Slot, digest: u64) {
        let members = self
            .membership
            .config_at(slot)
            .members()
            .filter(|n| *n != self.node)
            .collect::<Vec<_>>();
        self.send_all(
            &members,
            Message::DigestReport(DigestReport { slot, digest }),
        );
        self.digests
            .entry(slot)
            .or_default()
            .insert(self.node, digest);
        self.compare_digests(slot);
    }

    /// The digests reported so far for the consistency check at `slot` (this replica's own once
    /// it applied the request), by node; `None` if none arrived or the round was forgotten (the
    /// latest `DIGEST_ROUNDS_MAX` rounds are kept).
    pub fn digest_reports(&self, slot: Slot) -> Option<&BTreeMap<NodeId, u64>> {
        self.digests.get(&slot)
    }

    pub(crate) fn on_digest_report(&mut self, from: NodeId, report: DigestReport) {
        let oldest = self.digests.first_key_value().map(|(s, _)| *s);
        if self.digests.len() >= DIGEST_ROUNDS_MAX && oldest.is_some_and(|s| report.slot < s) {
            return;
        }
        self.digests
            .entry(report.slot)
            .or_default()
            .insert(from, report.digest);
        self.compare_digests(report.slot);
        while self.digests.len() > DIGEST_ROUNDS_MAX {
            self.digests.pop_first();
        }
    }

    fn compare_digests(&mut self, slot: Slot) {
        let Some(reports) = self.digests.get(&slot) else {
            return;
        };
        let Some(own) = reports.get(&self.node).copied() else {
            return;
        };
        let config = self.membership.config_at(slot);
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for (node, digest) in reports {
            if config.voters.contains_key(node) {
                *counts.entry(*digest).or_default() += 1;
            }
        }
        let Some((majority, _)) = counts.iter().find(|(_, n)| **n >= config.quorum()) else {
            return;
        };
        if *majority != own {
            self.corrupt = true;
            self.actions.push_back(Action::Corrupt { slot });
            return;
        }
        let all_reported = config.voters.keys().all(|n| reports.contains_key(n));
        if all_reported && counts.len() > 1 && self.digest_mismatches.insert(slot) {
            let digests = reports.iter().map(|(n, d)| (*n, *d)).collect();
            self.actions
                .push_back(Action::DigestMismatch { slot, digests });
            while self.digest_mismatches.len() > DIGEST_ROUNDS_MAX {
                self.digest_mismatches.pop_first();
            }
        }
    }

    // ----- rebuild (PML 5.1) -----

    fn incarnation_unknown(&self) -> bool {
        matches!(self.rebuild, Some(Rebuild::Probing { .. }))
    }

    pub(crate) fn tick_rebuild(&mut self) {
        let retry = self.settings.retry_interval_ticks;
        let now = self.now;
        match &mut self.rebuild {
            Some(Rebuild::Probing { last_probe, .. })
                if last_probe.is_none_or(|t| now >= t + retry) =>
            {
                *last_probe = Some(now);
                let peers: Vec<NodeId> = self.probe_targets();
                self.send_all(&peers, Message::RebuildProbe(RebuildProbe {}));
            }
            Some(Rebuild::AwaitingVote { last_rejoin })
                if last_rejoin.is_none_or(|t| now >= t + retry) =>
            {
                *last_rejoin = Some(now);
                let to: Vec<NodeId> = match self.leader_hint {
                    Some(hint) => vec![hint],
                    None => self.config().voters.keys().copied().collect(),
                };
                self.send_all(&to, Message::Rejoin(Rejoin {}));
            }
            _ => {}
        }
    }

    /// Peers to probe: everyone in whatever membership we know, the ids the driver configured, and
    /// every member of every config the replies so far name. The configured ids may be out of
    /// date (members were added and removed since they were written), and `on_rebuild_probe_reply`
    /// waits for a quorum of the voters the replies name: those are whom it must ask. A member
    /// named only in a reply is asked from the next probe round on.
    fn probe_targets(&self) -> Vec<NodeId> {
        let mut peers: BTreeSet<NodeId> = self
            .membership
            .latest()
            .members()
            .chain(self.seed_peers.iter().copied())
            .collect();
        if let Some(Rebuild::Probing { replies, .. }) = &self.rebuild {
            let named = replies
                .values()
                .flat_map(|reply| reply.membership.entries.iter())
                .flat_map(|(_, config)| config.members());
            peers.extend(named);
        }
        peers.remove(&self.node);
        peers.into_iter().collect()
    }

    pub(crate) fn on_rebuild_probe(&mut self, from: NodeId) {
        if self.rebuild.is_some() {
            return;
        }
        let reply = RebuildProbeReply {
            snapshot: self.snapshot.clone(),
            membership: self.membership.clone(),
            chosen_through: self.chosen_through,
            incarnation_seen: self.incarnation_seen(from),
        };
        self.send(from, Message::RebuildProbeReply(reply));
    }

    pub(crate) fn on_rebuild_probe_reply(&mut self, from: NodeId, reply: RebuildProbeReply) {
        let Some(Rebuild::Probing { replies, .. }) = &mut self.rebuild else {
            return;
        };
        replies.insert(from, reply);
        let Some((source, best)) = replies.iter().max_by_key(|(_, r)| r.chosen_through) else {
            return;
        };
        let source = *source;
        let configs: Vec<_> = best.membership.entries.iter().map(|(_, c)| c).collect();
        let majorities = configs
            .iter()
            .all(|c| c.voters.keys().filter(|n| replies.contains_key(n)).count() >= c.quorum());
        if !majorities || !best.membership.latest().contains(self.node) {
            return;
        }
        let known = replies
            .values()
            .map(|r| r.incarnation_seen)
            .max()
            .unwrap_or(Incarnation(0));
        let known = known.max(self.incarnation);
        let target = best.chosen_through;
        let source_snapshot = best.snapshot.clone();
        if self.bugs().rebuild_votes_at_once {
            // Planted bug: speak as the old incarnation at once, as if nothing had been lost.
            self.incarnation = known;
            self.rebuild = None;
            self.catch_up_from_scratch(source, source_snapshot, target);
            return;
        }
        self.incarnation = Incarnation(known.0 + 1);
        self.rebuild = Some(Rebuild::CatchingUp { target });
        self.persist(
            vec![Record::RebuildBegan {
                node: self.node,
                incarnation: self.incarnation,
            }],
            Vec::new(),
        );
        self.catch_up_from_scratch(source, source_snapshot, target);
    }

    /// A rebuilding replica knows nothing: it starts from its source's snapshot (or from slot 1).
    fn catch_up_from_scratch(&mut self, source: NodeId, snapshot: SnapshotHandle, target: Slot) {
        self.known_chosen = target;
        self.leader_hint = self.leader_hint.or(Some(source));
        if snapshot.slot == Slot::ZERO {
            // The source never truncated: replay from slot 1 on the bootstrap membership.
            self.membership = snapshot.membership.clone();
            self.membership_changed();
            self.snapshot = snapshot.clone();
            // Remembered so a restart mid-rebuild resumes on the right membership.
            self.persist(vec![Record::Snapshot(snapshot)], Vec::new());
            self.catch_up.last_request = Some(self.now);
            self.send(
                source,
                Message::CatchUpRequest(CatchUpRequest { from: Slot(1) }),
            );
        } else {
            self.catch_up.fetching_snapshot = Some(self.now);
            self.actions.push_back(Action::FetchSnapshot {
                from: source,
                handle: snapshot,
            });
        }
        self.check_rebuild_progress();
    }

    /// The highest incarnation of `node` this replica has seen in a config or an accepted value.
    fn incarnation_seen(&self, node: NodeId) -> Incarnation {
        let in_configs = self
            .membership
            .entries
            .iter()
            .filter_map(|(_, c)| c.incarnation_of(node));
        let in_log = self.log.values().flat_map(|state| {
            state
                .value()
                .entries
                .iter()
                .filter_map(move |e| match &e.kind {
                    EntryKind::Reconfigure(MembershipChange::Reincarnate {
                        node: n,
                        incarnation,
                    }) if *n == node => Some(*incarnation),
                    _ => None,
                })
        });
        in_configs.chain(in_log).max().unwrap_or(Incarnation(0))
    }

    pub(crate) fn check_rebuild_progress(&mut self) {
        if matches!(&self.rebuild, Some(Rebuild::CatchingUp { target }) if self.chosen_through >= *target)
        {
            self.rebuild = Some(Rebuild::AwaitingVote { last_rejoin: None });
        }
        if let Some(Rebuild::AwaitingVote { .. }) = &self.rebuild {
            // The reincarnation must be chosen (an instance started after the rebuild began) and
            // in force for the next slot before this replica votes.
            if self.config().incarnation_of(self.node) == Some(self.incarnation) {
                self.rebuild = None;
                self.persist(vec![Record::RebuildDone], Vec::new());
            } else {
                self.tick_rebuild();
            }
        }
    }
}
