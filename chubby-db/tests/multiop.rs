//! MultiOp [PML 5.6]: every guard test and op, branch selection, per-guard and per-op reporting,
//! atomicity of the branch that runs, limits.

mod common;

use chubby_db::limits::{
    BRANCH_OPS_MAX, GUARD_TESTS_MAX, LOCK_DELAY_MS_MAX, MULTIOP_BYTES_MAX, MULTIOP_READ_BYTES_MAX,
};
use chubby_db::{
    content_checksum, Branch, Cmp, Command, Config, DecodeError, Epoch, LockMode, MultiOp,
    NodeKind, Op, OpError, OpOutput, OpResult, QueryError, Rejection, Reply, SessionId, Slot, Test,
};
use common::{done, p, Harness};

fn guard_results(h: &mut Harness, session: SessionId, tests: Vec<Test>) -> (Branch, Vec<bool>) {
    let reply = h.multi(
        session,
        MultiOp {
            guard: tests,
            top: vec![],
            fop: vec![],
        },
    );
    (reply.branch, reply.guards)
}

/// Each test alone, expected to hold (`true`) or fail.
fn assert_tests(h: &mut Harness, session: SessionId, cases: Vec<(Test, bool)>) {
    for (test, expected) in cases {
        let (branch, guards) = guard_results(h, session, vec![test.clone()]);
        assert_eq!(guards, vec![expected], "{test:?}");
        let expected_branch = if expected { Branch::Top } else { Branch::Fop };
        assert_eq!(branch, expected_branch, "{test:?}");
    }
}

#[test]
fn exists_and_absent() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/f", b"x");
    assert_tests(
        &mut h,
        s,
        vec![
            (Test::Exists { path: p("/f") }, true),
            (Test::Exists { path: p("/g") }, false),
            (Test::Absent { path: p("/g") }, true),
            (Test::Absent { path: p("/f") }, false),
            (Test::Exists { path: p("/") }, true),
        ],
    );
}

#[test]
fn content_generation_comparisons() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/f", b"1");
    h.ok(
        s,
        Op::Set {
            path: p("/f"),
            contents: b"2".to_vec(),
        },
    );
    assert_eq!(h.db.stat(&p("/f")).unwrap().content_generation, 2);
    let gen = |cmp, generation| Test::ContentGeneration {
        path: p("/f"),
        cmp,
        generation,
    };
    let absent = Test::ContentGeneration {
        path: p("/nope"),
        cmp: Cmp::Ne,
        generation: 7,
    };
    assert_tests(
        &mut h,
        s,
        vec![
            (gen(Cmp::Eq, 2), true),
            (gen(Cmp::Eq, 1), false),
            (gen(Cmp::Ne, 1), true),
            (gen(Cmp::Ne, 2), false),
            (gen(Cmp::Lt, 3), true),
            (gen(Cmp::Lt, 2), false),
            (gen(Cmp::Gt, 1), true),
            (gen(Cmp::Gt, 2), false),
            (absent, false),
        ],
    );
}

#[test]
fn contents_and_checksum_equal() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/f", b"hello");
    let checksum = h.db.stat(&p("/f")).unwrap().checksum;
    assert_eq!(checksum, content_checksum(b"hello"));
    assert_tests(
        &mut h,
        s,
        vec![
            (
                Test::ContentsEqual {
                    path: p("/f"),
                    contents: b"hello".to_vec(),
                },
                true,
            ),
            (
                Test::ContentsEqual {
                    path: p("/f"),
                    contents: b"hell".to_vec(),
                },
                false,
            ),
            (
                Test::ContentsEqual {
                    path: p("/g"),
                    contents: vec![],
                },
                false,
            ),
            (
                Test::ChecksumEquals {
                    path: p("/f"),
                    checksum,
                },
                true,
            ),
            (
                Test::ChecksumEquals {
                    path: p("/f"),
                    checksum: checksum ^ 1,
                },
                false,
            ),
            (
                Test::ChecksumEquals {
                    path: p("/g"),
                    checksum,
                },
                false,
            ),
        ],
    );
}

