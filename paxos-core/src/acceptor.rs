//! Acceptor side: pre-vote, promises, accepts, lease grants, and starting an election.

use crate::durable::{Record, SlotState};
use crate::message::{
    Accept, Accepted, Heartbeat, HeartbeatAck, Message, Nack, Prepare, Probe, ProbeReply, Promise,
    Reported,
};
use crate::replica::{LeaseGrant, Replica, Role};
use crate::types::{Ballot, NodeId};
use std::collections::{BTreeMap, BTreeSet};

impl Replica {
    /// Would this acceptor promise `ballot` now? Not below its promise, and not while a lease it
    /// granted to another master (or one it may have forgotten in a restart) is running. This is what
    /// keeps a replica that comes back from a partition with a high ballot from deposing a master.
    pub(crate) fn would_promise(&self, ballot: Ballot) -> bool {
        if ballot <= self.promised || self.rebuild.is_some() || self.now < self.restart_guard_until
        {
            return false;
        }
        match self.lease_granted {
            Some(LeaseGrant { holder, until }) if self.now < until => holder.node == ballot.node,
            _ => true,
        }
    }

    /// The grant running now, if any.
    pub(crate) fn running_grant(&self) -> Option<LeaseGrant> {
        self.lease_granted.filter(|g| self.now < g.until)
    }

    /// Grants (or renews) a lease to `holder`, unless a grant to a higher ballot is running: a
    /// delayed request of an older master must never move a grant away from the master counting it.
    /// During the restart guard nothing is granted: a forgotten grant may be running.
    #[must_use]
    pub(crate) fn grant_lease(&mut self, holder: Ballot) -> bool {
        if self.now < self.restart_guard_until
            || self.running_grant().is_some_and(|g| g.holder > holder)
        {
            return false;
        }
        // +1: the request arrived somewhere inside the current tick.
        let until = self.now + self.settings.lease_ticks + 1;
        self.lease_granted = Some(LeaseGrant { holder, until });
        true
    }

    pub(crate) fn observe_ballot(&mut self, ballot: Ballot) {
        self.max_ballot_seen = self.max_ballot_seen.max(ballot);
    }

    /// A master or candidate with a higher ballot is active: step aside.
    fn yield_to(&mut self, ballot: Ballot) {
        let mine = match &self.role {
            Role::Follower => return,
            Role::PreCandidate { ballot, .. } | Role::Candidate { ballot, .. } => *ballot,
            Role::Master(m) => m.ballot,
        };
        if ballot > mine && ballot.node != self.node {
            self.become_follower();
        }
    }

    pub(crate) fn heard_master(&mut self, ballot: Ballot) {
        self.leader_hint = Some(ballot.node);
        self.reset_election_timer();
        self.yield_to(ballot);
    }

    pub(crate) fn tick_follower(&mut self) {
        if self.now < self.election_due {
            return;
        }
        if !self.is_voter_now()
            || self.running_grant().is_some()
            || self.now < self.restart_guard_until
        {
            self.reset_election_timer();
            return;
        }
        let ballot = self
            .max_ballot_seen
            .max(self.promised)
            .successor_for(self.node);
        self.role = Role::PreCandidate {
            ballot,
            started: self.now,
            oks: BTreeSet::new(),
        };
        let voters = self.window_voters();
        let probe = Probe {
            ballot,
            chosen_through: self.chosen_through,
        };
        self.send_all(&voters, Message::Probe(probe));
    }

    /// Asks again the voters that have not yet said yes (to the probe or the prepare).
    pub(crate) fn retry_election(&mut self) {
        let (message, answered): (Message, BTreeSet<NodeId>) = match &self.role {
            Role::PreCandidate { ballot, oks, .. } => (
                Message::Probe(Probe {
                    ballot: *ballot,
                    chosen_through: self.chosen_through,
                }),
                oks.iter().map(|(n, _)| *n).collect(),
            ),
            Role::Candidate {
                ballot,
                lease_tick,
                promises,
                ..
            } => {
                let prepare = Prepare {
                    ballot: *ballot,
                    from: self.chosen_through.next(),
                    lease_tick: *lease_tick,
                };
                (
                    Message::Prepare(prepare),
                    promises.keys().map(|(n, _)| *n).collect(),
                )
            }
            _ => return,
        };
        let mut missing = self.window_voters();
        missing.retain(|n| !answered.contains(n));
        self.send_all(&missing, message);
    }

    pub(crate) fn on_probe(&mut self, from: NodeId, probe: Probe) {
        self.known_chosen = self.known_chosen.max(probe.chosen_through);
        let ok = self.would_promise(probe.ballot);
        self.send(
            from,
            Message::ProbeReply(ProbeReply {
                ballot: probe.ballot,
                ok,
            }),
        );
    }

