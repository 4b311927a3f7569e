//! Real `chubbyd` processes on loopback, each behind a fault proxy, and what a nemesis does to
//! them: kill -9 and restart, SIGSTOP and SIGCONT, damage to a stopped replica's files, rebuild
//! with the real `chubbyctl`, and membership changes through the admin API.

use super::proxy::FaultNet;
use chubby_client::{Admin, ClientConfig};
use paxos_core::NodeId;
use replicated_log::{tls, ClusterId};
use rustix::process::{kill_process, test_kill_process, Pid, Signal};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tools::dev_cluster::http_get;

/// Where the harness finds `chubbyd` and `chubbyctl`.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub chubbyd: PathBuf,
    pub chubbyctl: PathBuf,
}

impl Binaries {
    /// `FAULT_BIN_DIR` if set, else the directory of the running executable (or its parent when
    /// that is cargo's `deps`): where `cargo build` and `cargo test` put the workspace binaries.
    pub fn locate() -> Result<Binaries, String> {
        let dir = match std::env::var_os("FAULT_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
                if dir.ends_with("deps") {
                    dir.pop();
                }
                dir
            }
        };
        let binaries = Binaries {
            chubbyd: dir.join("chubbyd"),
            chubbyctl: dir.join("chubbyctl"),
        };
        for path in [&binaries.chubbyd, &binaries.chubbyctl] {
            if !path.exists() {
                return Err(format!(
                    "{} not found: build the daemon and the CLI first (`cargo build -p tools --bins`, \
                     with `--release` for a release harness) or point FAULT_BIN_DIR at them",
                    path.display()
                ));
            }
        }
        Ok(binaries)
    }
}

/// One replica's addresses and files.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    /// Where the replica's QUIC endpoint binds (it dials peers from it too).
    pub real_peer: SocketAddr,
    /// The proxy in front of it: the address every other replica is told.
    pub proxy_peer: SocketAddr,
    /// Clients connect here directly.
    pub client: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    /// Test knob: this replica's clock runs this many parts per million fast (or slow).
    pub clock_rate_ppm: i64,
}

/// A running replica: our child, or a process `chubbyctl rebuild --start` left running.
#[derive(Debug)]
struct Proc {
    pid: Pid,
    child: Option<Child>,
    paused: bool,
}

/// What the cluster is started with.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Voters of the initial cluster: 3 or 5.
    pub voters: u64,
    /// Nodes with certificates beyond the voters, for membership changes (added as learners).
    pub spares: u64,
    /// `CHUBBYD_PLANTED_BUGS` for every replica (empty: a correct build).
    pub planted_bugs: String,
    /// Engine tick of every replica, in milliseconds.
    pub tick_ms: u64,
    /// The clock drift bound every replica is started with (`--clock-drift-ppm`).
    pub drift_ppm: u64,
    /// Snapshot (and truncate the log) every this many applied slots, so that short runs have
    /// snapshots to catch up from and to damage.
    pub snapshot_every: u64,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            voters: 3,
            spares: 1,
            planted_bugs: String::new(),
            tick_ms: 10,
            drift_ppm: 10_000,
            snapshot_every: 2_000,
        }
    }
}

/// The replicas, their proxies and the tools to hurt them.
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub cluster: ClusterId,
    pub certs: PathBuf,
    pub bins: Binaries,
    pub net: Arc<FaultNet>,
    pub options: ClusterOptions,
    pub nodes: BTreeMap<u64, NodeSpec>,
    /// The nodes of the initial configuration (their `--member` lists).
    pub initial: Vec<u64>,
    /// The members now (the harness changes them with the membership nemesis).
    pub members: Vec<u64>,
    procs: BTreeMap<u64, Proc>,
    /// Nodes started with `--join` (added at run time).
    joined: Vec<u64>,
}

