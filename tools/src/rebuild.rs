//! `chubbyctl rebuild`: the operator flow for a replica whose disk is corrupt or lost (PML 5.1).
//!
//! 1. Check that the replica is stopped: nobody holds its data directory's lock (`DATA_DIR/LOCK`,
//!    taken by every running `chubbyd`), and no metrics endpoint answers as this node.
//! 2. Check the directory offline (`chubbyctl verify`) and show what is wrong with it. A directory
//!    that checks out is left alone unless `--force`.
//! 3. Move the bad state aside with the storage's own `quarantine` (into `DATA_DIR/damaged-<n>/`;
//!    nothing is ever deleted) and say where it went.
//! 4. Start the replica (`--start -- CMD...`, detached, its output appended to a log file) or ask
//!    the operator to. On an empty directory it finds that the cluster exists and rebuilds as a
//!    non-voting member under a new incarnation.
//! 5. Watch its `/status` and the master's: a progress bar of its applied slot against the master's
//!    chosen slot, until it votes again. Nothing needs promoting by hand: once caught up, the
//!    replica asks the master to choose its new incarnation into the membership, and votes from
//!    the slot where that is in force (`Record::RebuildDone`).
//!
//! Exit codes: 0 the replica votes again; 1 refused (still running, wrong directory, nothing to
//! rebuild, no master to rebuild from) or failed (it exited, or did not vote in time); 2 bad usage
//! or environment.

use crate::dev_cluster::http_get;
use crate::verify::{verify_data_dir, VerifyReport};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use replicated_log::storage::{
    DirLock, FileVfs, LockState, Opened, Storage, StorageError, StorageOptions,
};
use replicated_log::ClusterId;
use serde::Serialize;
use serde_json::Value;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the watch polls the replicas' status.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long rebuild waits for the other replicas to have a master before it refuses.
const MASTER_WAIT: Duration = Duration::from_secs(20);

#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// The replica's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The replica's node id (checked against the directory's identity file).
    #[arg(long)]
    pub node: u64,
    /// Metrics addresses (chubbyd --metrics-listen) of the replicas, this one's included, comma
    /// separated: the watch reads their /status.
    #[arg(long, value_delimiter = ',', required = true)]
    pub metrics: Vec<SocketAddr>,
    /// Rebuild even though the directory checks out (a suspect disk, or a replica whose database
    /// digest disagreed with the majority's).
    #[arg(long)]
    pub force: bool,
    /// Start the replica with the command after `--` (detached; output appended to --log).
    /// Without it, rebuild asks you to start the replica and watches for it.
    #[arg(long, requires = "command")]
    pub start: bool,
    /// Where the started replica's output goes [default: DATA_DIR.log, beside the directory].
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Give up watching after this many seconds (the replica keeps running).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// The replica's command line, for --start: `-- chubbyd --node N --data-dir DIR ...`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Why a rebuild stopped.
#[derive(Debug)]
pub enum RebuildError {
    /// Unsafe or pointless to go on: the text says why and what to do. Exit 1.
    Refused(String),
    /// The replica did not come back as a voter. Exit 1.
    Failed(String),
    /// Bad arguments or an unusable environment. Exit 2.
    Usage(String),
}

impl RebuildError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RebuildError::Refused(_) | RebuildError::Failed(_) => 1,
            RebuildError::Usage(_) => 2,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RebuildError::Refused(_) => "refused",
            RebuildError::Failed(_) => "failed",
            RebuildError::Usage(_) => "usage",
        }
    }
}

impl std::fmt::Display for RebuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RebuildError::Refused(why) | RebuildError::Failed(why) | RebuildError::Usage(why) => {
                f.write_str(why)
            }
        }
    }
}

/// What a finished rebuild did, printed as one JSON object with `--json`.
#[derive(Debug, Default, Serialize)]
pub struct RebuildReport {
    pub node: u64,
    pub data_dir: PathBuf,
    /// The offline check before anything moved: `ok`, `torn-tail`, `empty`, `damaged` or
    /// `missing` (no directory at all).
    pub verdict: String,
    pub problems: Vec<String>,
    /// Where the old state went (`DATA_DIR/damaged-<n>`); `None` if there was nothing to move.
    pub moved_to: Option<PathBuf>,
    /// The started replica's process id and log file (`--start`).
    pub pid: Option<u32>,
    pub log: Option<PathBuf>,
    /// The incarnation the directory held before, if its identity file was readable.
    pub incarnation_before: Option<u64>,
    /// The incarnation it votes under now.
    pub incarnation: u64,
    pub applied_through: u64,
    pub master: Option<u64>,
    pub master_chosen_through: u64,
    pub seconds: f64,
    pub voting: bool,
}

