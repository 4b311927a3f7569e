//! Locks [Chubby 2.4]: exclusive and shared, try and blocking acquire, the fair FIFO queue,
//! sequencers, lock-delay after a holder's session expires.

mod common;

use chubby_db::limits::{LOCK_DELAY_MS_DEFAULT, LOCK_WAITERS_MAX};
use chubby_db::{
    Command, EventKind, LockMode, NodeKind, Op, OpError, OpOutput, OpResult, SequencerInvalid,
    SessionId, WatchKinds,
};
use common::{done, p, Harness};

use LockMode::{Exclusive, Shared};

fn queued(result: &OpResult) -> u64 {
    match done(result) {
        OpOutput::Queued { ahead } => *ahead,
        other => panic!("not queued: {other:?}"),
    }
}

fn granted_to(h: &Harness, session: SessionId) -> bool {
    h.events_for(session)
        .iter()
        .any(|e| matches!(e, EventKind::LockGranted(_)))
}

fn holders(h: &Harness, path: &str) -> Vec<(SessionId, LockMode)> {
    let info = h.db.lock(&p(path)).unwrap();
    info.holders.iter().map(|(s, m, _)| (*s, *m)).collect()
}

/// `n` sessions and a node `/l` with the given lock-delay.
fn setup(n: usize, lock_delay_ms: u64) -> (Harness, Vec<SessionId>) {
    let mut h = Harness::new();
    let sessions: Vec<SessionId> = (0..n).map(|_| h.open()).collect();
    h.ok(
        sessions[0],
        Op::Create {
            path: p("/l"),
            kind: NodeKind::File,
            ephemeral: false,
            contents: vec![],
            lock_delay_ms: Some(lock_delay_ms),
        },
    );
    (h, sessions)
}

#[test]
fn exclusive_excludes_and_shared_shares() {
    let (mut h, s) = setup(3, 0);
    h.lock(s[0], "/l", Exclusive);
    assert_eq!(
        h.acquire(s[1], "/l", Exclusive, false),
        OpResult::Failed(OpError::LockBusy)
    );
    assert_eq!(
        h.acquire(s[1], "/l", Shared, false),
        OpResult::Failed(OpError::LockBusy)
    );
    assert_eq!(h.release(s[0], "/l"), OpResult::Done(OpOutput::Released));
    h.lock(s[1], "/l", Shared);
    h.lock(s[2], "/l", Shared);
    assert_eq!(holders(&h, "/l"), vec![(s[1], Shared), (s[2], Shared)]);
    assert_eq!(
        h.acquire(s[0], "/l", Exclusive, false),
        OpResult::Failed(OpError::LockBusy)
    );
}

#[test]
fn acquire_and_release_errors() {
    let (mut h, s) = setup(3, 0);
    assert_eq!(
        h.acquire(s[0], "/nope", Exclusive, true),
        OpResult::Failed(OpError::NodeAbsent)
    );
    assert_eq!(
        h.release(s[0], "/nope"),
        OpResult::Failed(OpError::NodeAbsent)
    );
    assert_eq!(h.release(s[0], "/l"), OpResult::Failed(OpError::NotHolder));
    h.lock(s[0], "/l", Shared);
    assert_eq!(
        h.acquire(s[0], "/l", Shared, false),
        OpResult::Failed(OpError::AlreadyHolder)
    );
    assert_eq!(
        h.acquire(s[0], "/l", Exclusive, true),
        OpResult::Failed(OpError::AlreadyHolder)
    );
    queued(&h.acquire(s[1], "/l", Exclusive, true));
    assert_eq!(
        h.acquire(s[1], "/l", Shared, true),
        OpResult::Failed(OpError::AlreadyWaiting)
    );
    assert_eq!(h.release(s[2], "/l"), OpResult::Failed(OpError::NotHolder));
    assert_eq!(
        h.release(s[1], "/l"),
        OpResult::Done(OpOutput::WaitCancelled)
    );
    assert!(h.db.lock(&p("/l")).unwrap().waiters.is_empty());
}

#[test]
fn blocking_requests_are_granted_in_arrival_order() {
    let (mut h, s) = setup(4, 0);
    h.lock(s[0], "/l", Exclusive);
    assert_eq!(queued(&h.acquire(s[1], "/l", Exclusive, true)), 0);
    assert_eq!(queued(&h.acquire(s[2], "/l", Exclusive, true)), 1);
    assert_eq!(queued(&h.acquire(s[3], "/l", Exclusive, true)), 2);
    for next in 1..4 {
        h.release(s[next - 1], "/l");
        assert!(granted_to(&h, s[next]), "grant goes to {next}");
        assert_eq!(holders(&h, "/l"), vec![(s[next], Exclusive)]);
    }
}

