//! `chubbyctl rebuild` against three real `chubbyd` processes on loopback (PML 5.1): a replica whose
//! log has a flipped byte, and one whose data directory is gone, are stopped, rebuilt with
//! `--start`, and vote again; every acknowledged write is still readable, the cluster commits with
//! the rebuilt replica's vote, and the moved-aside files are still there, byte for byte. Rebuild
//! refuses while the replica runs.

use paxos_core::NodeId;
use replicated_log::{tls, ClusterId};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tools::dev_cluster::http_get;

const CHUBBYD: &str = env!("CARGO_BIN_EXE_chubbyd");
const CHUBBYCTL: &str = env!("CARGO_BIN_EXE_chubbyctl");
const NODES: [u64; 3] = [1, 2, 3];

struct Addresses {
    peer: SocketAddr,
    client: SocketAddr,
    metrics: SocketAddr,
}

/// Three replicas in a temporary directory; killed when dropped.
struct TestCluster {
    dir: tempfile::TempDir,
    cluster: ClusterId,
    addresses: BTreeMap<u64, Addresses>,
    children: BTreeMap<u64, Child>,
    /// Replicas `chubbyctl rebuild --start` started (not our children): node to pid.
    adopted: BTreeMap<u64, u32>,
}

fn free_udp() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

fn free_tcp() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

