//! `log-bench`: the replicated log alone, measured. Three replicas in one process on loopback over
//! QUIC with mutual TLS, each with its own data directory and fdatasync on; closed-loop clients
//! keep a fixed number of submits in flight against the master. Prints committed values/s, latency
//! percentiles, fsyncs/s and the mean group-commit batch.

use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use paxos_core::{NodeId, Slot};
use replicated_log::{tls, ClusterId, Log, LogConfig, SnapshotFn, StartMode, StateMachine};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// Linked for its global allocator (mimalloc), which every binary of this crate shares.
extern crate tools;

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark the replicated log: 3 replicas over QUIC+mTLS on loopback, fdatasync on",
    long_about = "Starts three replicas in this process, each with its own data directory (fdatasync on, \
                  preallocated segments) and QUIC with mutual TLS between them, waits for a master, \
                  then keeps --inflight submits of --value-bytes each in flight for --duration and \
                  prints throughput, latency percentiles, fsyncs/s and the mean group-commit batch."
)]
struct Args {
    /// Submits kept in flight at once (closed loop).
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Size of each submitted value, in bytes.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Measured time, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured time before, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Where the data directories go (a fresh temporary directory inside it). Must be on the disk
    /// you want to measure: not a tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write segments without zero-filling them first (to measure what preallocation buys).
    #[arg(long)]
    no_preallocate: bool,
    /// Take a snapshot after this many MiB of applied values (the log's default is 64, one
    /// segment; larger values outgrow the recycled segments and zero-fill new ones).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    snapshot_every_mib: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Counts what it applies; the bench measures the log, not an application.
#[derive(Default)]
struct Counter {
    entries: u64,
    bytes: u64,
}

impl StateMachine for Counter {
    type Output = ();
    fn apply(&mut self, _slot: Slot, entry: &[u8]) {
        self.entries += 1;
        self.bytes += entry.len() as u64;
    }
    fn snapshot(&self) -> SnapshotFn {
        let (entries, bytes) = (self.entries, self.bytes);
        Box::new(move |out: &mut dyn Write| {
            out.write_all(&entries.to_le_bytes())?;
            out.write_all(&bytes.to_le_bytes())
        })
    }
    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        self.entries = u64::from_le_bytes(word);
        input.read_exact(&mut word)?;
        self.bytes = u64::from_le_bytes(word);
        Ok(())
    }
    fn reset(&mut self) {
        *self = Counter::default();
    }
    fn digest(&self) -> u64 {
        self.entries ^ self.bytes.rotate_left(32)
    }
}

#[derive(Serialize, Debug)]
struct Report {
    inflight: usize,
    value_bytes: usize,
    seconds: f64,
    committed: u64,
    committed_per_second: f64,
    errors: u64,
    latency_ms_p50: f64,
    latency_ms_p90: f64,
    latency_ms_p99: f64,
    latency_ms_p999: f64,
    latency_ms_max: f64,
    fsyncs_per_second: f64,
    fsync_ms_p50_master: f64,
    fsync_ms_p99_master: f64,
    mean_batch_records: f64,
    bytes_written_per_second: f64,
    /// Snapshots the master took while measuring.
    snapshots: u64,
}

