//! Events: watches for contents and children, delivered in log order tagged with the slot,
//! dropped with a rolled-back branch and with the session.

mod common;

use chubby_db::limits::SESSION_WATCHES_MAX;
use chubby_db::{
    content_checksum, Command, Database, EventId, EventKind, MultiOp, Op, OpError, OpResult,
    RequestSeq, SessionId, Slot, WatchKinds,
};
use common::{p, Harness};

const CONTENTS: WatchKinds = WatchKinds {
    contents: true,
    children: false,
    lock_acquired: false,
    lock_conflict: false,
};
const CHILDREN: WatchKinds = WatchKinds {
    contents: false,
    children: true,
    lock_acquired: false,
    lock_conflict: false,
};

#[test]
fn contents_watch_sees_create_set_delete() {
    let mut h = Harness::new();
    let w = h.open();
    let s = h.open();
    h.watch(w, "/f", CONTENTS); // the node need not exist yet
    h.create(s, "/f", b"a");
    let instance = h.db.stat(&p("/f")).unwrap().instance;
    assert_eq!(
        h.events_for(w),
        vec![EventKind::NodeCreated {
            path: p("/f"),
            instance
        }]
    );
    h.ok(
        s,
        Op::Set {
            path: p("/f"),
            contents: b"b".to_vec(),
        },
    );
    assert_eq!(
        h.events_for(w),
        vec![EventKind::ContentsChanged {
            path: p("/f"),
            content_generation: 2,
            checksum: content_checksum(b"b"),
        }]
    );
    h.ok(s, Op::Delete { path: p("/f") });
    assert_eq!(
        h.events_for(w),
        vec![EventKind::NodeDeleted {
            path: p("/f"),
            instance
        }]
    );
    assert!(h.events_for(s).is_empty(), "only watchers hear");
}

#[test]
fn children_watch_sees_adds_and_removes_but_not_grandchildren() {
    let mut h = Harness::new();
    let w = h.open();
    h.mkdir(w, "/d");
    h.watch(w, "/d", CHILDREN);
    h.mkdir(w, "/d/sub");
    assert_eq!(
        h.events_for(w),
        vec![EventKind::ChildAdded { path: p("/d/sub") }]
    );
    h.create(w, "/d/sub/deep", b"");
    assert!(h.events.is_empty());
    h.ok(
        w,
        Op::Set {
            path: p("/d/sub/deep"),
            contents: vec![1],
        },
    );
    assert!(h.events.is_empty());
    h.ok(
        w,
        Op::Delete {
            path: p("/d/sub/deep"),
        },
    );
    h.ok(w, Op::Delete { path: p("/d/sub") });
    assert_eq!(
        h.events_for(w),
        vec![EventKind::ChildRemoved { path: p("/d/sub") }]
    );
}

#[test]
fn interest_is_per_kind_and_empty_kinds_unwatch() {
    let mut h = Harness::new();
    let w = h.open();
    h.mkdir(w, "/d");
    h.watch(w, "/d", CONTENTS);
    h.create(w, "/d/x", b"");
    assert!(
        h.events.is_empty(),
        "a contents watch does not hear children"
    );
    h.watch(w, "/d", CHILDREN); // replaces the interest
    h.create(w, "/d/y", b"");
    assert_eq!(h.events.len(), 1);
    h.watch(w, "/d", WatchKinds::default());
    assert!(h.db.session(w).unwrap().watches.is_empty());
    h.create(w, "/d/z", b"");
    assert!(h.events.is_empty());
}

