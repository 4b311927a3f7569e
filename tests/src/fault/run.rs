//! One fault run: start the cluster, run the clients, inject faults round after round, and after
//! each round heal everything, let the clients finish, read every key, and check the round.
//!
//! Why rounds: linearizability search is exponential in the worst case, and a 30-minute history
//! is long. At the end of a round nothing is in flight, the faults are healed and a master has
//! filled every slot, so no operation of the round can take effect later. The round's final reads
//! are checked with the round, and the next round starts from the values they returned (as writes
//! that completed just before it). Each round is checked on its own, while the next one runs.

use super::cluster::{Cluster, ClusterOptions};
use super::nemesis::{Drill, Nemeses, Nemesis};
use super::proxy::FaultNet;
use super::workload::{self, read_all, Recorder, WorkloadOptions};
use crate::lincheck::{
    check, check_durability, check_fenced_log, Budget, Completion, History, Input, Key, KeyWrite,
    LockViolation, Operation, Output, TxnOp, Value, Verdict,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Everything a run is made of; the seed draws the rest.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    /// How long to inject faults (the run ends with the last round after this).
    pub duration: Duration,
    pub voters: u64,
    pub nemeses: Vec<Nemesis>,
    /// Two faults at once in some rounds.
    pub combine: bool,
    /// `CHUBBYD_PLANTED_BUGS` for every replica.
    pub planted_bugs: String,
    pub workload: WorkloadOptions,
    /// Where the replicas' files and logs go; kept after a failed run.
    pub dir: PathBuf,
    /// The linearizability checker's budget per round.
    pub check_budget: Duration,
    /// Scale of fault durations.
    pub fault_scale: f64,
    /// Rounds to run at least, however short the duration.
    pub min_rounds: u64,
    /// Every partition cuts the master off (for at least 4 s) while clients still reach it.
    pub isolate_master: bool,
}

/// What a run did and found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub voters: u64,
    pub nemeses: Vec<String>,
    pub planted_bugs: String,
    pub seconds: f64,
    pub rounds: u64,
    pub ops_ok: u64,
    pub ops_unknown: u64,
    pub ops_failed: u64,
    pub sessions: u64,
    pub lock_grants: u64,
    pub fenced_writes: u64,
    pub faults: BTreeMap<String, u64>,
    pub drills: Vec<Drill>,
    /// Rounds the linearizability checker proved linearizable, and rounds it ran out of budget.
    pub rounds_linearizable: u64,
    pub rounds_unknown: u64,
    pub checker_seconds: f64,
    pub lost_writes: u64,
    pub violations: Vec<String>,
    /// What did not go as planned without being a violation.
    pub notes: Vec<String>,
    pub dir: String,
}

/// What checking one round found.
#[derive(Debug, Default)]
struct RoundCheck {
    linearizable: bool,
    unknown: bool,
    lost_writes: u64,
    violations: Vec<String>,
    seconds: f64,
}

