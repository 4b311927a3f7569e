//! The client against a three-replica cluster in one process over QUIC with fresh certificates.

mod common;

use chubby_client::{
    Branch, CasOutcome, Client, Cmp, Create, Error, EventKind, Expiry, LockMode, MultiOp, NodeKind,
    NodePath, Op, OpError, OpOutput, OpResult, Rejection, SequencerInvalid, SessionState, Test,
    WatchEvent, WatchKinds,
};
use chubby_db::testing::{wait_for, TestCluster, TestOptions};
use common::{client, config};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn p(path: &str) -> NodePath {
    NodePath::new(path).unwrap()
}

const LEASE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_calls_set_get_create_delete_list_stat() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let alice = client(&cluster, "alice", LEASE).await;

    let dir = alice.create("/app", Create::directory()).await.unwrap();
    let file = alice
        .create("/app/config", Create::file(b"v1".to_vec()))
        .await
        .unwrap();
    assert!(file > dir, "instance numbers grow");
    alice
        .create("/app/notes", Create::file(Vec::new()))
        .await
        .unwrap();
    assert_eq!(
        alice.list("/app").await.unwrap(),
        vec![p("/app/config"), p("/app/notes")]
    );

    let view = alice.get("/app/config").await.unwrap();
    assert_eq!(&*view.contents, b"v1");
    assert_eq!(view.stat.kind, NodeKind::File);
    assert_eq!(view.stat.content_generation, 1);
    assert_eq!(view.stat.checksum, chubby_client::content_checksum(b"v1"));

    let written = alice.set("/app/config", b"v2".to_vec()).await.unwrap();
    assert_eq!(written.content_generation, 2);
    let stat = alice.stat("/app/config").await.unwrap();
    assert_eq!(stat.content_generation, 2);
    assert_eq!(stat.checksum, written.checksum);
    assert_eq!(stat.instance, file);
    assert_eq!(stat.contents_bytes, 2);
    // A stale read may lag, but it never shows what was never written.
    let stale = alice.get_stale("/app/config").await.unwrap();
    assert!(matches!(&*stale.contents, b"v1" | b"v2"));

    assert_eq!(
        alice.create("/app/config", Create::file(Vec::new())).await,
        Err(Error::Op(OpError::AlreadyExists))
    );
    assert_eq!(
        alice.create("/missing/x", Create::file(Vec::new())).await,
        Err(Error::Op(OpError::ParentAbsent))
    );
    assert_eq!(
        alice.delete("/app").await,
        Err(Error::Op(OpError::NotEmpty))
    );
    assert!(matches!(
        alice.list("/app/config").await,
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        alice.get("bad//path").await,
        Err(Error::InvalidPath(_))
    ));

    alice.delete("/app/config").await.unwrap();
    alice.delete("/app/notes").await.unwrap();
    alice.delete("/app").await.unwrap();
    assert_eq!(alice.get("/app").await, Err(Error::NotFound(p("/app"))));
    assert_eq!(alice.list("/").await.unwrap(), Vec::<NodePath>::new());

    alice.close().await.unwrap();
    cluster.shutdown().await;
}

