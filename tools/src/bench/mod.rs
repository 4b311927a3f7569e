//! `chubby-bench`: closed-loop load against running chubbyd replicas through the client crate.
//!
//! `--clients` sessions (each its own QUIC connection) share `--concurrency` workers round-robin;
//! each worker keeps exactly one request in flight. After `--warmup` seconds, every op *started*
//! in the next `--duration` seconds is counted and its latency recorded, even if it ends after
//! the window (so a stall shows in the maximum); ops/s is that count over the window. This is
//! the shape of the etcd and ZooKeeper anchors in `../shared/anchors`, so the figures compare.
//!
//! Workloads (`--workload`):
//! - `set`: replace a random file's contents (`--value-bytes`), one log round each;
//! - `get`: linearizable read of a random file (the master under its lease);
//! - `get-stale`: read of a random file from the replica the session is connected to;
//! - `cas`: a MultiOp with a content-generation guard: `Set` if it holds, `Read` otherwise
//!   (the generation each worker expects is shared, so conflicts are real races);
//! - `lock`: acquire a random lock of `--lock-keys` exclusively (waiting in its queue) and
//!   release it; one op is the pair;
//! - `mixed`: `--read-percent` linearizable reads, the rest sets.
//!
//! The files live under `--prefix` and are created (or resized) before the warm-up unless
//! `--no-populate` says they already exist.

mod workload;

use chubby_client::{Client, ClientConfig, Create, Error as ClientError, OpError};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::{Shared, Worker};

/// The workloads; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Set,
    Get,
    GetStale,
    Cas,
    Lock,
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Set => "set",
            Workload::Get => "get",
            Workload::GetStale => "get-stale",
            Workload::Cas => "cas",
            Workload::Lock => "lock",
            Workload::Mixed => "mixed",
        }
    }

    fn needs_files(self) -> bool {
        self != Workload::Lock
    }
}

/// What to run; the connection (cluster, certificates, endpoints) comes separately.
#[derive(Args, Clone, Debug)]
pub struct BenchOptions {
    #[arg(long, value_enum, default_value = "set")]
    pub workload: Workload,
    /// Sessions, each with its own connection; the workers are spread over them.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Requests in flight at once (workers, each with one request outstanding).
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Size of each written value, and of the files read.
    #[arg(long, default_value_t = 1024)]
    pub value_bytes: usize,
    /// How many files the reads and writes pick from (uniformly).
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// How many locks the `lock` workload contends for.
    #[arg(long, default_value_t = 8)]
    pub lock_keys: usize,
    /// Share of reads in the `mixed` workload, in percent.
    #[arg(long, default_value_t = 80)]
    pub read_percent: u8,
    /// Measured time, in seconds.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Unmeasured time before, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// The directory the benchmark's files live in (created if absent).
    #[arg(long, default_value = "/bench")]
    pub prefix: String,
    /// Do not create or resize the files first (a previous run left them as they should be).
    #[arg(long)]
    pub no_populate: bool,
}

impl BenchOptions {
    /// What makes these options unusable, if anything.
    pub fn invalid(&self) -> Option<String> {
        if self.clients == 0 || self.concurrency == 0 {
            return Some("--clients and --concurrency must be at least 1".into());
        }
        if self.keys == 0 || self.lock_keys == 0 {
            return Some("--keys and --lock-keys must be at least 1".into());
        }
        if self.read_percent > 100 {
            return Some("--read-percent is at most 100".into());
        }
        if !(self.duration > 0.0 && self.warmup >= 0.0) {
            return Some("--duration must be positive and --warmup not negative".into());
        }
        if self.prefix == "/" || !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return Some("--prefix must be an absolute path below the root, like /bench".into());
        }
        None
    }
}

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub workload: Workload,
    pub clients: usize,
    pub concurrency: usize,
    pub value_bytes: usize,
    pub keys: usize,
    /// The measured window.
    pub seconds: f64,
    /// Ops started in the window that succeeded.
    pub ops: u64,
    pub ops_per_second: f64,
    /// Ops started in the window that failed (after the client's own retries).
    pub errors: u64,
    /// The first error seen, for diagnosis.
    pub first_error: Option<String>,
    /// `cas` only: MultiOps whose guard failed (someone else wrote first); counted in `ops`.
    pub cas_conflicts: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub latency_ms_mean: f64,
    /// CPU time (user + system) this process used over the whole run.
    pub client_cpu_seconds: f64,
}

impl Report {
    /// The human summary.
    pub fn text(&self) -> String {
        let mut out = format!(
            "chubby-bench {}: {} sessions, {} in flight, {} B values, {} keys, {:.1} s\n",
            self.workload.name(),
            self.clients,
            self.concurrency,
            self.value_bytes,
            self.keys,
            self.seconds
        );
        out += &format!(
            "  throughput {:>10.0} ops/s ({} ops, {} errors)\n",
            self.ops_per_second, self.ops, self.errors
        );
        out += &format!(
            "  latency    p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  mean {:.3} ms\n",
            self.latency_ms_p50,
            self.latency_ms_p90,
            self.latency_ms_p99,
            self.latency_ms_p999,
            self.latency_ms_max,
            self.latency_ms_mean
        );
        if self.workload == Workload::Cas {
            out += &format!("  conflicts  {} guards failed\n", self.cas_conflicts);
        }
        if let Some(error) = &self.first_error {
            out += &format!("  first error: {error}\n");
        }
        out += &format!("  client cpu {:.1} s\n", self.client_cpu_seconds);
        out
    }
}

