//! The operator side of `chubbyctl`: `members`, `snapshot save|restore` and `check`, over the
//! client protocol with the admin certificate (see `chubby_client::admin`).
//!
//! Exit codes: 0 done; 1 refused by the cluster (or by the promote rule), a check that found
//! replicas disagreeing or not all reporting, or a snapshot file that does not check out; 2 bad
//! usage or an environment problem (cluster unreachable, unreadable file, bad certificates).

use crate::client_commands::Connection;
use chubby_client::admin::{
    Admin, AdminError, CheckReport, PromoteRule, PROMOTE_LAG_SLOTS_MAX_DEFAULT,
    RESTORE_SNAPSHOT_BYTES_MAX,
};
use clap::Subcommand;
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// List, add, promote and remove members of the cluster (admin certificate).
    ///
    /// Membership changes go through the log one at a time and take effect a few slots after
    /// they are chosen. A new member joins as non-voting, catches up, and is promoted once it
    /// has caught up; node ids are never reused.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Back up the database to a file, or restore one into a running cluster (admin certificate).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Run the cross-replica consistency check now and report each replica's digest.
    ///
    /// The master puts a digest request in the log; every replica computes a digest of its
    /// database right after that slot and reports it. Exit 0 when every voter reported the same
    /// digest, 1 when they disagree or not all reported within --timeout-ms. A replica in the
    /// minority of a disagreement treats its state as corrupt and rebuilds from its peers.
    Check {
        /// How long to wait for every voter's digest, in milliseconds (at most 60000).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// Each member: node id, voter or non-voting, addresses, and (if it answers) its role, the
    /// slot it applied and how far it lags behind what the master chose.
    List,
    /// Add a new replica as a non-voting member. Then start it with `chubbyd --join` (its
    /// --member list naming the current members and itself) and promote it once caught up.
    Add {
        /// The new node's id: never used before in this cluster.
        node: u64,
        /// Where its peers reach it (its chubbyd peer address).
        #[arg(long)]
        peer: SocketAddr,
        /// Required: a new member always starts non-voting (promote it later).
        #[arg(long)]
        non_voting: bool,
    },
    /// Make a non-voting member a voter, once it has caught up.
    ///
    /// chubbyctl asks the learner itself how far it applied and refuses (exit 1) if it lags the
    /// master's chosen slot by more than --lag-max slots, or cannot be asked. --force skips that.
    Promote {
        /// The learner's node id (see `members list`).
        node: u64,
        /// The most slots the learner may lag behind the master's chosen slot.
        #[arg(long, default_value_t = PROMOTE_LAG_SLOTS_MAX_DEFAULT)]
        lag_max: u64,
        /// The learner's client address, if the master's configuration does not list it.
        #[arg(long)]
        learner_client: Option<SocketAddr>,
        /// Promote without checking that it caught up.
        #[arg(long)]
        force: bool,
    },
    /// Remove a voter or non-voting member for good (its id is never reused). Refused if it is
    /// the last voter. Stop its chubbyd afterwards.
    Remove {
        /// The member's node id (see `members list`).
        node: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Fetch a consistent snapshot of the database from the master and write it to FILE
    /// atomically (temporary file, fsync, rename); prints its slot, size and checksums.
    Save {
        /// Where to write the snapshot (replaced atomically if it exists).
        file: PathBuf,
    },
    /// Replace the database of a running cluster with the snapshot in FILE, through the log.
    ///
    /// The file's checksum and contents are verified before anything is sent. Every replica
    /// applies the restore at the same slot: all sessions end (their locks and ephemeral nodes
    /// go), and every node gets a new instance number, so no sequencer issued before the restore
    /// ever validates again. Refused unless the database is empty, or with --force. Snapshots
    /// over the one-log-entry limit (about 1 MiB) are refused.
    Restore {
        /// A snapshot written by `snapshot save`.
        file: PathBuf,
        /// Replace a database that holds nodes.
        #[arg(long)]
        force: bool,
    },
}

/// What went wrong, with the exit code it deserves.
struct Failure {
    code: u8,
    message: String,
    refusal: Option<serde_json::Value>,
}

impl Failure {
    fn environment(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
            refusal: None,
        }
    }

    fn refused(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
            refusal: None,
        }
    }
}

impl From<AdminError> for Failure {
    fn from(error: AdminError) -> Failure {
        match &error {
            AdminError::Refused(refusal) => Failure {
                code: 1,
                message: error.to_string(),
                refusal: serde_json::to_value(refusal).ok(),
            },
            AdminError::Client(_) => Failure::environment(error.to_string()),
        }
    }
}