/// Guard tests are all evaluated and each reported; the branch that runs is atomic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_op_reports_each_guard_and_op_and_runs_the_else_branch() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let alice = client(&cluster, "alice", LEASE).await;
    alice
        .create("/m", Create::file(b"one".to_vec()))
        .await
        .unwrap();
    let guarded = || {
        MultiOp::new()
            .guard(Test::Exists { path: p("/m") })
            .guard(Test::ContentGeneration {
                path: p("/m"),
                cmp: Cmp::Eq,
                generation: 1,
            })
            .guard(Test::Absent { path: p("/n") })
            .then(Op::Set {
                path: p("/m"),
                contents: b"two".to_vec(),
            })
            .then(Op::create_file(p("/n"), b"new".to_vec()))
            .otherwise(Op::Read { path: p("/m") })
    };

    let reply = alice.multi_op(guarded()).await.unwrap();
    assert_eq!(reply.branch, Branch::Top);
    assert_eq!(reply.guards, vec![true, true, true]);
    assert!(reply.committed());
    assert!(matches!(
        reply.ops.as_slice(),
        [
            OpResult::Done(OpOutput::Set {
                content_generation: 2,
                ..
            }),
            OpResult::Done(OpOutput::Created { .. })
        ]
    ));

    // Again: the generation moved and /n exists, so the else branch reads /m.
    let reply = alice.multi_op(guarded()).await.unwrap();
    assert_eq!(reply.branch, Branch::Fop);
    assert_eq!(reply.guards, vec![true, false, false]);
    match reply.ops.as_slice() {
        [OpResult::Done(OpOutput::Read(view))] => assert_eq!(&*view.contents, b"two"),
        other => panic!("{other:?}"),
    }

    // A branch whose second op fails is rolled back: the first op is reported undone.
    let failing = MultiOp::new()
        .then(Op::create_file(p("/o"), Vec::new()))
        .then(Op::create_file(p("/n"), Vec::new()));
    let reply = alice.multi_op(failing).await.unwrap();
    assert_eq!(reply.branch, Branch::Top);
    assert_eq!(reply.guards, Vec::<bool>::new());
    assert_eq!(
        reply.ops,
        vec![OpResult::Undone, OpResult::Failed(OpError::AlreadyExists)]
    );
    assert_eq!(reply.failed_op(), Some(1));
    assert!(matches!(alice.get("/o").await, Err(Error::NotFound(_))));

    // Limits reject the request as a whole.
    let mut too_many = MultiOp::new();
    for _ in 0..=chubby_db::limits::BRANCH_OPS_MAX {
        too_many = too_many.then(Op::Read { path: p("/m") });
    }
    assert!(matches!(
        alice.multi_op(too_many).await,
        Err(Error::Rejected(Rejection::TooManyOps { .. }))
    ));
    alice.close().await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_swaps_once_then_reports_the_conflict() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let alice = client(&cluster, "alice", LEASE).await;
    let bob = client(&cluster, "bob", LEASE).await;
    alice
        .create("/cas", Create::file(b"0".to_vec()))
        .await
        .unwrap();
    let generation = alice.stat("/cas").await.unwrap().content_generation;

    let first = alice.compare_and_set("/cas", generation, b"alice".to_vec());
    let second = bob.compare_and_set("/cas", generation, b"bob".to_vec());
    let (first, second) = tokio::join!(first, second);
    let outcomes = [first.unwrap(), second.unwrap()];
    let swapped = outcomes
        .iter()
        .filter(|o| matches!(o, CasOutcome::Swapped(w) if w.content_generation == generation + 1))
        .count();
    assert_eq!(swapped, 1, "exactly one writer wins: {outcomes:?}");
    let conflict = outcomes
        .iter()
        .find_map(|o| match o {
            CasOutcome::Conflict(view) => Some(view.clone()),
            CasOutcome::Swapped(_) => None,
        })
        .expect("the loser sees the winner's value");
    assert_eq!(conflict.stat.content_generation, generation + 1);
    assert!(matches!(&*conflict.contents, b"alice" | b"bob"));

    assert_eq!(
        alice.compare_and_set("/absent", 1, Vec::new()).await,
        Err(Error::Op(OpError::NodeAbsent))
    );
    alice.close().await.unwrap();
    bob.close().await.unwrap();
    cluster.shutdown().await;
}

