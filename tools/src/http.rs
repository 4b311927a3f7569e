//! The operator endpoint of a replica: `GET /metrics` (Prometheus text format), `/health` (the
//! replica runs), `/ready` (it knows a master and is not rebuilding) and `/status` (JSON: the
//! log's `Status`, plus `voting`).
//!
//! Four read-only paths over HTTP/1.0 do not need a web framework: each connection is one request
//! line, one response, closed.

use replicated_log::{Log, Role, StateMachine, Status};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Longest request head read before answering.
const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Binds `address` and serves the operator endpoint for `log` until the task is aborted.
pub async fn serve_operator_endpoint<M: StateMachine>(
    address: SocketAddr,
    log: Arc<Log<M>>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(address).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let request = String::from_utf8_lossy(&head);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, content_type, body) = respond(path, &log).await;
                let response = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    }))
}

/// Reads until the blank line that ends a request head (a request may arrive in pieces).
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_BYTES_MAX {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    Some(head)
}

async fn respond<M: StateMachine>(
    path: &str,
    log: &Log<M>,
) -> (&'static str, &'static str, String) {
    let text = "text/plain; charset=utf-8";
    let Some(status) = log.status().await else {
        return ("503 Service Unavailable", text, "stopped\n".into());
    };
    match path {
        "/health" => ("200 OK", text, "ok\n".into()),
        "/ready" => {
            if status.master.is_some() && !status.rebuilding {
                ("200 OK", text, "ready\n".into())
            } else {
                let why = if status.rebuilding {
                    "rebuilding\n"
                } else {
                    "no master known\n"
                };
                ("503 Service Unavailable", text, why.into())
            }
        }
        "/status" => {
            // `voting`: what an operator waits for after a rebuild (see `chubbyctl rebuild`).
            let mut value = serde_json::to_value(&status).unwrap_or_default();
            value["voting"] = is_voting(&status).into();
            ("200 OK", "application/json", value.to_string())
        }
        "/metrics" => {
            let metrics = log.metrics().await.unwrap_or_default();
            let mut out = String::new();
            let mut gauge = |name: &str, help: &str, value: f64| {
                let _ = writeln!(out, "# HELP chubby_{name} {help}");
                let _ = writeln!(out, "# TYPE chubby_{name} gauge");
                let _ = writeln!(out, "chubby_{name} {value}");
            };
            let role = |r: Role| f64::from(u8::from(status.role == r));
            gauge(
                "is_master",
                "1 while this replica is master",
                role(Role::Master),
            );
            gauge(
                "lease_held",
                "1 while master under a valid lease",
                f64::from(u8::from(status.lease)),
            );
            gauge(
                "rebuilding",
                "1 while rebuilding after lost or corrupt state",
                f64::from(u8::from(status.rebuilding)),
            );
            gauge(
                "chosen_through",
                "highest slot of the chosen prefix",
                status.chosen_through as f64,
            );
            gauge(
                "applied_through",
                "highest slot applied to the database",
                status.applied_through as f64,
            );
            gauge(
                "snapshot_slot",
                "slot of the newest snapshot",
                status.snapshot_slot as f64,
            );
            gauge("voters", "voting members", status.voters.len() as f64);
            gauge(
                "voting",
                "1 while this replica votes (a voter, not rebuilding)",
                f64::from(u8::from(is_voting(&status))),
            );
            gauge(
                "fsyncs_total",
                "fdatasync calls of the log writer",
                metrics.fsyncs as f64,
            );
            gauge(
                "fsync_seconds_p50",
                "median fdatasync latency",
                metrics.fsync_micros_p50 as f64 / 1e6,
            );
            gauge(
                "fsync_seconds_p99",
                "99th percentile fdatasync latency",
                metrics.fsync_micros_p99 as f64 / 1e6,
            );
            gauge(
                "fsync_seconds_max",
                "slowest fdatasync",
                metrics.fsync_micros_max as f64 / 1e6,
            );
            gauge(
                "wal_records_total",
                "records written to the log",
                metrics.records_written as f64,
            );
            gauge(
                "wal_bytes_total",
                "bytes written to the log",
                metrics.bytes_written as f64,
            );
            gauge(
                "batch_records_mean",
                "records per group commit",
                metrics.batch_records_mean,
            );
            gauge(
                "submits_committed_total",
                "submits acknowledged",
                metrics.submits_committed as f64,
            );
            gauge(
                "submits_failed_total",
                "submits that failed",
                metrics.submits_failed as f64,
            );
            gauge(
                "snapshots_taken_total",
                "snapshots written",
                metrics.snapshots_taken as f64,
            );
            gauge(
                "snapshots_installed_total",
                "snapshots installed from peers",
                metrics.snapshots_installed as f64,
            );
            gauge(
                "messages_sent_total",
                "messages sent to peers",
                metrics.messages_sent as f64,
            );
            gauge(
                "messages_received_total",
                "messages received from peers",
                metrics.messages_received as f64,
            );
            ("200 OK", "text/plain; version=0.0.4", out)
        }
        _ => (
            "404 Not Found",
            text,
            "paths: /metrics /health /ready /status\n".into(),
        ),
    }
}

/// A replica votes when it is a voter of the latest membership and not rebuilding (a rebuilt
/// replica votes again once its new incarnation is chosen into the membership; PML 5.1).
pub fn is_voting(status: &Status) -> bool {
    !status.rebuilding && status.voters.contains(&status.node)
}
