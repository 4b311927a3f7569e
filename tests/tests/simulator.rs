//! The simulator itself: the correct engine passes, and any run replays bit for bit from its seed.

use tests::sim::{run, Mode, Options};
use tests::sweep::{replay_command, sweep, Modes};

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
    let a = run(Options::from_seed(1, Mode::Safety, Default::default()));
    let b = run(Options::from_seed(2, Mode::Safety, Default::default()));
    assert_ne!(
        a.stats.trace_hash, b.stats.trace_hash,
        "different seeds should differ"
    );
}

#[test]
fn the_correct_engine_passes_a_small_sweep_with_every_fault() {
    let summary = sweep(1000, 60, Modes::Both, Default::default(), 2, || {});
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