/// Alice holds the lock; Bob's try-lock is refused and his blocking lock waits in the queue.
/// When Alice releases, Bob is granted a new generation; Alice's sequencer stops validating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_lock_contention_hands_over_with_sequencers() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let alice = client(&cluster, "alice", LEASE).await;
    let bob = Arc::new(client(&cluster, "bob", LEASE).await);
    alice
        .create("/lock", Create::file(Vec::new()))
        .await
        .unwrap();

    let held = alice.lock("/lock", LockMode::Exclusive).await.unwrap();
    let alice_sequencer = held.sequencer().clone();
    assert_eq!(alice_sequencer.mode, LockMode::Exclusive);
    bob.check_sequencer(&alice_sequencer).await.unwrap();

    let refused = bob
        .try_lock("/lock", LockMode::Exclusive)
        .await
        .unwrap_err();
    assert!(refused.is_lock_busy(), "{refused}");
    let waiter = bob.clone();
    let waiting = tokio::spawn(async move { waiter.lock("/lock", LockMode::Exclusive).await });
    wait_for("bob to be queued", || async {
        let locks = cluster
            .read_each(|db| db.lock(&NodePath::new("/lock").unwrap()).unwrap())
            .await;
        locks.values().all(|l| l.waiters.len() == 1).then_some(())
    })
    .await;
    assert!(!waiting.is_finished());

    held.release().await.unwrap();
    let bob_guard = waiting.await.unwrap().expect("granted after the release");
    let bob_sequencer = bob_guard.sequencer().clone();
    assert!(bob_sequencer.lock_generation > alice_sequencer.lock_generation);
    assert_eq!(
        alice.check_sequencer(&alice_sequencer).await,
        Err(Error::SequencerInvalid(SequencerInvalid::NotHeld))
    );
    alice.check_sequencer(&bob_sequencer).await.unwrap();
    assert!(!bob_guard.is_lost());

    drop(bob_guard); // released in the background
    wait_for("the dropped guard to release", || async {
        alice
            .check_sequencer(&bob_sequencer)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    alice.try_lock("/lock", LockMode::Shared).await.unwrap();
    alice.close().await.unwrap();
    Arc::try_unwrap(bob).unwrap().close().await.unwrap();
    cluster.shutdown().await;
}

/// Alice's session (1 s lease) holds the lock when her process "crashes". Once the master
/// expires her session the lock enters lock-delay: try-locks are refused with `LockDelayed`,
/// a blocking lock waits, and is granted only when the delay has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_holds_the_lock_after_its_holders_session_expires() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let bob = Arc::new(client(&cluster, "bob", LEASE).await);
    let carol = Arc::new(client(&cluster, "carol", LEASE).await);
    let delay = Duration::from_millis(1_500);
    bob.create("/fenced", Create::file(Vec::new()).lock_delay(delay))
        .await
        .unwrap();
    let alice = client(&cluster, "alice", Duration::from_secs(1)).await;
    let held = alice.lock("/fenced", LockMode::Exclusive).await.unwrap();
    let alice_sequencer = held.sequencer().clone();
    alice.abandon();
    drop(held); // an abandoned client releases nothing

    let until_ms = wait_for("the lock to enter lock-delay", || async {
        match bob.try_lock("/fenced", LockMode::Exclusive).await {
            Err(Error::Op(OpError::LockDelayed { until_ms })) => Some(until_ms),
            Err(Error::Op(OpError::LockBusy)) => None,
            other => panic!("expected busy, then delayed: {other:?}"),
        }
    })
    .await;
    assert_eq!(
        bob.check_sequencer(&alice_sequencer).await,
        Err(Error::SequencerInvalid(SequencerInvalid::NotHeld))
    );
    let queued_at = Instant::now();
    let waiter = carol.clone();
    let granted = tokio::spawn(async move { waiter.lock("/fenced", LockMode::Exclusive).await });
    let guard = granted.await.unwrap().expect("granted after the delay");
    // The grant's slot carried a clock at or past the delay's end, on every replica.
    cluster.converged_digests().await;
    let clock = cluster.read_each(|db| db.now_ms()).await;
    assert!(
        clock.values().all(|now| *now >= until_ms),
        "granted before the delay ended: {clock:?} < {until_ms}"
    );
    assert!(queued_at.elapsed() < Duration::from_secs(10));
    bob.check_sequencer(guard.sequencer()).await.unwrap();
    guard.release().await.unwrap();
    Arc::try_unwrap(bob).unwrap().close().await.unwrap();
    Arc::try_unwrap(carol).unwrap().close().await.unwrap();
    cluster.shutdown().await;
}

