//! The client side of `chubbyctl`: `get`, `set`, `create`, `rm`, `ls`, `stat`, `lock`, `status`.

use chubby_client::{Client, ClientConfig, Create, LockMode, NodeKind, NodeStat};
use clap::{Args, Subcommand};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// How to reach the cluster. Also read from CHUBBY_CLUSTER, CHUBBY_CERTS, CHUBBY_ENDPOINTS and
/// CHUBBY_CLIENT.
#[derive(Args, Debug)]
pub struct Connection {
    /// Cluster id, in hex.
    #[arg(long, env = "CHUBBY_CLUSTER", global = true)]
    pub cluster: Option<String>,
    /// Certificate directory (ca.pem, client-NAME.pem/.key).
    #[arg(long, env = "CHUBBY_CERTS", global = true)]
    pub certs: Option<PathBuf>,
    /// Client addresses of the replicas, comma separated.
    #[arg(long, env = "CHUBBY_ENDPOINTS", value_delimiter = ',', global = true)]
    pub endpoints: Vec<SocketAddr>,
    /// Which client certificate to present.
    #[arg(long, env = "CHUBBY_CLIENT", default_value = "admin", global = true)]
    pub client: String,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Print a file's contents (linearizable; --stale reads any replica's copy).
    Get {
        path: String,
        #[arg(long)]
        stale: bool,
    },
    /// Replace a file's contents.
    Set { path: String, value: String },
    /// Create a file (or a directory with --dir).
    Create {
        path: String,
        #[arg(default_value = "")]
        value: String,
        /// Deleted when this command's session ends (useful with `lock`-style scripts).
        #[arg(long)]
        ephemeral: bool,
        #[arg(long)]
        dir: bool,
    },
    /// Delete a node.
    Rm { path: String },
    /// List a directory's children.
    Ls { path: String },
    /// Show a node's generations, checksum and lock state.
    Stat { path: String },
    /// Hold a lock while CMD runs; CMD gets the sequencer in CHUBBY_SEQUENCER.
    Lock {
        path: String,
        /// Shared instead of exclusive.
        #[arg(long)]
        shared: bool,
        /// Fail at once instead of waiting in the queue.
        #[arg(long = "try")]
        try_only: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a MultiOp (guard / top / fop) from a JSON file, or stdin with `-`; prints which branch
    /// ran and each guard's and op's result. Example file:
    /// {"guard":[{"Exists":{"path":"/a"}}],"top":[{"Set":{"path":"/a","contents":[104,105]}}],"fop":[]}
    Txn {
        /// JSON file with the MultiOp (`-` for stdin).
        file: PathBuf,
    },
    /// Print events on a node (contents, children, locks) as they happen, until Ctrl-C.
    Watch { path: String },
    /// Each replica's role, epoch, lease and progress, from their metrics endpoints.
    Status {
        /// Metrics addresses of the replicas (chubbyd --metrics-listen), comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        metrics: Vec<SocketAddr>,
    },
}

impl Connection {
    /// The client configuration these settings name, or what is missing or wrong in them.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let cluster = self
            .cluster
            .as_deref()
            .ok_or("--cluster (or CHUBBY_CLUSTER) is required")?;
        let cluster = u64::from_str_radix(cluster.trim_start_matches("0x"), 16)
            .map_err(|_| format!("--cluster `{cluster}` is not a hexadecimal id"))?;
        let certs = self
            .certs
            .as_deref()
            .ok_or("--certs (or CHUBBY_CERTS) is required")?;
        if self.endpoints.is_empty() {
            return Err("--endpoints (or CHUBBY_ENDPOINTS) is required".into());
        }
        ClientConfig::from_cert_dir(self.endpoints.clone(), cluster, certs, Some(&self.client))
            .map_err(|e| e.to_string())
    }
}

async fn connect(connection: &Connection) -> Result<Client, String> {
    let config = connection.client_config()?;
    Client::connect(config).await.map_err(|e| e.to_string())
}

fn stat_json(stat: &NodeStat) -> serde_json::Value {
    json!({
        "kind": if stat.kind == NodeKind::Directory { "directory" } else { "file" },
        "ephemeral": stat.ephemeral_owner.is_some(),
        "instance": stat.instance,
        "content_generation": stat.content_generation,
        "lock_generation": stat.lock_generation,
        "checksum": format!("{:016x}", stat.checksum),
        "bytes": stat.contents_bytes,
        "lock_delay_ms": stat.lock_delay_ms,
    })
}

/// Runs one client command; prints text or JSON. Errors are the message to show.
pub async fn run(
    command: &ClientCommand,
    connection: &Connection,
    json: bool,
) -> Result<ExitCode, String> {
    if let ClientCommand::Status { metrics } = command {
        return Ok(status(metrics, json));
    }
    let client = connect(connection).await?;
    let result = run_with(&client, command, json).await;
    let _ = client.close().await;
    result
}