/// Runs the whole flow. Text goes to stdout unless `json`, where nothing is printed until the end.
pub fn run(args: &RebuildArgs, json: bool) -> Result<RebuildReport, RebuildError> {
    if args.node == 0 {
        return Err(RebuildError::Usage(
            "--node must be a node id above 0".into(),
        ));
    }
    if !args.command.is_empty() && !args.start {
        return Err(RebuildError::Usage(
            "a command after `--` is run only with --start".into(),
        ));
    }
    let out = Output { json };
    check_stopped(args)?;
    let master = wait_for_master(args, &out)?;
    let mut report = RebuildReport {
        node: args.node,
        data_dir: args.data_dir.clone(),
        ..RebuildReport::default()
    };
    let verify = check_directory(args, &master, &mut report, &out)?;
    report.moved_to = move_aside(args, verify.as_ref(), &report, &out)?;
    let mut child = match args.start {
        true => Some(start(args, &mut report, &out)?),
        false => {
            out.say(format!(
                "now start node {} on {} with its usual command; waiting for it...",
                args.node,
                args.data_dir.display()
            ));
            None
        }
    };
    watch(args, child.as_mut(), &mut report, &out)?;
    Ok(report)
}

/// Prints progress for people; silent with `--json`.
struct Output {
    json: bool,
}

impl Output {
    fn say(&self, line: String) {
        if !self.json {
            println!("{line}");
        }
    }
}

fn list(addresses: &[SocketAddr]) -> String {
    let all: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    all.join(", ")
}

/// Refuses while anything runs as this replica: its directory's lock is held, or a metrics
/// endpoint answers as this node (perhaps running on another directory).
fn check_stopped(args: &RebuildArgs) -> Result<(), RebuildError> {
    match DirLock::probe(&args.data_dir) {
        Ok(LockState::Free) => {}
        Ok(LockState::Held { pid }) => {
            let who = pid.map_or("a process".to_string(), |p| format!("process {p}"));
            let how = pid.map_or(String::new(), |p| format!(" (`kill {p}`)"));
            return Err(RebuildError::Refused(format!(
                "{} is in use by {who}: node {} is running. Stop it first{how}; SIGTERM lets it \
                 finish its queued writes. Then run rebuild again.",
                args.data_dir.display(),
                args.node
            )));
        }
        Err(error) => return Err(RebuildError::Usage(error.to_string())),
    }
    let cluster = Cluster::poll(&args.metrics);
    if let Some((address, _)) = cluster.node(args.node) {
        return Err(RebuildError::Refused(format!(
            "node {} answers at {address}: it is running (on another directory than {}?). Stop \
             it first, then run rebuild again.",
            args.node,
            args.data_dir.display()
        )));
    }
    Ok(())
}

