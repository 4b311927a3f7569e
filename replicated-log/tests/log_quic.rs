//! Replicas over real QUIC with mutual TLS on loopback and real data directories.
//!
//! - Three replicas: commit, kill one, keep committing past a snapshot (so the others truncate
//!   their logs), restart it, and it catches up through the snapshot and then the log.
//! - Membership: two learners join and are promoted, an initial voter is removed; then a new node
//!   and a wiped initial voter, both configured with only the initial members' addresses, find
//!   the current voters (their addresses come from the peers' address books) and rebuild.

mod common;

use common::{Journal, CLUSTER};
use paxos_core::{NodeId, Slot};
use replicated_log::{tls, Log, LogConfig, StartMode, Status, SubmitError};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

fn free_addresses(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

struct QuicCluster {
    root: tempfile::TempDir,
    /// The initial members: every replica is configured with these (as `--member` flags would).
    peers: BTreeMap<NodeId, SocketAddr>,
    /// Where each node listens, the initial members and the spares added later.
    listen: BTreeMap<NodeId, SocketAddr>,
    logs: BTreeMap<NodeId, Log<Journal>>,
}

impl QuicCluster {
    async fn start(n: u64) -> QuicCluster {
        QuicCluster::start_with_spares(n, 0).await
    }

    /// `n` initial members, and certificates and addresses for `spares` more nodes (ids after them).
    async fn start_with_spares(n: u64, spares: u64) -> QuicCluster {
        let root = tempfile::tempdir().unwrap();
        let nodes: Vec<NodeId> = (1..=n + spares).map(NodeId).collect();
        tls::init_dir(&root.path().join("certs"), CLUSTER, &nodes, &["bench"]).unwrap();
        let listen: BTreeMap<NodeId, SocketAddr> = nodes
            .iter()
            .copied()
            .zip(free_addresses(nodes.len()))
            .collect();
        let peers = listen.range(..=NodeId(n)).map(|(k, v)| (*k, *v)).collect();
        let mut cluster = QuicCluster {
            root,
            peers,
            listen,
            logs: BTreeMap::new(),
        };
        for node in 1..=n {
            cluster.open(NodeId(node)).await;
        }
        cluster
    }

    fn dir(&self, node: NodeId) -> std::path::PathBuf {
        self.root.path().join(format!("node-{}", node.0))
    }

    async fn open(&mut self, node: NodeId) {
        self.open_as(node, StartMode::Bootstrap).await;
    }

    async fn open_as(&mut self, node: NodeId, start: StartMode) {
        let certs = self.root.path().join("certs");
        let material = tls::load_node_material(&certs, CLUSTER, node).unwrap();
        let mut config = LogConfig::new(CLUSTER, node, self.dir(node), self.peers.clone());
        config.start = start;
        config.snapshot_every_slots = 25;
        config.storage.segment_bytes = 1 << 20;
        let listen = self.listen[&node];
        let log = Log::open_quic(config, Journal::default(), material, listen)
            .await
            .unwrap();
        self.logs.insert(node, log);
    }

    async fn status(&self, node: NodeId) -> Status {
        self.logs[&node].status().await.expect("running")
    }

    /// Has the master make `change`, retrying across elections and while another change is
    /// pending, until the master's latest config satisfies `done`.
    async fn change(&self, change: Change, done: impl Fn(&Status) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let master = self.master().await;
            if done(&self.status(master).await) {
                return;
            }
            let log = &self.logs[&master];
            let result = match change {
                Change::AddLearner(node) => log.add_learner(node, self.listen[&node]).await,
                Change::Promote(node) => log.promote(node).await,
                Change::Remove(node) => log.remove(node).await,
            };
            if let Err(error) = result {
                assert!(
                    Instant::now() < deadline,
                    "{change:?} kept failing: {error}"
                );
                // A refused change usually waits for the previous one to come into force.
                let pause = match error {
                    SubmitError::Refused(_) => Duration::from_millis(100),
                    _ => Duration::from_millis(20),
                };
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Waits until `node` has finished rebuilding (or joining) under an incarnation of at least
    /// `incarnation`, submitting meanwhile so that its reincarnation is chosen and comes into force.
    async fn wait_rebuilt(&self, node: NodeId, incarnation: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status(node).await;
            if !status.rebuilding && status.incarnation >= incarnation {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} did not finish its rebuild: {status:#?}"
            );
            self.submit(b"fill".to_vec()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn master(&self) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (node, log) in &self.logs {
                if log.status().await.is_some_and(|s| s.lease) {
                    return *node;
                }
            }
            assert!(Instant::now() < deadline, "no master in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn submit(&self, data: Vec<u8>) -> Slot {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let master = self.master().await;
            match self.logs[&master].submit(data.clone()).await {
                Ok(committed) => return committed.slot,
                Err(error) => {
                    assert!(Instant::now() < deadline, "submit kept failing: {error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn wait_applied(&self, node: NodeId, slot: Slot) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.logs[&node].status().await.unwrap();
            if status.applied_through >= slot.0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} did not catch up to {slot}: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Change {
    AddLearner(NodeId),
    Promote(NodeId),
    Remove(NodeId),
}

fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_over_quic_survive_a_restart_and_catch_up_through_a_snapshot() {
    let mut cluster = QuicCluster::start(3).await;
    for i in 0..10u32 {
        cluster.submit(i.to_le_bytes().to_vec()).await;
    }
    let master = cluster.master().await;
    let victim = *cluster.peers.keys().find(|n| **n != master).unwrap();
    cluster.logs.remove(&victim).unwrap().shutdown().await;

    let mut last = Slot::ZERO;
    for i in 10..100u32 {
        last = cluster.submit(i.to_le_bytes().to_vec()).await;
    }
    let master_status = cluster.logs[&master].status().await.unwrap();
    assert!(
        master_status.snapshot_slot > 10,
        "the master snapshotted past the victim: {master_status:#?}"
    );

    assert!(has_files(
        &cluster.root.path().join(format!("node-{}", victim.0))
    ));
    cluster.open(victim).await;
    cluster.wait_applied(victim, last).await;
    let journal = cluster.logs[&victim]
        .read_stale(|j: &Journal| j.entries.clone())
        .await
        .unwrap();
    let expected: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(journal, expected);
    let metrics = cluster.logs[&victim].metrics().await.unwrap();
    assert!(
        metrics.snapshots_installed >= 1,
        "caught up through a snapshot over QUIC: {metrics:?}"
    );

    for log in cluster.logs.values() {
        log.shutdown().await;
    }
}

/// The bug the real-process fault harness found: a replica configured with the initial members
/// only ({1, 2, 3}) rebuilds after the voters became {1, 3, 4, 5} (or with 2 and 3 swapped). It
/// needs answers from a quorum of the current voters, so it must learn both who they are (the
/// engine reads it from the probe replies) and where they are (the peers' address books).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_configured_with_the_initial_members_rebuild_after_the_voters_changed() {
    let mut cluster = QuicCluster::start_with_spares(3, 3).await;
    for i in 0..5u32 {
        cluster.submit(i.to_le_bytes().to_vec()).await;
    }
    for joiner in [NodeId(4), NodeId(5)] {
        cluster
            .change(Change::AddLearner(joiner), |s| s.learners.contains(&joiner))
            .await;
        cluster.open_as(joiner, StartMode::Join).await;
        cluster.wait_rebuilt(joiner, 1).await;
        cluster
            .change(Change::Promote(joiner), |s| s.voters.contains(&joiner))
            .await;
    }
    let master = cluster.master().await;
    let originals: Vec<NodeId> = (1..=3).map(NodeId).filter(|n| *n != master).collect();
    let (removed, wiped) = (originals[0], originals[1]);
    cluster
        .change(Change::Remove(removed), |s| !s.voters.contains(&removed))
        .await;
    // Stopped once the others learned every slot past the change (see `paxos.md`, section 6).
    let last = cluster.submit(b"after removal".to_vec()).await;
    for node in [master, wiped, NodeId(4), NodeId(5)] {
        cluster.wait_applied(node, last).await;
    }
    cluster.logs.remove(&removed).unwrap().shutdown().await;
    let voters = cluster.status(master).await.voters;
    assert_eq!(voters.len(), 4, "voters {voters:?}");
    assert!(!voters.contains(&removed));

    // A new member, configured with the initial members (of whom only two still vote).
    let joiner = NodeId(6);
    cluster
        .change(Change::AddLearner(joiner), |s| s.learners.contains(&joiner))
        .await;
    cluster.open_as(joiner, StartMode::Join).await;
    cluster.wait_rebuilt(joiner, 1).await;

    // An initial voter loses its disk: of its configured peers only the master still votes.
    cluster.logs.remove(&wiped).unwrap().shutdown().await;
    std::fs::remove_dir_all(cluster.dir(wiped)).unwrap();
    cluster.open(wiped).await;
    cluster.wait_rebuilt(wiped, 2).await;

    let last = cluster.submit(b"the end".to_vec()).await;
    for node in [joiner, wiped] {
        cluster.wait_applied(node, last).await;
        let journal = cluster.logs[&node]
            .read_stale(|j: &Journal| j.entries.clone())
            .await
            .unwrap();
        assert_eq!(journal.last(), Some(&b"the end".to_vec()), "node {node}");
    }
    let status = cluster.status(wiped).await;
    assert!(status.voters.contains(&wiped), "{status:#?}");
    for log in cluster.logs.values() {
        log.shutdown().await;
    }
}