/// Runs the whole thing. Must be called from a blocking context inside a tokio runtime
/// (`spawn_blocking`): the nemeses block, the clients run on the runtime.
pub fn run(options: &RunOptions, progress: &dyn Fn(&str)) -> Result<Report, String> {
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    let net = FaultNet::new(options.seed);
    let spares = if options.nemeses.contains(&Nemesis::Membership) {
        8
    } else {
        0
    };
    let cluster_options = ClusterOptions {
        voters: options.voters,
        spares,
        planted_bugs: options.planted_bugs.clone(),
        ..ClusterOptions::default()
    };
    let drift = cluster_options.drift_ppm;
    let mut cluster = handle.block_on(Cluster::start(
        &options.dir,
        options.seed,
        cluster_options,
        net,
    ))?;
    progress(&format!(
        "{} replicas up in {} (cluster {})",
        options.voters,
        options.dir.display(),
        cluster.cluster
    ));
    cluster.wait_healthy(Duration::from_secs(60))?;
    let config = cluster.client_config()?;
    let mut client_config = config.clone();
    client_config.timeouts = workload::client_timeouts();
    handle.block_on(workload::create_store(&config, &options.workload))?;
    let keys = options.workload.keys();

    let recorder = Recorder::new();
    let tasks = handle.block_on(async {
        workload::spawn_clients(&client_config, &options.workload, options.seed, &recorder)
    });
    let spare_ids: Vec<u64> = (options.voters + 1..=options.voters + spares).collect();
    let mut nemeses = Nemeses::new(
        options.nemeses.clone(),
        options.combine,
        options.seed,
        spare_ids,
        drift,
    );
    nemeses.scale = options.fault_scale;
    nemeses.isolate_master = options.isolate_master;

    let mut report = Report {
        seed: options.seed,
        voters: options.voters,
        nemeses: options.nemeses.iter().map(|n| n.to_string()).collect(),
        planted_bugs: options.planted_bugs.clone(),
        dir: options.dir.display().to_string(),
        ..Report::default()
    };
    let mut checks: Vec<std::thread::JoinHandle<RoundCheck>> = Vec::new();
    // The values the current round starts from: every key empty at first.
    let mut start_values: BTreeMap<Key, Option<Value>> =
        keys.iter().map(|k| (k.clone(), None)).collect();
    let mut round_start = recorder.now();
    while started.elapsed() < options.duration || report.rounds < options.min_rounds.max(1) {
        report.rounds += 1;
        let faults = nemeses.round(&mut cluster);
        for line in &faults.injected {
            progress(&format!("round {}: {line}", report.rounds));
        }
        report.violations.extend(faults.problems);
        report.drills.extend(faults.drills);

        // Quiesce: everything healed and back, nothing in flight, every replica caught up.
        cluster.net.heal();
        cluster.resume_all();
        for node in cluster.members.clone() {
            if !cluster.is_running(node) {
                if let Err(why) = cluster.spawn(node) {
                    report
                        .violations
                        .push(format!("restart of node {node}: {why}"));
                }
            }
        }
        let stuck = handle.block_on(recorder.hold(Duration::from_secs(30)));
        if stuck > 0 {
            progress(&format!("{stuck} operations still in flight after 30 s"));
        }
        if let Err(why) = cluster.wait_healthy(Duration::from_secs(90)) {
            report.violations.push(format!(
                "round {}: no recovery after healing: {why}",
                report.rounds
            ));
            break;
        }
        let read_call = recorder.now();
        let finals = match handle.block_on(read_all(&config, &keys, Duration::from_secs(60))) {
            Ok(values) => values,
            Err(why) => {
                report.violations.push(format!(
                    "round {}: final reads failed: {why}",
                    report.rounds
                ));
                break;
            }
        };
        let read_return = recorder.now();
        // The replicas' digests at one slot: a voter still catching up may miss the deadline, so
        // an incomplete report is asked again; differing digests are a violation.
        let mut agreement = Err("not asked".to_string());
        for _ in 0..3 {
            agreement = handle.block_on(async {
                let admin = cluster.admin()?;
                let report = tokio::time::timeout(
                    Duration::from_secs(20),
                    admin.check(Duration::from_secs(10)),
                )
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string());
                admin.close();
                report
            });
            if agreement.as_ref().is_ok_and(|check| check.complete) {
                break;
            }
        }
        match agreement {
            Ok(check) if check.agree() => {}
            Ok(check) => {
                let mut digests = check.digests.values();
                let first = digests.next();
                if digests.any(|d| Some(d) != first) {
                    report.violations.push(format!(
                        "round {}: replicas disagree at slot {}: digests {:?}",
                        report.rounds, check.slot, check.digests
                    ));
                } else {
                    report.notes.push(format!(
                        "round {}: digest check at slot {} incomplete (voters {:?} answered {:?})",
                        report.rounds,
                        check.slot,
                        check.voters,
                        check.digests.keys().collect::<Vec<_>>()
                    ));
                }
            }
            Err(why) => report.notes.push(format!(
                "round {}: digest check not done: {why}",
                report.rounds
            )),
        }

        let mut history = recorder.take_round();
        let ops = history.ops.len();
        seed_round(&mut history, &start_values, round_start);
        for (key, value) in &finals {
            history.ops.push(Operation {
                client: 0,
                call: read_call,
                input: Input::Read { key: key.clone() },
                completion: Completion::Returned {
                    at: read_return,
                    output: Output::Read(value.clone()),
                },
            });
        }
        let round = report.rounds;
        let budget = options.check_budget;
        let finals_for_check = finals.clone();
        checks.push(std::thread::spawn(move || {
            check_round(round, history, &finals_for_check, budget)
        }));
        progress(&format!(
            "round {round}: {ops} operations, final values read, checking (ok {}, unknown {}, sessions {})",
            recorder.counters.ok.load(Ordering::Relaxed),
            recorder.counters.unknown.load(Ordering::Relaxed),
            recorder.counters.sessions.load(Ordering::Relaxed),
        ));
        start_values = finals;
        round_start = recorder.now();
        recorder.release();
    }
    recorder.stop();
    recorder.release();
    handle.block_on(async {
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    });

    for check in checks {
        let result = check
            .join()
            .map_err(|_| "a round checker panicked".to_string())?;
        report.checker_seconds += result.seconds;
        report.rounds_linearizable += u64::from(result.linearizable);
        report.rounds_unknown += u64::from(result.unknown);
        report.lost_writes += result.lost_writes;
        report.violations.extend(result.violations);
    }
    let fenced = recorder.fenced.lock().expect("fenced").clone();
    let lock_violations = check_fenced_log(&fenced);
    for violation in &lock_violations {
        let show = |i: usize| {
            let w = &fenced[i];
            format!(
                "#{i} client {} generation {} at {}",
                w.client, w.generation, w.at
            )
        };
        let detail = match violation {
            LockViolation::SharedGrant { first, second, .. } => {
                format!("{} and {}", show(*first), show(*second))
            }
            LockViolation::GenerationWentBack { earlier, later } => {
                format!("{} then {}", show(*earlier), show(*later))
            }
        };
        report
            .violations
            .push(format!("lock: {violation:?}: {detail}"));
    }
    if !lock_violations.is_empty() {
        let mut text: Vec<String> = fenced
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "#{i} {:>15} client {} generation {}",
                    w.at, w.client, w.generation
                )
            })
            .collect();
        text.push(String::new());
        text.extend(
            recorder
                .lock_events
                .lock()
                .expect("lock events")
                .iter()
                .cloned(),
        );
        let path = options.dir.join("locks.txt");
        let _ = std::fs::write(&path, text.join("\n"));
        report
            .notes
            .push(format!("fenced log and lock events in {}", path.display()));
    }
    let counters = &recorder.counters;
    report.ops_ok = counters.ok.load(Ordering::Relaxed);
    report.ops_unknown = counters.unknown.load(Ordering::Relaxed);
    report.ops_failed = counters.failed.load(Ordering::Relaxed);
    report.sessions = counters.sessions.load(Ordering::Relaxed);
    report.lock_grants = counters.lock_grants.load(Ordering::Relaxed);
    report.fenced_writes = counters.fenced_writes.load(Ordering::Relaxed);
    report.faults = nemeses.counts.clone();
    report.seconds = started.elapsed().as_secs_f64();
    cluster.kill_all();
    Ok(report)
}