#[test]
fn lock_held_by_sequencer_valid_session_alive() {
    let mut h = Harness::new();
    let a = h.open();
    let b = h.open();
    h.create(a, "/l", b"");
    let sequencer = h.lock(a, "/l", LockMode::Exclusive);
    let held = |session, mode| Test::LockHeldBy {
        path: p("/l"),
        session,
        mode,
    };
    let mut stale = sequencer.clone();
    stale.lock_generation -= 1;
    assert_tests(
        &mut h,
        b,
        vec![
            (held(a, LockMode::Exclusive), true),
            (held(a, LockMode::Shared), false),
            (held(b, LockMode::Exclusive), false),
            (Test::SequencerValid(sequencer.clone()), true),
            (Test::SequencerValid(stale), false),
            (Test::SessionAlive(a), true),
            (Test::SessionAlive(SessionId(99)), false),
        ],
    );
    h.apply(Command::CloseSession { session: a });
    assert_tests(
        &mut h,
        b,
        vec![
            (held(a, LockMode::Exclusive), false),
            (Test::SequencerValid(sequencer), false),
            (Test::SessionAlive(a), false),
        ],
    );
}

#[test]
fn master_epoch_equals() {
    let mut h = Harness::new();
    let s = h.open();
    assert_tests(&mut h, s, vec![(Test::MasterEpochEquals(Epoch(1)), false)]);
    h.master_changed(7, 2_000);
    assert_tests(
        &mut h,
        s,
        vec![
            (Test::MasterEpochEquals(Epoch(7)), true),
            (Test::MasterEpochEquals(Epoch(1)), false),
        ],
    );
}

#[test]
fn every_guard_is_reported_and_any_failure_picks_fop() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/f", b"x");
    let op = MultiOp::new()
        .guard(Test::Absent { path: p("/f") })
        .guard(Test::Exists { path: p("/f") })
        .guard(Test::Absent { path: p("/g") })
        .then(Op::create_file(p("/top"), vec![]))
        .otherwise(Op::create_file(p("/fop"), vec![]));
    let reply = h.multi(s, op);
    assert_eq!(reply.branch, Branch::Fop);
    assert_eq!(reply.guards, vec![false, true, true]);
    assert!(reply.committed());
    assert!(h.exists("/fop") && !h.exists("/top"));

    let op = MultiOp::new()
        .guard(Test::Exists { path: p("/f") })
        .then(Op::create_file(p("/top"), vec![]))
        .otherwise(Op::create_file(p("/fop2"), vec![]));
    let reply = h.multi(s, op);
    assert_eq!((reply.branch, reply.guards), (Branch::Top, vec![true]));
    assert!(h.exists("/top") && !h.exists("/fop2"));

    // No guard at all: top runs.
    let reply = h.multi(s, MultiOp::new().then(Op::Read { path: p("/f") }));
    assert_eq!((reply.branch, reply.guards.len()), (Branch::Top, 0));
}

#[test]
fn guards_see_the_state_before_the_branch() {
    let mut h = Harness::new();
    let s = h.open();
    let op = MultiOp::new()
        .guard(Test::Absent { path: p("/f") })
        .then(Op::create_file(p("/f"), b"1".to_vec()))
        .then(Op::Set {
            path: p("/f"),
            contents: b"2".to_vec(),
        })
        .then(Op::Read { path: p("/f") });
    let reply = h.multi(s, op);
    assert_eq!(reply.guards, vec![true]);
    let OpOutput::Read(view) = done(&reply.ops[2]) else {
        panic!("not a read")
    };
    assert_eq!(&*view.contents, b"2");
    assert_eq!(view.stat.content_generation, 2);
}

#[test]
fn create_file_directory_ephemeral() {
    let mut h = Harness::new();
    let s = h.open();
    let OpOutput::Created { instance: i1 } = h.ok(s, Op::create_directory(p("/d"))) else {
        panic!()
    };
    let OpOutput::Created { instance: i2 } = h.ok(s, Op::create_file(p("/d/f"), b"data".to_vec()))
    else {
        panic!()
    };
    h.ok(s, Op::create_ephemeral(p("/d/e"), vec![]));
    assert!(i2 > i1);
    let dir = h.db.stat(&p("/d")).unwrap();
    assert_eq!((dir.kind, dir.ephemeral_owner), (NodeKind::Directory, None));
    let file = h.db.get(&p("/d/f")).unwrap();
    assert_eq!(&*file.contents, b"data");
    assert_eq!(file.stat.content_generation, 1);
    assert_eq!(file.stat.lock_generation, 0);
    assert_eq!(file.stat.contents_bytes, 4);
    assert_eq!(
        file.stat.lock_delay_ms,
        Config::default().lock_delay_ms_default
    );
    assert_eq!(h.db.stat(&p("/d/e")).unwrap().ephemeral_owner, Some(s));
    // Re-creating a node gives a larger instance.
    h.ok(s, Op::Delete { path: p("/d/f") });
    h.create(s, "/d/f", b"");
    assert!(h.db.stat(&p("/d/f")).unwrap().instance > i2);
}