#[test]
fn a_shared_request_behind_a_waiting_exclusive_one_waits() {
    let (mut h, s) = setup(4, 0);
    h.lock(s[0], "/l", Shared);
    queued(&h.acquire(s[1], "/l", Exclusive, true));
    // Compatible with the holder, but someone is queued first: no overtaking.
    assert_eq!(queued(&h.acquire(s[2], "/l", Shared, true)), 1);
    assert_eq!(
        h.acquire(s[3], "/l", Shared, false),
        OpResult::Failed(OpError::LockBusy)
    );
    h.release(s[0], "/l");
    assert_eq!(holders(&h, "/l"), vec![(s[1], Exclusive)]);
    queued(&h.acquire(s[3], "/l", Shared, true));
    h.release(s[1], "/l");
    // Both queued shared requests are granted together.
    assert_eq!(holders(&h, "/l"), vec![(s[2], Shared), (s[3], Shared)]);
    assert!(granted_to(&h, s[2]) && granted_to(&h, s[3]));
}

#[test]
fn a_withdrawn_head_lets_the_queue_move() {
    let (mut h, s) = setup(4, 0);
    h.lock(s[0], "/l", Shared);
    queued(&h.acquire(s[1], "/l", Exclusive, true));
    queued(&h.acquire(s[2], "/l", Shared, true));
    assert_eq!(
        h.release(s[1], "/l"),
        OpResult::Done(OpOutput::WaitCancelled)
    );
    assert_eq!(holders(&h, "/l"), vec![(s[0], Shared), (s[2], Shared)]);
    // The same when the head's session closes.
    queued(&h.acquire(s[1], "/l", Exclusive, true));
    queued(&h.acquire(s[3], "/l", Shared, true));
    h.apply(Command::CloseSession { session: s[1] });
    assert_eq!(holders(&h, "/l").len(), 3);
}

#[test]
fn the_queue_is_bounded() {
    let (mut h, s) = setup(1, 0);
    h.lock(s[0], "/l", Exclusive);
    for _ in 0..LOCK_WAITERS_MAX {
        let w = h.open();
        queued(&h.acquire(w, "/l", Exclusive, true));
    }
    let late = h.open();
    assert_eq!(
        h.acquire(late, "/l", Exclusive, true),
        OpResult::Failed(OpError::LockQueueFull {
            max: LOCK_WAITERS_MAX
        })
    );
}

#[test]
fn sequencers_validate_only_while_their_grant_is_held() {
    let (mut h, s) = setup(3, 0);
    let first = h.lock(s[0], "/l", Exclusive);
    assert_eq!(
        (first.path.clone(), first.mode, first.lock_generation),
        (p("/l"), Exclusive, 1)
    );
    assert_eq!(first.instance, h.db.stat(&p("/l")).unwrap().instance);
    assert_eq!(h.db.check_sequencer(&first), Ok(()));
    let mut forged = first.clone();
    forged.mode = Shared;
    assert_eq!(
        h.db.check_sequencer(&forged),
        Err(SequencerInvalid::NotHeld)
    );

    h.release(s[0], "/l");
    assert_eq!(h.db.check_sequencer(&first), Err(SequencerInvalid::NotHeld));
    let second = h.lock(s[1], "/l", Shared);
    let third = h.lock(s[2], "/l", Shared);
    assert_eq!((second.lock_generation, third.lock_generation), (2, 3));
    assert_eq!(h.db.stat(&p("/l")).unwrap().lock_generation, 3);
    assert_eq!(
        h.db.check_sequencer(&first),
        Err(SequencerInvalid::NotHeld),
        "superseded"
    );
    assert_eq!(h.db.check_sequencer(&second), Ok(()));
    assert_eq!(h.db.check_sequencer(&third), Ok(()));

    // Re-acquiring by the same session gives a new sequencer; the old one stays dead.
    h.release(s[1], "/l");
    let fourth = h.lock(s[1], "/l", Shared);
    assert_eq!(
        h.db.check_sequencer(&second),
        Err(SequencerInvalid::NotHeld)
    );
    assert_eq!(h.db.check_sequencer(&fourth), Ok(()));

    // Delete and re-create: the new node's lock generations restart, its instance does not.
    h.release(s[1], "/l");
    h.release(s[2], "/l");
    h.ok(s[0], Op::Delete { path: p("/l") });
    assert_eq!(
        h.db.check_sequencer(&fourth),
        Err(SequencerInvalid::NodeAbsent)
    );
    h.create(s[0], "/l", b"");
    let mut reborn = h.lock(s[0], "/l", Shared);
    assert_eq!(
        h.db.check_sequencer(&fourth),
        Err(SequencerInvalid::InstanceChanged)
    );
    reborn.lock_generation = fourth.lock_generation;
    assert_ne!(h.db.check_sequencer(&reborn), Ok(()));
}