/// Events of a watched node arrive in log order, each once, tagged with increasing ids; child
/// events go to the parent's watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_receives_events_in_slot_order() {
    let cluster = TestCluster::start(TestOptions::default()).await;
    let alice = client(&cluster, "alice", LEASE).await;
    let bob = client(&cluster, "bob", LEASE).await;
    let mut node = alice.watch("/w", WatchKinds::ALL).await.unwrap();
    let children = WatchKinds {
        children: true,
        ..WatchKinds::default()
    };
    let mut root = alice.watch("/", children).await.unwrap();

    bob.create("/w", Create::file(b"0".to_vec())).await.unwrap();
    for i in 1..=5u8 {
        bob.set("/w", vec![i]).await.unwrap();
    }
    let lock = bob.lock("/w", LockMode::Exclusive).await.unwrap();
    lock.release().await.unwrap();
    bob.delete("/w").await.unwrap();

    let mut kinds = Vec::new();
    let mut last = None;
    while kinds.len() < 8 {
        let event = match tokio::time::timeout(Duration::from_secs(10), node.next()).await {
            Ok(Some(WatchEvent::Event(event))) => event,
            other => panic!("after {kinds:?}: {other:?}"),
        };
        assert!(
            last < Some(event.id),
            "ids increase: {last:?} then {:?}",
            event.id
        );
        last = Some(event.id);
        assert_eq!(event.session, alice.session());
        kinds.push(event.kind);
    }
    assert!(matches!(kinds[0], EventKind::NodeCreated { .. }));
    for (i, kind) in kinds[1..6].iter().enumerate() {
        match kind {
            EventKind::ContentsChanged {
                content_generation, ..
            } => assert_eq!(*content_generation, i as u64 + 2),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        kinds[6],
        EventKind::LockAcquired {
            mode: LockMode::Exclusive,
            ..
        }
    ));
    assert!(matches!(kinds[7], EventKind::NodeDeleted { .. }));
    assert_eq!(node.try_next(), None);

    let added = root.next().await;
    let removed = root.next().await;
    assert!(
        matches!(&added, Some(WatchEvent::Event(e)) if e.kind == EventKind::ChildAdded { path: p("/w") }),
        "{added:?}"
    );
    assert!(
        matches!(&removed, Some(WatchEvent::Event(e)) if e.kind == EventKind::ChildRemoved { path: p("/w") }),
        "{removed:?}"
    );
    alice.close().await.unwrap();
    bob.close().await.unwrap();
    cluster.shutdown().await;
}

/// With every replica gone, KeepAlives go unanswered: the session state moves to `Jeopardy`,
/// then, after the lease and the grace period, to `Expired(LeaseLapsed)`; calls then fail fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jeopardy_then_expiry_when_the_cluster_is_unreachable() {
    let mut cluster = TestCluster::start(TestOptions::default()).await;
    let mut config = config(&cluster, "alice", Duration::from_secs(1));
    config.timeouts.grace = Duration::from_secs(1);
    let alice = Client::connect(config).await.unwrap();
    let mut states = alice.session_state();
    assert_eq!(*states.borrow(), SessionState::Safe);
    for node in cluster.nodes() {
        cluster.stop(node).await;
    }
    let jeopardy = tokio::time::timeout(
        Duration::from_secs(10),
        states.wait_for(|s| *s == SessionState::Jeopardy),
    )
    .await
    .is_ok();
    assert!(jeopardy, "jeopardy reported");
    let expired = tokio::time::timeout(
        Duration::from_secs(10),
        states.wait_for(|s| *s == SessionState::Expired(Expiry::LeaseLapsed)),
    )
    .await
    .is_ok();
    assert!(expired, "expiry reported");
    assert_eq!(alice.get("/").await, Err(Error::SessionExpired));
    cluster.shutdown().await;
}