#[test]
fn create_errors() {
    let mut h = Harness::with_config(Config {
        contents_bytes_max: 8,
        ..Config::default()
    });
    let s = h.open();
    h.create(s, "/f", b"");
    h.ok(
        s,
        Op::Create {
            path: p("/e"),
            kind: NodeKind::Directory,
            ephemeral: true,
            contents: vec![],
            lock_delay_ms: None,
        },
    );
    h.ok(s, Op::create_ephemeral(p("/ef"), vec![]));
    let cases = [
        (
            Op::create_file(p("/ef/y"), vec![]),
            OpError::ParentNotDirectory,
        ),
        (Op::create_file(p("/f"), vec![]), OpError::AlreadyExists),
        (Op::create_directory(p("/")), OpError::AlreadyExists),
        (Op::create_file(p("/x/y"), vec![]), OpError::ParentAbsent),
        (
            Op::create_file(p("/f/y"), vec![]),
            OpError::ParentNotDirectory,
        ),
        (Op::create_file(p("/e/y"), vec![]), OpError::ParentEphemeral),
        (
            Op::Create {
                path: p("/d"),
                kind: NodeKind::Directory,
                ephemeral: false,
                contents: b"x".to_vec(),
                lock_delay_ms: None,
            },
            OpError::NotAFile,
        ),
        (
            Op::create_file(p("/big"), vec![0; 9]),
            OpError::ContentsTooLarge { bytes: 9, max: 8 },
        ),
        (
            Op::Create {
                path: p("/slow"),
                kind: NodeKind::File,
                ephemeral: false,
                contents: vec![],
                lock_delay_ms: Some(LOCK_DELAY_MS_MAX + 1),
            },
            OpError::LockDelayTooLong {
                lock_delay_ms: LOCK_DELAY_MS_MAX + 1,
                max: LOCK_DELAY_MS_MAX,
            },
        ),
    ];
    for (op, error) in cases {
        assert_eq!(h.op(s, op.clone()), OpResult::Failed(error), "{op:?}");
    }
    h.create(s, "/fits", &[0; 8]);
}

#[test]
fn set_bumps_generation_and_checksum() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/f", b"a");
    h.mkdir(s, "/d");
    let out = h.ok(
        s,
        Op::Set {
            path: p("/f"),
            contents: b"bb".to_vec(),
        },
    );
    assert_eq!(
        out,
        OpOutput::Set {
            content_generation: 2,
            checksum: content_checksum(b"bb")
        }
    );
    assert_eq!(&*h.db.get(&p("/f")).unwrap().contents, b"bb");
    let set = |path: &str| Op::Set {
        path: p(path),
        contents: vec![],
    };
    assert_eq!(h.op(s, set("/nope")), OpResult::Failed(OpError::NodeAbsent));
    assert_eq!(h.op(s, set("/d")), OpResult::Failed(OpError::NotAFile));
    assert_eq!(h.op(s, set("/")), OpResult::Failed(OpError::NotAFile));
}

#[test]
fn delete_rules() {
    let mut h = Harness::new();
    let s = h.open();
    h.mkdir(s, "/d");
    h.create(s, "/d/f", b"");
    h.create(s, "/l", b"");
    h.lock(s, "/l", LockMode::Shared);
    let del = |path: &str| Op::Delete { path: p(path) };
    assert_eq!(h.op(s, del("/")), OpResult::Failed(OpError::IsRoot));
    assert_eq!(h.op(s, del("/x")), OpResult::Failed(OpError::NodeAbsent));
    assert_eq!(h.op(s, del("/d")), OpResult::Failed(OpError::NotEmpty));
    assert_eq!(h.op(s, del("/l")), OpResult::Failed(OpError::Locked));
    // Release then delete in one branch.
    h.ops(s, vec![Op::Release { path: p("/l") }, del("/l")]);
    assert!(!h.exists("/l"));
    assert_eq!(h.ops(s, vec![del("/d/f"), del("/d")]).len(), 2);
    assert!(!h.exists("/d"));
}

