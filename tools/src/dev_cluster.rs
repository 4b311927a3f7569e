//! `chubbyctl dev-cluster`: three `chubbyd` processes on loopback with dev certificates, for trying
//! the service out. Everything lives under one directory and is reused by the next run.

use paxos_core::NodeId;
use replicated_log::{tls, ClusterId};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: [u64; 3] = [1, 2, 3];

struct Ports {
    base: u16,
}

impl Ports {
    fn peer(&self, node: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + node as u16 - 1))
    }
    fn client(&self, node: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 100 + node as u16 - 1))
    }
    fn metrics(&self, node: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 200 + node as u16 - 1))
    }
}

/// The cluster id of `dir`, made on first use.
fn cluster_id(dir: &Path) -> Result<ClusterId, String> {
    let path = dir.join("cluster-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return u64::from_str_radix(text.trim(), 16)
            .map(ClusterId)
            .map_err(|_| format!("{} does not hold a hexadecimal cluster id", path.display()));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let id = ClusterId(nanos ^ u64::from(std::process::id()).rotate_left(32));
    std::fs::write(&path, format!("{id}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

pub fn run(dir: &Path, base_port: u16, json: bool) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cluster = cluster_id(dir)?;
    let certs = dir.join("certs");
    if !tls::ca_cert_path(&certs).exists() {
        let nodes: Vec<NodeId> = NODES.iter().copied().map(NodeId).collect();
        tls::init_dir(&certs, cluster, &nodes, &["admin"]).map_err(|e| e.to_string())?;
    }
    let daemon = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("chubbyd");
    if !daemon.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p tools --bins` (or run scripts/dev-cluster.sh)",
            daemon.display()
        ));
    }
    let ports = Ports { base: base_port };
    let members: Vec<String> = NODES
        .iter()
        .map(|n| format!("{n}={},{}", ports.peer(*n), ports.client(*n)))
        .collect();
    let mut children: Vec<(u64, Child)> = Vec::new();
    for node in NODES {
        match start(&daemon, dir, &certs, cluster, node, &members, &ports) {
            Ok(child) => children.push((node, child)),
            Err(error) => {
                stop_all(&mut children);
                return Err(error);
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc_flag(flag);

    let master = wait_for_master(&ports, &mut children, &stop);
    match master {
        Ok(master) => print_endpoints(dir, &certs, cluster, &ports, master, json),
        Err(error) => {
            stop_all(&mut children);
            return Err(error);
        }
    }
    let mut exited = std::collections::BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        for (node, child) in &mut children {
            if exited.contains(node) {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                exited.insert(*node);
                eprintln!(
                    "chubbyd {node} exited ({status}); see {}. Start it again with: \
                     target/release/chubbyd --config {}",
                    dir.join(format!("node-{node}.log")).display(),
                    dir.join(format!("node-{node}.toml")).display()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stopping the three replicas...");
    stop_all(&mut children);
    Ok(())
}

fn start(
    daemon: &Path,
    dir: &Path,
    certs: &Path,
    cluster: ClusterId,
    node: u64,
    members: &[String],
    ports: &Ports,
) -> Result<Child, String> {
    let log_path = dir.join(format!("node-{node}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    // The settings go into node-N.toml, so the replica can be started again by hand
    // (`chubbyd --config .dev-cluster/node-N.toml`, as `chubbyctl rebuild --start` does).
    let config_path = dir.join(format!("node-{node}.toml"));
    // Absolute paths, so the file works from any working directory.
    let absolute = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let config = NodeConfig {
        cluster: cluster.to_string(),
        node,
        data_dir: absolute(dir).join(format!("node-{node}")),
        certs: absolute(certs),
        member: members,
        metrics_listen: ports.metrics(node),
    };
    let config = toml::to_string(&config).map_err(|e| e.to_string())?;
    std::fs::write(&config_path, config)
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let mut command = Command::new(daemon);
    command
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", daemon.display()))
}

/// One replica's settings, as `chubbyd --config` reads them (keys are the flag names).
#[derive(serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct NodeConfig<'a> {
    cluster: String,
    node: u64,
    data_dir: std::path::PathBuf,
    certs: std::path::PathBuf,
    member: &'a [String],
    metrics_listen: SocketAddr,
}

/// Reads `GET path` from a replica's operator endpoint.
pub fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((code, body))
}

fn wait_for_master(
    ports: &Ports,
    children: &mut [(u64, Child)],
    stop: &AtomicBool,
) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        for (node, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "chubbyd {node} exited at start ({status}): see its log in the cluster directory"
                ));
            }
        }
        for node in NODES {
            if let Some((200, body)) = http_get(ports.metrics(node), "/status") {
                if body.contains("\"lease\":true") {
                    return Ok(node);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("no master elected within 60 s: see the node-N.log files in the cluster directory".into())
}

fn print_endpoints(
    dir: &Path,
    certs: &Path,
    cluster: ClusterId,
    ports: &Ports,
    master: u64,
    json: bool,
) {
    if json {
        let nodes: Vec<serde_json::Value> = NODES
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node": n, "peer": ports.peer(*n), "client": ports.client(*n),
                    "metrics": ports.metrics(*n),
                })
            })
            .collect();
        let out = serde_json::json!({
            "cluster": cluster.to_string(), "dir": dir, "certs": certs, "master": master,
            "nodes": nodes,
        });
        println!("{out}");
        return;
    }
    println!(
        "chubby dev cluster {cluster} is up; node {master} is master (Ctrl-C stops all three)"
    );
    for node in NODES {
        println!(
            "  node {node}: clients {}  peers {}  metrics http://{}/metrics  data {}",
            ports.client(node),
            ports.peer(node),
            ports.metrics(node),
            dir.join(format!("node-{node}")).display()
        );
    }
    let endpoints: Vec<String> = NODES.iter().map(|n| ports.client(*n).to_string()).collect();
    println!(
        "certificates: {} (client certificate: admin)",
        certs.display()
    );
    println!("try:");
    println!("  curl -s http://{}/status", ports.metrics(master));
    let metrics: Vec<String> = NODES
        .iter()
        .map(|n| ports.metrics(*n).to_string())
        .collect();
    println!(
        "  chubbyctl --cluster {cluster} --certs {} --endpoints {} ls /",
        certs.display(),
        endpoints.join(",")
    );
    println!("  chubbyctl status --metrics {}", metrics.join(","));
    println!(
        "  chubbyctl verify --data-dir {}   (on a stopped replica)",
        dir.join("node-1").display()
    );
}

fn stop_all(children: &mut Vec<(u64, Child)>) {
    for (_, child) in children.iter() {
        // SIGTERM lets each replica finish its queued writes; `kill` is everywhere this runs.
        // A replica that already exited (and was reaped) makes kill complain: nothing to say.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (_, child) in children.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    children.clear();
}

/// Sets `flag` on Ctrl-C (SIGINT) or SIGTERM.
fn ctrlc_flag(flag: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        });
        flag.store(true, Ordering::Relaxed);
    });
}
