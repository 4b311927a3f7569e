//! A cluster of replicas in one process, over QUIC on loopback, with real data directories and
//! freshly generated certificates in a temporary directory: the fixture of this crate's and the
//! client crate's tests (feature `testing`).
//!
//! The log runs with short timings ([`fast_settings`]: 1 s leases, elections after about half a
//! second of silence) so a fail-over takes about a second.

use crate::server::{DatabaseMachine, Server, ServerConfig};
use crate::state::Config;
use paxos_core::{NodeId, Settings};
use replicated_log::{tls, ClusterId, LogConfig, StartMode};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The cluster id of every test cluster.
pub const TEST_CLUSTER: ClusterId = ClusterId(0x00c4_bb1e);
/// The clients a test cluster has certificates for (`client-<name>.pem` in [`TestCluster::certs_dir`]).
pub const TEST_CLIENTS: &[&str] = &["alice", "bob", "carol", "admin"];
/// How long the fixture waits for anything before it fails the test.
pub const FIXTURE_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct TestOptions {
    pub replicas: u64,
    pub allow_clients_without_certificate: bool,
    pub database: Config,
}

impl Default for TestOptions {
    fn default() -> TestOptions {
        TestOptions {
            replicas: 3,
            allow_clients_without_certificate: false,
            database: Config::default(),
        }
    }
}

/// Engine timing for tests, with the log's 10 ms tick: heartbeats every 30 ms, a 1 s lease,
/// elections after 0.5 to 0.8 s of silence.
pub fn fast_settings() -> Settings {
    Settings {
        heartbeat_interval_ticks: 3,
        election_timeout_ticks: 50,
        election_jitter_ticks: 30,
        lease_ticks: 100,
        retry_interval_ticks: 10,
        ..Settings::default()
    }
}

#[derive(Debug)]
pub struct TestCluster {
    root: tempfile::TempDir,
    options: TestOptions,
    peers: BTreeMap<NodeId, SocketAddr>,
    clients: BTreeMap<NodeId, SocketAddr>,
    servers: BTreeMap<NodeId, Server>,
}

impl TestCluster {
    /// Starts the replicas and waits for a master that has announced its tenure.
    pub async fn start(options: TestOptions) -> TestCluster {
        let root = tempfile::tempdir().expect("temporary directory");
        let nodes: Vec<NodeId> = (1..=options.replicas).map(NodeId).collect();
        tls::init_dir(
            &root.path().join("certs"),
            TEST_CLUSTER,
            &nodes,
            TEST_CLIENTS,
        )
        .expect("test certificates");
        let addresses = free_addresses(nodes.len() * 2);
        let (peer_addresses, client_addresses) = addresses.split_at(nodes.len());
        let mut cluster = TestCluster {
            root,
            options,
            peers: nodes.iter().copied().zip(peer_addresses.to_vec()).collect(),
            clients: nodes
                .iter()
                .copied()
                .zip(client_addresses.to_vec())
                .collect(),
            servers: BTreeMap::new(),
        };
        for node in nodes {
            cluster.open(node).await;
        }
        cluster.master().await;
        cluster
    }

    async fn open(&mut self, node: NodeId) {
        let material = tls::load_node_material(&self.certs_dir(), TEST_CLUSTER, node)
            .expect("node certificate");
        let dir = self.root.path().join(format!("node-{}", node.0));
        let mut log = LogConfig::new(TEST_CLUSTER, node, dir, self.peers.clone());
        log.start = StartMode::Bootstrap;
        log.settings = fast_settings();
        log.submit_timeout = Duration::from_secs(5);
        let mut config = ServerConfig::new(
            log,
            material,
            self.peers[&node],
            self.clients[&node],
            self.clients.clone(),
        );
        config.database = self.options.database.clone();
        config.allow_clients_without_certificate = self.options.allow_clients_without_certificate;
        let server = Server::start(config).await.expect("server starts");
        self.servers.insert(node, server);
    }

    /// The directory holding `ca.pem` and the `client-<name>` certificates of [`TEST_CLIENTS`].
    pub fn certs_dir(&self) -> PathBuf {
        self.root.path().join("certs")
    }

    pub fn cluster_id(&self) -> u64 {
        TEST_CLUSTER.0
    }

    /// Every replica's client address, running or not, in node order.
    pub fn client_addresses(&self) -> Vec<SocketAddr> {
        self.clients.values().copied().collect()
    }

    pub fn client_address(&self, node: NodeId) -> SocketAddr {
        self.clients[&node]
    }

    /// The running replicas.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.servers.keys().copied().collect()
    }

    pub fn server(&self, node: NodeId) -> &Server {
        &self.servers[&node]
    }

    /// The master: a running replica that holds its lease and has announced its tenure. Waits.
    pub async fn master(&self) -> NodeId {
        wait_for("a master that announced its tenure", || async {
            for (node, server) in &self.servers {
                let status = server.log().status().await;
                if status.is_some_and(|s| s.lease) && !server.tenure_starting() {
                    return Some(*node);
                }
            }
            None
        })
        .await
    }

    /// A running replica other than the master.
    pub async fn follower(&self) -> NodeId {
        let master = self.master().await;
        *self
            .servers
            .keys()
            .find(|n| **n != master)
            .expect("a follower")
    }

    /// Shuts a replica down (its log and its client endpoint).
    pub async fn stop(&mut self, node: NodeId) {
        let server = self.servers.remove(&node).expect("a running replica");
        server.shutdown().await;
    }

    /// Runs `read` on every running replica's database, as applied there.
    pub async fn read_each<R, F>(&self, read: F) -> BTreeMap<NodeId, R>
    where
        R: Send + 'static,
        F: Fn(&crate::Database) -> R + Clone + Send + 'static,
    {
        let mut answers = BTreeMap::new();
        for (node, server) in &self.servers {
            let read = read.clone();
            let answer = server
                .log()
                .read_stale(move |m: &DatabaseMachine| read(m.database()))
                .await
                .expect("a running replica reads");
            answers.insert(*node, answer);
        }
        answers
    }

    /// Waits until every running replica has applied the same last slot and answers their
    /// digests then.
    pub async fn converged_digests(&self) -> BTreeMap<NodeId, u64> {
        wait_for("replicas to apply the same slot", || async {
            let seen = self
                .read_each(|db: &crate::Database| (db.applied(), db.digest()))
                .await;
            let mut slots = seen.values().map(|(slot, _)| *slot);
            let first = slots.next()?;
            slots
                .all(|slot| slot == first)
                .then(|| seen.iter().map(|(n, (_, d))| (*n, *d)).collect())
        })
        .await
    }

    pub async fn shutdown(self) {
        for (_, server) in self.servers {
            server.shutdown().await;
        }
    }
}

/// Polls `probe` every 20 ms until it answers, or panics after [`FIXTURE_WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + FIXTURE_WAIT;
    loop {
        if let Some(answer) = probe().await {
            return answer;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Loopback addresses free right now (bound, then released; good enough for tests).
fn free_addresses(count: usize) -> Vec<SocketAddr> {
    let sockets: Vec<UdpSocket> = (0..count)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("bound"))
        .collect()
}