#[test]
fn read_returns_stat_and_contents_within_the_reply_limit() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/f", &vec![7; 200 * 1024]);
    let OpOutput::Read(view) = h.ok(s, Op::Read { path: p("/f") }) else {
        panic!()
    };
    assert_eq!(view, h.db.get(&p("/f")).unwrap());
    let reads = vec![Op::Read { path: p("/f") }; MULTIOP_READ_BYTES_MAX / (200 * 1024) + 1];
    let results = h.ops(s, reads.clone());
    assert_eq!(
        results.last().unwrap(),
        &OpResult::Failed(OpError::ReadTooLarge {
            max: MULTIOP_READ_BYTES_MAX
        })
    );
    assert_eq!(
        h.op(s, Op::Read { path: p("/g") }),
        OpResult::Failed(OpError::NodeAbsent)
    );
    // A directory reads as its stat with no contents.
    let OpOutput::Read(root) = h.ok(s, Op::Read { path: p("/") }) else {
        panic!()
    };
    assert!(root.contents.is_empty());
}

#[test]
fn a_failing_op_rolls_the_whole_branch_back() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/keep", b"old");
    h.create(s, "/l", b"");
    let before_keep = h.db.get(&p("/keep")).unwrap();
    let before_instance = match h.ok(s, Op::create_file(p("/probe"), vec![])) {
        OpOutput::Created { instance } => instance,
        _ => unreachable!(),
    };
    let ops = vec![
        Op::create_directory(p("/d")),
        Op::create_file(p("/d/f"), b"x".to_vec()),
        Op::Set {
            path: p("/keep"),
            contents: b"new".to_vec(),
        },
        Op::Acquire {
            path: p("/l"),
            mode: LockMode::Exclusive,
            wait: false,
        },
        Op::Delete { path: p("/probe") },
        Op::Set {
            path: p("/missing"),
            contents: vec![],
        },
        Op::create_file(p("/never"), vec![]),
    ];
    let results = h.ops(s, ops);
    assert_eq!(
        results,
        vec![
            OpResult::Undone,
            OpResult::Undone,
            OpResult::Undone,
            OpResult::Undone,
            OpResult::Undone,
            OpResult::Failed(OpError::NodeAbsent),
            OpResult::NotRun,
        ]
    );
    assert!(!h.exists("/d") && !h.exists("/d/f") && !h.exists("/never"));
    assert!(h.exists("/probe"));
    assert_eq!(h.db.get(&p("/keep")).unwrap(), before_keep);
    assert_eq!(h.db.lock(&p("/l")).unwrap(), Default::default());
    assert_eq!(h.db.stat(&p("/l")).unwrap().lock_generation, 0);
    assert!(h.db.session(s).unwrap().locks.is_empty());
    // Instance numbers handed out by the undone creates are handed out again.
    let OpOutput::Created { instance } = h.ok(s, Op::create_file(p("/next"), vec![])) else {
        panic!()
    };
    assert_eq!(instance, before_instance + 1);
}

#[test]
fn the_reply_names_the_failing_op_of_either_branch() {
    let mut h = Harness::new();
    let s = h.open();
    let op = MultiOp::new()
        .guard(Test::Exists { path: p("/nope") })
        .otherwise(Op::create_file(p("/a"), vec![]))
        .otherwise(Op::create_file(p("/a"), vec![]));
    let reply = h.multi(s, op);
    assert_eq!(reply.branch, Branch::Fop);
    assert_eq!(reply.failed_op(), Some(1));
    assert!(!reply.committed());
    assert_eq!(reply.ops[1], OpResult::Failed(OpError::AlreadyExists));
    assert!(!h.exists("/a"));
}

