//! `chubbyctl`: the operator and client command line.
//!
//! Exit codes scripts can rely on: 0 success, 1 the check failed (damage found, refused), 2 bad
//! usage or an environment error (unreadable directory, bad certificate files).

use clap::{Parser, Subcommand};
use paxos_core::NodeId;
use replicated_log::{tls, ClusterId};
use std::path::PathBuf;
use std::process::ExitCode;
use tools::client_commands::{ClientCommand, Connection};
use tools::verify::verify_data_dir;

#[derive(Parser, Debug)]
#[command(
    name = "chubbyctl",
    about = "Use and operate a chubby cluster: files, locks, status, certificates, checks",
    long_about = "Operate a chubby cluster.\n\nEvery command prints text for people, or one JSON \
                  object with --json for scripts. Exit codes: 0 success, 1 the check failed, 2 bad \
                  usage or environment."
)]
struct Cli {
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Client(ClientCommand),
    #[command(flatten)]
    Admin(tools::admin_commands::AdminCommand),
    /// Certificates for a cluster.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Check every checksum in a replica's data directory, offline, without changing it.
    ///
    /// Reports whether the replica would start cleanly, start after cutting a torn tail, or find
    /// its state damaged (and rebuild), with the file and byte offset of each problem. Run it on a
    /// stopped replica: a running one changes its files while they are read.
    Verify {
        /// The replica's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Rebuild a replica whose disk is corrupt or lost, as a non-voting member until it votes again.
    ///
    /// Checks the replica is stopped (its data directory's lock is free), shows what `verify`
    /// finds, moves the bad state aside into DATA_DIR/damaged-<n>/ (never deletes it), starts the
    /// replica (--start -- CHUBBYD ARGS...) or waits for you to, and shows its catch-up until it
    /// votes again. Exit codes: 0 voting again, 1 refused or failed, 2 usage or environment.
    /// Example: chubbyctl rebuild --data-dir .dev-cluster/node-2 --node 2
    /// --metrics 127.0.0.1:7301,127.0.0.1:7302,127.0.0.1:7303 --start -- target/release/chubbyd
    /// --config .dev-cluster/node-2.toml
    Rebuild(tools::rebuild::RebuildArgs),
    /// Run a local three-replica cluster for development, until Ctrl-C.
    ///
    /// Makes dev certificates and data directories under --dir on first use and reuses them after
    /// (nothing is lost between runs), starts three `chubbyd` processes on loopback, waits until a
    /// master holds its lease, prints the endpoints, and stops all three on Ctrl-C.
    DevCluster {
        /// Where certificates, data directories and logs live.
        #[arg(long, default_value = ".dev-cluster")]
        dir: PathBuf,
        /// First of three consecutive ports for peers; clients use +100, metrics +200.
        #[arg(long, default_value_t = 7101)]
        base_port: u16,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Create a cluster CA and a certificate for each node and client, in one directory.
    ///
    /// Writes ca.pem, ca.key, node-N.pem/.key and client-NAME.pem/.key (keys mode 0600). Refuses to
    /// overwrite an existing CA. Node certificates name `node-<id>.<cluster>.paxos`. The cluster id
    /// is --cluster (hex). Example: chubbyctl --cluster 5eed certs init --dir certs
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        // The cluster id is the global --cluster (or CHUBBY_CLUSTER): a second `cluster` argument
        // here would clash with it (clap panics when the two types differ).
        /// Node ids to issue certificates for, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        nodes: Vec<u64>,
        /// Client names to issue certificates for, comma separated (a-z, 0-9, '-').
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        clients: Vec<String>,
    },
}

fn parse_cluster(text: &str) -> Result<ClusterId, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map(ClusterId)
        .map_err(|_| format!("`{text}` is not a hexadecimal cluster id (like 5eed or 0x5eed)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(error) => {
            if cli.json {
                println!("{}", serde_json::json!({ "error": error }));
            } else {
                eprintln!("chubbyctl: {error}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    match &cli.command {
        Command::Admin(command) => {
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            Ok(runtime.block_on(tools::admin_commands::run(
                command,
                &cli.connection,
                cli.json,
            )))
        }
        Command::Client(command) => {
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            runtime.block_on(tools::client_commands::run(
                command,
                &cli.connection,
                cli.json,
            ))
        }
        Command::Certs {
            command:
                CertsCommand::Init {
                    dir,
                    nodes,
                    clients,
                },
        } => {
            let cluster = cli
                .connection
                .cluster
                .as_deref()
                .ok_or("certs init needs --cluster ID (hex, 16 digits at most)")
                .and_then(|text| {
                    parse_cluster(text)
                        .map_err(|_| "--cluster is not a hexadecimal cluster id (like 5eed)")
                })?;
            let nodes: Vec<NodeId> = nodes.iter().copied().map(NodeId).collect();
            let clients: Vec<&str> = clients.iter().map(String::as_str).collect();
            tls::init_dir(dir, cluster, &nodes, &clients).map_err(|e| e.to_string())?;
            if cli.json {
                let out = serde_json::json!({
                    "dir": dir, "cluster": cluster.to_string(),
                    "nodes": nodes.iter().map(|n| n.0).collect::<Vec<_>>(), "clients": clients,
                });
                println!("{out}");
            } else {
                println!(
                    "wrote a CA for cluster {cluster}, {} node and {} client certificates to {}",
                    nodes.len(),
                    clients.len(),
                    dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild(args) => Ok(rebuild(args, cli.json)),
        Command::DevCluster { dir, base_port } => {
            tools::dev_cluster::run(dir, *base_port, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { data_dir } => {
            let report = verify_data_dir(data_dir)
                .map_err(|e| format!("cannot read {}: {e}", data_dir.display()))?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| e.to_string())?
                );
            } else {
                println!(
                    "{}: {} ({} files checked)",
                    data_dir.display(),
                    report.verdict,
                    report.files_checked
                );
                if let (Some(node), Some(cluster)) = (report.node, &report.cluster) {
                    println!(
                        "  node {node} of cluster {cluster}, incarnation {}, snapshot at slot {}, {} slots in the log",
                        report.incarnation.unwrap_or(0),
                        report.snapshot_slot.unwrap_or(0),
                        report.log_slots
                    );
                }
                for problem in &report.problems {
                    let file = problem
                        .file
                        .as_ref()
                        .map_or("(directory)".to_string(), |f| f.display().to_string());
                    match problem.offset {
                        Some(offset) => println!("  {file} at byte {offset}: {}", problem.what),
                        None => println!("  {file}: {}", problem.what),
                    }
                }
                if !report.is_ok() {
                    println!("  the replica would move these files aside and rebuild from its peers (`chubbyctl rebuild`)");
                }
            }
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn rebuild(args: &tools::rebuild::RebuildArgs, json: bool) -> ExitCode {
    match tools::rebuild::run(args, json) {
        Ok(report) if json => {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            tools::rebuild::print_report(&report);
            ExitCode::SUCCESS
        }
        Err(error) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": error.to_string(), "kind": error.kind() })
                );
            } else {
                eprintln!("chubbyctl rebuild: {error}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}