    pub(crate) fn on_prepare(&mut self, from: NodeId, prepare: Prepare) {
        self.observe_ballot(prepare.ballot);
        // A candidate's chosen prefix ends right before its `from`: worth catching up to. (A node
        // that does not yet know it became a voter still promises: only the candidate can tell.)
        self.known_chosen = self.known_chosen.max(prepare.from.prev());
        if self.rebuild.is_some() && !self.bugs().rebuild_votes_at_once {
            return;
        }
        // A master asking again (for a voter of a newer config) gets the same promise again.
        let repeat = prepare.ballot == self.promised && self.rebuild.is_none();
        if !repeat && !self.would_promise(prepare.ballot) {
            let nack = Nack {
                rejected: prepare.ballot,
                promised: self.promised,
            };
            self.send(from, Message::Nack(nack));
            return;
        }
        // A candidate far behind our chosen prefix learns it first instead of receiving a huge
        // promise (and one too long to send is never sent).
        let too_long = self.log.len() > crate::limits::PROMISE_ENTRIES_MAX
            && self.log.range_from(prepare.from).count() > crate::limits::PROMISE_ENTRIES_MAX;
        if too_long || self.chosen_through.0 > prepare.from.0 + self.settings.window_slots {
            self.serve_catch_up(from, prepare.from);
            return;
        }
        if !self.grant_lease(prepare.ballot) {
            let nack = Nack {
                rejected: prepare.ballot,
                promised: self.promised,
            };
            self.send(from, Message::Nack(nack));
            return;
        }
        self.promised = prepare.ballot;
        self.heard_master(prepare.ballot);
        let entries = self
            .log
            .range_from(prepare.from)
            .map(|(slot, state)| {
                let reported = match state {
                    SlotState::Accepted { ballot, value } => Reported::Accepted {
                        ballot: *ballot,
                        value: value.clone(),
                    },
                    SlotState::Chosen { value } => Reported::Chosen {
                        value: value.clone(),
                    },
                };
                (slot, reported)
            })
            .collect();
        let promise = Promise {
            ballot: prepare.ballot,
            lease_tick: prepare.lease_tick,
            log_start: self.snapshot.slot.next(),
            entries,
        };
        let reply = self.outgoing(from, Message::Promise(promise));
        self.persist(vec![Record::Promised(prepare.ballot)], vec![reply]);
    }

    pub(crate) fn on_accept(&mut self, from: NodeId, accept: Accept) {
        self.observe_ballot(accept.ballot);
        let votes = self.rebuild.is_none() || self.bugs().rebuild_votes_at_once;
        if accept.ballot < self.promised && !self.bugs().acceptor_ignores_ballot {
            let nack = Nack {
                rejected: accept.ballot,
                promised: self.promised,
            };
            self.send(from, Message::Nack(nack));
            return;
        }
        self.heard_master(accept.ballot);
        self.refresh_slot_config(accept.slot);
        let voter = self.slot_config.voter;
        if votes && voter {
            let mut records = self.record_buffer();
            if accept.ballot > self.promised {
                self.promised = accept.ballot;
                records.push(Record::Promised(accept.ballot));
            }
            let already_chosen = accept.slot <= self.snapshot.slot
                || self.log.get(accept.slot).is_some_and(SlotState::is_chosen);
            if !already_chosen {
                self.log.insert(
                    accept.slot,
                    SlotState::Accepted {
                        ballot: accept.ballot,
                        value: accept.value.clone(),
                    },
                );
            }
            records.push(Record::Accepted {
                slot: accept.slot,
                ballot: accept.ballot,
                value: accept.value,
            });
            let reply = self.outgoing(
                from,
                Message::Accepted(Accepted {
                    ballot: accept.ballot,
                    slot: accept.slot,
                }),
            );
            let mut messages = self.message_buffer();
            messages.push(reply);
            self.persist(records, messages);
        }
        self.learn_chosen(from, accept.ballot, accept.chosen_through);
    }

    pub(crate) fn on_heartbeat(&mut self, from: NodeId, heartbeat: Heartbeat) {
        self.observe_ballot(heartbeat.ballot);
        // That a prefix is chosen is a fact whoever says it: even a refused master's announcement
        // tells a lagging replica there is something to catch up on.
        self.known_chosen = self.known_chosen.max(heartbeat.chosen_through);
        if heartbeat.ballot < self.promised {
            let nack = Nack {
                rejected: heartbeat.ballot,
                promised: self.promised,
            };
            self.send(from, Message::Nack(nack));
            return;
        }
        let votes = self.rebuild.is_none() || self.bugs().rebuild_votes_at_once;
        let guarded = self.now < self.restart_guard_until;
        if votes && !guarded && !self.grant_lease(heartbeat.ballot) {
            // A stale master: the lease this acceptor grants belongs to a newer one.
            let holder = self.running_grant().map_or(self.promised, |g| g.holder);
            let nack = Nack {
                rejected: heartbeat.ballot,
                promised: holder.max(self.promised),
            };
            self.send(from, Message::Nack(nack));
            return;
        }
        self.heard_master(heartbeat.ballot);
        if votes && !guarded {
            let ack = HeartbeatAck {
                ballot: heartbeat.ballot,
                lease_tick: heartbeat.lease_tick,
            };
            self.send(from, Message::HeartbeatAck(ack));
        }
        self.learn_chosen(from, heartbeat.ballot, heartbeat.chosen_through);
    }

    pub(crate) fn on_probe_reply(&mut self, voter: crate::replica::Voter, reply: ProbeReply) {
        let Role::PreCandidate { ballot, oks, .. } = &mut self.role else {
            return;
        };
        if reply.ballot != *ballot || !reply.ok {
            return;
        }
        oks.insert(voter);
        let oks = oks.clone();
        let ballot = *ballot;
        if self.quorum_of_window(&oks) {
            self.start_phase_one(ballot);
        }
    }

    fn start_phase_one(&mut self, ballot: Ballot) {
        let lease_tick = self.now;
        self.observe_ballot(ballot);
        self.role = Role::Candidate {
            ballot,
            started: self.now,
            lease_tick,
            promises: BTreeMap::new(),
        };
        self.actions.push_back(crate::action::Action::RoleChanged {
            role: crate::action::RoleKind::Candidate,
            epoch: None,
        });
        let prepare = Prepare {
            ballot,
            from: self.chosen_through.next(),
            lease_tick,
        };
        self.send_to_members(Message::Prepare(prepare));
    }
}