/// The values a round starts from, as writes that completed just before it.
fn seed_round(history: &mut History, values: &BTreeMap<Key, Option<Value>>, start: u64) {
    for (key, value) in values {
        history.ops.push(Operation {
            client: 0,
            call: start.saturating_sub(2),
            input: Input::Write {
                key: key.clone(),
                value: value.clone(),
            },
            completion: Completion::Returned {
                at: start.saturating_sub(1),
                output: Output::Written,
            },
        });
    }
}

/// The writes of a history as the durability checker sees them.
fn key_writes(history: &History) -> Vec<KeyWrite> {
    let mut writes = Vec::new();
    for op in &history.ops {
        let acked = match &op.completion {
            Completion::Returned { at, .. } => Some(*at),
            Completion::Unknown => None,
        };
        let output = match &op.completion {
            Completion::Returned { output, .. } => Some(output),
            Completion::Unknown => None,
        };
        let mut push = |key: &Key, value: &Option<Value>, acked: Option<u64>| {
            writes.push(KeyWrite {
                key: key.clone(),
                value: value.clone(),
                call: op.call,
                acked,
            })
        };
        match (&op.input, output) {
            (Input::Write { key, value }, _) => push(key, value, acked),
            (Input::Cas { key, new, .. }, Some(Output::Cas(true))) => push(key, new, acked),
            (Input::Cas { key, new, .. }, None) => push(key, new, None),
            (Input::Txn(txn), Some(Output::Txn { held, .. })) => {
                let branch = if *held { &txn.then } else { &txn.otherwise };
                for op in branch {
                    if let TxnOp::Write(key, value) = op {
                        push(key, value, acked);
                    }
                }
            }
            (Input::Txn(txn), None) => {
                for op in txn.then.iter().chain(&txn.otherwise) {
                    if let TxnOp::Write(key, value) = op {
                        push(key, value, None);
                    }
                }
            }
            _ => {}
        }
    }
    writes
}