#[test]
fn compare_and_set_is_the_one_guard_case() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/c", b"v1");
    let reply = h.multi(s, MultiOp::compare_and_set(p("/c"), 1, b"v2".to_vec()));
    assert_eq!(
        (reply.branch, reply.guards.clone()),
        (Branch::Top, vec![true])
    );
    assert!(matches!(
        done(&reply.ops[0]),
        OpOutput::Set {
            content_generation: 2,
            ..
        }
    ));
    // A stale generation: the set does not happen, and the fop read returns the current value.
    let reply = h.multi(s, MultiOp::compare_and_set(p("/c"), 1, b"v3".to_vec()));
    assert_eq!(
        (reply.branch, reply.guards.clone()),
        (Branch::Fop, vec![false])
    );
    let OpOutput::Read(view) = done(&reply.ops[0]) else {
        panic!()
    };
    assert_eq!(
        (&*view.contents, view.stat.content_generation),
        (&b"v2"[..], 2)
    );
}

#[test]
fn multiop_limits_reject_the_whole_request() {
    let mut h = Harness::new();
    let s = h.open();
    let tests = vec![Test::Exists { path: p("/") }; GUARD_TESTS_MAX + 1];
    let op = MultiOp {
        guard: tests,
        top: vec![],
        fop: vec![],
    };
    assert_eq!(
        h.request(s, op),
        Reply::Rejected(Rejection::TooManyTests {
            count: GUARD_TESTS_MAX + 1,
            max: GUARD_TESTS_MAX
        })
    );
    let ops = vec![Op::Read { path: p("/") }; BRANCH_OPS_MAX + 1];
    let op = MultiOp {
        guard: vec![],
        top: vec![],
        fop: ops,
    };
    assert_eq!(
        h.request(s, op),
        Reply::Rejected(Rejection::TooManyOps {
            count: BRANCH_OPS_MAX + 1,
            max: BRANCH_OPS_MAX
        })
    );
    let big = vec![0u8; MULTIOP_BYTES_MAX / 2];
    let op = MultiOp::new()
        .then(Op::create_file(p("/a"), big.clone()))
        .otherwise(Op::create_file(p("/b"), big));
    assert!(matches!(
        h.request(s, op),
        Reply::Rejected(Rejection::TooManyBytes {
            max: MULTIOP_BYTES_MAX,
            ..
        })
    ));
    assert!(!h.exists("/a") && !h.exists("/b"));
    // At the limits is fine.
    let ops = vec![Op::Read { path: p("/") }; BRANCH_OPS_MAX];
    assert_eq!(h.ops(s, ops).len(), BRANCH_OPS_MAX);
}

#[test]
fn children_are_listed_in_path_order() {
    let mut h = Harness::new();
    let s = h.open();
    for dir in ["/a", "/a/b", "/a-b", "/c"] {
        h.mkdir(s, dir);
    }
    for file in ["/a/b/x", "/a/z", "/a/b-", "/a/.b", "/c/f"] {
        h.create(s, file, b"");
    }
    let names = |h: &Harness, path: &str| -> Vec<String> {
        h.db.children(&p(path))
            .unwrap()
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect()
    };
    assert_eq!(names(&h, "/"), ["/a", "/a-b", "/c"]);
    assert_eq!(names(&h, "/a"), ["/a/.b", "/a/b", "/a/b-", "/a/z"]);
    assert_eq!(names(&h, "/a/b"), ["/a/b/x"]);
    assert!(names(&h, "/a-b").is_empty());
    assert_eq!(
        h.db.children(&p("/a/z")),
        Err(QueryError::NotADirectory(p("/a/z")))
    );
    assert_eq!(
        h.db.children(&p("/q")),
        Err(QueryError::NodeAbsent(p("/q")))
    );
}

#[test]
fn apply_bytes_decodes_or_rejects() {
    let mut h = Harness::new();
    let command = Command::OpenSession {
        now_ms: 5,
        lease_ms: None,
    };
    let applied = h.db.apply_bytes(Slot(1), &command.encode());
    assert!(matches!(applied.reply, Reply::SessionOpened { .. }));
    let applied = h.db.apply_bytes(Slot(2), &[0xff, 0xff, 0xff]);
    assert_eq!(
        applied.reply,
        Reply::Rejected(Rejection::Undecodable(DecodeError::Malformed))
    );
    let mut trailing = command.encode();
    trailing.push(0);
    let applied = h.db.apply_bytes(Slot(3), &trailing);
    assert_eq!(
        applied.reply,
        Reply::Rejected(Rejection::Undecodable(DecodeError::TrailingBytes {
            bytes: 1
        }))
    );
    assert_eq!(h.db.applied(), Slot(3));
    h.db.check_invariants();
}