impl TestCluster {
    fn start(cluster: u64) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterId(cluster);
        let nodes: Vec<NodeId> = NODES.iter().copied().map(NodeId).collect();
        tls::init_dir(&dir.path().join("certs"), cluster, &nodes, &["admin"]).unwrap();
        let addresses = NODES
            .iter()
            .map(|n| {
                let a = Addresses {
                    peer: free_udp(),
                    client: free_udp(),
                    metrics: free_tcp(),
                };
                (*n, a)
            })
            .collect();
        let mut this = TestCluster {
            dir,
            cluster,
            addresses,
            children: BTreeMap::new(),
            adopted: BTreeMap::new(),
        };
        for node in NODES {
            this.spawn(node);
        }
        this.master();
        this
    }

    fn data_dir(&self, node: u64) -> PathBuf {
        self.dir.path().join(format!("node-{node}"))
    }

    /// The chubbyd command line of `node`.
    fn command(&self, node: u64) -> Vec<String> {
        let mut args = vec![
            CHUBBYD.to_string(),
            "--cluster".into(),
            self.cluster.to_string(),
            "--node".into(),
            node.to_string(),
            "--data-dir".into(),
            self.data_dir(node).display().to_string(),
            "--certs".into(),
            self.dir.path().join("certs").display().to_string(),
            "--metrics-listen".into(),
            self.addresses[&node].metrics.to_string(),
        ];
        for (n, a) in &self.addresses {
            args.push("--member".into());
            args.push(format!("{n}={},{}", a.peer, a.client));
        }
        args
    }

    fn spawn(&mut self, node: u64) {
        let log = std::fs::File::create(self.dir.path().join(format!("node-{node}.log"))).unwrap();
        let command = self.command(node);
        let child = Command::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.insert(node, child);
    }

    fn metrics(&self) -> String {
        let all: Vec<String> = self
            .addresses
            .values()
            .map(|a| a.metrics.to_string())
            .collect();
        all.join(",")
    }

    fn status(&self, node: u64) -> Option<Value> {
        let (code, body) = http_get(self.addresses[&node].metrics, "/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Waits for a master under a valid lease; returns it.
    fn master(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for node in NODES {
                if self.status(node).is_some_and(|s| s["lease"] == true) {
                    return node;
                }
            }
            assert!(Instant::now() < deadline, "no master within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops a replica with `signal` (TERM or KILL) and waits for it to exit.
    fn stop(&mut self, node: u64, signal: &str) {
        let mut child = self.children.remove(&node).expect("a running replica");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap();
    }

    /// Runs chubbyctl with this cluster's connection settings.
    fn ctl(&self, args: &[&str]) -> Output {
        let endpoints: Vec<String> = self
            .addresses
            .values()
            .map(|a| a.client.to_string())
            .collect();
        Command::new(CHUBBYCTL)
            .arg("--cluster")
            .arg(self.cluster.to_string())
            .arg("--certs")
            .arg(self.dir.path().join("certs"))
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .args(args)
            .output()
            .unwrap()
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "chubbyctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn write_keys(&self, prefix: &str, count: usize) -> Vec<(String, String)> {
        (0..count)
            .map(|i| {
                let (path, value) = (format!("/{prefix}-{i}"), format!("value {i} of {prefix}"));
                self.ctl_ok(&["create", &path, &value]);
                (path, value)
            })
            .collect()
    }

    fn assert_readable(&self, written: &[(String, String)]) {
        for (path, value) in written {
            let got = self.ctl_ok(&["get", path]);
            assert_eq!(got.trim_end(), value, "{path}");
        }
    }

    /// `chubbyctl rebuild --json ... --start -- <node's chubbyd command>`.
    fn rebuild(&self, node: u64) -> (Output, Value) {
        let data_dir = self.data_dir(node).display().to_string();
        let node_text = node.to_string();
        let mut args = vec![
            "--json",
            "rebuild",
            "--data-dir",
            &data_dir,
            "--node",
            &node_text,
        ];
        let metrics = self.metrics();
        args.extend(["--metrics", &metrics, "--timeout", "40", "--start", "--"]);
        let command = self.command(node);
        args.extend(command.iter().map(String::as_str));
        let out = self.ctl(&args);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out, json)
    }

    /// The pid a started rebuild left running, adopted so it is stopped with the cluster.
    fn adopt(&mut self, node: u64, report: &Value) {
        let pid = report["pid"]
            .as_u64()
            .expect("rebuild reports the pid it started");
        self.adopted.insert(node, pid as u32);
    }

    /// After a rebuild: the cluster must still commit with one original replica gone, which needs
    /// the rebuilt replica's vote.
    fn assert_rebuilt_votes(&mut self, rebuilt: u64) {
        let other = NODES
            .iter()
            .copied()
            .find(|n| *n != rebuilt && self.children.contains_key(n))
            .expect("another running replica");
        self.stop(other, "KILL");
        self.ctl_ok(&[
            "create",
            "/after-rebuild",
            "committed with the rebuilt vote",
        ]);
        let got = self.ctl_ok(&["get", "/after-rebuild"]);
        assert_eq!(got.trim_end(), "committed with the rebuilt vote");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for pid in self.adopted.values() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        for child in self.children.values_mut() {
            let _ = child.wait();
        }
        // Adopted replicas are not our children: wait for them to be gone, then insist.
        let deadline = Instant::now() + Duration::from_secs(10);
        for pid in self.adopted.values() {
            let alive = || {
                Command::new("kill")
                    .arg("-0")
                    .arg(pid.to_string())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Every file under `dir` (one level), with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

fn assert_voting_again(out: &Output, report: &Value, node: u64) {
    assert!(
        out.status.success(),
        "rebuild failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["voting"], true, "{report}");
    assert_eq!(report["node"], node, "{report}");
    assert!(report["incarnation"].as_u64().unwrap() >= 2, "{report}");
}

#[test]
fn a_replica_with_a_flipped_byte_is_moved_aside_rebuilt_and_votes_again() {
    let mut cluster = TestCluster::start(0x5eed_0001);
    let written = cluster.write_keys("before", 12);
    let master = cluster.master();
    let node = NODES.into_iter().find(|n| *n != master).unwrap();

    // Refused while it runs: exit 1, and the directory is untouched.
    let before = files(&cluster.data_dir(node));
    let (out, report) = cluster.rebuild(node);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(report["kind"], "refused", "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("is running"),
        "{report}"
    );
    assert_eq!(
        files(&cluster.data_dir(node)).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );

    cluster.stop(node, "TERM");
    let segment = files(&cluster.data_dir(node))
        .into_keys()
        .find(|name| name.starts_with("wal-") && name.ends_with(".log"))
        .expect("a WAL segment");
    let path = cluster.data_dir(node).join(&segment);
    let mut bytes = std::fs::read(&path).unwrap();
    // Inside the first record's payload (frames start at 512; 8 bytes of length and crc): a
    // synced batch with later batches after it, which recovery must report, not cut.
    bytes[512 + 8 + 4] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let verify = cluster.ctl(&[
        "verify",
        "--data-dir",
        &cluster.data_dir(node).display().to_string(),
    ]);
    assert_eq!(verify.status.code(), Some(1), "verify reports the damage");

    let (out, report) = cluster.rebuild(node);
    assert_voting_again(&out, &report, node);
    cluster.adopt(node, &report);
    assert_eq!(report["verdict"], "damaged", "{report}");
    assert!(
        report["problems"][0].as_str().unwrap().contains(&segment),
        "{report}"
    );
    assert!(
        report["incarnation"].as_u64() > report["incarnation_before"].as_u64(),
        "{report}"
    );
    let moved = PathBuf::from(report["moved_to"].as_str().unwrap());
    assert_eq!(moved, cluster.data_dir(node).join("damaged-0"));
    let kept = files(&moved);
    assert_eq!(
        kept.get(&segment),
        Some(&bytes),
        "the damaged segment is kept, byte for byte"
    );
    assert!(kept.contains_key("identity"), "{:?}", kept.keys());

    cluster.assert_readable(&written);
    cluster.assert_rebuilt_votes(node);
    cluster.assert_readable(&written);
}

#[test]
fn a_replica_whose_data_directory_is_gone_is_rebuilt_and_votes_again() {
    let mut cluster = TestCluster::start(0x5eed_0002);
    let written = cluster.write_keys("lost", 8);
    let node = cluster.master();
    cluster.stop(node, "KILL");
    std::fs::remove_dir_all(cluster.data_dir(node)).unwrap();

    let (out, report) = cluster.rebuild(node);
    assert_voting_again(&out, &report, node);
    cluster.adopt(node, &report);
    assert_eq!(report["verdict"], "missing", "{report}");
    assert_eq!(report["moved_to"], Value::Null, "{report}");

    cluster.assert_readable(&written);
    cluster.assert_rebuilt_votes(node);
    cluster.assert_readable(&written);
}