#[test]
fn events_carry_their_slot_and_order_within_it() {
    let mut db = Database::new(Default::default());
    let open = Command::OpenSession {
        now_ms: 0,
        lease_ms: None,
    };
    db.apply(Slot(1), &open);
    db.apply(Slot(1), &open);
    let (w1, w2, s) = (SessionId(1), SessionId(2), SessionId(2));
    let watch = |session, seq| Command::MultiOp {
        session,
        seq: RequestSeq(seq),
        op: MultiOp::new().then(Op::Watch {
            path: p("/f"),
            kinds: WatchKinds::ALL,
        }),
    };
    db.apply(Slot(2), &watch(w1, 1));
    db.apply(Slot(2), &watch(w2, 1));
    let write = |seq, op| Command::MultiOp {
        session: s,
        seq: RequestSeq(seq),
        op,
    };
    // Two commands in slot 5 (a batch): indexes continue across them.
    let create = MultiOp::new().then(Op::create_file(p("/f"), vec![]));
    let a = db.apply(Slot(5), &write(2, create));
    let set = MultiOp::new().then(Op::Set {
        path: p("/f"),
        contents: vec![1],
    });
    let b = db.apply(Slot(5), &write(3, set));
    let ids: Vec<EventId> = a.events.iter().chain(&b.events).map(|e| e.id).collect();
    let expected: Vec<EventId> = (0..4)
        .map(|index| EventId {
            slot: Slot(5),
            index,
        })
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(a.events[0].session, w1);
    assert_eq!(a.events[1].session, w2);
    // A new slot starts again from index 0.
    let set = MultiOp::new().then(Op::Set {
        path: p("/f"),
        contents: vec![2],
    });
    let c = db.apply(Slot(6), &write(4, set));
    assert_eq!(
        c.events[0].id,
        EventId {
            slot: Slot(6),
            index: 0
        }
    );
    db.check_invariants();
}

#[test]
fn a_rolled_back_branch_tells_nobody() {
    let mut h = Harness::new();
    let w = h.open();
    h.watch(w, "/", WatchKinds::ALL);
    h.watch(w, "/a", WatchKinds::ALL);
    let results = h.ops(
        w,
        vec![
            Op::create_file(p("/a"), vec![]),
            Op::Set {
                path: p("/a"),
                contents: vec![1],
            },
            Op::Delete {
                path: p("/missing"),
            },
        ],
    );
    assert_eq!(results[2], OpResult::Failed(OpError::NodeAbsent));
    assert!(h.events.is_empty());
    // The next event starts from index 0 of its slot as if nothing happened.
    h.create(w, "/a", b"");
    assert_eq!(h.events[0].id.index, 0);
}

#[test]
fn watches_end_with_the_session_and_are_bounded() {
    let mut h = Harness::new();
    let w = h.open();
    let s = h.open();
    for i in 0..SESSION_WATCHES_MAX {
        h.watch(w, &format!("/w{i}"), CONTENTS);
    }
    assert_eq!(
        h.op(
            w,
            Op::Watch {
                path: p("/one-more"),
                kinds: CONTENTS
            }
        ),
        OpResult::Failed(OpError::TooManyWatches {
            max: SESSION_WATCHES_MAX
        })
    );
    // Changing an existing watch is not a new one.
    h.watch(w, "/w0", WatchKinds::ALL);
    h.apply(Command::CloseSession { session: w });
    h.create(s, "/w0", b"");
    assert!(h.events.is_empty());
}

#[test]
fn fail_over_marker_reaches_every_session() {
    let mut h = Harness::new();
    let sessions: Vec<SessionId> = (0..3).map(|_| h.open()).collect();
    h.master_changed(4, 2_000);
    let mut told: Vec<SessionId> = h.events.iter().map(|e| e.session).collect();
    told.sort();
    assert_eq!(told, sessions);
    assert!(h.events.iter().all(|e| e.kind
        == EventKind::MasterChanged {
            epoch: chubby_db::Epoch(4)
        }));
}

#[test]
fn events_round_trip_through_their_encoding() {
    let mut h = Harness::new();
    let w = h.open();
    h.watch(w, "/", WatchKinds::ALL);
    h.create(w, "/f", b"");
    let event = h.events[0].clone();
    assert_eq!(chubby_db::Event::decode(&event.encode()).unwrap(), event);
}