/// Ports for the replicas come from below the kernel's ephemeral range (32768 and up on Linux),
/// so that a socket the harness or a client binds to port 0 (a proxy's upstream socket, say)
/// can never take the port of a replica that is down for a restart.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port free for both UDP and TCP, so one helper serves every address a replica binds.
fn free_port() -> std::io::Result<SocketAddr> {
    use std::hash::{BuildHasher, RandomState};
    let mut rng = paxos_core::rng::Rng::new(RandomState::new().hash_one(std::process::id()));
    for _ in 0..1_000 {
        let port = PORTS.start + rng.below(u64::from(PORTS.end - PORTS.start)) as u16;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        if UdpSocket::bind(address).is_ok() && TcpListener::bind(address).is_ok() {
            return Ok(address);
        }
    }
    Err(std::io::Error::other(
        "no free port below the ephemeral range",
    ))
}

impl Cluster {
    /// Makes certificates and proxies and starts the voters. Must run inside a tokio runtime (the
    /// proxies are tasks).
    pub async fn start(
        dir: &Path,
        seed: u64,
        options: ClusterOptions,
        net: Arc<FaultNet>,
    ) -> Result<Cluster, String> {
        let bins = Binaries::locate()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cluster = ClusterId(0xfa17_0000_0000_0000 | (seed & 0xffff_ffff));
        let certs = dir.join("certs");
        let all: Vec<u64> = (1..=options.voters + options.spares).collect();
        let ids: Vec<NodeId> = all.iter().copied().map(NodeId).collect();
        tls::init_dir(&certs, cluster, &ids, &["fault", "admin"]).map_err(|e| e.to_string())?;
        let mut nodes = BTreeMap::new();
        for &id in &all {
            let real_peer = free_port().map_err(|e| e.to_string())?;
            net.register(id, real_peer);
            let proxy_peer = net
                .start_proxy(id, real_peer)
                .await
                .map_err(|e| format!("proxy for node {id}: {e}"))?;
            let spec = NodeSpec {
                id,
                real_peer,
                proxy_peer,
                client: free_port().map_err(|e| e.to_string())?,
                metrics: free_port().map_err(|e| e.to_string())?,
                data_dir: dir.join(format!("node-{id}")),
                clock_rate_ppm: 0,
            };
            nodes.insert(id, spec);
        }
        let mut this = Cluster {
            dir: dir.to_path_buf(),
            cluster,
            certs,
            bins,
            net,
            initial: (1..=options.voters).collect(),
            members: (1..=options.voters).collect(),
            options,
            nodes,
            procs: BTreeMap::new(),
            joined: Vec::new(),
        };
        for id in this.initial.clone() {
            this.spawn(id)?;
        }
        Ok(this)
    }

    /// The `chubbyd` command line of `node` (without the program).
    pub fn command(&self, node: u64) -> Vec<String> {
        let spec = &self.nodes[&node];
        let mut args = vec![
            "--cluster".to_string(),
            self.cluster.to_string(),
            "--node".into(),
            node.to_string(),
            "--data-dir".into(),
            spec.data_dir.display().to_string(),
            "--certs".into(),
            self.certs.display().to_string(),
            "--metrics-listen".into(),
            spec.metrics.to_string(),
            "--tick-ms".into(),
            self.options.tick_ms.to_string(),
            "--clock-drift-ppm".into(),
            self.options.drift_ppm.to_string(),
            "--snapshot-every".into(),
            self.options.snapshot_every.to_string(),
        ];
        if spec.clock_rate_ppm != 0 {
            args.push(format!("--test-clock-rate-ppm={}", spec.clock_rate_ppm));
        }
        // An initial member names the initial members (its bootstrap set); a node added later
        // names the members at the time it joins, as an operator would.
        let mut members: Vec<u64> = if self.joined.contains(&node) {
            self.members.clone()
        } else {
            self.initial.clone()
        };
        if !members.contains(&node) {
            members.push(node);
        }
        // Every replica is reached through its proxy, so the harness can cut, delay and drop what
        // flows between them; each binds its real address (`--listen-peer`) and advertises the
        // proxy's.
        for member in members {
            let other = &self.nodes[&member];
            args.push("--member".into());
            args.push(format!("{member}={},{}", other.proxy_peer, other.client));
        }
        args.push("--listen-peer".into());
        args.push(spec.real_peer.to_string());
        if self.joined.contains(&node) {
            args.push("--join".into());
        }
        args
    }