/// Runs one operator command; prints text or JSON and answers the exit code.
pub async fn run(command: &AdminCommand, connection: &Connection, json: bool) -> ExitCode {
    let outcome = match connect(connection) {
        Ok(admin) => {
            let outcome = dispatch(&admin, command, json).await;
            admin.close();
            outcome
        }
        Err(failure) => Err(failure),
    };
    match outcome {
        Ok(code) => code,
        Err(failure) => {
            if json {
                println!(
                    "{}",
                    json!({ "error": failure.message, "refused": failure.refusal })
                );
            } else {
                eprintln!("chubbyctl: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

fn connect(connection: &Connection) -> Result<Admin, Failure> {
    let config = connection.client_config().map_err(Failure::environment)?;
    Admin::new(config).map_err(|e| Failure::environment(e.to_string()))
}

async fn dispatch(admin: &Admin, command: &AdminCommand, json: bool) -> Result<ExitCode, Failure> {
    match command {
        AdminCommand::Members { command } => members(admin, command, json).await,
        AdminCommand::Snapshot {
            command: SnapshotCommand::Save { file },
        } => snapshot_save(admin, file, json).await,
        AdminCommand::Snapshot {
            command: SnapshotCommand::Restore { file, force },
        } => snapshot_restore(admin, file, *force, json).await,
        AdminCommand::Check { timeout_ms } => check(admin, *timeout_ms, json).await,
    }
}

async fn members(admin: &Admin, command: &MembersCommand, json: bool) -> Result<ExitCode, Failure> {
    let (action, node, slot) = match command {
        MembersCommand::List => return members_list(admin, json).await,
        MembersCommand::Add {
            node,
            peer,
            non_voting,
        } => {
            if !non_voting {
                return Err(Failure::environment(
                    "a new member always joins non-voting: say so with --non-voting, then `members promote` it once it caught up",
                ));
            }
            (
                "added as non-voting",
                node,
                admin.add_learner(*node, *peer).await?,
            )
        }
        MembersCommand::Promote {
            node,
            lag_max,
            learner_client,
            force,
        } => {
            let rule = if *force {
                PromoteRule::Force
            } else {
                PromoteRule::CaughtUp {
                    lag_slots_max: *lag_max,
                    learner_client: *learner_client,
                }
            };
            ("promoted to voter", node, admin.promote(*node, rule).await?)
        }
        MembersCommand::Remove { node } => ("removed", node, admin.remove(*node).await?),
    };
    report(
        json,
        json!({ "node": node, "action": action, "slot": slot }),
        format!("node {node} {action} (chosen at slot {slot}; in effect a few slots later)"),
    );
    Ok(ExitCode::SUCCESS)
}

async fn members_list(admin: &Admin, json: bool) -> Result<ExitCode, Failure> {
    let report = admin.members().await?;
    let mut rows = Vec::new();
    for member in &report.members {
        let status = match member.client {
            Some(address) => admin.replica_status(address).await.ok(),
            None => None,
        };
        let lag = status
            .as_ref()
            .map(|s| report.chosen_through.saturating_sub(s.applied_through));
        rows.push((member, status, lag));
    }
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, s, lag)| {
                json!({
                    "node": m.node,
                    "voter": m.voter,
                    "peer": m.peer,
                    "client": m.client,
                    "reachable": s.is_some(),
                    "role": s.as_ref().map(|s| s.role.clone()),
                    "applied_through": s.as_ref().map(|s| s.applied_through),
                    "chosen_through": s.as_ref().map(|s| s.chosen_through),
                    "rebuilding": s.as_ref().map(|s| s.rebuilding),
                    "lag": lag,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "master": report.master,
                "chosen_through": report.chosen_through,
                "members": list,
            })
        );
    } else {
        println!(
            "master: node {}, chosen through slot {}",
            report.master, report.chosen_through
        );
        for (member, status, lag) in &rows {
            let kind = if member.voter { "voter" } else { "non-voting" };
            let peer = member.peer.map_or("?".to_string(), |a| a.to_string());
            let progress = match (status, lag) {
                (Some(s), Some(lag)) => format!(
                    "{} applied {} chosen {} lag {}{}",
                    s.role,
                    s.applied_through,
                    s.chosen_through,
                    lag,
                    if s.rebuilding { " (rebuilding)" } else { "" }
                ),
                _ if member.client.is_none() => "no client address known".to_string(),
                _ => "unreachable".to_string(),
            };
            println!("  node {}: {kind} peer {peer} {progress}", member.node);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn snapshot_save(admin: &Admin, file: &Path, json: bool) -> Result<ExitCode, Failure> {
    let saved = admin.snapshot_save().await?;
    // The master's checksum matched in transit; check the format's own CRC and every invariant
    // before the file can replace an older backup.
    chubby_db::Database::from_snapshot(&mut &saved.bytes[..]).map_err(|e| {
        Failure::refused(format!(
            "the master sent a snapshot that does not check out: {e}"
        ))
    })?;
    write_atomically(file, &saved.bytes)
        .map_err(|e| Failure::environment(format!("cannot write {}: {e}", file.display())))?;
    let crc = crc32_trailer(&saved.bytes);
    report(
        json,
        json!({
            "file": file, "slot": saved.slot, "bytes": saved.bytes.len(),
            "checksum": format!("{:016x}", saved.checksum), "crc32": format!("{crc:08x}"),
            "digest": format!("{:016x}", saved.digest),
        }),
        format!(
            "saved the database at slot {} to {}: {} bytes, checksum {:016x} (FNV-1a 64), crc32 {crc:08x}, digest {:016x}",
            saved.slot,
            file.display(),
            saved.bytes.len(),
            saved.checksum,
            saved.digest
        ),
    );
    Ok(ExitCode::SUCCESS)
}

async fn snapshot_restore(
    admin: &Admin,
    file: &Path,
    force: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    let bytes = std::fs::read(file)
        .map_err(|e| Failure::environment(format!("cannot read {}: {e}", file.display())))?;
    let checked = chubby_db::Database::from_snapshot(&mut &bytes[..]).map_err(|e| {
        Failure::refused(format!(
            "{} is not a good snapshot: {e}; nothing was sent",
            file.display()
        ))
    })?;
    if bytes.len() > RESTORE_SNAPSHOT_BYTES_MAX {
        return Err(Failure::refused(format!(
            "{} is {} bytes, over the online-restore limit of {RESTORE_SNAPSHOT_BYTES_MAX} bytes (a restore is one log entry); nothing was sent",
            file.display(),
            bytes.len()
        )));
    }
    let snapshot_digest = checked.digest();
    let restored = admin.restore(bytes, force).await?;
    report(
        json,
        json!({
            "file": file, "slot": restored.slot, "snapshot_slot": restored.snapshot_slot,
            "snapshot_digest": format!("{snapshot_digest:016x}"),
            "nodes": restored.nodes, "sessions_ended": restored.sessions_ended,
            "instance_offset": restored.instance_offset,
            "digest": format!("{:016x}", restored.digest),
        }),
        format!(
            "restored {} (taken at slot {}) at slot {}: {} nodes, {} sessions ended, instance numbers raised by {}; digest now {:016x}",
            file.display(),
            restored.snapshot_slot,
            restored.slot,
            restored.nodes,
            restored.sessions_ended,
            restored.instance_offset,
            restored.digest
        ),
    );
    Ok(ExitCode::SUCCESS)
}

async fn check(admin: &Admin, timeout_ms: u64, json: bool) -> Result<ExitCode, Failure> {
    let report = admin.check(Duration::from_millis(timeout_ms)).await?;
    let agree = report.agree();
    if json {
        let digests: serde_json::Map<String, serde_json::Value> = report
            .digests
            .iter()
            .map(|(n, d)| (n.to_string(), json!(format!("{d:016x}"))))
            .collect();
        let missing = missing_voters(&report);
        println!(
            "{}",
            json!({
                "slot": report.slot, "voters": report.voters, "digests": digests,
                "complete": report.complete, "missing": missing, "agree": agree,
            })
        );
    } else {
        println!(
            "consistency check at slot {}: {}",
            report.slot,
            if agree {
                "every voter agrees"
            } else if !report.complete {
                "not every voter reported in time"
            } else {
                "REPLICAS DISAGREE"
            }
        );
        for (node, digest) in &report.digests {
            let kind = if report.voters.contains(node) {
                "voter"
            } else {
                "non-voting"
            };
            println!("  node {node} ({kind}): {digest:016x}");
        }
        for node in missing_voters(&report) {
            println!("  node {node} (voter): no report");
        }
    }
    Ok(if agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn missing_voters(report: &CheckReport) -> Vec<u64> {
    report
        .voters
        .iter()
        .copied()
        .filter(|n| !report.digests.contains_key(n))
        .collect()
}

/// The CRC-32 the snapshot format keeps in its last four bytes.
fn crc32_trailer(bytes: &[u8]) -> u32 {
    let tail: [u8; 4] = bytes[bytes.len().saturating_sub(4)..]
        .try_into()
        .unwrap_or([0; 4]);
    u32::from_le_bytes(tail)
}

/// Temporary file beside `path`, fsync, rename over `path`, fsync the directory: a crash leaves
/// the old file or the new one, never a torn one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let temporary = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn report(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}
