//! Sessions and time: open, KeepAlive, close, expiry by the master's Tick (releasing locks and
//! deleting ephemerals identically on every replica), fail-over extension, exactly-once requests.

mod common;

use chubby_db::limits::{LEASE_MS_DEFAULT, LEASE_MS_MAX, LEASE_MS_MIN, SESSION_REPLIES_MAX};
use chubby_db::{
    Command, Database, Epoch, EventKind, LockMode, MultiOp, Op, OpOutput, Rejection, Reply,
    RequestSeq, SessionId, Slot, WatchKinds,
};
use common::{done, p, Harness};

#[test]
fn open_keep_alive_close() {
    let mut h = Harness::new();
    let reply = h.apply(Command::OpenSession {
        now_ms: 1_000,
        lease_ms: None,
    });
    let Reply::SessionOpened {
        session,
        lease_until_ms,
        lease_remaining_ms,
    } = reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(lease_until_ms, 1_000 + LEASE_MS_DEFAULT);
    assert_eq!(lease_remaining_ms, LEASE_MS_DEFAULT);
    assert_eq!(LEASE_MS_DEFAULT, 12_000);
    let other = h.open();
    assert!(other > session, "ids increase");

    h.now_ms = 5_000;
    assert_eq!(
        h.keep_alive(session),
        Reply::KeptAlive {
            lease_until_ms: 5_000 + LEASE_MS_DEFAULT,
            lease_remaining_ms: LEASE_MS_DEFAULT,
        }
    );
    // A KeepAlive stamped by a slower clock never shortens the lease.
    let reply = h.apply(Command::KeepAlive {
        session,
        now_ms: 2_000,
    });
    assert_eq!(
        reply,
        Reply::KeptAlive {
            lease_until_ms: 5_000 + LEASE_MS_DEFAULT,
            // Counted on the database's clock (5 s), not the stamp's (2 s).
            lease_remaining_ms: LEASE_MS_DEFAULT,
        }
    );
    assert_eq!(h.db.now_ms(), 5_000, "the clock never goes back");

    assert_eq!(
        h.apply(Command::CloseSession { session }),
        Reply::SessionClosed
    );
    assert!(h.db.session(session).is_none());
    assert_eq!(
        h.apply(Command::CloseSession { session }),
        Reply::Rejected(Rejection::SessionUnknown(session))
    );
    assert_eq!(
        h.keep_alive(session),
        Reply::Rejected(Rejection::SessionUnknown(session))
    );
    let reply = h.request(session, MultiOp::new());
    assert_eq!(reply, Reply::Rejected(Rejection::SessionUnknown(session)));
}

#[test]
fn requested_leases_are_bounded() {
    let mut h = Harness::new();
    let reply = h.apply(Command::OpenSession {
        now_ms: 0,
        lease_ms: Some(LEASE_MS_MIN),
    });
    assert!(
        matches!(reply, Reply::SessionOpened { lease_until_ms, .. } if lease_until_ms == LEASE_MS_MIN)
    );
    for lease_ms in [LEASE_MS_MIN - 1, LEASE_MS_MAX + 1] {
        let reply = h.apply(Command::OpenSession {
            now_ms: 0,
            lease_ms: Some(lease_ms),
        });
        assert_eq!(reply, Reply::Rejected(Rejection::InvalidLease { lease_ms }));
    }
    assert_eq!(h.db.sessions().len(), 1);
}

#[test]
fn tick_expires_exactly_the_sessions_whose_lease_ended() {
    let mut h = Harness::new();
    let a = h.open(); // lease until 13_000
    h.now_ms = 3_000;
    let b = h.open(); // lease until 15_000
    assert!(h.tick(12_999).is_empty());
    assert_eq!(h.tick(13_000), vec![a]);
    assert_eq!(h.events_for(a), vec![EventKind::SessionExpired]);
    assert!(h.db.session(a).is_none() && h.db.session(b).is_some());
    h.now_ms = 14_000;
    h.keep_alive(b);
    assert!(h.tick(25_999).is_empty());
    assert_eq!(h.tick(26_000), vec![b]);
    assert_eq!(h.db.next_deadline_ms(), None);
}

#[test]
fn a_lapsed_lease_lives_until_the_master_expires_it() {
    let mut h = Harness::new();
    let s = h.open();
    h.now_ms = 20_000; // past the lease, but no Tick yet
    assert!(matches!(
        h.keep_alive(s),
        Reply::KeptAlive {
            lease_until_ms: 32_000,
            lease_remaining_ms: 12_000,
        }
    ));
    assert!(h.tick(20_000).is_empty());
}

