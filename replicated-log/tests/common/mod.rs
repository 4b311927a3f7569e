//! A small replicated application and cluster helpers shared by the log tests.
#![allow(dead_code)]

use paxos_core::{NodeId, Slot};
use replicated_log::storage::FileVfs;
use replicated_log::transport::{MemNetwork, MemTransport, Transport};
use replicated_log::{ClusterId, Log, LogConfig, SnapshotFn, StartMode, StateMachine, Status};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every applied entry, in order, and a running hash of them.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    pub entries: Vec<Vec<u8>>,
    pub last_slot: u64,
}

impl Journal {
    fn hash(&self) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for entry in &self.entries {
            for byte in entry.iter().chain(&[0xff]) {
                hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }
}

impl StateMachine for Journal {
    /// The entry's position in the journal.
    type Output = usize;

    fn apply(&mut self, slot: Slot, entry: &[u8]) -> usize {
        assert!(slot.0 >= self.last_slot, "slots go backwards");
        self.last_slot = slot.0;
        self.entries.push(entry.to_vec());
        self.entries.len() - 1
    }

    fn snapshot(&self) -> SnapshotFn {
        let copy = self.clone();
        Box::new(move |out: &mut dyn Write| {
            out.write_all(&copy.last_slot.to_le_bytes())?;
            out.write_all(&(copy.entries.len() as u64).to_le_bytes())?;
            for entry in &copy.entries {
                out.write_all(&(entry.len() as u32).to_le_bytes())?;
                out.write_all(entry)?;
            }
            Ok(())
        })
    }

    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        self.last_slot = u64::from_le_bytes(word);
        input.read_exact(&mut word)?;
        let count = u64::from_le_bytes(word);
        self.entries.clear();
        for _ in 0..count {
            let mut len = [0u8; 4];
            input.read_exact(&mut len)?;
            let mut entry = vec![0u8; u32::from_le_bytes(len) as usize];
            input.read_exact(&mut entry)?;
            self.entries.push(entry);
        }
        Ok(())
    }

    fn reset(&mut self) {
        *self = Journal::default();
    }

    fn digest(&self) -> u64 {
        self.hash()
    }
}

pub const CLUSTER: ClusterId = ClusterId(0x5eed);

/// Three (or more) replicas over an in-memory network, each with a real data directory.
pub struct Cluster {
    pub network: MemNetwork,
    pub root: tempfile::TempDir,
    pub logs: BTreeMap<NodeId, Log<Journal>>,
    pub members: Vec<NodeId>,
    pub snapshot_every: u64,
    /// `LogConfig::snapshot_every_bytes` of every replica (the default unless a test sets it).
    pub snapshot_every_bytes: u64,
}

impl Cluster {
    pub async fn start(n: u64, snapshot_every: u64) -> Cluster {
        let bytes =
            LogConfig::new(CLUSTER, NodeId(1), "unused", BTreeMap::new()).snapshot_every_bytes;
        Cluster::start_with_bytes(n, snapshot_every, bytes).await
    }

    /// Like `start`, and a snapshot is also taken after `snapshot_every_bytes` of applied values.
    pub async fn start_with_bytes(
        n: u64,
        snapshot_every: u64,
        snapshot_every_bytes: u64,
    ) -> Cluster {
        let mut cluster = Cluster {
            network: MemNetwork::new(),
            root: tempfile::tempdir().unwrap(),
            logs: BTreeMap::new(),
            members: (1..=n).map(NodeId).collect(),
            snapshot_every,
            snapshot_every_bytes,
        };
        for node in cluster.members.clone() {
            cluster.open(node, StartMode::Bootstrap).await;
        }
        cluster
    }

    pub fn dir(&self, node: NodeId) -> PathBuf {
        self.root.path().join(format!("node-{}", node.0))
    }

    pub fn config(&self, node: NodeId, start: StartMode) -> LogConfig {
        // Addresses are not used by the in-memory network, but the log wants to know the peers.
        let peers = self
            .members
            .iter()
            .map(|n| (*n, SocketAddr::from(([127, 0, 0, 1], 7000 + n.0 as u16))))
            .collect();
        let mut config = LogConfig::new(CLUSTER, node, self.dir(node), peers);
        config.start = start;
        config.tick = Duration::from_millis(5);
        config.snapshot_every_slots = self.snapshot_every;
        config.snapshot_every_bytes = self.snapshot_every_bytes;
        config.submit_timeout = Duration::from_secs(5);
        config.storage.segment_bytes = 1 << 20;
        config
    }

    pub async fn open(&mut self, node: NodeId, start: StartMode) {
        let config = self.config(node, start);
        let network = self.network.clone();
        let log = Log::open(
            config,
            Journal::default(),
            FileVfs,
            move |inbound, snapshots| Ok(Arc::new(network.join(node, inbound, snapshots))),
        )
        .await
        .expect("open log");
        self.logs.insert(node, log);
    }

    pub async fn stop(&mut self, node: NodeId) {
        if let Some(log) = self.logs.remove(&node) {
            log.shutdown().await;
        }
        self.network.leave(node);
    }

    pub async fn statuses(&self) -> BTreeMap<NodeId, Status> {
        let mut all = BTreeMap::new();
        for (node, log) in &self.logs {
            if let Some(status) = log.status().await {
                all.insert(*node, status);
            }
        }
        all
    }

    /// Waits until some replica is master with a valid lease; returns it.
    pub async fn master(&self) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (node, status) in self.statuses().await {
                if status.lease {
                    return node;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no master elected in time: {:#?}",
                self.statuses().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A member other than `node`.
    pub fn other_than(&self, node: NodeId) -> NodeId {
        self.members
            .iter()
            .copied()
            .find(|n| *n != node)
            .expect("a cluster of more than one")
    }

    /// Submits through whoever is master, retrying across elections.
    pub async fn submit(&self, data: Vec<u8>) -> (Slot, usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let master = self.master().await;
            match self.logs[&master].submit(data.clone()).await {
                Ok(committed) => return (committed.slot, committed.output),
                Err(error) => {
                    assert!(Instant::now() < deadline, "submit kept failing: {error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Waits until every running replica has applied through `slot`.
    pub async fn converged(&self, slot: Slot) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let statuses = self.statuses().await;
            if statuses.values().all(|s| s.applied_through >= slot.0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not catch up to {slot}: {statuses:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn journal(&self, node: NodeId) -> Journal {
        self.logs[&node].read_stale(|j| j.clone()).await.unwrap()
    }
}

pub fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

#[allow(unused)]
fn _assert_transport(t: &MemTransport) -> &dyn Transport {
    t
}
