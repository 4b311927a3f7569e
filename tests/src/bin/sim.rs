//! The simulator's command line: replay one seed, or sweep many with a progress bar.

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::time::Instant;
use tests::sim::{run, DiskChoice, Mode, Options, Stats};
use tests::sweep::{
    bug_by_name, chubby_bug_by_name, mode_for, replay_command, replay_command_chubby, sweep,
    sweep_chubby, Modes, BUG_NAMES, CHUBBY_BUG_NAMES,
};

/// Deterministic fault simulator for the Multi-Paxos engine.
///
/// Every run derives all its options from the seed; the same seed replays the same run bit for bit.
/// A failure prints the seed and the command that replays it, and the exit code is 1.
#[derive(Parser, Debug)]
#[command(name = "sim", version)]
struct Args {
    /// Run this one seed and print its options, figures and trace hash.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep this many seeds.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the sweep.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Safety (faults throughout), liveness (faults, then heal and require progress), or both
    /// (even seeds safety, odd seeds liveness).
    #[arg(long, value_enum, default_value_t = ModeArg::Both)]
    mode: ModeArg,
    /// The disk under each replica: the model disk, the real storage code over a faulty in-memory
    /// disk, or mixed (drawn from the seed: about half the seeds run the real storage).
    #[arg(long, value_enum, default_value_t = DiskArg::Mixed)]
    disk: DiskArg,
    /// Plant a deliberate bug in the engine (to see the checkers catch it).
    #[arg(long, value_parser = BUG_NAMES.to_vec())]
    bug: Option<String>,
    /// Worker threads for a sweep (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print figures as JSON.
    #[arg(long)]
    json: bool,
    /// Measure the simulator's throughput on one core (a steady five-replica load, no failures)
    /// over `--seeds` runs, and print simulated message deliveries per second.
    #[arg(long, conflicts_with_all = ["seed", "bug", "trace"])]
    bench: bool,
    /// With --seed: print every event as it happens.
    #[arg(long, requires = "seed")]
    trace: bool,
    /// The state machine above the engine: the register with its clients, or the real chubby-db
    /// database with simulated master duties, clients, a fenced downstream resource and the
    /// lock-safety, sequencer, exactly-once and database-agreement checkers.
    #[arg(long, value_enum, default_value_t = AppArg::Register)]
    app: AppArg,
    /// With --app chubby: plant a deliberate bug in the database.
    #[arg(long, value_parser = CHUBBY_BUG_NAMES.to_vec(), conflicts_with = "bug")]
    chubby_bug: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AppArg {
    Register,
    Chubby,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Safety,
    Liveness,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DiskArg {
    Model,
    Real,
    Mixed,
}

impl DiskArg {
    fn choice(self) -> DiskChoice {
        match self {
            DiskArg::Model => DiskChoice::Model,
            DiskArg::Real => DiskChoice::Real,
            DiskArg::Mixed => DiskChoice::Mixed,
        }
    }

    /// What the replay command needs to add (mixed is the default).
    fn flag(self) -> &'static str {
        match self {
            DiskArg::Model => " --disk model",
            DiskArg::Real => " --disk real",
            DiskArg::Mixed => "",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bugs = args
        .bug
        .as_deref()
        .map(|b| bug_by_name(b).expect("validated by clap"))
        .unwrap_or_default();
    let modes = match args.mode {
        ModeArg::Safety => Modes::Safety,
        ModeArg::Liveness => Modes::Liveness,
        ModeArg::Both => Modes::Both,
    };
    if args.chubby_bug.is_some() && args.app != AppArg::Chubby {
        eprintln!("--chubby-bug needs --app chubby");
        return ExitCode::FAILURE;
    }
    let chubby_bugs = args
        .chubby_bug
        .as_deref()
        .map(|b| chubby_bug_by_name(b).expect("validated by clap"))
        .unwrap_or_default();
    let chubby = (args.app == AppArg::Chubby).then_some(chubby_bugs);
    if args.bench {
        return bench(args.start, args.seeds, args.json);
    }
    if let Some(seed) = args.seed {
        let mode = mode_for(seed, modes);
        let mut options = match chubby {
            Some(bugs) => Options::chubby_from_seed(seed, mode, bugs, args.disk.choice()),
            None => Options::from_seed_on(seed, mode, bugs, args.disk.choice()),
        };
        options.trace = args.trace;
        return run_one(options, &replay(&args, seed, mode), args.json);
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bar = ProgressBar::new(args.seeds);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {elapsed} (eta {eta})")
            .expect("valid template"),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let disk = args.disk.choice();
    let summary = match chubby {
        Some(chubby_bugs) => sweep_chubby(
            args.start,
            args.seeds,
            modes,
            chubby_bugs,
            disk,
            jobs,
            || bar.inc(1),
        ),
        None => sweep(args.start, args.seeds, modes, bugs, disk, jobs, || {
            bar.inc(1)
        }),
    };
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = seconds * jobs as f64;
    if args.json {
        println!(
            "{{\"seeds\":{},\"failures\":{},\"events\":{},\"deliveries\":{},\"seconds\":{:.3},\"jobs\":{},\"events_per_cpu_second\":{:.0},\"deliveries_per_cpu_second\":{:.0},\"acked\":{},\"crashes\":{},\"wipes\":{},\"partitions\":{},\"membership_changes\":{},\"lease_reads\":{},\"snapshots_installed\":{},{}}}",
            summary.seeds, summary.failures, summary.totals.events, summary.totals.deliveries, seconds, jobs,
            summary.totals.events as f64 / cpu_seconds, summary.totals.deliveries as f64 / cpu_seconds,
            summary.totals.acked, summary.totals.crashes, summary.totals.wipes, summary.totals.partitions, summary.totals.membership_changes,
            summary.totals.lease_reads, summary.totals.snapshots_installed, disk_json(&summary.totals)
        );
    } else {
        println!(
            "{} seeds, {} violations | {:.1} s on {} threads | {} events ({:.0}/s per core) | {} message deliveries ({:.0}/s per core) | simulated {:.0} s",
            summary.seeds,
            summary.failures,
            seconds,
            jobs,
            summary.totals.events,
            summary.totals.events as f64 / cpu_seconds,
            summary.totals.deliveries,
            summary.totals.deliveries as f64 / cpu_seconds,
            summary.totals.virtual_ns as f64 / 1e9
        );
        println!(
            "faults: {} crashes, {} state losses (rebuilds), {} partitions, {} membership changes | {} acknowledged submits, {} lease reads, {} snapshots installed",
            summary.totals.crashes, summary.totals.wipes, summary.totals.partitions, summary.totals.membership_changes, summary.totals.acked, summary.totals.lease_reads,
            summary.totals.snapshots_installed
        );
        println!("{}", disk_line(&summary.totals));
        if chubby.is_some() {
            println!("{}", chubby_line(&summary.totals));
        }
    }
    match summary.failure {
        None => ExitCode::SUCCESS,
        Some((seed, mode, violation)) => {
            eprintln!(
                "FAILED seed {seed} ({} seeds of {} failed): {violation}",
                summary.failures, summary.seeds
            );
            eprintln!("replay: {}", replay(&args, seed, mode));
            ExitCode::FAILURE
        }
    }
}

/// The command that replays `seed` with the arguments of this run.
fn replay(args: &Args, seed: u64, mode: Mode) -> String {
    let command = match args.app {
        AppArg::Register => replay_command(seed, mode, args.bug.as_deref()),
        AppArg::Chubby => replay_command_chubby(seed, mode, args.chubby_bug.as_deref()),
    };
    format!("{command}{}", args.disk.flag())
}

/// What the database and its clients did on chubby seeds.
fn chubby_line(s: &Stats) -> String {
    let c = &s.chubby;
    format!(
        "chubby: {} seeds | {} sessions opened, {} expired | {} lock grants | {} MultiOps, {} retries answered from the reply cache | {} resource writes | {} sequencers judged | {} digest checks | {} client crashes",
        c.seeds, c.sessions_opened, c.sessions_expired, c.grants, c.multi_ops, c.retries_deduplicated, c.resource_writes, c.sequencers_judged, c.digest_checks, c.client_crashes
    )
}

/// The real-disk figures of a sweep.
fn disk_line(s: &Stats) -> String {
    format!(
        "disk: {} real-disk seeds | {} damages dealt, {} detected, {} replicas rebuilt after damage | {} torn tails cut, {} failed fdatasyncs",
        s.real_disk_seeds, s.disk_faults, s.damages_detected, s.rebuilds_after_damage, s.torn_tails, s.sync_failures
    )
}

fn disk_json(s: &Stats) -> String {
    let c = &s.chubby;
    let chubby = if c.seeds == 0 {
        String::new()
    } else {
        format!(
            ",\"chubby_seeds\":{},\"sessions_opened\":{},\"sessions_expired\":{},\"lock_grants\":{},\"multi_ops\":{},\"retries_deduplicated\":{},\"resource_writes\":{},\"sequencers_judged\":{},\"digest_checks\":{},\"client_crashes\":{}",
            c.seeds, c.sessions_opened, c.sessions_expired, c.grants, c.multi_ops, c.retries_deduplicated, c.resource_writes, c.sequencers_judged, c.digest_checks, c.client_crashes
        )
    };
    format!(
        "\"real_disk_seeds\":{},\"disk_faults\":{},\"damages_detected\":{},\"rebuilds_after_damage\":{},\"torn_tails\":{},\"sync_failures\":{}{chubby}",
        s.real_disk_seeds, s.disk_faults, s.damages_detected, s.rebuilds_after_damage, s.torn_tails, s.sync_failures
    )
}

fn run_one(options: Options, replay: &str, json: bool) -> ExitCode {
    let seed = options.seed;
    let chubby = options.chubby.is_some();
    if !json {
        println!("{options:#?}");
    }
    let started = Instant::now();
    let outcome = run(options);
    let seconds = started.elapsed().as_secs_f64();
    let s = &outcome.stats;
    if json {
        println!(
            "{{\"seed\":{seed},\"failed\":{},\"events\":{},\"deliveries\":{},\"trace_hash\":\"{:016x}\",\"seconds\":{seconds:.3}}}",
            outcome.violation.is_some(), s.events, s.deliveries, s.trace_hash
        );
    } else {
        println!("{s:#?}");
        if chubby {
            println!("{}", chubby_line(s));
        }
        println!(
            "trace hash {:016x}, {:.3} s, {:.0} deliveries/s",
            s.trace_hash,
            seconds,
            s.deliveries as f64 / seconds
        );
    }
    match outcome.violation {
        None => ExitCode::SUCCESS,
        Some(violation) => {
            eprintln!("FAILED seed {seed}: {violation}");
            eprintln!("replay: {replay}");
            ExitCode::FAILURE
        }
    }
}

fn bench(start: u64, seeds: u64, json: bool) -> ExitCode {
    let bar = ProgressBar::new(seeds);
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut events, mut deliveries, mut failures) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for seed in start..start + seeds {
        let outcome = run(Options::benchmark(seed));
        events += outcome.stats.events;
        deliveries += outcome.stats.deliveries;
        failures += u64::from(outcome.violation.is_some());
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{{\"seeds\":{seeds},\"failures\":{failures},\"events\":{events},\"deliveries\":{deliveries},\"seconds\":{seconds:.3},\"deliveries_per_second\":{:.0},\"events_per_second\":{:.0}}}",
            deliveries as f64 / seconds,
            events as f64 / seconds
        );
    } else {
        println!(
            "benchmark, one core: {seeds} runs, {deliveries} message deliveries in {seconds:.2} s = {:.0} deliveries/s ({events} events, {:.0}/s), {failures} violations",
            deliveries as f64 / seconds,
            events as f64 / seconds
        );
    }
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
