//! Master side: winning phase 1, recovering open slots, pipelined and batched phase 2, leases,
//! heartbeats, digest requests and rejoins.

use crate::action::{Action, RoleKind};
use crate::durable::SlotState;
use crate::message::{
    Accept, Accepted, Heartbeat, HeartbeatAck, Message, Nack, Prepare, Promise, Reported,
};
use crate::replica::{queue_sends, InFlight, Master, Outstanding, Replica, Role, Voter, Votes};
use crate::slot_map::SlotMap;
use crate::types::{
    Ballot, Entry, EntryId, EntryKind, Epoch, MembershipChange, NodeId, Slot, Value,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

impl Replica {
    pub(crate) fn on_promise(&mut self, voter: Voter, promise: Promise) {
        self.observe_ballot(promise.ballot);
        if promise.log_start > self.chosen_through.next() {
            // The promiser truncated slots we never learned: they are chosen. Catch up, then retry.
            if matches!(&self.role, Role::Candidate { ballot, .. } if *ballot == promise.ballot) {
                self.become_follower();
            }
            self.request_catch_up(voter.0);
            return;
        }
        match &mut self.role {
            Role::Candidate {
                ballot,
                lease_tick,
                promises,
                ..
            } if *ballot == promise.ballot => {
                let lease_tick = *lease_tick;
                promises.insert(voter, promise);
                let voters: BTreeSet<Voter> = promises.keys().copied().collect();
                if self.quorum_of_window(&voters) {
                    self.become_master(lease_tick);
                }
            }
            Role::Master(master) if master.ballot == promise.ballot => {
                // A voter of a later config promised: its reports count for the slots it votes on.
                if let Some((last, _)) = promise.entries.last() {
                    master.reports_through = master.reports_through.max(*last);
                }
                master
                    .promises
                    .insert(voter, promise.entries.into_iter().collect());
                self.fill_window();
            }
            _ => {}
        }
    }

    fn become_master(&mut self, lease_tick: u64) {
        let Role::Candidate {
            ballot, promises, ..
        } = std::mem::replace(&mut self.role, Role::Follower)
        else {
            unreachable!("become_master outside candidacy")
        };
        let mut reports: BTreeMap<Voter, BTreeMap<Slot, Reported>> = BTreeMap::new();
        let mut recover_through = self.chosen_through;
        let mut chosen = Vec::new();
        for (voter, promise) in promises {
            for (slot, reported) in &promise.entries {
                recover_through = recover_through.max(*slot);
                if let Reported::Chosen { value } = reported {
                    chosen.push((*slot, value.clone()));
                }
            }
            reports.insert(voter, promise.entries.into_iter().collect());
        }
        let epoch = Epoch(ballot);
        let grantors: BTreeSet<Voter> = reports.keys().copied().collect();
        let reports_through = reports
            .values()
            .filter_map(|r| r.last_key_value().map(|(slot, _)| *slot))
            .max()
            .unwrap_or(Slot::ZERO);
        let mut master = Master {
            ballot,
            promises: reports,
            reports_through,
            promised_config: None,
            recover_through,
            next_slot: self.chosen_through.next(),
            in_flight: SlotMap::new(),
            queue: VecDeque::new(),
            outstanding: Outstanding::new(epoch),
            next_seq: 0,
            lease_rounds: BTreeMap::from([(lease_tick, grantors)]),
            lease_until: 0,
            last_lease_end: self.now,
            last_heartbeat: self.now,
            last_digest: self.now,
            last_prepare_retry: self.now,
            rejoining: BTreeSet::new(),
        };
        for entry in std::mem::take(&mut self.stash) {
            // Only reachable with the planted bug `keep_proposals_across_epochs`.
            master.outstanding.insert(entry.id);
            master.queue.push_back(entry);
        }
        self.leader_hint = Some(self.node);
        self.role = Role::Master(Box::new(master));
        self.actions.push_back(Action::RoleChanged {
            role: RoleKind::Master,
            epoch: Some(epoch),
        });
        for (slot, value) in chosen {
            self.record_chosen(slot, value);
        }
        self.advance_chosen();
        self.refresh_lease();
        self.send_heartbeats();
        self.fill_window();
    }

    /// Proposes values for free slots while the window allows: recovered values first, no-ops in
    /// recovered gaps, then batches of queued submits.
    pub(crate) fn fill_window(&mut self) {
        let ack_early = self.bugs().ack_before_chosen;
        loop {
            let Role::Master(master) = &mut self.role else {
                return;
            };
            if master.next_slot <= self.chosen_through {
                master.next_slot = self.chosen_through.next();
            }
            let slot = master.next_slot;
            if slot > self.chosen_through.plus(self.settings.window_slots) {
                return;
            }
            if self.log.get(slot).is_some_and(SlotState::is_chosen)
                || master.in_flight.contains(slot)
            {
                master.next_slot = slot.next();
                continue;
            }
            let entries = &self.membership.entries;
            let index = entries
                .partition_point(|(start, _)| *start <= slot)
                .saturating_sub(1);
            let (start, config) = &entries[index];
            let key = (self.membership_version, *start);
            if master.promised_config != Some(key) {
                let promised = config
                    .voters
                    .iter()
                    .filter(|(n, i)| master.promises.contains_key(&(**n, **i)))
                    .count();
                if promised < config.quorum() {
                    self.prepare_missing_voters(slot);
                    return;
                }
                master.promised_config = Some(key);
            }
            // A membership change takes effect only once the slots before it are chosen: fill them
            // with no-ops when there is nothing else to propose.
            let pending_config = self
                .membership
                .entries
                .last()
                .is_some_and(|(start, _)| *start > slot);
            let Some(value) =
                Self::next_value(master, config, slot, &self.settings, pending_config)
            else {
                return;
            };
            master.next_slot = slot.next();
            if ack_early {
                self.ack_early(&value, slot);
            }
            self.propose_slot(slot, value);
        }
    }

    fn next_value(
        master: &mut Master,
        config: &crate::types::Config,
        slot: Slot,
        settings: &crate::settings::Settings,
        pending_config: bool,
    ) -> Option<Value> {
        let mut best: Option<(Ballot, &Value)> = None;
        let reported = if slot <= master.reports_through {
            master.promises.iter()
        } else {
            // Nothing was reported this high: skip the search.
            std::collections::btree_map::Iter::default()
        };
        for ((node, incarnation), reports) in reported {
            if !config.is_voter(*node, *incarnation) {
                continue;
            }
            match reports.get(&slot) {
                Some(Reported::Chosen { value }) => return Some(value.clone()),
                Some(Reported::Accepted { ballot, value })
                    if best.is_none_or(|(b, _)| *ballot > b) =>
                {
                    best = Some((*ballot, value));
                }
                _ => {}
            }
        }
        if let Some((_, value)) = best {
            return Some(value.clone());
        }
        if slot <= master.recover_through {
            return Some(Value::noop());
        }
        if master.queue.is_empty() {
            return pending_config.then(Value::noop);
        }
        let mut entries = Vec::with_capacity(master.queue.len().min(settings.batch_entries_max));
        let mut bytes = 0;
        while let Some(entry) = master.queue.front() {
            let size = entry.bytes();
            if !entries.is_empty()
                && (entries.len() >= settings.batch_entries_max
                    || bytes + size > settings.batch_bytes_max)
            {
                break;
            }
            bytes += size;
            entries.push(master.queue.pop_front().expect("front exists"));
        }
        Some(Value::new(entries))
    }

    fn propose_slot(&mut self, slot: Slot, value: Value) {
        let Role::Master(master) = &mut self.role else {
            return;
        };
        master.in_flight.insert(
            slot,
            InFlight {
                value,
                votes: Votes::new(),
                sent_at: self.now,
            },
        );
        self.send_accept(slot);
    }

    /// Sends (or sends again) the accept for an in-flight slot to every member of its config.
    fn send_accept(&mut self, slot: Slot) {
        let Role::Master(master) = &mut self.role else {
            return;
        };
        let Some(flight) = master.in_flight.get_mut(slot) else {
            return;
        };
        flight.sent_at = self.now;
        let accept = Accept {
            ballot: master.ballot,
            slot,
            value: flight.value.clone(),
            chosen_through: self.chosen_through,
        };
        self.refresh_slot_config(slot);
        queue_sends(
            &mut self.actions,
            (self.node, self.incarnation),
            self.slot_config.members.iter().copied(),
            Message::Accept(accept),
        );
    }

    /// Accepts (or votes) lost in the network are sent again.
    fn resend_stale_accepts(&mut self) {
        let Role::Master(master) = &self.role else {
            return;
        };
        let due = self.now.saturating_sub(self.settings.retry_interval_ticks);
        if !master.in_flight.values().any(|f| f.sent_at <= due) {
            return;
        }
        let stale: Vec<Slot> = master
            .in_flight
            .iter()
            .filter(|(_, f)| f.sent_at <= due)
            .map(|(s, _)| s)
            .collect();
        for slot in stale {
            self.send_accept(slot);
        }
    }

    fn prepare_missing_voters(&mut self, slot: Slot) {
        let Role::Master(master) = &mut self.role else {
            return;
        };
        if self.now < master.last_prepare_retry + self.settings.retry_interval_ticks {
            return;
        }
        master.last_prepare_retry = self.now;
        // Slots before our chosen prefix are settled: ask only about the rest.
        let prepare = Prepare {
            ballot: master.ballot,
            from: self.chosen_through.next(),
            lease_tick: self.now,
        };
        let missing: Vec<NodeId> = self
            .membership
            .config_at(slot)
            .voters
            .iter()
            .filter(|(n, i)| !master.promises.contains_key(&(**n, **i)))
            .map(|(n, _)| *n)
            .collect();
        self.send_all(&missing, Message::Prepare(prepare));
    }

    fn ack_early(&mut self, value: &Value, slot: Slot) {
        let Role::Master(master) = &mut self.role else {
            return;
        };
        for entry in value.entries.iter() {
            if master.outstanding.remove(entry.id) {
                self.actions
                    .push_back(Action::Committed { id: entry.id, slot });
            }
        }
    }

    pub(crate) fn on_accepted(&mut self, voter: Voter, accepted: Accepted) {
        let Role::Master(master) = &mut self.role else {
            return;
        };
        if accepted.ballot != master.ballot {
            return;
        }
        let Some(flight) = master.in_flight.get_mut(accepted.slot) else {
            return;
        };
        flight.votes.insert(voter);
        let config = self.membership.config_at(accepted.slot);
        // Fewer votes than a quorum cannot hold a quorum of voters: skip the count.
        if flight.votes.len() < config.quorum()
            || config.count_voters(flight.votes.iter()) < config.quorum()
        {
            return;
        }
        let flight = master.in_flight.remove(accepted.slot).expect("present");
        self.record_chosen(accepted.slot, flight.value);
        self.advance_chosen();
        self.fill_window();
    }

    pub(crate) fn on_nack(&mut self, voter: Voter, nack: Nack) {
        self.observe_ballot(nack.promised);
        if nack.promised <= nack.rejected {
            return; // refused because of a lease, not a higher ballot
        }
        let mine = match &self.role {
            Role::Follower => return,
            Role::PreCandidate { ballot, .. } | Role::Candidate { ballot, .. } => *ballot,
            Role::Master(master) => master.ballot,
        };
        let counts = self.config().is_voter(voter.0, voter.1);
        if nack.rejected == mine && counts {
            // A voter has promised a higher ballot: this tenure cannot be sure of its quorums.
            self.become_follower();
        }
    }

    pub(crate) fn on_heartbeat_ack(&mut self, voter: Voter, ack: HeartbeatAck) {
        let Role::Master(master) = &mut self.role else {
            return;
        };
        if ack.ballot != master.ballot {
            return;
        }
        if let Some(grantors) = master.lease_rounds.get_mut(&ack.lease_tick) {
            grantors.insert(voter);
            self.refresh_lease();
        }
    }

    /// Recomputes the lease: the latest request round granted by a majority of every config in the
    /// window holds for `master_lease_ticks` from when it was sent.
    pub(crate) fn refresh_lease(&mut self) {
        let duration = if self.bugs().lease_without_drift_margin {
            self.settings.lease_ticks
        } else {
            self.settings.master_lease_ticks()
        };
        let oldest = self.now.saturating_sub(duration);
        let Role::Master(master) = &self.role else {
            return;
        };
        let mut until = 0;
        for (tick, grantors) in master.lease_rounds.range(oldest..).rev() {
            if self.quorum_of_window(grantors) {
                until = tick + duration;
                break;
            }
        }
        let Role::Master(master) = &mut self.role else {
            return;
        };
        while master
            .lease_rounds
            .first_key_value()
            .is_some_and(|(tick, _)| *tick < oldest)
        {
            master.lease_rounds.pop_first();
        }
        master.lease_until = until;
        master.last_lease_end = master.last_lease_end.max(until);
    }

    pub(crate) fn tick_master(&mut self) {
        let Role::Master(master) = &self.role else {
            return;
        };
        let (last_heartbeat, last_digest) = (master.last_heartbeat, master.last_digest);
        let lapsed_for = self.now.saturating_sub(master.last_lease_end);
        if !self.is_voter_now() || lapsed_for > self.settings.election_timeout_ticks {
            // Removed from the voters, or cut off for too long: let someone else lead.
            self.become_follower();
            return;
        }
        if self.now >= last_heartbeat + self.settings.heartbeat_interval_ticks {
            self.send_heartbeats();
        }
        let digest_interval = self.settings.digest_interval_ticks;
        if digest_interval > 0 && self.now >= last_digest + digest_interval {
            if let Role::Master(master) = &mut self.role {
                master.last_digest = self.now;
            }
            self.submit_internal(EntryKind::DigestRequest);
        }
        self.refresh_lease();
        self.resend_stale_accepts();
        self.fill_window();
    }

    pub(crate) fn send_heartbeats(&mut self) {
        let Role::Master(master) = &mut self.role else {
            return;
        };
        master.last_heartbeat = self.now;
        master.lease_rounds.entry(self.now).or_default();
        let heartbeat = Heartbeat {
            ballot: master.ballot,
            lease_tick: self.now,
            chosen_through: self.chosen_through,
        };
        self.send_to_members(Message::Heartbeat(heartbeat));
    }

    pub(crate) fn submit_internal(&mut self, kind: EntryKind) {
        let Role::Master(master) = &mut self.role else {
            return;
        };
        let id = EntryId {
            epoch: master.epoch(),
            seq: master.next_seq,
        };
        master.next_seq += 1;
        master.queue.push_back(Entry { id, kind });
        self.fill_window();
    }

    /// Acknowledges this tenure's submits in a value just applied (membership changes that did not
    /// apply fail instead).
    pub(crate) fn acknowledge(
        &mut self,
        slot: Slot,
        value: &Value,
        refused: &[(EntryId, &'static str)],
    ) {
        let Role::Master(master) = &mut self.role else {
            return;
        };
        for entry in value.entries.iter() {
            if master.outstanding.remove(entry.id) {
                match refused.iter().find(|(id, _)| *id == entry.id) {
                    Some((id, why)) => self.actions.push_back(Action::Failed {
                        id: *id,
                        error: crate::action::ProposeError::Membership(why),
                    }),
                    None => self
                        .actions
                        .push_back(Action::Committed { id: entry.id, slot }),
                }
            }
            if let EntryKind::Reconfigure(MembershipChange::Reincarnate { node, .. }) = &entry.kind
            {
                master.rejoining.remove(node);
            }
        }
    }

    pub(crate) fn on_rejoin(&mut self, voter: Voter) {
        let (node, incarnation) = voter;
        let Role::Master(master) = &self.role else {
            return;
        };
        if master.rejoining.contains(&node) {
            return;
        }
        let known = self.membership.latest().incarnation_of(node);
        if known.is_none_or(|i| i >= incarnation) {
            return;
        }
        let change = MembershipChange::Reincarnate { node, incarnation };
        if self.propose_membership(change).is_ok() {
            if let Role::Master(master) = &mut self.role {
                master.rejoining.insert(node);
            }
        }
    }
}