/// What one worker measured.
pub(crate) struct Tally {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    cas_conflicts: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: 0,
            first_error: None,
            cas_conflicts: 0,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.histogram.add(&other.histogram).expect("same bounds");
        self.errors += other.errors;
        self.cas_conflicts += other.cas_conflicts;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Connects the sessions, populates the files, runs the workload and reports. `progress` draws a
/// bar on standard error (when it is a terminal).
pub async fn run(
    config: ClientConfig,
    options: &BenchOptions,
    progress: bool,
) -> Result<Report, String> {
    if let Some(why) = options.invalid() {
        return Err(why);
    }
    let mut clients = Vec::with_capacity(options.clients);
    for _ in 0..options.clients {
        let client = Client::connect(config.clone())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        clients.push(Arc::new(client));
    }
    populate(&clients, options).await?;

    let shared = Arc::new(Shared::new(options));
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(options.warmup);
    let deadline = measure_from + Duration::from_secs_f64(options.duration);
    let counted = Arc::new(AtomicU64::new(0));
    let locks: Vec<Arc<workload::SessionLocks>> = clients
        .iter()
        .map(|_| Arc::new(workload::SessionLocks::new(options.lock_keys)))
        .collect();
    let mut tasks = Vec::with_capacity(options.concurrency);
    for index in 0..options.concurrency {
        let session = index % clients.len();
        let worker = Worker {
            index,
            client: clients[session].clone(),
            locks: locks[session].clone(),
            shared: shared.clone(),
            measure_from,
            deadline,
            counted: counted.clone(),
        };
        tasks.push(tokio::spawn(worker.run()));
    }

    let bar = progress_bar(progress, options);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        if now < measure_from {
            bar.set_message("warming up");
            continue;
        }
        let seconds = (now.min(deadline) - measure_from).as_secs_f64();
        bar.set_position((seconds * 10.0) as u64);
        if seconds > 0.0 {
            bar.set_message(format!(
                "{:.0} ops/s",
                counted.load(Ordering::Relaxed) as f64 / seconds
            ));
        }
    }
    bar.finish_and_clear();

    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(task.await.map_err(|e| format!("worker: {e}"))?);
    }
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            let _ = client.close().await;
        }
    }
    Ok(report(options, &tally))
}

fn progress_bar(progress: bool, options: &BenchOptions) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new((options.duration * 10.0) as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{} {{bar:40}} {{elapsed}} {{msg}}",
            options.workload.name()
        ))
        .expect("valid template"),
    );
    bar
}

fn report(options: &BenchOptions, tally: &Tally) -> Report {
    let histogram = &tally.histogram;
    let ms = |micros: u64| micros as f64 / 1000.0;
    let ops = histogram.len();
    Report {
        workload: options.workload,
        clients: options.clients,
        concurrency: options.concurrency,
        value_bytes: options.value_bytes,
        keys: options.keys,
        seconds: options.duration,
        ops,
        ops_per_second: ops as f64 / options.duration,
        errors: tally.errors,
        first_error: tally.first_error.clone(),
        cas_conflicts: tally.cas_conflicts,
        latency_ms_p50: ms(histogram.value_at_quantile(0.50)),
        latency_ms_p90: ms(histogram.value_at_quantile(0.90)),
        latency_ms_p99: ms(histogram.value_at_quantile(0.99)),
        latency_ms_p999: ms(histogram.value_at_quantile(0.999)),
        latency_ms_max: ms(histogram.max()),
        latency_ms_mean: histogram.mean() / 1000.0,
        client_cpu_seconds: self_cpu_seconds(),
    }
}

/// Makes the prefix directory and the files (or lock nodes) the workload uses, each file holding
/// `value_bytes`, with `concurrency` requests in flight.
async fn populate(clients: &[Arc<Client>], options: &BenchOptions) -> Result<(), String> {
    if options.no_populate {
        return Ok(());
    }
    match clients[0]
        .create(options.prefix.as_str(), Create::directory())
        .await
    {
        Ok(_) | Err(ClientError::Op(OpError::AlreadyExists)) => {}
        Err(error) => return Err(format!("create {}: {error}", options.prefix)),
    }
    let (count, value) = if options.workload.needs_files() {
        (options.keys, vec![b'v'; options.value_bytes])
    } else {
        (options.lock_keys, Vec::new())
    };
    let workers = options.concurrency.min(count);
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let client = clients[worker % clients.len()].clone();
        let (options, value) = (options.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for key in (worker..count).step_by(workers) {
                let path = if options.workload.needs_files() {
                    workload::file_path(&options.prefix, key)
                } else {
                    workload::lock_path(&options.prefix, key)
                };
                let created = client
                    .create(path.as_str(), Create::file(value.clone()))
                    .await;
                let result = match created {
                    Err(ClientError::Op(OpError::AlreadyExists)) if !value.is_empty() => {
                        client.set(path.as_str(), value.clone()).await.map(|_| ())
                    }
                    Err(ClientError::Op(OpError::AlreadyExists)) => Ok(()),
                    other => other.map(|_| ()),
                };
                result.map_err(|e| format!("populate {path}: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("populate: {e}"))??;
    }
    Ok(())
}

/// User plus system CPU seconds of this process, from /proc/self/stat (0 where unavailable).
fn self_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // After the parenthesised command name: state is field 0, utime 11, stime 12 (in ticks).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => 0.0,
    }
}
