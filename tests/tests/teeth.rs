//! Every checker has teeth: with one deliberately broken engine behaviour (or use of storage, or
//! database behaviour on chubby seeds) planted, and only that checker enabled, the simulator finds
//! a violation within a bounded number of seeds.

use tests::oracle::Check;
use tests::sim::{DiskBugs, DiskChoice, Options};
use tests::sweep::{
    bug_by_name, chubby_bug_by_name, mode_for, replay_command_chubby, run_catching_panics, Modes,
};

/// Runs seeds from 0 with `bug` planted and only `check` enabled; returns the first seed that
/// violates it.
fn first_violation(bug: &str, check: Check, modes: Modes, seeds_max: u64) -> Option<u64> {
    let bugs = bug_by_name(bug).expect("known bug");
    (0..seeds_max).find(|seed| {
        let mut options = Options::from_seed(*seed, mode_for(*seed, modes), bugs);
        options.checks = vec![check];
        let outcome = run_catching_panics(options);
        outcome.violation.is_some_and(|v| v.check == check)
    })
}

fn assert_caught(bug: &str, check: Check, modes: Modes, seeds_max: u64) {
    let found = first_violation(bug, check, modes, seeds_max);
    assert!(
        found.is_some(),
        "{check:?} did not catch planted bug {bug} within {seeds_max} seeds"
    );
    eprintln!("{check:?} caught {bug} at seed {}", found.expect("checked"));
}

#[test]
fn one_value_per_slot_catches_an_acceptor_that_ignores_ballots() {
    assert_caught(
        "acceptor-ignores-ballot",
        Check::OneValuePerSlot,
        Modes::Safety,
        1500,
    );
}

#[test]
fn prefix_agreement_catches_learning_without_the_ballot_check() {
    assert_caught(
        "learn-ignores-ballot",
        Check::PrefixAgreement,
        Modes::Safety,
        300,
    );
}

#[test]
fn lease_overlap_catches_a_lease_without_drift_margin() {
    assert_caught(
        "lease-without-drift-margin",
        Check::LeaseOverlap,
        Modes::Safety,
        1500,
    );
}

#[test]
fn stale_read_catches_reads_without_a_lease() {
    assert_caught("read-ignores-lease", Check::StaleRead, Modes::Safety, 500);
}

#[test]
fn acked_lost_catches_acknowledging_before_chosen() {
    assert_caught("ack-before-chosen", Check::AckedLost, Modes::Both, 300);
}

#[test]
fn epoch_rule_catches_proposals_kept_across_epochs() {
    assert_caught(
        "keep-proposals-across-epochs",
        Check::Epoch,
        Modes::Safety,
        300,
    );
}

#[test]
fn rebuild_check_catches_a_rebuilt_replica_voting_at_once() {
    assert_caught(
        "rebuild-votes-at-once",
        Check::RebuildVoted,
        Modes::Safety,
        300,
    );
}

#[test]
fn liveness_catches_ignored_catch_up_requests() {
    assert_caught("ignore-catch-up", Check::Liveness, Modes::Liveness, 300);
}

/// As `assert_caught`, for a broken use of storage on real-disk seeds.
fn assert_disk_bug_caught(bugs: DiskBugs, check: Check, modes: Modes, seeds_max: u64) {
    let found = (0..seeds_max).find(|seed| {
        let mode = mode_for(*seed, modes);
        let mut options = Options::from_seed_on(*seed, mode, Default::default(), DiskChoice::Real);
        options.real_disk.as_mut().expect("a real-disk seed").bugs = bugs;
        options.checks = vec![check];
        let outcome = run_catching_panics(options);
        outcome.violation.is_some_and(|v| v.check == check)
    });
    assert!(
        found.is_some(),
        "{check:?} did not catch {bugs:?} within {seeds_max} seeds"
    );
    eprintln!(
        "{check:?} caught {bugs:?} at seed {}",
        found.expect("checked")
    );
}

#[test]
fn synced_lost_catches_acknowledging_records_that_were_never_synced() {
    let bugs = DiskBugs {
        ack_without_sync: true,
        ..DiskBugs::default()
    };
    assert_disk_bug_caught(bugs, Check::SyncedLost, Modes::Both, 20);
}

#[test]
fn prefix_agreement_catches_messages_released_before_their_sync() {
    let bugs = DiskBugs {
        release_before_sync: true,
        ..DiskBugs::default()
    };
    assert_disk_bug_caught(bugs, Check::PrefixAgreement, Modes::Safety, 20);
}

/// Runs chubby seeds from 0 with the database bug `bug` planted and only `check` enabled; returns
/// the first seed that violates it.
fn first_chubby_violation(bug: &str, check: Check, modes: Modes, seeds_max: u64) -> Option<u64> {
    let bugs = chubby_bug_by_name(bug).expect("known database bug");
    (0..seeds_max).find(|seed| {
        let mode = mode_for(*seed, modes);
        let mut options = Options::chubby_from_seed(*seed, mode, bugs, DiskChoice::Mixed);
        options.checks = vec![check];
        let outcome = run_catching_panics(options);
        outcome.violation.is_some_and(|v| v.check == check)
    })
}

/// The checker catches the planted database bug within `seeds_max` seeds, and the correct
/// database passes every seed up to the one that caught it, with every check enabled.
fn assert_chubby_caught(bug: &str, check: Check, modes: Modes, seeds_max: u64) {
    let found = first_chubby_violation(bug, check, modes, seeds_max);
    let Some(found) = found else {
        panic!("{check:?} did not catch planted database bug {bug} within {seeds_max} seeds");
    };
    eprintln!("{check:?} caught {bug} at chubby seed {found}");
    for seed in 0..=found {
        let mode = mode_for(seed, modes);
        let options = Options::chubby_from_seed(seed, mode, Default::default(), DiskChoice::Mixed);
        let outcome = run_catching_panics(options);
        if let Some(violation) = outcome.violation {
            panic!(
                "the correct database fails chubby seed {seed}: {violation}\nreplay: {}",
                replay_command_chubby(seed, mode, None)
            );
        }
    }
}

#[test]
fn lock_safety_catches_locks_granted_during_lock_delay() {
    assert_chubby_caught("ignore-lock-delay", Check::LockSafety, Modes::Both, 300);
}

#[test]
fn sequencer_check_catches_a_superseded_sequencer_that_validates() {
    assert_chubby_caught(
        "sequencer-ignores-generation",
        Check::SequencerSuperseded,
        Modes::Both,
        50,
    );
}

#[test]
fn exactly_once_catches_retries_that_run_again() {
    assert_chubby_caught("forget-replies", Check::ExactlyOnce, Modes::Both, 50);
}

#[test]
fn database_agreement_catches_a_replica_whose_state_machine_differs() {
    assert_chubby_caught(
        "diverging-replica",
        Check::DatabaseAgreement,
        Modes::Both,
        50,
    );
}