async fn run_with(
    client: &Client,
    command: &ClientCommand,
    json: bool,
) -> Result<ExitCode, String> {
    let error = |e: chubby_client::Error| e.to_string();
    match command {
        ClientCommand::Get { path, stale } => {
            let node = if *stale {
                client.get_stale(path.as_str()).await
            } else {
                client.get(path.as_str()).await
            }
            .map_err(error)?;
            if json {
                let text = String::from_utf8_lossy(&node.contents);
                println!(
                    "{}",
                    json!({ "path": path, "contents": text, "stat": stat_json(&node.stat) })
                );
            } else {
                use std::io::Write;
                let _ = std::io::stdout().write_all(&node.contents);
                if !node.contents.ends_with(b"\n") {
                    println!();
                }
            }
        }
        ClientCommand::Set { path, value } => {
            let written = client
                .set(path.as_str(), value.as_bytes().to_vec())
                .await
                .map_err(error)?;
            report(
                json,
                json!({ "path": path, "content_generation": written.content_generation, "checksum": format!("{:016x}", written.checksum) }),
                format!("{path}: generation {}", written.content_generation),
            );
        }
        ClientCommand::Create {
            path,
            value,
            ephemeral,
            dir,
        } => {
            let mut node = if *dir {
                Create::directory()
            } else {
                Create::file(value.as_bytes().to_vec())
            };
            if *ephemeral {
                node = node.ephemeral();
            }
            let instance = client.create(path.as_str(), node).await.map_err(error)?;
            report(
                json,
                json!({ "path": path, "instance": instance }),
                format!("created {path} (instance {instance})"),
            );
        }
        ClientCommand::Rm { path } => {
            client.delete(path.as_str()).await.map_err(error)?;
            report(
                json,
                json!({ "path": path, "deleted": true }),
                format!("deleted {path}"),
            );
        }
        ClientCommand::Ls { path } => {
            let children = client.list(path.as_str()).await.map_err(error)?;
            if json {
                let names: Vec<String> = children.iter().map(|c| c.to_string()).collect();
                println!("{}", json!({ "path": path, "children": names }));
            } else {
                for child in children {
                    println!("{child}");
                }
            }
        }
        ClientCommand::Stat { path } => {
            let stat = client.stat(path.as_str()).await.map_err(error)?;
            let value = stat_json(&stat);
            if json {
                println!("{}", json!({ "path": path, "stat": value }));
            } else {
                println!("{path}");
                if let Some(fields) = value.as_object() {
                    for (key, value) in fields {
                        println!("  {key}: {value}");
                    }
                }
            }
        }
        ClientCommand::Lock {
            path,
            shared,
            try_only,
            command,
        } => {
            let mode = if *shared {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            };
            let guard = if *try_only {
                client.try_lock(path.as_str(), mode).await
            } else {
                client.lock(path.as_str(), mode).await
            }
            .map_err(error)?;
            let sequencer = guard.sequencer().clone();
            let token = format!(
                "{}:{}:{}:{}",
                sequencer.path,
                sequencer.instance,
                if *shared { "shared" } else { "exclusive" },
                sequencer.lock_generation
            );
            let status = std::process::Command::new(&command[0])
                .args(&command[1..])
                .env("CHUBBY_SEQUENCER", &token)
                .status()
                .map_err(|e| format!("cannot run {}: {e}", command[0]))?;
            guard.release().await.map_err(error)?;
            report(
                json,
                json!({ "path": path, "sequencer": token, "exit": status.code() }),
                format!("released {path} ({token})"),
            );
            if !status.success() {
                return Ok(ExitCode::from(1));
            }
        }
        ClientCommand::Txn { file } => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| format!("cannot read stdin: {e}"))?;
                text
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?
            };
            let op: chubby_client::MultiOp = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not a MultiOp: {e}", file.display()))?;
            let reply = client.multi_op(op).await.map_err(error)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&reply).map_err(|e| e.to_string())?
                );
            } else {
                println!("{reply:#?}");
            }
        }
        ClientCommand::Watch { path } => {
            let mut watch = client
                .watch(path.as_str(), chubby_client::WatchKinds::ALL)
                .await
                .map_err(error)?;
            while let Some(event) = watch.next().await {
                match event {
                    chubby_client::WatchEvent::Event(event) if json => println!(
                        "{}",
                        serde_json::to_string(&event).map_err(|e| e.to_string())?
                    ),
                    chubby_client::WatchEvent::Event(event) => println!("{event:?}"),
                    chubby_client::WatchEvent::Missed => {
                        println!("(events may have been missed: re-read what matters)")
                    }
                }
            }
        }
        ClientCommand::Status { .. } => unreachable!("handled before connecting"),
    }
    Ok(ExitCode::SUCCESS)
}

fn report(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

fn status(metrics: &[SocketAddr], json: bool) -> ExitCode {
    let mut all = Vec::new();
    let mut reachable = 0;
    for address in metrics {
        let status = crate::dev_cluster::http_get(*address, "/status")
            .filter(|(code, _)| *code == 200)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
        if status.is_some() {
            reachable += 1;
        }
        all.push((address, status));
    }
    if json {
        let list: Vec<serde_json::Value> = all
            .iter()
            .map(|(a, s)| json!({ "metrics": a, "status": s }))
            .collect();
        println!("{}", json!({ "replicas": list }));
    } else {
        let top = all
            .iter()
            .filter_map(|(_, s)| s.as_ref()?.get("applied_through")?.as_u64())
            .max()
            .unwrap_or(0);
        for (address, status) in &all {
            match status {
                None => println!("{address}: unreachable"),
                Some(s) => println!(
                    "node {}: {} epoch {} lease {} chosen {} applied {} lag {}{}",
                    s["node"],
                    s["role"],
                    s["epoch"],
                    s["lease"],
                    s["chosen_through"],
                    s["applied_through"],
                    top.saturating_sub(s["applied_through"].as_u64().unwrap_or(0)),
                    if s["rebuilding"] == true {
                        " (rebuilding)"
                    } else {
                        ""
                    }
                ),
            }
        }
    }
    if reachable == metrics.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