#[test]
fn expiry_releases_locks_and_deletes_ephemerals() {
    let mut h = Harness::new();
    let owner = h.open();
    let watcher = h.open();
    h.mkdir(watcher, "/svc");
    h.create(watcher, "/lock", b"");
    h.ok(owner, Op::create_ephemeral(p("/svc/me"), b"addr".to_vec()));
    h.lock(owner, "/lock", LockMode::Exclusive);
    h.watch(
        watcher,
        "/svc",
        WatchKinds {
            children: true,
            ..Default::default()
        },
    );
    h.watch(
        watcher,
        "/svc/me",
        WatchKinds {
            contents: true,
            ..Default::default()
        },
    );
    h.watch(owner, "/svc", WatchKinds::ALL);
    h.now_ms = 20_000;
    h.keep_alive(watcher);

    assert_eq!(h.tick(20_000), vec![owner]);
    assert!(!h.exists("/svc/me"));
    assert!(h.db.lock(&p("/lock")).unwrap().holders.is_empty());
    assert_eq!(h.events_for(owner), vec![EventKind::SessionExpired]);
    let instance_gone =
        |e: &EventKind| matches!(e, EventKind::NodeDeleted { path, .. } if *path == p("/svc/me"));
    let events = h.events_for(watcher);
    assert!(events.iter().any(instance_gone), "{events:?}");
    assert!(events.contains(&EventKind::ChildRemoved { path: p("/svc/me") }));
    assert!(h.db.session(watcher).unwrap().watches.len() == 2);
}

#[test]
fn close_releases_without_lock_delay() {
    let mut h = Harness::new();
    let a = h.open();
    let b = h.open();
    h.create(a, "/l", b"");
    h.ok(a, Op::create_ephemeral(p("/e"), vec![]));
    h.lock(a, "/l", LockMode::Exclusive);
    assert!(matches!(
        done(&h.acquire(b, "/l", LockMode::Exclusive, true)),
        OpOutput::Queued { ahead: 0 }
    ));
    h.apply(Command::CloseSession { session: a });
    assert!(!h.exists("/e"));
    let info = h.db.lock(&p("/l")).unwrap();
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].0, b);
    assert_eq!(info.delay_until_ms, None);
    assert!(matches!(h.events_for(b)[..], [EventKind::LockGranted(_)]));
}

#[test]
fn a_retried_request_is_applied_once() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/n", b"0");
    let seq = h.next_seq(s);
    let set = MultiOp::new().then(Op::Set {
        path: p("/n"),
        contents: b"1".to_vec(),
    });
    let command = Command::MultiOp {
        session: s,
        seq,
        op: set,
    };
    let first = h.apply(command.clone());
    let generation = h.db.stat(&p("/n")).unwrap().content_generation;
    let digest = h.db.digest();
    let retry = h.apply(command);
    assert_eq!(retry, first);
    assert!(h.events.is_empty());
    assert_eq!(h.db.stat(&p("/n")).unwrap().content_generation, generation);
    assert_ne!(
        h.db.digest(),
        digest,
        "the applied slot moved, nothing else"
    );
    // A retry whose body differs still answers the remembered reply: the number identifies it.
    let other = Command::MultiOp {
        session: s,
        seq,
        op: MultiOp::new().then(Op::Delete { path: p("/n") }),
    };
    assert_eq!(h.apply(other), first);
    assert!(h.exists("/n"));
}

/// The write is applied by the old master's replica; the client, cut off, retries it with the
/// same number to the new master, whose replica has the same log (here: restored from a
/// snapshot) and a `MasterChanged` entry in between. It is applied once.
#[test]
fn a_write_retried_after_fail_over_is_applied_once() {
    let mut old = Harness::new();
    let s = old.open();
    old.create(s, "/counter", b"0");
    let seq = old.next_seq(s);
    let write = Command::MultiOp {
        session: s,
        seq,
        op: MultiOp::compare_and_set(p("/counter"), 1, b"1".to_vec()),
    };
    let first = old.apply(write.clone());
    assert!(first.multi_op().unwrap().committed());

    let mut new = Database::from_snapshot(&mut &old.db.snapshot().to_bytes()[..]).unwrap();
    let mut slot = old.slot;
    let mut step = |db: &mut Database, command: &Command| {
        slot += 1;
        let applied = db.apply(Slot(slot), command);
        db.check_invariants();
        applied
    };
    let changed = step(
        &mut new,
        &Command::MasterChanged {
            epoch: Epoch(2),
            now_ms: 4_000,
        },
    );
    assert_eq!(
        changed.events[0].kind,
        EventKind::MasterChanged { epoch: Epoch(2) }
    );
    let retried = step(&mut new, &write);
    assert_eq!(retried.reply, first);
    let stat = new.stat(&p("/counter")).unwrap();
    assert_eq!(stat.content_generation, 2, "applied once, not twice");
}

#[test]
fn the_reply_cache_is_bounded_and_says_when_it_forgot() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/x", b"");
    let total = SESSION_REPLIES_MAX as u64 + 3;
    for seq in 2..=total + 1 {
        let op = MultiOp::new().then(Op::Read { path: p("/x") });
        h.apply(Command::MultiOp {
            session: s,
            seq: RequestSeq(seq),
            op,
        });
    }
    let oldest_kept = total + 2 - SESSION_REPLIES_MAX as u64;
    let retry = |seq| Command::MultiOp {
        session: s,
        seq: RequestSeq(seq),
        op: MultiOp::new(),
    };
    assert_eq!(
        h.apply(retry(oldest_kept - 1)),
        Reply::Rejected(Rejection::SeqForgotten {
            seq: RequestSeq(oldest_kept - 1),
            forgotten_below: RequestSeq(oldest_kept),
        })
    );
    assert!(
        h.apply(retry(oldest_kept)).multi_op().unwrap().ops.len() == 1,
        "remembered"
    );
    // Requests may arrive out of order: a number above the forgotten ones that was never
    // applied is applied.
    let mut h = Harness::new();
    let s = h.open();
    let create = |seq, path: &str| Command::MultiOp {
        session: s,
        seq: RequestSeq(seq),
        op: MultiOp::new().then(Op::create_file(p(path), vec![])),
    };
    h.apply(create(6, "/six"));
    h.apply(create(5, "/five"));
    assert!(h.exists("/six") && h.exists("/five"));
}