/// A rebuild copies the state from the others, so they must be running with a master. Right after
/// the master itself was stopped, the others need a few election timeouts to elect one.
fn wait_for_master(args: &RebuildArgs, out: &Output) -> Result<Value, RebuildError> {
    let deadline = Instant::now() + MASTER_WAIT;
    let mut said = false;
    loop {
        if let Some(master) = Cluster::poll(&args.metrics).master() {
            return Ok(master.clone());
        }
        if Instant::now() >= deadline {
            return Err(RebuildError::Refused(format!(
                "no replica among {} reports a master after {} s: a rebuild copies the state from \
                 the others, so a majority of them must be running with a master first (check \
                 `chubbyctl status --metrics ...`)",
                list(&args.metrics),
                MASTER_WAIT.as_secs()
            )));
        }
        if !said {
            out.say("waiting for the other replicas to have a master...".into());
            said = true;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The offline check: shows what is wrong, refuses a directory of another node or cluster, and
/// one that checks out unless `--force`. `None` when there is no directory at all.
fn check_directory(
    args: &RebuildArgs,
    master: &Value,
    report: &mut RebuildReport,
    out: &Output,
) -> Result<Option<VerifyReport>, RebuildError> {
    if !args.data_dir.exists() {
        report.verdict = "missing".into();
        out.say(format!(
            "{} does not exist: nothing to move aside (the replica recreates it)",
            args.data_dir.display()
        ));
        return Ok(None);
    }
    let verify = verify_data_dir(&args.data_dir).map_err(|e| {
        RebuildError::Usage(format!("cannot read {}: {e}", args.data_dir.display()))
    })?;
    report.verdict = verify.verdict.to_string();
    report.incarnation_before = verify.incarnation;
    report.problems = verify.problems.iter().map(describe_problem).collect();
    if let Some(node) = verify.node.filter(|n| *n != args.node) {
        return Err(RebuildError::Refused(format!(
            "{} belongs to node {node}, not node {}: point --data-dir at node {}'s own directory",
            args.data_dir.display(),
            args.node,
            args.node
        )));
    }
    // /status carries the cluster id as a number; identities print it as 16 hex digits.
    let cluster = master["cluster"]
        .as_u64()
        .map_or(String::new(), |c| ClusterId(c).to_string());
    if let Some(mine) = verify.cluster.as_deref().filter(|c| *c != cluster) {
        return Err(RebuildError::Refused(format!(
            "{} belongs to cluster {mine}, but the replicas at --metrics are cluster {cluster}",
            args.data_dir.display()
        )));
    }
    out.say(format!(
        "{}: {} ({} files checked)",
        args.data_dir.display(),
        verify.verdict,
        verify.files_checked
    ));
    for problem in &report.problems {
        out.say(format!("  {problem}"));
    }
    let sound = matches!(verify.verdict, "ok" | "torn-tail");
    if sound && !args.force {
        return Err(RebuildError::Refused(format!(
            "{} checks out ({}): nothing to rebuild. Start node {} normally (it cuts a torn tail \
             itself), or pass --force to rebuild it anyway.",
            args.data_dir.display(),
            verify.verdict,
            args.node
        )));
    }
    Ok(Some(verify))
}

fn describe_problem(problem: &crate::verify::Problem) -> String {
    let file = problem
        .file
        .as_ref()
        .map_or("(directory)".to_string(), |f| f.display().to_string());
    match problem.offset {
        Some(offset) => format!("{file} at byte {offset}: {}", problem.what),
        None => format!("{file}: {}", problem.what),
    }
}

/// Moves the replica's files into `damaged-<n>/` with the storage's own quarantine (which holds
/// the directory's lock while it does). Nothing to move for a missing or empty directory.
fn move_aside(
    args: &RebuildArgs,
    verify: Option<&VerifyReport>,
    report: &RebuildReport,
    out: &Output,
) -> Result<Option<PathBuf>, RebuildError> {
    let Some(verify) = verify else {
        return Ok(None);
    };
    if verify.verdict == "empty" {
        out.say("nothing of the replica's to move aside".into());
        return Ok(None);
    }
    // A torn tail is reported, not cut: with --force the files move aside exactly as they are.
    let options = StorageOptions {
        repair_torn_tail: false,
        ..StorageOptions::default()
    };
    let refused = |error: StorageError| match error {
        StorageError::Locked(lock) => RebuildError::Refused(format!(
            "{lock} (node {} was started while rebuild ran?)",
            report.node
        )),
        other => RebuildError::Failed(format!(
            "cannot move {} aside: {other}",
            args.data_dir.display()
        )),
    };
    let (mut storage, opened) = Storage::open(FileVfs, &args.data_dir, options).map_err(refused)?;
    if opened == Opened::Empty {
        out.say("nothing of the replica's to move aside".into());
        return Ok(None);
    }
    let moved = storage.quarantine().map_err(refused)?;
    drop(storage); // releases the lock before the replica starts
    out.say(format!(
        "moved the old state aside to {} (nothing was deleted; remove it yourself once you no \
         longer need it)",
        moved.display()
    ));
    Ok(Some(moved))
}

/// Spawns the replica detached (its own process group, so Ctrl-C here does not stop it), its
/// output appended to the log file.
fn start(
    args: &RebuildArgs,
    report: &mut RebuildReport,
    out: &Output,
) -> Result<Child, RebuildError> {
    let log_path = args.log.clone().unwrap_or_else(|| {
        let mut name = args.data_dir.clone().into_os_string();
        name.push(".log");
        PathBuf::from(name)
    });
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| RebuildError::Usage(format!("cannot open {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| RebuildError::Usage(format!("cannot open {}: {e}", log_path.display())))?;
    use std::os::unix::process::CommandExt;
    let child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| RebuildError::Usage(format!("cannot run {}: {e}", args.command[0])))?;
    out.say(format!(
        "started node {} (pid {}), output in {}",
        args.node,
        child.id(),
        log_path.display()
    ));
    report.pid = Some(child.id());
    report.log = Some(log_path);
    Ok(child)
}

/// Where the rebuilding replica is, as its /status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Its endpoint does not answer yet.
    Starting,
    /// Asking its peers whether the cluster exists (empty directory).
    Probing,
    /// Non-voting, learning the chosen log (or a snapshot) from its peers.
    CatchingUp,
    /// A voter again, under this incarnation.
    Voting { incarnation: u64 },
}

impl Phase {
    fn of(status: Option<&Value>) -> Phase {
        let Some(status) = status else {
            return Phase::Starting;
        };
        let incarnation = status["incarnation"].as_u64().unwrap_or(0);
        if status["voting"] == true && incarnation > 0 {
            Phase::Voting { incarnation }
        } else if status["rebuilding"] == true {
            Phase::CatchingUp
        } else {
            Phase::Probing
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Phase::Starting => "waiting for its endpoint",
            Phase::Probing => "asking its peers what they hold",
            Phase::CatchingUp => "catching up as a non-voting member",
            Phase::Voting { .. } => "voting",
        }
    }
}

/// Polls until the replica votes again, its process exits, or the timeout.
fn watch(
    args: &RebuildArgs,
    mut child: Option<&mut Child>,
    report: &mut RebuildReport,
    out: &Output,
) -> Result<(), RebuildError> {
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.timeout);
    let bar = progress_bar(out.json);
    let mut last = None;
    loop {
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bar.finish_and_clear();
                return Err(exited(args, status, report));
            }
        }
        let cluster = Cluster::poll(&args.metrics);
        let own = cluster.node(args.node).map(|(_, s)| s);
        let phase = Phase::of(own);
        let master = cluster.master();
        let target = master.map_or(0, |m| m["chosen_through"].as_u64().unwrap_or(0));
        let applied = own.map_or(0, |s| s["applied_through"].as_u64().unwrap_or(0));
        bar.set_length(target.max(applied).max(1));
        bar.set_position(applied);
        bar.set_message(phase.describe());
        if last.as_ref() != Some(&phase) && bar.is_hidden() {
            // Without a drawn bar (not a terminal), one line per phase, for logs.
            out.say(format!("node {}: {}", args.node, phase.describe()));
        }
        last = Some(phase.clone());
        if let Phase::Voting { incarnation } = phase {
            let renewed = report
                .incarnation_before
                .is_none_or(|old| incarnation > old);
            if renewed {
                bar.finish_and_clear();
                report.incarnation = incarnation;
                report.applied_through = applied;
                report.master = master.and_then(|m| m["node"].as_u64());
                report.master_chosen_through = target;
                report.seconds = began.elapsed().as_secs_f64();
                report.voting = true;
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bar.finish_and_clear();
            return Err(RebuildError::Failed(format!(
                "node {} is still {} after {} s (applied {applied} of {target}); it keeps \
                 running: watch it with `chubbyctl status --metrics {}` and its log",
                args.node,
                last.as_ref().map_or("starting", Phase::describe),
                args.timeout,
                args.metrics
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn progress_bar(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} slots  {msg} ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The replica's process ended before it voted: show the end of its log.
fn exited(
    args: &RebuildArgs,
    status: std::process::ExitStatus,
    report: &RebuildReport,
) -> RebuildError {
    let tail = report
        .log
        .as_deref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .map(|text| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n  ")
        })
        .unwrap_or_default();
    RebuildError::Failed(format!(
        "node {} exited ({status}) before it voted again; the end of {}:\n  {tail}",
        args.node,
        report
            .log
            .as_deref()
            .map_or("its log".into(), |p: &Path| p.display().to_string())
    ))
}

/// One round of /status from every metrics address.
struct Cluster {
    statuses: Vec<(SocketAddr, Value)>,
}

impl Cluster {
    fn poll(addresses: &[SocketAddr]) -> Cluster {
        let statuses = addresses
            .iter()
            .filter_map(|address| {
                let (code, body) = http_get(*address, "/status")?;
                let value: Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
                Some((*address, value))
            })
            .collect();
        Cluster { statuses }
    }

    /// The status of `node`, and where it answered.
    fn node(&self, node: u64) -> Option<(SocketAddr, &Value)> {
        self.statuses
            .iter()
            .find(|(_, s)| s["node"].as_u64() == Some(node))
            .map(|(a, s)| (*a, s))
    }

    /// The master's status: the replica that is master under a valid lease.
    fn master(&self) -> Option<&Value> {
        self.statuses
            .iter()
            .map(|(_, s)| s)
            .find(|s| s["role"] == "Master" && s["lease"] == true)
    }
}

/// Prints the final report as text.
pub fn print_report(report: &RebuildReport) {
    let before = report
        .incarnation_before
        .map_or(String::new(), |i| format!(", was {i}"));
    println!(
        "node {} votes again (incarnation {}{before}): applied through slot {}, master {} has \
         chosen through {}; took {:.1} s",
        report.node,
        report.incarnation,
        report.applied_through,
        report
            .master
            .map_or("(unknown)".to_string(), |m| m.to_string()),
        report.master_chosen_through,
        report.seconds
    );
    if let Some(moved) = &report.moved_to {
        println!("the old state is kept in {}", moved.display());
    }
}
