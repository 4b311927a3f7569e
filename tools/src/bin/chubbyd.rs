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
    /// Bind the peer endpoint here instead of this node's PEER_ADDR from --member, which is then
    /// only the address peers are told (behind a NAT, a proxy or a port forward).
    #[arg(long, value_name = "ADDR")]
    listen_peer: Option<SocketAddr>,
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
    /// Take a snapshot of the database and truncate the log every this many applied slots
    /// (default 100000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: Option<u64>,
    /// Also take one once this many MiB of values were applied since the last (default 64, one
    /// log segment: the log then keeps to the segment files it recycles instead of zero-filling
    /// new ones). Raise it for a large database, whose every snapshot writes it all.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    snapshot_every_mib: Option<u64>,
    /// Accept clients that present no certificate (off by default).
    #[arg(long)]
    #[serde(default)]
    allow_clients_without_certificate: bool,
    /// Log format: text for people, json for collectors. Filter with RUST_LOG (default info).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Test knob: this replica's clock runs PPM parts per million fast (positive) or slow
    /// (negative), clamped to ±500000. For fault harnesses only; hidden from --help.
    #[arg(long, hide = true, value_name = "PPM", allow_negative_numbers = true)]
    test_clock_rate_ppm: Option<i64>,
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
            listen_peer: self.listen_peer.or(file.listen_peer),
            join: self.join || file.join,
            tick_ms: self.tick_ms.or(file.tick_ms),
            clock_drift_ppm: self.clock_drift_ppm.or(file.clock_drift_ppm),
            snapshot_every: self.snapshot_every.or(file.snapshot_every),
            snapshot_every_mib: self.snapshot_every_mib.or(file.snapshot_every_mib),
            allow_clients_without_certificate: self.allow_clients_without_certificate
                || file.allow_clients_without_certificate,
            log_format: self.log_format.or(file.log_format),
            test_clock_rate_ppm: self.test_clock_rate_ppm.or(file.test_clock_rate_ppm),
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
    let bugs = match planted_bugs_from_env() {
        Ok(bugs) => bugs,
        Err(error) => {
            eprintln!("chubbyd: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chubbyd: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(settings, bugs)) {
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

async fn run(settings: Settings, bugs: PlantedBugs) -> Result<(), String> {
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
    if let Some(slots) = settings.snapshot_every {
        log.snapshot_every_slots = slots;
    }
    if let Some(mib) = settings.snapshot_every_mib {
        log.snapshot_every_bytes = mib << 20;
    }
    if let Some(ppm) = settings.clock_drift_ppm {
        log.settings.clock_drift_ppm = ppm;
    }
    if let Some(ppm) = settings.test_clock_rate_ppm {
        log.clock_rate_ppm = ppm;
        if ppm != 0 {
            tracing::warn!(
                clock_rate_ppm = ppm,
                "TEST KNOB: this replica's clock is skewed on purpose (--test-clock-rate-ppm)"
            );
        }
    }
    let peer_listen = settings.listen_peer.unwrap_or(me.peer);
    let mut config = ServerConfig::new(log, tls, peer_listen, me.client, clients);
    config.allow_clients_without_certificate = settings.allow_clients_without_certificate;
    bugs.plant(&mut config);

    let server = Server::start(config).await.map_err(|e| e.to_string())?;
    tracing::info!(%node, %cluster, peers = %peer_listen, advertised = %me.peer, clients = %me.client, data_dir = %data_dir.display(), "replica started");
    let log = Arc::new(server.log().clone());
    let operator = match settings.metrics_listen {
        Some(address) => Some(
            serve_operator_endpoint(address, log.clone())
                .await
                .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?,
        ),
        None => None,
    };

    // A storage failure (an fsync error, a full disk) stops the log for good: the process exits
    // with an error then, so that a supervisor sees it and restarts it once the cause is fixed.
    let stopped_by_itself = tokio::select! {
        _ = wait_for_stop_signal() => false,
        _ = log.stopped() => true,
    };
    if let Some(task) = operator {
        task.abort();
    }
    if stopped_by_itself {
        server.shutdown().await;
        return Err(
            "the replicated log stopped after a storage failure (the error is logged above): \
             fix its cause and start the replica again"
                .to_string(),
        );
    }
    tracing::info!(%node, "stopping: finishing queued writes");
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

/// The environment variable that names the bugs to plant: a comma-separated list of field names
/// of `paxos_core::PlantedBugs` and `chubby_db::PlantedBugs`.
const PLANTED_BUGS_ENV: &str = "CHUBBYD_PLANTED_BUGS";

/// Deliberately broken behaviours for real-process teeth tests, in the engine and the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PlantedBugs {
    engine: paxos_core::PlantedBugs,
    database: chubby_db::PlantedBugs,
    /// The names planted, each once, in the order given.
    names: Vec<&'static str>,
}

/// Sets one bug's field.
type Plant = fn(&mut PlantedBugs);

/// Every bug `CHUBBYD_PLANTED_BUGS` may name (the field names), and how to plant it.
const PLANTED_BUGS: &[(&str, Plant)] = &[
    ("acceptor_ignores_ballot", |b| {
        b.engine.acceptor_ignores_ballot = true
    }),
    ("learn_ignores_ballot", |b| {
        b.engine.learn_ignores_ballot = true
    }),
    ("lease_without_drift_margin", |b| {
        b.engine.lease_without_drift_margin = true
    }),
    ("read_ignores_lease", |b| b.engine.read_ignores_lease = true),
    ("ack_before_chosen", |b| b.engine.ack_before_chosen = true),
    ("keep_proposals_across_epochs", |b| {
        b.engine.keep_proposals_across_epochs = true
    }),
    ("rebuild_votes_at_once", |b| {
        b.engine.rebuild_votes_at_once = true
    }),
    ("ignore_catch_up", |b| b.engine.ignore_catch_up = true),
    ("ignore_lock_delay", |b| b.database.ignore_lock_delay = true),
    ("check_sequencer_ignores_generation", |b| {
        b.database.check_sequencer_ignores_generation = true
    }),
    ("forget_replies", |b| b.database.forget_replies = true),
    ("stale_linearizable_reads", |b| {
        b.database.stale_linearizable_reads = true
    }),
    ("ack_writes_before_commit", |b| {
        b.database.ack_writes_before_commit = true
    }),
    ("exclusive_lock_stolen", |b| {
        b.database.exclusive_lock_stolen = true
    }),
];

/// The bugs `CHUBBYD_PLANTED_BUGS` names; none when it is unset.
fn planted_bugs_from_env() -> Result<PlantedBugs, String> {
    match std::env::var(PLANTED_BUGS_ENV) {
        Ok(list) => planted_bugs(&list),
        Err(std::env::VarError::NotPresent) => Ok(PlantedBugs::default()),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("{PLANTED_BUGS_ENV} is not valid UTF-8"))
        }
    }
}

/// The bugs a `CHUBBYD_PLANTED_BUGS` value names. A chubbyd built without the `planted-bugs`
/// feature refuses any: a teeth test must never pass by running a correct binary unknowingly.
fn planted_bugs(list: &str) -> Result<PlantedBugs, String> {
    if !cfg!(feature = "planted-bugs") && !list.trim().is_empty() {
        return Err(format!(
            "{PLANTED_BUGS_ENV}=`{list}`, but this chubbyd was built without the planted-bugs \
             feature (build it with `--features tools/planted-bugs`, as `cargo test --workspace` \
             does through the tests crate, or unset {PLANTED_BUGS_ENV})"
        ));
    }
    PlantedBugs::parse(list)
}

impl PlantedBugs {
    /// Parses a comma-separated list of bug names; blanks around names and empty items are
    /// ignored, so an empty list plants nothing.
    fn parse(list: &str) -> Result<PlantedBugs, String> {
        let mut bugs = PlantedBugs::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some((known, plant)) = PLANTED_BUGS.iter().find(|(known, _)| *known == name) else {
                let valid: Vec<&str> = PLANTED_BUGS.iter().map(|(known, _)| *known).collect();
                return Err(format!(
                    "{PLANTED_BUGS_ENV}: unknown planted bug `{name}`; valid names: {}",
                    valid.join(", ")
                ));
            };
            plant(&mut bugs);
            if !bugs.names.contains(known) {
                bugs.names.push(known);
            }
        }
        Ok(bugs)
    }

    /// Puts the bugs in the server's configuration, loudly.
    #[cfg(feature = "planted-bugs")]
    fn plant(&self, config: &mut ServerConfig) {
        if self.names.is_empty() {
            return;
        }
        tracing::warn!(
            bugs = %self.names.join(","),
            "PLANTED BUGS: this replica is deliberately broken ({PLANTED_BUGS_ENV}); for teeth \
             tests only, never for service"
        );
        config.log.planted_bugs = self.engine;
        config.planted_bugs = self.database;
    }

    /// Without the feature `planted_bugs` refuses every bug, so there is none to plant.
    #[cfg(not(feature = "planted-bugs"))]
    fn plant(&self, _config: &mut ServerConfig) {
        assert_eq!(
            *self,
            PlantedBugs::default(),
            "planted bugs without the feature"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_plants_nothing() {
        assert_eq!(PlantedBugs::parse(""), Ok(PlantedBugs::default()));
        assert_eq!(PlantedBugs::parse(" , ,"), Ok(PlantedBugs::default()));
        assert_eq!(planted_bugs(""), Ok(PlantedBugs::default()));
        assert_eq!(planted_bugs("  "), Ok(PlantedBugs::default()));
    }

    #[test]
    fn names_from_both_structs_plant_their_fields() {
        let bugs = PlantedBugs::parse(
            "read_ignores_lease, ack_before_chosen,lease_without_drift_margin,ignore_lock_delay,\
             read_ignores_lease",
        )
        .expect("valid names");
        let engine = paxos_core::PlantedBugs {
            read_ignores_lease: true,
            ack_before_chosen: true,
            lease_without_drift_margin: true,
            ..Default::default()
        };
        let database = chubby_db::PlantedBugs {
            ignore_lock_delay: true,
            ..Default::default()
        };
        assert_eq!(bugs.engine, engine);
        assert_eq!(bugs.database, database);
        assert_eq!(
            bugs.names,
            [
                "read_ignores_lease",
                "ack_before_chosen",
                "lease_without_drift_margin",
                "ignore_lock_delay"
            ]
        );
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_valid_names() {
        let error = PlantedBugs::parse("read_ignores_lease,no_such_bug").unwrap_err();
        assert!(error.contains("`no_such_bug`"), "{error}");
        for (name, _) in PLANTED_BUGS {
            assert!(error.contains(name), "{error} does not list {name}");
        }
        // Names are the field names exactly: not the simulator's `--bug` spelling.
        assert!(PlantedBugs::parse("read-ignores-lease").is_err());
    }

    /// Every field of both structs has a name (this stops compiling when a field is added).
    #[test]
    fn every_planted_bug_has_a_name() {
        let all = PLANTED_BUGS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>();
        let bugs = PlantedBugs::parse(&all.join(",")).expect("every name is valid");
        let paxos_core::PlantedBugs {
            acceptor_ignores_ballot,
            learn_ignores_ballot,
            lease_without_drift_margin,
            read_ignores_lease,
            ack_before_chosen,
            keep_proposals_across_epochs,
            rebuild_votes_at_once,
            ignore_catch_up,
        } = bugs.engine;
        let chubby_db::PlantedBugs {
            ignore_lock_delay,
            check_sequencer_ignores_generation,
            forget_replies,
            stale_linearizable_reads,
            ack_writes_before_commit,
            exclusive_lock_stolen,
        } = bugs.database;
        assert!(
            acceptor_ignores_ballot
                && learn_ignores_ballot
                && lease_without_drift_margin
                && read_ignores_lease
                && ack_before_chosen
                && keep_proposals_across_epochs
                && rebuild_votes_at_once
                && ignore_catch_up
                && ignore_lock_delay
                && check_sequencer_ignores_generation
                && forget_replies
                && stale_linearizable_reads
                && ack_writes_before_commit
                && exclusive_lock_stolen
        );
        assert_eq!(bugs.names, all);
    }

    #[cfg(feature = "planted-bugs")]
    #[test]
    fn with_the_feature_named_bugs_are_planted() {
        let bugs = planted_bugs("ignore_lock_delay").expect("valid name");
        assert!(bugs.database.ignore_lock_delay);
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[test]
    fn without_the_feature_any_bug_is_refused() {
        let error = planted_bugs("ignore_lock_delay").unwrap_err();
        assert!(
            error.contains("this chubbyd was built without the planted-bugs feature"),
            "{error}"
        );
        assert!(planted_bugs("no_such_bug").is_err());
    }

    #[test]
    fn the_clock_rate_flag_takes_negative_values_and_wins_over_the_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("chubbyd.toml");
        std::fs::write(&file, "test-clock-rate-ppm = 150000\n").expect("config file");
        let file = file.to_str().expect("a UTF-8 path");

        let from_file = Settings::try_parse_from(["chubbyd", "--config", file])
            .expect("flags")
            .merged()
            .expect("config file");
        assert_eq!(from_file.test_clock_rate_ppm, Some(150_000));

        let flag = [
            "chubbyd",
            "--config",
            file,
            "--test-clock-rate-ppm",
            "-200000",
        ];
        let from_flag = Settings::try_parse_from(flag)
            .expect("negative values are allowed")
            .merged()
            .expect("config file");
        assert_eq!(from_flag.test_clock_rate_ppm, Some(-200_000));
    }
}
