//! Runs many seeds, in parallel threads, and reports the first failure with its replay command.

use crate::oracle::{Check, Violation};
use crate::sim::{run, ChubbyBugs, DiskChoice, Mode, Options, Outcome, Stats};
use paxos_core::PlantedBugs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which mode a seed runs in when both are asked for: even seeds safety, odd seeds liveness.
pub fn mode_for(seed: u64, modes: Modes) -> Mode {
    match modes {
        Modes::Safety => Mode::Safety,
        Modes::Liveness => Mode::Liveness,
        Modes::Both if seed % 2 == 0 => Mode::Safety,
        Modes::Both => Mode::Liveness,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modes {
    Safety,
    Liveness,
    Both,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    /// Every seed's figures added up.
    pub totals: Stats,
    /// How many seeds found a violation.
    pub failures: u64,
    /// The failing seed with the lowest number, and what it found.
    pub failure: Option<(u64, Mode, Violation)>,
}

/// Runs seeds `start..start + count` on `jobs` threads; `on_done` is called after each seed.
pub fn sweep(
    start: u64,
    count: u64,
    modes: Modes,
    bugs: PlantedBugs,
    disk: DiskChoice,
    jobs: usize,
    on_done: impl Fn() + Sync,
) -> Summary {
    let options = |seed, mode| Options::from_seed_on(seed, mode, bugs, disk);
    sweep_with(start, count, modes, jobs, on_done, options)
}

/// As [`sweep`], with the chubby-db database and its clients on every seed (`bugs` planted in
/// the database).
pub fn sweep_chubby(
    start: u64,
    count: u64,
    modes: Modes,
    bugs: ChubbyBugs,
    disk: DiskChoice,
    jobs: usize,
    on_done: impl Fn() + Sync,
) -> Summary {
    let options = |seed, mode| Options::chubby_from_seed(seed, mode, bugs, disk);
    sweep_with(start, count, modes, jobs, on_done, options)
}

/// Runs seeds `start..start + count` on `jobs` threads, each with the options `options` makes.
pub fn sweep_with(
    start: u64,
    count: u64,
    modes: Modes,
    jobs: usize,
    on_done: impl Fn() + Sync,
    options: impl Fn(u64, Mode) -> Options + Sync,
) -> Summary {
    let next = AtomicU64::new(start);
    let summary = Arc::new(Mutex::new(Summary::default()));
    // Panics are reported as violations with their seed; the default hook would only add noise.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + count {
                    break;
                }
                let mode = mode_for(seed, modes);
                let outcome = run_catching_panics(options(seed, mode));
                add(
                    &mut summary.lock().expect("no thread panics holding it"),
                    seed,
                    mode,
                    outcome,
                );
                on_done();
            });
        }
    });
    std::panic::set_hook(hook);
    Arc::try_unwrap(summary)
        .expect("threads joined")
        .into_inner()
        .expect("not poisoned")
}

/// Runs one seed; a panic (a failed engine invariant) becomes a violation of its own.
pub fn run_catching_panics(options: Options) -> Outcome {
    let kept = options.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(options))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string());
            let violation = Violation {
                check: Check::Panic,
                at_ns: 0,
                detail,
            };
            Outcome {
                options: kept,
                violation: Some(violation),
                stats: Default::default(),
            }
        }
    }
}

fn add(summary: &mut Summary, seed: u64, mode: Mode, outcome: Outcome) {
    summary.seeds += 1;
    summary.totals.add(&outcome.stats);
    if let Some(violation) = outcome.violation {
        summary.failures += 1;
        if summary.failure.as_ref().is_none_or(|(s, _, _)| seed < *s) {
            summary.failure = Some((seed, mode, violation));
        }
    }
}

/// The command that replays one seed exactly.
pub fn replay_command(seed: u64, mode: Mode, bug: Option<&str>) -> String {
    let mode = match mode {
        Mode::Safety => "safety",
        Mode::Liveness => "liveness",
    };
    let bug = bug.map(|b| format!(" --bug {b}")).unwrap_or_default();
    format!("cargo run -p tests --release --bin sim -- --seed {seed} --mode {mode}{bug}")
}

/// The command that replays one chubby seed exactly.
pub fn replay_command_chubby(seed: u64, mode: Mode, bug: Option<&str>) -> String {
    let mode = match mode {
        Mode::Safety => "safety",
        Mode::Liveness => "liveness",
    };
    let bug = bug
        .map(|b| format!(" --chubby-bug {b}"))
        .unwrap_or_default();
    format!(
        "cargo run -p tests --release --bin sim -- --app chubby --seed {seed} --mode {mode}{bug}"
    )
}

/// Planted database bugs by name, for the command line and the teeth tests. `diverging-replica`
/// plants `forget_replies` on the first replica only.
pub fn chubby_bug_by_name(name: &str) -> Option<ChubbyBugs> {
    let mut bugs = ChubbyBugs::default();
    match name {
        "ignore-lock-delay" => bugs.all.ignore_lock_delay = true,
        "sequencer-ignores-generation" => bugs.all.check_sequencer_ignores_generation = true,
        "forget-replies" => bugs.all.forget_replies = true,
        "diverging-replica" => bugs.first_replica.forget_replies = true,
        _ => return None,
    }
    Some(bugs)
}

pub const CHUBBY_BUG_NAMES: &[&str] = &[
    "ignore-lock-delay",
    "sequencer-ignores-generation",
    "forget-replies",
    "diverging-replica",
];

/// Planted bugs by name, for the command line and the teeth tests.
pub fn bug_by_name(name: &str) -> Option<PlantedBugs> {
    let mut bugs = PlantedBugs::default();
    match name {
        "acceptor-ignores-ballot" => bugs.acceptor_ignores_ballot = true,
        "learn-ignores-ballot" => bugs.learn_ignores_ballot = true,
        "lease-without-drift-margin" => bugs.lease_without_drift_margin = true,
        "read-ignores-lease" => bugs.read_ignores_lease = true,
        "ack-before-chosen" => bugs.ack_before_chosen = true,
        "keep-proposals-across-epochs" => bugs.keep_proposals_across_epochs = true,
        "rebuild-votes-at-once" => bugs.rebuild_votes_at_once = true,
        "ignore-catch-up" => bugs.ignore_catch_up = true,
        _ => return None,
    }
    Some(bugs)
}

pub const BUG_NAMES: &[&str] = &[
    "acceptor-ignores-ballot",
    "learn-ignores-ballot",
    "lease-without-drift-margin",
    "read-ignores-lease",
    "ack-before-chosen",
    "keep-proposals-across-epochs",
    "rebuild-votes-at-once",
    "ignore-catch-up",
];
