//! The simulator itself: the correct engine passes, and any run replays bit for bit from its seed.

use tests::sim::{run, DiskChoice, Mode, Options};
use tests::sweep::{replay_command, replay_command_chubby, sweep, sweep_chubby, Modes};

#[test]
fn a_run_replays_bit_for_bit_from_its_seed() {
    for (seed, mode) in [(3, Mode::Safety), (4, Mode::Liveness), (11, Mode::Liveness)] {
        let first = run(Options::from_seed(seed, mode, Default::default()));
        let second = run(Options::from_seed(seed, mode, Default::default()));
        assert_eq!(
            first.stats.trace_hash, second.stats.trace_hash,
            "seed {seed} did not replay"
        );
        assert_eq!(first.stats.events, second.stats.events);
        assert!(first.stats.events > 10_000, "a run should do real work");
    }
    // The real storage over the in-memory disk replays too: seed 35 has torn tails, failed
    // fdatasyncs and a damaged disk.
    for disk in [DiskChoice::Model, DiskChoice::Real] {
        let options = || Options::from_seed_on(35, Mode::Liveness, Default::default(), disk);
        let (first, second) = (run(options()), run(options()));
        assert_eq!(first.stats.trace_hash, second.stats.trace_hash);
        assert_eq!(first.stats.events, second.stats.events);
    }
    let a = run(Options::from_seed(1, Mode::Safety, Default::default()));
    let b = run(Options::from_seed(2, Mode::Safety, Default::default()));
    assert_ne!(
        a.stats.trace_hash, b.stats.trace_hash,
        "different seeds should differ"
    );
}

#[test]
fn the_correct_engine_passes_a_small_sweep_with_every_fault() {
    let summary = sweep(
        1000,
        60,
        Modes::Both,
        Default::default(),
        DiskChoice::Mixed,
        2,
        || {},
    );
    if let Some((seed, mode, violation)) = &summary.failure {
        panic!(
            "{violation}\nreplay: {}",
            replay_command(*seed, *mode, None)
        );
    }
    assert_eq!(summary.seeds, 60);
    assert!(
        summary.totals.crashes > 0 && summary.totals.wipes > 0 && summary.totals.partitions > 0,
        "faults were injected"
    );
    assert!(
        summary.totals.membership_changes > 0 && summary.totals.snapshots_installed > 0,
        "membership and snapshots exercised"
    );
    assert!(
        summary.totals.acked > 10_000 && summary.totals.lease_reads > 1_000,
        "clients made progress"
    );
}

#[test]
fn the_real_storage_passes_a_small_sweep_with_disk_faults() {
    let summary = sweep(
        2000,
        40,
        Modes::Both,
        Default::default(),
        DiskChoice::Real,
        2,
        || {},
    );
    if let Some((seed, mode, violation)) = &summary.failure {
        panic!(
            "{violation}\nreplay: {} --disk real",
            replay_command(*seed, *mode, None)
        );
    }
    let t = &summary.totals;
    assert_eq!(t.real_disk_seeds, 40);
    assert!(
        t.disk_faults > 0 && t.damages_detected > 0 && t.rebuilds_after_damage > 0,
        "disks were damaged, the damage found and the replicas rebuilt"
    );
    assert!(
        t.torn_tails > 0 && t.sync_failures > 0,
        "torn writes and failed fdatasyncs happened"
    );
}

#[test]
fn a_chubby_run_replays_bit_for_bit_from_its_seed() {
    for (seed, mode, disk) in [
        (5, Mode::Safety, DiskChoice::Model),
        (8, Mode::Liveness, DiskChoice::Real),
    ] {
        let options = || Options::chubby_from_seed(seed, mode, Default::default(), disk);
        let (first, second) = (run(options()), run(options()));
        assert_eq!(
            first.stats.trace_hash, second.stats.trace_hash,
            "chubby seed {seed} did not replay"
        );
        assert_eq!(first.stats.events, second.stats.events);
        assert!(first.stats.chubby.multi_ops > 0, "clients did work");
    }
}

#[test]
fn the_correct_database_passes_a_small_chubby_sweep() {
    let summary = sweep_chubby(
        3000,
        100,
        Modes::Both,
        Default::default(),
        DiskChoice::Mixed,
        2,
        || {},
    );
    if let Some((seed, mode, violation)) = &summary.failure {
        panic!(
            "{violation}\nreplay: {}",
            replay_command_chubby(*seed, *mode, None)
        );
    }
    let c = &summary.totals.chubby;
    assert_eq!(c.seeds, 100);
    assert!(
        c.sessions_opened > 0 && c.sessions_expired > 0 && c.client_crashes > 0,
        "sessions were opened and expired: {c:?}"
    );
    assert!(
        c.grants > 0 && c.resource_writes > 0 && c.sequencers_judged > 0,
        "locks moved between clients and sequencers were used: {c:?}"
    );
    assert!(
        c.multi_ops > 0 && c.retries_deduplicated > 0 && c.digest_checks > 0,
        "MultiOps were retried and replicas compared: {c:?}"
    );
    assert!(
        summary.totals.crashes > 0 && summary.totals.snapshots_installed > 0,
        "the engine's faults and snapshots ran under the database"
    );
}