    fn log_file(&self, node: u64) -> Result<std::fs::File, String> {
        let path = self.dir.join(format!("node-{node}.log"));
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Starts `node`'s process (it must not be running).
    pub fn spawn(&mut self, node: u64) -> Result<(), String> {
        if self.is_running(node) {
            return Err(format!("node {node} is already running"));
        }
        let log = self.log_file(node)?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bins.chubbyd)
            .args(self.command(node))
            .env("CHUBBYD_PLANTED_BUGS", &self.options.planted_bugs)
            .env(
                "RUST_LOG",
                std::env::var("FAULT_RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bins.chubbyd.display()))?;
        let pid = Pid::from_child(&child);
        self.procs.insert(
            node,
            Proc {
                pid,
                child: Some(child),
                paused: false,
            },
        );
        Ok(())
    }

    pub fn is_running(&mut self, node: u64) -> bool {
        let Some(proc) = self.procs.get_mut(&node) else {
            return false;
        };
        let alive = match &mut proc.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => test_kill_process(proc.pid).is_ok(),
        };
        if !alive {
            self.procs.remove(&node);
        }
        alive
    }

    pub fn running(&mut self) -> Vec<u64> {
        let nodes: Vec<u64> = self.procs.keys().copied().collect();
        nodes.into_iter().filter(|n| self.is_running(*n)).collect()
    }

    pub fn is_paused(&self, node: u64) -> bool {
        self.procs.get(&node).is_some_and(|p| p.paused)
    }

    /// Sends `signal`; for KILL and TERM waits until the process is gone.
    fn signal(&mut self, node: u64, signal: Signal) -> Result<(), String> {
        let Some(proc) = self.procs.get_mut(&node) else {
            return Err(format!("node {node} is not running"));
        };
        if matches!(signal, Signal::KILL | Signal::TERM) && proc.paused {
            let _ = kill_process(proc.pid, Signal::CONT);
            proc.paused = false;
        }
        kill_process(proc.pid, signal).map_err(|e| format!("signal to node {node}: {e}"))?;
        match signal {
            Signal::STOP => proc.paused = true,
            Signal::CONT => proc.paused = false,
            _ => {}
        }
        if matches!(signal, Signal::KILL | Signal::TERM) {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let gone = match &mut proc.child {
                    Some(child) => !matches!(child.try_wait(), Ok(None)),
                    None => test_kill_process(proc.pid).is_err(),
                };
                if gone {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = kill_process(proc.pid, Signal::KILL);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.procs.remove(&node);
        }
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self, node: u64) -> Result<(), String> {
        self.signal(node, Signal::KILL)
    }

    /// A clean stop (SIGTERM: it finishes queued writes).
    pub fn stop(&mut self, node: u64) -> Result<(), String> {
        self.signal(node, Signal::TERM)
    }

    pub fn pause(&mut self, node: u64) -> Result<(), String> {
        self.signal(node, Signal::STOP)
    }

    pub fn resume(&mut self, node: u64) -> Result<(), String> {
        self.signal(node, Signal::CONT)
    }

    /// Resumes every paused replica.
    pub fn resume_all(&mut self) {
        let paused: Vec<u64> = self
            .procs
            .iter()
            .filter(|(_, p)| p.paused)
            .map(|(n, _)| *n)
            .collect();
        for node in paused {
            let _ = self.resume(node);
        }
    }

    /// Stops every replica (SIGKILL: the harness is done with them).
    pub fn kill_all(&mut self) {
        let nodes: Vec<u64> = self.procs.keys().copied().collect();
        for node in nodes {
            let _ = self.kill(node);
        }
    }

    /// `node`'s `/status` (JSON), if it answers.
    pub fn status(&self, node: u64) -> Option<Value> {
        let (code, body) = http_get(self.nodes[&node].metrics, "/status")?;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The node every answering replica names as master, if they agree and it says so itself.
    pub fn master(&self) -> Option<u64> {
        let statuses: Vec<(u64, Value)> = self
            .procs
            .iter()
            .filter(|(_, p)| !p.paused)
            .filter_map(|(n, _)| self.status(*n).map(|s| (*n, s)))
            .collect();
        statuses.iter().find_map(|(node, status)| {
            (status["role"] == "Master" && status["lease"] == true).then_some(*node)
        })
    }

    /// Waits until a master with a lease answers and every running replica that is not paused
    /// and not rebuilding has applied through the master's chosen slot at the time of asking.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(master) = self.master() {
                let target = self
                    .status(master)
                    .and_then(|s| s["chosen_through"].as_u64())
                    .unwrap_or(0);
                let running = self.running();
                let lagging: Vec<u64> = running
                    .into_iter()
                    .filter(|n| !self.is_paused(*n))
                    .filter(|n| {
                        !self.status(*n).is_some_and(|s| {
                            s["applied_through"].as_u64().unwrap_or(0) >= target
                                && s["rebuilding"] == false
                        })
                    })
                    .collect();
                if lagging.is_empty() {
                    return Ok(master);
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "replicas {lagging:?} did not catch up with master {master} (slot {target})"
                    ));
                }
            } else if Instant::now() > deadline {
                return Err(format!(
                    "no master with a lease within {timeout:?} (running: {:?})",
                    self.running()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn client_addresses(&self) -> Vec<SocketAddr> {
        self.nodes.values().map(|n| n.client).collect()
    }

    /// A client configuration with the `fault` client certificate, reaching every replica.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        ClientConfig::from_cert_dir(
            self.client_addresses(),
            self.cluster.0,
            &self.certs,
            Some("fault"),
        )
        .map_err(|e| e.to_string())
    }

    pub fn admin(&self) -> Result<Admin, String> {
        let config = ClientConfig::from_cert_dir(
            self.client_addresses(),
            self.cluster.0,
            &self.certs,
            Some("admin"),
        )
        .map_err(|e| e.to_string())?;
        Admin::new(config).map_err(|e| e.to_string())
    }

    /// Marks `node` as one that starts with `--join` (after `members add`).
    pub fn set_joining(&mut self, node: u64, joining: bool) {
        self.joined.retain(|n| *n != node);
        if joining {
            self.joined.push(node);
        }
    }

    /// `chubbyctl --json rebuild ... --start -- <node's command>`: returns the JSON report.
    pub fn rebuild(&mut self, node: u64, timeout: Duration) -> Result<Value, String> {
        if self.is_running(node) {
            return Err(format!("node {node} must be stopped before a rebuild"));
        }
        let metrics: Vec<String> = self
            .nodes
            .values()
            .filter(|n| self.members.contains(&n.id) || n.id == node)
            .map(|n| n.metrics.to_string())
            .collect();
        let spec = &self.nodes[&node];
        let log = self.dir.join(format!("node-{node}.log"));
        let output = Command::new(&self.bins.chubbyctl)
            .args(["--cluster", &self.cluster.to_string()])
            .arg("--certs")
            .arg(&self.certs)
            .arg("--endpoints")
            .arg(
                self.client_addresses()
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .args(["--json", "rebuild", "--node", &node.to_string()])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--metrics", &metrics.join(",")])
            .args(["--timeout", &timeout.as_secs().to_string()])
            .arg("--log")
            .arg(&log)
            .arg("--start")
            .arg("--")
            .arg(&self.bins.chubbyd)
            .args(self.command(node))
            .env("CHUBBYD_PLANTED_BUGS", &self.options.planted_bugs)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run chubbyctl: {e}"))?;
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if let Some(pid) = report["pid"].as_u64() {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                self.procs.insert(
                    node,
                    Proc {
                        pid,
                        child: None,
                        paused: false,
                    },
                );
            }
        }
        if !output.status.success() {
            return Err(format!(
                "chubbyctl rebuild of node {node} failed ({}): {} {}",
                output.status,
                report,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(report)
    }

    /// The files of `node`'s data directory whose names start with `prefix`, largest first.
    pub fn files(&self, node: u64, prefix: &str) -> Vec<PathBuf> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.nodes[&node].data_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter_map(|e| Some((e.metadata().ok()?.len(), e.path())))
            .collect();
        files.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        files.into_iter().map(|(_, p)| p).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.resume_all();
        self.kill_all();
        self.net.shutdown();
    }
}
