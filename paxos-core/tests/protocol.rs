//! Protocol tests on a small in-process cluster with a perfect disk and a network the test controls.
//! Each test names the Paxos Made Live section it checks. The seeded fault simulator (the `tests`
//! crate) covers the same ground under random faults.

use paxos_core::{
    Action, Ballot, Config, EntryKind, Envelope, MembershipChange, Message, NodeId, ProposeError,
    Replica, RoleKind, Settings, Slot, Value,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

fn settings() -> Settings {
    Settings {
        election_jitter_ticks: 0,
        digest_interval_ticks: 0,
        ..Settings::default()
    }
}

struct Cluster {
    nodes: BTreeMap<NodeId, Replica>,
    applied: BTreeMap<NodeId, Vec<(Slot, Value)>>,
    network: VecDeque<(NodeId, Envelope)>,
    /// Links (from, to) that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message that left a replica, and whether it left inside a `Persist` action.
    sent: Vec<(NodeId, Message, bool)>,
    committed: Vec<(NodeId, paxos_core::EntryId, Slot)>,
    failed: Vec<(NodeId, ProposeError)>,
    fetches: Vec<(NodeId, paxos_core::SnapshotHandle)>,
}

impl Cluster {
    /// A three-replica cluster run until it has elected a master.
    fn elected() -> (Cluster, NodeId) {
        let mut cluster = Cluster::new(3);
        cluster.tick(300);
        let master = cluster
            .master()
            .expect("a master after the election timeout");
        (cluster, master)
    }

    fn new(size: u64) -> Cluster {
        Cluster::with_settings(size, settings())
    }

    /// As `new`, every replica on `base` (each with its own election timeout).
    fn with_settings(size: u64, base: Settings) -> Cluster {
        let ids: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let config = Config::new(ids.iter().copied());
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            applied: BTreeMap::new(),
            network: VecDeque::new(),
            cut: BTreeSet::new(),
            sent: Vec::new(),
            committed: Vec::new(),
            failed: Vec::new(),
            fetches: Vec::new(),
        };
        for (i, id) in ids.iter().enumerate() {
            // Different election timeouts so the test knows who campaigns first.
            let s = Settings {
                election_timeout_ticks: 100 + 40 * i as u64,
                ..base.clone()
            };
            cluster
                .nodes
                .insert(*id, Replica::bootstrap(*id, config.clone(), s, 7));
        }
        cluster.pump();
        cluster
    }

    /// Submits `data` at `node`, which must take it (it is master).
    fn propose_at(&mut self, node: NodeId, data: Vec<u8>) {
        self.nodes
            .get_mut(&node)
            .expect("exists")
            .propose(data)
            .expect("the master takes submits");
    }

    /// Some replica other than `node`.
    fn other_than(&self, node: NodeId) -> NodeId {
        self.nodes
            .keys()
            .copied()
            .find(|n| *n != node)
            .expect("a second replica")
    }

    fn isolate(&mut self, node: NodeId) {
        for other in self.nodes.keys().copied().collect::<Vec<_>>() {
            if other != node {
                self.cut.insert((node, other));
                self.cut.insert((other, node));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Executes every action and delivers every message until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                while let Some(action) = self.nodes.get_mut(&id).and_then(Replica::poll_action) {
                    moved = true;
                    self.execute(id, action);
                }
            }
            while let Some((to, envelope)) = self.network.pop_front() {
                moved = true;
                if self.cut.contains(&(envelope.from, to)) {
                    continue;
                }
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.handle_message(envelope);
                    node.check_invariants();
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn execute(&mut self, id: NodeId, action: Action) {
        match action {
            Action::Persist { messages, .. } => {
                for m in messages {
                    self.sent.push((id, m.envelope.message.clone(), true));
                    self.network.push_back((m.to, m.envelope));
                }
            }
            Action::Send(m) => {
                self.sent.push((id, m.envelope.message.clone(), false));
                self.network.push_back((m.to, m.envelope));
            }
            Action::Apply { slot, value } => {
                self.applied.entry(id).or_default().push((slot, value))
            }
            Action::Committed { id: entry, slot } => self.committed.push((id, entry, slot)),
            Action::Failed { error, .. } => self.failed.push((id, error)),
            Action::FetchSnapshot { handle, .. } => self.fetches.push((id, handle)),
            _ => {}
        }
    }

    fn tick(&mut self, ticks: u64) {
        for _ in 0..ticks {
            for node in self.nodes.values_mut() {
                node.handle_tick();
            }
            self.pump();
        }
    }

    fn master(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|n| n.role_kind() == RoleKind::Master)
            .map(Replica::node)
    }

    fn app_values(&self, node: NodeId) -> Vec<Vec<u8>> {
        let applied = self
            .applied
            .get(&node)
            .map(Vec::as_slice)
            .unwrap_or_default();
        applied
            .iter()
            .flat_map(|(_, v)| v.entries.iter())
            .filter_map(|e| match &e.kind {
                EntryKind::App(data) => Some(data.clone()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn pml_2_a_master_is_elected_and_submits_are_chosen_in_order_everywhere() {
    let (mut cluster, master) = Cluster::elected();
    let node = cluster.nodes.get_mut(&master).expect("exists");
    for i in 0..50u8 {
        node.propose(vec![i]).expect("the master takes submits");
    }
    cluster.pump();
    cluster.tick(20);
    let expected: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i]).collect();
    for id in [NodeId(1), NodeId(2), NodeId(3)] {
        assert_eq!(
            cluster.app_values(id),
            expected,
            "{id} applied the submits in order"
        );
    }
    assert_eq!(
        cluster.committed.len(),
        50,
        "every submit acknowledged once"
    );
    let follower = if master == NodeId(1) {
        NodeId(2)
    } else {
        NodeId(1)
    };
    let refused = cluster
        .nodes
        .get_mut(&follower)
        .expect("exists")
        .propose(vec![1]);
    assert_eq!(refused, Err(ProposeError::NotMaster { hint: Some(master) }));
}

#[test]
fn pml_2_promises_and_votes_leave_only_after_their_records_are_durable() {
    let (mut cluster, master) = Cluster::elected();
    cluster.propose_at(master, vec![9]);
    cluster.pump();
    let votes: Vec<_> = cluster
        .sent
        .iter()
        .filter(|(_, m, _)| matches!(m, Message::Promise(_) | Message::Accepted(_)))
        .collect();
    assert!(votes.len() >= 4, "promises and votes were sent");
    assert!(
        votes.iter().all(|(_, _, persisted)| *persisted),
        "a promise or vote left without its record"
    );
}

#[test]
fn pml_5_2_a_leased_master_is_not_deposed_by_a_returning_replica_with_a_high_ballot() {
    let (mut cluster, master) = Cluster::elected();
    let epoch = cluster.nodes[&master].epoch();
    let follower = cluster.other_than(master);
    let promised = cluster.nodes[&follower].promised();
    // A replica that was away tries to take over with a far higher ballot.
    let intruder = cluster
        .nodes
        .keys()
        .copied()
        .find(|n| *n != master && *n != follower)
        .expect("third");
    let prepare = paxos_core::message::Prepare {
        ballot: Ballot {
            round: 1_000,
            node: intruder,
        },
        from: Slot(1),
        lease_tick: 0,
    };
    let envelope = Envelope {
        from: intruder,
        incarnation: paxos_core::Incarnation(1),
        message: Message::Prepare(prepare),
    };
    cluster
        .nodes
        .get_mut(&follower)
        .expect("exists")
        .handle_message(envelope);
    cluster.pump();
    assert_eq!(
        cluster.nodes[&follower].promised(),
        promised,
        "a lease holder's acceptor raised its promise"
    );
    cluster.tick(500);
    assert_eq!(
        cluster.nodes[&master].epoch(),
        epoch,
        "the master lost its tenure"
    );
    assert!(
        cluster.nodes[&master].lease_read_ok(),
        "the master serves lease reads"
    );
    assert!(
        !cluster.nodes[&follower].lease_read_ok(),
        "a follower never serves lease reads"
    );
}

#[test]
fn pml_5_2_an_isolated_masters_lease_ends_before_another_master_holds_one() {
    let (mut cluster, old) = Cluster::elected();
    cluster.isolate(old);
    let mut old_lease_ended = false;
    for _ in 0..1_000 {
        cluster.tick(1);
        old_lease_ended |= !cluster.nodes[&old].holds_lease();
        let others_with_lease = cluster
            .nodes
            .values()
            .filter(|n| n.node() != old && n.holds_lease())
            .count();
        if others_with_lease > 0 {
            assert!(
                old_lease_ended,
                "a new master held a lease while the old one still did"
            );
            return;
        }
    }
    panic!("no new master got a lease");
}

#[test]
fn pml_5_3_a_submit_fails_with_epoch_changed_when_mastership_is_lost_before_it_is_chosen() {
    let (mut cluster, old) = Cluster::elected();
    cluster.isolate(old);
    let epoch = cluster.nodes[&old].epoch().expect("master has an epoch");
    cluster.propose_at(old, vec![7]);
    cluster.tick(1_000);
    assert_ne!(
        cluster.master(),
        Some(old),
        "the isolated master stepped down"
    );
    assert!(cluster
        .failed
        .contains(&(old, ProposeError::EpochChanged { submitted: epoch })));
    cluster.heal();
    cluster.tick(500);
    assert!(
        cluster.committed.iter().all(|(_, id, _)| id.epoch != epoch),
        "a submit of the lost epoch was acknowledged"
    );
}

#[test]
fn pml_5_1_a_rebuilt_replica_catches_up_without_voting_then_votes_under_a_new_incarnation() {
    let (mut cluster, master) = Cluster::elected();
    for i in 0..20u8 {
        cluster.propose_at(master, vec![i]);
    }
    cluster.tick(10);
    let lost = cluster.other_than(master);
    let peers: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    cluster
        .nodes
        .insert(lost, Replica::rebuild(lost, peers, settings(), 9));
    cluster.applied.remove(&lost);
    let sent_before = cluster.sent.len();
    let mut voted_while_rebuilding = false;
    for _ in 0..600 {
        let rebuilding = cluster.nodes[&lost].is_rebuilding();
        let from = cluster.sent.len();
        cluster.tick(1);
        let votes = cluster.sent[from..]
            .iter()
            .any(|(n, m, _)| *n == lost && matches!(m, Message::Promise(_) | Message::Accepted(_)));
        voted_while_rebuilding |= rebuilding && votes;
        if !cluster.nodes[&lost].is_rebuilding() {
            break;
        }
    }
    assert!(
        !voted_while_rebuilding,
        "a rebuilding replica sent a promise or a vote"
    );
    assert!(
        !cluster.nodes[&lost].is_rebuilding(),
        "the rebuild finished"
    );
    assert_eq!(
        cluster.nodes[&lost].incarnation(),
        paxos_core::Incarnation(2)
    );
    assert!(cluster.nodes[&lost]
        .config()
        .is_voter(lost, paxos_core::Incarnation(2)));
    assert!(cluster.sent.len() > sent_before);
    cluster.propose_at(master, vec![99]);
    cluster.tick(10);
    assert_eq!(
        cluster.app_values(lost).last(),
        Some(&vec![99]),
        "the rebuilt replica applies new values"
    );
    let votes_after = cluster
        .sent
        .iter()
        .any(|(n, m, _)| *n == lost && matches!(m, Message::Accepted(_)));
    assert!(votes_after, "the rebuilt replica votes again");
}

/// Slots between a membership change being chosen and taking effect, in the membership tests:
/// small, so a test fills the window with a few values.
const SHORT_WINDOW_SLOTS: u64 = 4;

fn short_window() -> Settings {
    Settings {
        window_slots: SHORT_WINDOW_SLOTS,
        ..settings()
    }
}

impl Cluster {
    /// Has `master` put `change` in the log, and fills the window after it so that it is in force
    /// everywhere.
    fn change_membership(&mut self, master: NodeId, change: MembershipChange) {
        self.nodes
            .get_mut(&master)
            .expect("exists")
            .propose_membership(change.clone())
            .unwrap_or_else(|e| panic!("the master takes {change:?}: {e:?}"));
        for i in 0..=SHORT_WINDOW_SLOTS {
            self.propose_at(master, vec![i as u8]);
            self.tick(1);
        }
        self.tick(5);
    }

    /// Starts `node` with an empty state (a join, or a lost disk), its driver seeded with `seeds`,
    /// and runs until its rebuild finished, filling the log meanwhile so that its reincarnation
    /// comes into force. False if it did not finish within `ticks`.
    fn rebuild_node(&mut self, node: NodeId, seeds: &[NodeId], master: NodeId, ticks: u64) -> bool {
        let replica = Replica::rebuild(node, seeds.to_vec(), short_window(), 11);
        self.nodes.insert(node, replica);
        self.applied.remove(&node);
        for tick in 0..ticks {
            if tick % 5 == 0 {
                self.propose_at(master, vec![0xee]);
            }
            self.tick(1);
            if !self.nodes[&node].is_rebuilding() {
                return true;
            }
        }
        false
    }
}

/// The bug the real-process fault harness found: a replica rebuilds knowing only the ids its
/// operator configured when the group was created ({1, 2, 3}), but the voters are now {1, 3, 4, 5}
/// (two learners added and promoted, one original voter removed). A quorum of the current voters
/// must answer its probe before it trusts what it learns (PML 5.1), and the seeds name only two
/// of them: it must also probe the members the replies name.
#[test]
fn pml_5_1_a_rebuilding_replica_seeded_with_a_minority_of_the_current_voters_probes_the_rest() {
    let mut cluster = Cluster::with_settings(3, short_window());
    cluster.tick(300);
    let master = cluster.master().expect("a master");
    let seeds = [NodeId(1), NodeId(2), NodeId(3)];
    let originals: Vec<NodeId> = seeds.iter().copied().filter(|n| *n != master).collect();
    let (removed, wiped) = (originals[0], originals[1]);
    for joiner in [NodeId(4), NodeId(5)] {
        cluster.change_membership(master, MembershipChange::AddLearner(joiner));
        assert!(
            cluster.rebuild_node(joiner, &seeds, master, 2_000),
            "{joiner} joined while the seeds were the voters"
        );
        cluster.change_membership(master, MembershipChange::Promote(joiner));
    }
    cluster.change_membership(master, MembershipChange::Remove(removed));
    cluster.nodes.remove(&removed);
    let voters: Vec<NodeId> = cluster.nodes[&master]
        .config()
        .voters
        .keys()
        .copied()
        .collect();
    let mut expected = vec![master, wiped, NodeId(4), NodeId(5)];
    expected.sort();
    assert_eq!(voters, expected);

    // A new member joins, seeded only with the original ids: two of them answer, not three.
    cluster.change_membership(master, MembershipChange::AddLearner(NodeId(6)));
    assert!(
        cluster.rebuild_node(NodeId(6), &seeds, master, 2_000),
        "the joining node found a quorum of the current voters"
    );
    // An original voter loses its disk; its seeds name one other current voter.
    assert!(
        cluster.rebuild_node(wiped, &seeds, master, 2_000),
        "the wiped voter found a quorum of the current voters"
    );
    assert!(cluster.nodes[&wiped]
        .config()
        .is_voter(wiped, paxos_core::Incarnation(2)));
    cluster.propose_at(master, vec![99]);
    cluster.tick(100);
    for node in [NodeId(6), wiped] {
        assert_eq!(
            cluster.app_values(node).last(),
            Some(&vec![99]),
            "{node} applies new values"
        );
    }
}

#[test]
fn pml_5_5_a_replica_behind_a_truncated_log_is_told_to_fetch_the_snapshot() {
    let (mut cluster, master) = Cluster::elected();
    let behind = cluster.other_than(master);
    cluster.isolate(behind);
    for i in 0..30u8 {
        cluster.propose_at(master, vec![i]);
        cluster.pump();
    }
    cluster.tick(5);
    for node in cluster.nodes.values_mut().filter(|n| n.node() != behind) {
        let handle = node.snapshot_handle();
        assert!(handle.slot >= Slot(30));
        node.handle_snapshot_done(handle);
    }
    cluster.pump();
    cluster.heal();
    for _ in 0..200 {
        cluster.tick(1);
        if !cluster.fetches.is_empty() {
            break;
        }
    }
    let (fetcher, handle) = cluster
        .fetches
        .first()
        .cloned()
        .expect("the lagging replica was told to fetch a snapshot");
    assert_eq!(fetcher, behind);
    assert!(cluster.nodes[&behind].wants_snapshot(handle.slot));
    cluster
        .nodes
        .get_mut(&behind)
        .expect("exists")
        .handle_snapshot_installed(handle.clone());
    cluster.propose_at(master, vec![200]);
    cluster.tick(30);
    assert!(
        cluster.nodes[&behind].chosen_through() > handle.slot,
        "it continued after the snapshot"
    );
}

#[test]
fn pml_6_a_replica_whose_digest_differs_from_the_majority_declares_itself_corrupt() {
    let mut cluster = Cluster::new(3);
    cluster.tick(300);
    let slot = Slot(1);
    for node in cluster.nodes.values_mut() {
        let digest = if node.node() == NodeId(3) { 666 } else { 42 };
        node.handle_digest(slot, digest);
    }
    let mut corrupt = Vec::new();
    for _ in 0..3 {
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        for id in ids {
            while let Some(action) = cluster.nodes.get_mut(&id).and_then(Replica::poll_action) {
                match action {
                    Action::Corrupt { .. } => corrupt.push(id),
                    Action::Send(m) => cluster.network.push_back((m.to, m.envelope)),
                    _ => {}
                }
            }
        }
        while let Some((to, envelope)) = cluster.network.pop_front() {
            cluster
                .nodes
                .get_mut(&to)
                .expect("exists")
                .handle_message(envelope);
        }
    }
    assert_eq!(corrupt, vec![NodeId(3)]);
    assert!(cluster.nodes[&NodeId(3)].is_corrupt());
}

#[test]
fn pml_6_a_requested_check_collects_every_voters_digest_for_its_slot() {
    let (mut cluster, master) = Cluster::elected();
    let follower = cluster.other_than(master);
    assert!(matches!(
        cluster.nodes.get_mut(&follower).unwrap().request_digest(),
        Err(ProposeError::NotMaster { .. })
    ));
    let id = cluster
        .nodes
        .get_mut(&master)
        .unwrap()
        .request_digest()
        .expect("the master takes a check request");
    cluster.pump();
    let slot = cluster
        .committed
        .iter()
        .find(|(node, entry, _)| *node == master && *entry == id)
        .map(|(_, _, slot)| *slot)
        .expect("the request is acknowledged with its slot");
    // Each replica computes its digest after applying the request at that slot.
    for (node, applied) in &cluster.applied {
        assert!(
            applied
                .iter()
                .any(|(s, v)| *s == slot
                    && v.entries.iter().any(|e| e.kind == EntryKind::DigestRequest)),
            "{node} applied the request at {slot}"
        );
    }
    assert_eq!(cluster.nodes[&master].digest_reports(slot), None);
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    for node in &ids {
        let digest = if *node == follower { 7 } else { 42 };
        cluster
            .nodes
            .get_mut(node)
            .unwrap()
            .handle_digest(slot, digest);
    }
    cluster.pump();
    let reports = cluster.nodes[&master]
        .digest_reports(slot)
        .expect("reports for the slot");
    let expected: BTreeMap<NodeId, u64> = ids
        .iter()
        .map(|n| (*n, if *n == follower { 7 } else { 42 }))
        .collect();
    assert_eq!(
        reports, &expected,
        "every voter's digest reached the master"
    );
    assert!(cluster.nodes[&follower].is_corrupt(), "the minority knows");
}

#[test]
fn settings_that_cannot_keep_a_lease_are_refused() {
    let bad = Settings {
        lease_ticks: 4,
        ..Settings::default()
    };
    assert!(bad.invalid().is_some());
    let drift = Settings {
        clock_drift_ppm: 600_000,
        ..Settings::default()
    };
    assert!(drift.invalid().is_some());
}