#[test]
fn fail_over_extends_leases_instead_of_expiring_sessions() {
    let mut h = Harness::new();
    let a = h.open(); // lease until 13_000
    h.now_ms = 10_000;
    let b = h.open(); // lease until 22_000
    h.create(a, "/l", b"");
    let sequencer = h.lock(a, "/l", LockMode::Exclusive);
    // The old master died at 11_000; the new one takes over at 16_000, after a's lease ended.
    let reply = h.master_changed(9, 16_000);
    assert_eq!(
        reply,
        Reply::MasterChanged {
            sessions_extended: 2
        }
    );
    for session in [a, b] {
        assert_eq!(
            h.events_for(session),
            vec![EventKind::MasterChanged { epoch: Epoch(9) }]
        );
    }
    assert_eq!(
        h.db.session(a).unwrap().lease_until_ms,
        16_000 + LEASE_MS_DEFAULT
    );
    assert_eq!(
        h.db.session(b).unwrap().lease_until_ms,
        22_000.max(16_000 + LEASE_MS_DEFAULT)
    );
    assert_eq!(h.db.master_epoch(), Some(Epoch(9)));
    assert!(h.tick(16_001).is_empty(), "nobody expires at the fail-over");
    assert!(h.db.check_sequencer(&sequencer).is_ok());
    // A client that never comes back expires a full lease after the fail-over.
    h.now_ms = 20_000;
    h.keep_alive(b);
    assert_eq!(h.tick(28_000), vec![a]);
}

#[test]
fn expiry_is_identical_on_every_replica() {
    let mut commands = vec![
        Command::OpenSession {
            now_ms: 0,
            lease_ms: None,
        },
        Command::OpenSession {
            now_ms: 0,
            lease_ms: Some(5_000),
        },
        Command::OpenSession {
            now_ms: 0,
            lease_ms: Some(5_000),
        },
    ];
    let s = |n| SessionId(n);
    let mut seq = 0;
    let mut req = |session, op: MultiOp| {
        seq += 1;
        Command::MultiOp {
            session,
            seq: RequestSeq(seq),
            op,
        }
    };
    commands.push(req(
        s(1),
        MultiOp::new()
            .then(Op::create_directory(p("/d")))
            .then(Op::create_file(p("/l"), vec![])),
    ));
    commands.push(req(
        s(2),
        MultiOp::new()
            .then(Op::create_ephemeral(p("/d/two"), vec![]))
            .then(Op::Acquire {
                path: p("/l"),
                mode: LockMode::Shared,
                wait: false,
            }),
    ));
    commands.push(req(
        s(3),
        MultiOp::new()
            .then(Op::create_ephemeral(p("/d/three"), vec![]))
            .then(Op::Acquire {
                path: p("/l"),
                mode: LockMode::Shared,
                wait: false,
            }),
    ));
    commands.push(req(
        s(1),
        MultiOp::new()
            .then(Op::Watch {
                path: p("/d"),
                kinds: WatchKinds::ALL,
            })
            .then(Op::Acquire {
                path: p("/l"),
                mode: LockMode::Exclusive,
                wait: true,
            }),
    ));
    commands.push(Command::KeepAlive {
        session: s(1),
        now_ms: 4_000,
    });
    commands.push(Command::Tick { now_ms: 5_000 });
    commands.push(Command::Tick { now_ms: 16_000 });
    let run = || {
        let mut db = Database::new(Default::default());
        let outputs: Vec<_> = commands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let applied = db.apply(Slot(i as u64 + 1), c);
                db.check_invariants();
                applied
            })
            .collect();
        (outputs, db.digest())
    };
    let (first, digest) = run();
    let (second, digest2) = run();
    assert_eq!(first, second);
    assert_eq!(digest, digest2);
    let expired = &first[first.len() - 2];
    assert_eq!(
        expired.reply,
        Reply::Ticked {
            expired: vec![s(2), s(3)]
        }
    );
    // Session 1 watched /d: it hears both ephemerals go, in session order.
    let removed: Vec<_> = expired
        .events
        .iter()
        .filter(|e| e.session == s(1))
        .map(|e| e.kind.clone())
        .filter(|k| matches!(k, EventKind::ChildRemoved { .. }))
        .collect();
    assert_eq!(
        removed,
        vec![
            EventKind::ChildRemoved { path: p("/d/two") },
            EventKind::ChildRemoved {
                path: p("/d/three")
            }
        ]
    );
}
