//! The real-process fault harness's command line: one run (a soak of any length), the short
//! suite CI runs, or the teeth suite that must catch planted bugs.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tests::fault::nemesis::{Nemesis, ALL};
use tests::fault::run::{passed, run, summary, Report, RunOptions};
use tests::fault::workload::WorkloadOptions;

/// Fault tests against real chubbyd processes on loopback: kill -9, SIGSTOP, partitions, loss and
/// delay through UDP proxies, clock skew, disk damage with rebuild, membership changes; clients
/// record every operation and the checkers judge linearizability, lock safety and durability.
///
/// Finds `chubbyd` and `chubbyctl` beside itself (or in FAULT_BIN_DIR). Prints the seed first and
/// a summary last; the same seed draws the same faults and operations (real processes and
/// timing still vary). Exit code 0: no violation; 1: a violation (or, for --suite teeth, a
/// planted bug not caught); 2: the harness could not run.
///
/// Examples:
///   fault --seed 7 --duration 30m                  the soak, every nemesis combined
///   fault --seed 7 --duration 2m --nemesis kill,partition --voters 5
///   fault --suite ci                               the short suite of the README's test command
#[derive(Parser, Debug)]
#[command(name = "fault", version, verbatim_doc_comment)]
struct Args {
    /// The seed of the faults and the clients' operations [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// How long to inject faults: 90s, 30m, 2h.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Voting replicas: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=7))]
    voters: u64,
    /// Which nemeses, comma separated, or `all`: kill, pause, partition, flaky, clock, corrupt,
    /// membership.
    #[arg(long, default_value = "all", value_parser = parse_nemeses)]
    nemesis: NemesisList,
    /// Never two faults at once.
    #[arg(long)]
    no_combine: bool,
    /// Plant bugs in every replica (the binary must be built with the `planted-bugs` feature,
    /// as `cargo test --workspace` builds it): e.g. stale_linearizable_reads.
    #[arg(long)]
    bug: Option<String>,
    /// Every partition cuts the master off from its peers (clients still reach it) for at least
    /// 4 s, instead of drawing the kind of partition.
    #[arg(long)]
    isolate_master: bool,
    /// Run a suite instead of one run.
    #[arg(long, value_enum, conflicts_with_all = ["bug", "seed"])]
    suite: Option<Suite>,
    /// Where replicas keep their files [default: a new directory under the system's temp dir,
    /// deleted after a run that passed].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directory (replica files and logs) even when the run passed.
    #[arg(long)]
    keep: bool,
    /// The linearizability checker's time budget per round.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    budget: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug)]
struct NemesisList(Vec<Nemesis>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// A few minutes: every nemesis, 3 and 5 replicas, every kind of disk damage.
    Ci,
    /// Planted bugs the suite must catch.
    Teeth,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: a duration is a number and a unit, like 90s, 30m or 2h"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("`{text}`: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

fn parse_nemeses(text: &str) -> Result<NemesisList, String> {
    if text == "all" {
        return Ok(NemesisList(ALL.to_vec()));
    }
    if text == "none" {
        return Ok(NemesisList(Vec::new()));
    }
    text.split(',')
        .map(|name| {
            Nemesis::by_name(name.trim()).ok_or_else(|| {
                let names: Vec<&str> = ALL.iter().map(|n| n.name()).collect();
                format!(
                    "unknown nemesis `{name}`: one of {}, all or none",
                    names.join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(NemesisList)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fault: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let _guard = runtime.enter();
    let code = runtime.block_on(async {
        tokio::task::spawn_blocking(move || match args.suite {
            None => single(&args),
            Some(suite) => run_suite(suite, &args),
        })
        .await
        .unwrap_or(2)
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    ExitCode::from(code)
}

fn base_options(args: &Args, seed: u64, name: &str) -> RunOptions {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fault-{}-{name}-{seed}", std::process::id()))
    });
    RunOptions {
        seed,
        duration: args.duration,
        voters: args.voters,
        nemeses: args.nemesis.0.clone(),
        combine: !args.no_combine,
        planted_bugs: args.bug.clone().unwrap_or_default(),
        workload: WorkloadOptions::default(),
        dir,
        check_budget: args.budget,
        fault_scale: 1.0,
        min_rounds: 1,
        isolate_master: args.isolate_master,
    }
}

/// Runs one configuration; prints its summary; deletes its directory if it ended as expected
/// (passed, or for a planted bug, caught).
fn execute(
    options: &RunOptions,
    json: bool,
    keep: bool,
    should_pass: bool,
) -> Result<Report, String> {
    println!(
        "== fault run: seed {} · {} voters · nemeses {} · {:?}{}",
        options.seed,
        options.voters,
        options
            .nemeses
            .iter()
            .map(|n| n.name())
            .collect::<Vec<_>>()
            .join(","),
        options.duration,
        if options.planted_bugs.is_empty() {
            String::new()
        } else {
            format!(" · planted bugs {}", options.planted_bugs)
        }
    );
    println!(
        "   replay: fault --seed {} --duration {}s --voters {} --nemesis {}{}",
        options.seed,
        options.duration.as_secs(),
        options.voters,
        if options.nemeses.is_empty() {
            "none".to_string()
        } else {
            options
                .nemeses
                .iter()
                .map(|n| n.name())
                .collect::<Vec<_>>()
                .join(",")
        },
        if options.planted_bugs.is_empty() {
            String::new()
        } else {
            format!(" --bug {}", options.planted_bugs)
        }
    );
    let started = std::time::Instant::now();
    let progress = |line: &str| println!("   [{:>5.1}s] {line}", started.elapsed().as_secs_f64());
    let report = run(options, &progress)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("{}", summary(&report));
    }
    if passed(&report) == should_pass && !keep {
        let _ = std::fs::remove_dir_all(&options.dir);
    } else {
        println!(
            "   files and replica logs kept in {}",
            options.dir.display()
        );
    }
    Ok(report)
}

fn single(args: &Args) -> u8 {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let options = base_options(args, seed, "run");
    match execute(&options, args.json, args.keep, true) {
        Ok(report) if passed(&report) => 0,
        Ok(_) => 1,
        Err(why) => {
            eprintln!("fault: {why}");
            2
        }
    }
}

fn run_suite(suite: Suite, args: &Args) -> u8 {
    let mut plans: Vec<(String, RunOptions, bool)> = Vec::new();
    let short = |seed: u64, name: &str, voters: u64, nemeses: &[Nemesis], seconds: u64| {
        let mut options = base_options(args, seed, name);
        options.voters = voters;
        options.nemeses = nemeses.to_vec();
        options.duration = Duration::from_secs(seconds);
        options.fault_scale = 0.6;
        options
    };
    use Nemesis::*;
    match suite {
        Suite::Ci => {
            plans.push((
                "3 replicas, process, network and clock faults combined".into(),
                short(1, "mixed3", 3, &[Kill, Pause, Partition, Flaky, Clock], 45),
                true,
            ));
            plans.push((
                "5 replicas, kills, pauses and partitions combined".into(),
                short(2, "mixed5", 5, &[Kill, Pause, Partition], 35),
                true,
            ));
            // Four drills, one of each kind of damage (they take turns).
            let mut drills = short(3, "drills", 3, &[Corrupt], 0);
            drills.min_rounds = 4;
            plans.push(("every kind of disk damage, rebuilt".into(), drills, true));
            plans.push((
                "membership changes under load, with kills".into(),
                short(4, "membership", 3, &[Membership, Kill], 30),
                true,
            ));
        }
        Suite::Teeth => {
            let mut reads = short(5, "teeth-stale-reads", 3, &[Partition], 30);
            reads.planted_bugs = "stale_linearizable_reads".into();
            reads.isolate_master = true;
            plans.push((
                "planted bug: linearizable reads answered stale, on any replica".into(),
                reads,
                false,
            ));
            let mut acks = short(6, "teeth-early-acks", 3, &[Partition, Kill], 30);
            acks.planted_bugs = "ack_writes_before_commit".into();
            plans.push((
                "planted bug: writes acknowledged before they are chosen".into(),
                acks,
                false,
            ));
            let mut locks = short(7, "teeth-stolen-lock", 3, &[Kill], 20);
            locks.planted_bugs = "exclusive_lock_stolen".into();
            plans.push((
                "planted bug: an exclusive lock taken from its holder".into(),
                locks,
                false,
            ));
        }
    }
    // A planted bug whose window depends on timing gets up to five runs (seeds 100 apart) to
    // show itself; a correct build gets one run, which must pass.
    const ATTEMPTS: u64 = 5;
    let mut failed = Vec::new();
    for (name, options, should_pass) in &plans {
        println!("\n#### {name}");
        let attempts = if *should_pass { 1 } else { ATTEMPTS };
        let mut outcome = Err("not run".to_string());
        for attempt in 0..attempts {
            let mut options = options.clone();
            options.seed += 100 * attempt;
            outcome =
                execute(&options, args.json, args.keep, *should_pass).map(|report| passed(&report));
            match outcome {
                Ok(true) if !should_pass => println!("   not caught in run {}", attempt + 1),
                _ => break,
            }
        }
        match outcome {
            Ok(passed) if passed == *should_pass => {
                if !should_pass {
                    println!("   caught, as it must be");
                }
            }
            Ok(_) if *should_pass => failed.push(format!("{name}: violations found")),
            Ok(_) => failed.push(format!(
                "{name}: the planted bug was not caught in {ATTEMPTS} runs"
            )),
            Err(why) => failed.push(format!("{name}: could not run: {why}")),
        }
    }
    if failed.is_empty() {
        println!("\nfault suite {suite:?}: every run as expected");
        0
    } else {
        println!("\nfault suite {suite:?} FAILED:");
        for line in &failed {
            println!("  - {line}");
        }
        1
    }
}
