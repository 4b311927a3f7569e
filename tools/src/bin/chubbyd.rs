//! `chubbyd`: one replica of a chubby cluster (the replicated log plus the lock service and
//! database), serving peers and clients over QUIC with mutual TLS, with a small HTTP endpoint for
//! Prometheus metrics, health and readiness.

use chubby_db::server::{Server, ServerConfig};
use clap::{Parser, ValueEnum};
use paxos_core::NodeId;
use replicated_log::{tls, ClusterId, LogConfig, StartMode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tools::http::serve_operator_endpoint;

#[derive(Parser, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[command(
    name = "chubbyd",
    about = "Run one replica of a chubby cluster",
    long_about = "Run one replica of a chubby cluster: the Paxos replicated log and the lock service \
                  and database on top of it. Peers and clients connect over QUIC with mutual TLS \
                  (certificates from `chubbyctl certs init`). Settings come from flags, or from a \
                  TOML file given with --config whose keys are the flag names (flags win).\n\n\
                  Example:\n  chubbyd --cluster 5eed --node 1 --data-dir data/node-1 --certs certs \\\n    \
                  --member 1=127.0.0.1:7101,127.0.0.1:7201 --member 2=127.0.0.1:7102,127.0.0.1:7202 \\\n    \
                  --member 3=127.0.0.1:7103,127.0.0.1:7203 --metrics-listen 127.0.0.1:7301"
)]
struct Settings {
    /// A TOML file with any of these settings (keys as the flag names, e.g. `data-dir`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Cluster id, in hex (the one the certificates were made for).
    #[arg(long)]
    cluster: Option<String>,
    /// This replica's node id.
    #[arg(long)]
    node: Option<u64>,
    /// Where this replica keeps its log, snapshots and identity.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The certificate directory (ca.pem, node-N.pem, node-N.key).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Every member of the initial cluster, this one included: ID=PEER_ADDR,CLIENT_ADDR. Repeat.
    #[arg(long = "member", value_name = "ID=PEER,CLIENT")]
    #[serde(default)]
    member: Vec<String>,
    /// Where to serve /metrics (Prometheus text), /health, /ready and /status (JSON).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Join an existing cluster as a new member added with `chubbyctl members add` (starts by
    /// catching up as a non-voting member).
    #[arg(long)]
    #[serde(default)]
    join: bool,
    /// One engine tick, in milliseconds (elections after ~100 ticks of silence, leases 200 ticks).
    #[arg(long)]
    tick_ms: Option<u64>,
    /// The most a clock may drift from true time, in parts per million (shortens the master lease).
    #[arg(long)]
    clock_drift_ppm: Option<u64>,
    /// Accept clients that present no certificate (off by default).
    #[arg(long)]
    #[serde(default)]
    allow_clients_without_certificate: bool,
    /// Log format: text for people, json for collectors. Filter with RUST_LOG (default info).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A member of the initial cluster and its two addresses.
#[derive(Clone, Copy, Debug)]
struct Member {
    node: NodeId,
    peer: SocketAddr,
    client: SocketAddr,
}

fn parse_member(text: &str) -> Result<Member, String> {
    let usage = || {
        format!(
            "`{text}`: a member is ID=PEER_ADDR,CLIENT_ADDR, like 1=127.0.0.1:7101,127.0.0.1:7201"
        )
    };
    let (id, addresses) = text.split_once('=').ok_or_else(usage)?;
    let (peer, client) = addresses.split_once(',').ok_or_else(usage)?;
    Ok(Member {
        node: NodeId(id.trim().parse().map_err(|_| usage())?),
        peer: peer.trim().parse().map_err(|_| usage())?,
        client: client.trim().parse().map_err(|_| usage())?,
    })
}

impl Settings {
    /// Flags over the file's settings.
    fn merged(self) -> Result<Settings, String> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let file: Settings =
            toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
        Ok(Settings {
            config: self.config,
            cluster: self.cluster.or(file.cluster),
            node: self.node.or(file.node),
            data_dir: self.data_dir.or(file.data_dir),
            certs: self.certs.or(file.certs),
            member: if self.member.is_empty() {
                file.member
            } else {
                self.member
            },
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            join: self.join || file.join,
            tick_ms: self.tick_ms.or(file.tick_ms),
            clock_drift_ppm: self.clock_drift_ppm.or(file.clock_drift_ppm),
            allow_clients_without_certificate: self.allow_clients_without_certificate
                || file.allow_clients_without_certificate,
            log_format: self.log_format.or(file.log_format),
        })
    }
}

fn main() -> ExitCode {
    let settings = match Settings::parse().merged() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("chubbyd: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_format.unwrap_or_default());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chubbyd: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("chubbyd: {error}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn required<T>(value: Option<T>, flag: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("--{flag} is required (or `{flag}` in the --config file)"))
}

async fn run(settings: Settings) -> Result<(), String> {
    let cluster_text = required(settings.cluster.clone(), "cluster")?;
    let cluster = u64::from_str_radix(cluster_text.trim_start_matches("0x"), 16)
        .map(ClusterId)
        .map_err(|_| format!("--cluster `{cluster_text}` is not a hexadecimal id"))?;
    let node = NodeId(required(settings.node, "node")?);
    let data_dir = required(settings.data_dir.clone(), "data-dir")?;
    let certs = required(settings.certs.clone(), "certs")?;
    let members = settings
        .member
        .iter()
        .map(|m| parse_member(m))
        .collect::<Result<Vec<_>, _>>()?;
    let me = members
        .iter()
        .find(|m| m.node == node)
        .copied()
        .ok_or_else(|| format!("--member must list this node ({node}) with its addresses"))?;
    let tls = tls::load_node_material(&certs, cluster, node).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e} (check the path and permissions)",
            data_dir.display()
        )
    })?;

    let peers: BTreeMap<NodeId, SocketAddr> = members.iter().map(|m| (m.node, m.peer)).collect();
    let clients: BTreeMap<NodeId, SocketAddr> =
        members.iter().map(|m| (m.node, m.client)).collect();
    let mut log = LogConfig::new(cluster, node, &data_dir, peers);
    if settings.join {
        log.start = StartMode::Join;
    }
    if let Some(tick) = settings.tick_ms {
        log.tick = Duration::from_millis(tick.max(1));
    }
    if let Some(ppm) = settings.clock_drift_ppm {
        log.settings.clock_drift_ppm = ppm;
    }
    let mut config = ServerConfig::new(log, tls, me.peer, me.client, clients);
    config.allow_clients_without_certificate = settings.allow_clients_without_certificate;

    let server = Server::start(config).await.map_err(|e| e.to_string())?;
    tracing::info!(%node, %cluster, peers = %me.peer, clients = %me.client, data_dir = %data_dir.display(), "replica started");
    let log = Arc::new(server.log().clone());
    let operator = match settings.metrics_listen {
        Some(address) => Some(
            serve_operator_endpoint(address, log.clone())
                .await
                .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?,
        ),
        None => None,
    };

    wait_for_stop_signal().await;
    tracing::info!(%node, "stopping: finishing queued writes");
    if let Some(task) = operator {
        task.abort();
    }
    server.shutdown().await;
    tracing::info!(%node, "stopped");
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