fn check_round(
    round: u64,
    history: History,
    finals: &BTreeMap<Key, Option<Value>>,
    budget: Duration,
) -> RoundCheck {
    let started = Instant::now();
    let mut result = RoundCheck::default();
    history.assert_well_formed();
    match check(&history, Budget::time(budget)) {
        Verdict::Linearizable => result.linearizable = true,
        Verdict::NotLinearizable(witness) => result.violations.push(format!(
            "round {round}: not linearizable: {}",
            witness.explain(&history)
        )),
        Verdict::Unknown { .. } => result.unknown = true,
    }
    for lost in check_durability(&key_writes(&history), finals) {
        result.lost_writes += 1;
        result
            .violations
            .push(format!("round {round}: lost acknowledged write: {lost}"));
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// For the command line and tests: a run's report in a few lines.
pub fn summary(report: &Report) -> String {
    let faults: Vec<String> = report
        .faults
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    let drills_ok = report.drills.iter().filter(|d| d.voting_again).count();
    let mut text = format!(
        "seed {} · {} voters · {:.0} s · {} rounds\n\
         operations: {} ok, {} unknown outcome, {} failed for sure; {} sessions\n\
         locks: {} grants, {} fenced writes\n\
         faults: {}\n\
         corruption drills: {} of {} ended voting again\n\
         checker: {} rounds linearizable, {} out of budget, {:.1} s; lost acknowledged writes: {}\n\
         violations: {}",
        report.seed,
        report.voters,
        report.seconds,
        report.rounds,
        report.ops_ok,
        report.ops_unknown,
        report.ops_failed,
        report.sessions,
        report.lock_grants,
        report.fenced_writes,
        if faults.is_empty() {
            "none".to_string()
        } else {
            faults.join(", ")
        },
        drills_ok,
        report.drills.len(),
        report.rounds_linearizable,
        report.rounds_unknown,
        report.checker_seconds,
        report.lost_writes,
        report.violations.len(),
    );
    for violation in &report.violations {
        text.push_str(&format!("\n  - {violation}"));
    }
    for note in &report.notes {
        text.push_str(&format!("\n  note: {note}"));
    }
    text
}

/// Whether a run passed: no violation and no round the checker could not decide (a round out
/// of budget is not a pass).
pub fn passed(report: &Report) -> bool {
    report.violations.is_empty() && report.rounds_unknown == 0
}
