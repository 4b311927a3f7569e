//! Three replicas over real QUIC with mutual TLS on loopback and real data directories: commit, kill
//! one, keep committing past a snapshot (so the others truncate their logs), restart it, and it
//! catches up through the snapshot and then the log.

mod common;

use common::{Journal, CLUSTER};
use paxos_core::{NodeId, Slot};
use replicated_log::{tls, Log, LogConfig, StartMode};
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
    peers: BTreeMap<NodeId, SocketAddr>,
    logs: BTreeMap<NodeId, Log<Journal>>,
}

impl QuicCluster {
    async fn start(n: u64) -> QuicCluster {
        let root = tempfile::tempdir().unwrap();
        let nodes: Vec<NodeId> = (1..=n).map(NodeId).collect();
        tls::init_dir(&root.path().join("certs"), CLUSTER, &nodes, &["bench"]).unwrap();
        let peers = nodes
            .iter()
            .copied()
            .zip(free_addresses(nodes.len()))
            .collect();
        let mut cluster = QuicCluster {
            root,
            peers,
            logs: BTreeMap::new(),
        };
        for node in nodes {
            cluster.open(node).await;
        }
        cluster
    }

    async fn open(&mut self, node: NodeId) {
        let certs = self.root.path().join("certs");
        let material = tls::load_node_material(&certs, CLUSTER, node).unwrap();
        let dir = self.root.path().join(format!("node-{}", node.0));
        let mut config = LogConfig::new(CLUSTER, node, &dir, self.peers.clone());
        config.start = StartMode::Bootstrap;
        config.snapshot_every_slots = 25;
        config.storage.segment_bytes = 1 << 20;
        let listen = self.peers[&node];
        let log = Log::open_quic(config, Journal::default(), material, listen)
            .await
            .unwrap();
        self.logs.insert(node, log);
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