const CLUSTER: ClusterId = ClusterId(0xbe9c);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(error) = run(args).await {
        eprintln!("log-bench: {error}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = tempfile::Builder::new()
        .prefix("log-bench-")
        .tempdir_in(&parent)?;
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    tls::init_dir(&root.path().join("certs"), CLUSTER, &nodes, &[])?;
    let sockets: Vec<UdpSocket> = nodes
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let peers: BTreeMap<NodeId, SocketAddr> = nodes
        .iter()
        .copied()
        .zip(sockets.iter().map(|s| s.local_addr()))
        .map(|(n, a)| a.map(|a| (n, a)))
        .collect::<Result<_, _>>()?;
    drop(sockets);

    let mut logs = BTreeMap::new();
    for node in &nodes {
        let material = tls::load_node_material(&root.path().join("certs"), CLUSTER, *node)?;
        let mut config = LogConfig::new(
            CLUSTER,
            *node,
            root.path().join(format!("node-{}", node.0)),
            peers.clone(),
        );
        config.start = StartMode::Bootstrap;
        config.storage.preallocate = !args.no_preallocate;
        if let Some(mib) = args.snapshot_every_mib {
            config.snapshot_every_bytes = mib << 20;
        }
        let log = Log::open_quic(config, Counter::default(), material, peers[node]).await?;
        logs.insert(*node, log);
    }
    let master = wait_for_master(&logs).await?;
    let log = logs[&master].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let mut workers = Vec::new();
    for worker in 0..args.inflight {
        let log = log.clone();
        let (stop, measuring) = (stop.clone(), measuring.clone());
        let (committed, errors, histogram) = (committed.clone(), errors.clone(), histogram.clone());
        let value = vec![worker as u8; args.value_bytes];
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = log.submit(value.clone()).await;
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match result {
                    Ok(_) => {
                        let micros = started.elapsed().as_micros() as u64;
                        let _ = local.record(micros.max(1));
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            histogram
                .lock()
                .expect("histogram")
                .add(&local)
                .expect("same bounds");
        }));
    }

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let before = metrics_of(&logs).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((args.duration * 10.0) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
            .expect("valid template"),
    );
    while started.elapsed().as_secs_f64() < args.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seconds = started.elapsed().as_secs_f64();
        bar.set_position((seconds * 10.0) as u64);
        bar.set_message(format!(
            "{:.0} committed/s",
            committed.load(Ordering::Relaxed) as f64 / seconds
        ));
    }
    measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let after = metrics_of(&logs).await;
    bar.finish_and_clear();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }

    let histogram = histogram.lock().expect("histogram").clone();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let fsyncs: u64 = nodes
        .iter()
        .map(|n| after[n].fsyncs - before[n].fsyncs)
        .sum();
    let records: u64 = nodes
        .iter()
        .map(|n| after[n].records_written - before[n].records_written)
        .sum();
    let bytes: u64 = nodes
        .iter()
        .map(|n| after[n].bytes_written - before[n].bytes_written)
        .sum();
    let count = committed.load(Ordering::Relaxed);
    let report = Report {
        inflight: args.inflight,
        value_bytes: args.value_bytes,
        seconds,
        committed: count,
        committed_per_second: count as f64 / seconds,
        errors: errors.load(Ordering::Relaxed),
        latency_ms_p50: ms(0.5),
        latency_ms_p90: ms(0.9),
        latency_ms_p99: ms(0.99),
        latency_ms_p999: ms(0.999),
        latency_ms_max: histogram.max() as f64 / 1000.0,
        fsyncs_per_second: fsyncs as f64 / seconds,
        fsync_ms_p50_master: after[&master].fsync_micros_p50 as f64 / 1000.0,
        fsync_ms_p99_master: after[&master].fsync_micros_p99 as f64 / 1000.0,
        mean_batch_records: if fsyncs == 0 {
            0.0
        } else {
            records as f64 / fsyncs as f64
        },
        bytes_written_per_second: bytes as f64 / seconds,
        snapshots: after[&master].snapshots_taken - before[&master].snapshots_taken,
    };
    for log in logs.values() {
        log.shutdown().await;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "log-bench: 3 replicas, QUIC+mTLS, fdatasync on, {} B values, {} in flight, {:.1} s",
            report.value_bytes, report.inflight, report.seconds
        );
        println!(
            "  committed  {:>10.0} values/s ({} values, {} errors)",
            report.committed_per_second, report.committed, report.errors
        );
        println!(
            "  latency    p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            report.latency_ms_p50,
            report.latency_ms_p90,
            report.latency_ms_p99,
            report.latency_ms_p999,
            report.latency_ms_max
        );
        println!(
            "  fsyncs     {:>10.0} /s over 3 replicas (master fsync p50 {:.3} ms, p99 {:.3} ms)",
            report.fsyncs_per_second, report.fsync_ms_p50_master, report.fsync_ms_p99_master
        );
        println!(
            "  batches    {:>10.1} records per fsync, {:.1} MB/s written, {} snapshots on the master",
            report.mean_batch_records,
            report.bytes_written_per_second / 1e6,
            report.snapshots
        );
    }
    Ok(())
}

async fn wait_for_master(
    logs: &BTreeMap<NodeId, Log<Counter>>,
) -> Result<NodeId, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for (node, log) in logs {
            if log.status().await.is_some_and(|s| s.lease) {
                return Ok(*node);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("no master elected within 30 s".into())
}

async fn metrics_of(
    logs: &BTreeMap<NodeId, Log<Counter>>,
) -> BTreeMap<NodeId, replicated_log::Metrics> {
    let mut all = BTreeMap::new();
    for (node, log) in logs {
        all.insert(*node, log.metrics().await.unwrap_or_default());
    }
    all
}