#[test]
fn lock_delay_follows_expiry_and_holds_everyone_back() {
    let (mut h, s) = setup(3, 5_000);
    let holder = s[0];
    let seq = h.lock(holder, "/l", Exclusive);
    h.now_ms = 10_000;
    for other in [s[1], s[2]] {
        h.keep_alive(other);
    }
    assert_eq!(h.tick(13_000), vec![holder]);
    assert_eq!(h.db.check_sequencer(&seq), Err(SequencerInvalid::NotHeld));
    let info = h.db.lock(&p("/l")).unwrap();
    assert_eq!(info.delay_until_ms, Some(18_000));
    assert!(info.holders.is_empty());
    assert_eq!(
        h.acquire(s[1], "/l", Shared, false),
        OpResult::Failed(OpError::LockDelayed { until_ms: 18_000 })
    );
    assert_eq!(queued(&h.acquire(s[1], "/l", Exclusive, true)), 0);
    assert_eq!(
        h.op(s[1], Op::Delete { path: p("/l") }),
        OpResult::Failed(OpError::Locked)
    );
    assert!(h.tick(17_999).is_empty());
    assert!(holders(&h, "/l").is_empty(), "no grant during the delay");
    h.tick(18_000);
    assert!(granted_to(&h, s[1]));
    assert_eq!(holders(&h, "/l"), vec![(s[1], Exclusive)]);
    assert_eq!(h.db.lock(&p("/l")).unwrap().delay_until_ms, None);
}

#[test]
fn no_lock_delay_after_a_clean_release_or_close() {
    let (mut h, s) = setup(3, 5_000);
    h.lock(s[0], "/l", Exclusive);
    h.release(s[0], "/l");
    h.lock(s[1], "/l", Exclusive);
    h.apply(Command::CloseSession { session: s[1] });
    h.lock(s[2], "/l", Exclusive);
}

#[test]
fn the_default_lock_delay_and_zero() {
    let (mut h, s) = setup(2, 0);
    h.create(s[0], "/default", b"");
    assert_eq!(
        h.db.stat(&p("/default")).unwrap().lock_delay_ms,
        LOCK_DELAY_MS_DEFAULT
    );
    h.lock(s[0], "/l", Exclusive);
    h.now_ms = 12_000;
    h.keep_alive(s[1]);
    assert_eq!(h.tick(13_000), vec![s[0]]);
    h.lock(s[1], "/l", Exclusive); // zero lock-delay: free at once
}

#[test]
fn a_lapsed_delay_lets_waiters_go_before_a_newcomer() {
    let (mut h, s) = setup(4, 5_000);
    h.lock(s[0], "/l", Exclusive);
    h.now_ms = 10_000;
    for other in &s[1..] {
        h.keep_alive(*other);
    }
    h.tick(13_000);
    queued(&h.acquire(s[1], "/l", Exclusive, true));
    // The delay lapses at 18_000; the clock moves past it without a Tick.
    h.now_ms = 19_000;
    h.keep_alive(s[2]);
    assert!(holders(&h, "/l").is_empty());
    // A newcomer's request moves the queue first: the waiter gets the lock, the newcomer queues.
    assert_eq!(queued(&h.acquire(s[2], "/l", Exclusive, true)), 0);
    assert_eq!(holders(&h, "/l"), vec![(s[1], Exclusive)]);
    assert!(granted_to(&h, s[1]));
}

#[test]
fn lock_held_by_others_on_an_expiring_ephemeral_node_is_lost() {
    let mut h = Harness::new();
    let owner = h.open();
    let holder = h.open();
    let waiter = h.open();
    h.ok(owner, Op::create_ephemeral(p("/e"), vec![]));
    let seq = h.lock(holder, "/e", Shared);
    queued(&h.acquire(waiter, "/e", Exclusive, true));
    h.apply(Command::CloseSession { session: owner });
    assert_eq!(
        h.events_for(holder),
        vec![EventKind::LockLost { path: p("/e") }]
    );
    assert_eq!(
        h.events_for(waiter),
        vec![EventKind::LockWaitCancelled { path: p("/e") }]
    );
    assert_eq!(
        h.db.check_sequencer(&seq),
        Err(SequencerInvalid::NodeAbsent)
    );
    assert!(h.db.session(holder).unwrap().locks.is_empty());
}

#[test]
fn watchers_hear_grants_and_conflicts() {
    let (mut h, s) = setup(3, 0);
    let watcher = s[2];
    h.watch(
        watcher,
        "/l",
        WatchKinds {
            lock_acquired: true,
            lock_conflict: true,
            ..Default::default()
        },
    );
    h.lock(s[0], "/l", Exclusive);
    assert_eq!(
        h.events_for(watcher),
        vec![EventKind::LockAcquired {
            path: p("/l"),
            holder: s[0],
            mode: Exclusive,
            lock_generation: 1
        }]
    );
    queued(&h.acquire(s[1], "/l", Shared, true));
    assert_eq!(
        h.events_for(watcher),
        vec![EventKind::LockConflict {
            path: p("/l"),
            mode: Shared
        }]
    );
    // A failed try-acquire changes nothing, so it tells nobody.
    let late = h.open();
    h.acquire(late, "/l", Exclusive, false);
    assert!(h.events.is_empty());
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_ignores_lock_delay() {
    let (mut h, s) = setup(2, 5_000);
    h.db.plant_bugs(chubby_db::PlantedBugs {
        ignore_lock_delay: true,
        ..Default::default()
    });
    h.lock(s[0], "/l", Exclusive);
    h.now_ms = 10_000;
    h.keep_alive(s[1]);
    h.tick(13_000);
    // With the bug, the lock is granted in the middle of the delay.
    h.lock(s[1], "/l", Exclusive);
}
