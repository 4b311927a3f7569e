//! `chubbyctl dev-cluster`, the README's first command, run as the real binary: it makes
//! certificates and three replicas under one directory, reports the endpoints once a master holds
//! its lease, stops every replica on Ctrl-C (SIGINT), and a second run over the same directory
//! finds what the first one wrote.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHUBBYCTL: &str = env!("CARGO_BIN_EXE_chubbyctl");
/// How long the dev cluster may take to report a master.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A base port whose nine ports (peers at +0..3, clients at +100, metrics at +200) are free now.
fn free_base_port() -> u16 {
    let start = 21_000 + (std::process::id() % 2_000) as u16 * 3;
    (0..200)
        .map(|i| start.wrapping_add(i * 7) % 30_000 + 20_000)
        .find(|base| {
            (0..3u16).all(|n| {
                UdpSocket::bind(("127.0.0.1", base + n)).is_ok()
                    && UdpSocket::bind(("127.0.0.1", base + 100 + n)).is_ok()
                    && TcpListener::bind(("127.0.0.1", base + 200 + n)).is_ok()
            })
        })
        .expect("nine free ports")
}

/// A running `chubbyctl dev-cluster`, stopped with SIGINT when dropped (and killed if it will not).
struct DevCluster {
    child: Child,
    report: Value,
}

impl DevCluster {
    fn start(dir: &Path, base_port: u16) -> DevCluster {
        let mut child = Command::new(CHUBBYCTL)
            .args(["--json", "dev-cluster", "--dir"])
            .arg(dir)
            .args(["--base-port", &base_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chubbyctl starts");
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let line = match received.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the dev cluster reported nothing within {START_TIMEOUT:?}");
            }
        };
        let report: Value = serde_json::from_str(&line).expect("one JSON object");
        DevCluster { child, report }
    }

    fn ctl(&self, args: &[&str]) -> (i32, String) {
        let endpoints: Vec<String> = self.report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["client"].as_str().unwrap().to_string())
            .collect();
        let out = Command::new(CHUBBYCTL)
            .args(["--cluster", self.report["cluster"].as_str().unwrap()])
            .args(["--certs", self.report["certs"].as_str().unwrap()])
            .args(["--endpoints", &endpoints.join(",")])
            .args(["--client", "admin"])
            .args(args)
            .env_remove("CHUBBY_CLUSTER")
            .env_remove("CHUBBY_CERTS")
            .env_remove("CHUBBY_ENDPOINTS")
            .env_remove("CHUBBY_CLIENT")
            .output()
            .expect("chubbyctl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Ctrl-C, then the exit; returns whether it exited by itself within the time.
    fn interrupt(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.interrupt();
        }
    }
}

/// Whether the process whose pid a replica wrote into its directory lock still runs.
fn replica_running(dir: &Path, node: u64) -> bool {
    let lock = dir.join(format!("node-{node}")).join("LOCK");
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return false;
    };
    let pid = text.trim();
    !pid.is_empty() && Path::new("/proc").join(pid).exists()
}

#[test]
fn the_dev_cluster_starts_serves_stops_on_ctrl_c_and_keeps_its_data() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cluster");
    let base_port = free_base_port();

    let mut first = DevCluster::start(&dir, base_port);
    assert_eq!(first.report["nodes"].as_array().unwrap().len(), 3);
    assert!(
        first.report["master"].as_u64().is_some(),
        "{}",
        first.report
    );
    assert!(dir.join("certs").join("ca.pem").exists());
    let (code, _) = first.ctl(&["create", "/kept", "across-runs"]);
    assert_eq!(code, 0, "create on the dev cluster");
    assert!(first.interrupt(), "Ctrl-C stops the dev cluster");
    let deadline = Instant::now() + Duration::from_secs(10);
    while [1, 2, 3].iter().any(|n| replica_running(&dir, *n)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for node in [1, 2, 3] {
        assert!(
            !replica_running(&dir, node),
            "replica {node} outlived Ctrl-C"
        );
    }

    let mut second = DevCluster::start(&dir, base_port);
    assert_eq!(
        second.report["cluster"], first.report["cluster"],
        "the second run reuses the cluster"
    );
    let (code, out) = second.ctl(&["get", "/kept"]);
    assert_eq!((code, out.as_str()), (0, "across-runs\n"));
    assert!(second.interrupt(), "Ctrl-C stops the dev cluster again");
}
