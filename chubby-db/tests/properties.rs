//! Properties over random command sequences: replicas fed the same commands agree on every
//! reply, event and digest; a snapshot taken at any point and restored elsewhere goes on
//! identically; decoders never panic on arbitrary bytes.

use chubby_db::{
    Cmp, Command, Database, Epoch, Event, LockMode, MultiOp, NodeKind, NodePath, Op, Reply,
    RequestSeq, Sequencer, SessionId, Slot, Test, WatchKinds,
};
use proptest::prelude::*;

fn path() -> impl Strategy<Value = NodePath> {
    prop::sample::select(vec![
        "/", "/a", "/a/b", "/a/c", "/a-b", "/d", "/d/e", "/d/e/f",
    ])
    .prop_map(|s| NodePath::new(s).unwrap())
}

fn session() -> impl Strategy<Value = SessionId> {
    (1u64..10).prop_map(SessionId)
}

fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..4, 0..6)
}

fn mode() -> impl Strategy<Value = LockMode> {
    prop_oneof![Just(LockMode::Exclusive), Just(LockMode::Shared)]
}

fn kinds() -> impl Strategy<Value = WatchKinds> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c, d)| {
        WatchKinds {
            contents: a,
            children: b,
            lock_acquired: c,
            lock_conflict: d,
        }
    })
}

fn cmp() -> impl Strategy<Value = Cmp> {
    prop_oneof![Just(Cmp::Eq), Just(Cmp::Ne), Just(Cmp::Lt), Just(Cmp::Gt)]
}

fn test() -> impl Strategy<Value = Test> {
    prop_oneof![
        path().prop_map(|path| Test::Exists { path }),
        path().prop_map(|path| Test::Absent { path }),
        (path(), cmp(), 0u64..4).prop_map(|(path, cmp, generation)| {
            Test::ContentGeneration {
                path,
                cmp,
                generation,
            }
        }),
        (path(), contents()).prop_map(|(path, contents)| Test::ContentsEqual { path, contents }),
        (path(), session(), mode()).prop_map(|(path, session, mode)| Test::LockHeldBy {
            path,
            session,
            mode
        }),
        (path(), 1u64..20, mode(), 0u64..5).prop_map(|(path, instance, mode, lock_generation)| {
            Test::SequencerValid(Sequencer {
                path,
                instance,
                mode,
                lock_generation,
            })
        }),
        session().prop_map(Test::SessionAlive),
        (0u64..3).prop_map(|e| Test::MasterEpochEquals(Epoch(e))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path(), any::<bool>(), any::<bool>(), contents(), prop::option::of(0u64..4_000))
            .prop_map(|(path, dir, ephemeral, contents, lock_delay_ms)| Op::Create {
                path,
                kind: if dir { NodeKind::Directory } else { NodeKind::File },
                ephemeral,
                contents: if dir { Vec::new() } else { contents },
                lock_delay_ms,
            }),
        2 => (path(), contents()).prop_map(|(path, contents)| Op::Set { path, contents }),
        1 => path().prop_map(|path| Op::Delete { path }),
        1 => path().prop_map(|path| Op::Read { path }),
        5 => (path(), mode(), prop::bool::weighted(0.7)).prop_map(|(path, mode, wait)| Op::Acquire {
            path,
            mode,
            wait
        }),
        2 => path().prop_map(|path| Op::Release { path }),
        2 => (path(), kinds()).prop_map(|(path, kinds)| Op::Watch { path, kinds }),
    ]
}

fn multi_op() -> impl Strategy<Value = MultiOp> {
    (
        prop::collection::vec(test(), 0..2),
        prop::collection::vec(op(), 1..3),
        prop::collection::vec(op(), 0..2),
    )
        .prop_map(|(guard, top, fop)| MultiOp { guard, top, fop })
}

/// A command with its time as an offset: the master's clock moves forward by `advance_ms`; a
/// command may also carry a reading `behind_ms` behind the clock (a new master's slower clock).
#[derive(Clone, Debug)]
enum Step {
    Open(Option<u64>),
    KeepAlive(SessionId),
    /// KeepAlives for sessions 1 to 9 (whichever are alive take effect).
    KeepAliveAll,
    Close(SessionId),
    /// A request under the session's next number, or (`retry`) its last one again.
    Multi {
        session: SessionId,
        retry: bool,
        op: MultiOp,
    },
    Tick,
    MasterChanged(u64),
}

fn step() -> impl Strategy<Value = (Step, u64, u64)> {
    let step = prop_oneof![
        2 => prop::option::of(prop_oneof![Just(1_000u64), Just(5_000), Just(30_000)]).prop_map(Step::Open),
        2 => session().prop_map(Step::KeepAlive),
        1 => Just(Step::KeepAliveAll),
        1 => session().prop_map(Step::Close),
        12 => (session(), prop::bool::weighted(0.1), multi_op())
            .prop_map(|(session, retry, op)| Step::Multi { session, retry, op }),
        3 => Just(Step::Tick),
        1 => (0u64..3).prop_map(Step::MasterChanged),
    ];
    let advance_ms = prop_oneof![12 => 0u64..800, 1 => 800u64..15_000];
    (
        step,
        advance_ms,
        prop_oneof![9 => Just(0u64), 1 => 0u64..3_000],
    )
}

/// Three sessions and a few nodes to start from, so random steps mostly find something.
fn prelude() -> Vec<Command> {
    let open = Command::OpenSession {
        now_ms: 0,
        lease_ms: None,
    };
    let dir = |path| Op::create_directory(NodePath::new(path).unwrap());
    let file = |path| Op::create_file(NodePath::new(path).unwrap(), vec![1]);
    let setup = MultiOp::new()
        .then(dir("/a"))
        .then(dir("/d"))
        .then(file("/d/e"))
        .then(file("/a-b"));
    vec![
        open.clone(),
        open.clone(),
        open.clone(),
        open.clone(),
        open,
        Command::MultiOp {
            session: SessionId(1),
            seq: RequestSeq(0),
            op: setup,
        },
    ]
}

fn commands() -> impl Strategy<Value = Vec<Command>> {
    prop::collection::vec(step(), 1..80).prop_map(|steps| {
        let mut clock = 0u64;
        let mut seqs = std::collections::BTreeMap::<SessionId, u64>::new();
        let random = steps.into_iter().flat_map(|(step, advance_ms, behind_ms)| {
            clock += advance_ms;
            let now_ms = clock.saturating_sub(behind_ms);
            let command = match step {
                Step::KeepAliveAll => {
                    return (1..10)
                        .map(|s| Command::KeepAlive {
                            session: SessionId(s),
                            now_ms,
                        })
                        .collect();
                }
                Step::Open(lease_ms) => Command::OpenSession { now_ms, lease_ms },
                Step::KeepAlive(session) => Command::KeepAlive { session, now_ms },
                Step::Close(session) => Command::CloseSession { session },
                Step::Multi { session, retry, op } => {
                    let seq = seqs.entry(session).or_default();
                    if !retry {
                        *seq += 1;
                    }
                    Command::MultiOp {
                        session,
                        seq: RequestSeq(*seq),
                        op,
                    }
                }
                Step::Tick => Command::Tick { now_ms },
                Step::MasterChanged(epoch) => Command::MasterChanged {
                    epoch: Epoch(epoch),
                    now_ms,
                },
            };
            vec![command]
        });
        prelude().into_iter().chain(random).collect()
    })
}

/// Slot of the `i`th command: sometimes several commands share a slot, as in a batch.
fn slot_of(i: usize) -> Slot {
    Slot(1 + i as u64 / 2)
}

fn apply_checked(db: &mut Database, i: usize, command: &Command) -> (Reply, Vec<Event>) {
    let applied = db.apply(slot_of(i), command);
    db.check_invariants();
    (applied.reply, applied.events)
}

// 256 cases each by default; `PROPTEST_CASES=5000` for a longer run.
proptest! {
    #[test]
    fn replicas_fed_the_same_commands_agree(commands in commands()) {
        let mut a = Database::new(Default::default());
        let mut b = Database::new(Default::default());
        for (i, command) in commands.iter().enumerate() {
            let from_a = apply_checked(&mut a, i, command);
            // The second replica decodes the log entry, as replicas do.
            let applied = b.apply_bytes(slot_of(i), &command.encode());
            b.check_invariants();
            prop_assert_eq!(&from_a, &(applied.reply, applied.events));
            prop_assert_eq!(a.digest(), b.digest());
        }
    }

    #[test]
    fn a_snapshot_restored_at_any_point_goes_on_identically(
        commands in commands(),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(commands.len() + 1);
        let mut original = Database::new(Default::default());
        for (i, command) in commands[..cut].iter().enumerate() {
            apply_checked(&mut original, i, command);
        }
        let bytes = original.snapshot().to_bytes();
        // Restore over a replica that holds other state: restore replaces all of it.
        let mut replica = Database::new(Default::default());
        apply_checked(&mut replica, 0, &Command::OpenSession { now_ms: 99, lease_ms: None });
        replica.restore(&mut &bytes[..]).unwrap();
        replica.check_invariants();
        prop_assert_eq!(replica.digest(), original.digest());
        for (i, command) in commands.iter().enumerate().skip(cut) {
            let expected = apply_checked(&mut original, i, command);
            prop_assert_eq!(apply_checked(&mut replica, i, command), expected);
            prop_assert_eq!(replica.digest(), original.digest());
        }
    }

    #[test]
    fn a_corrupted_snapshot_never_restores(commands in commands(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut db = Database::new(Default::default());
        for (i, command) in commands.iter().enumerate() {
            apply_checked(&mut db, i, command);
        }
        let mut bytes = db.snapshot().to_bytes();
        let at = at.index(bytes.len());
        bytes[at] ^= 1 << bit;
        prop_assert!(Database::from_snapshot(&mut &bytes[..]).is_err());
    }

    #[test]
    fn commands_round_trip_through_their_encoding(commands in commands()) {
        for command in commands {
            prop_assert_eq!(Command::decode(&command.encode()), Ok(command));
        }
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Command::decode(&bytes);
        let _ = Reply::decode(&bytes);
        let _ = Event::decode(&bytes);
        let _ = Database::from_snapshot(&mut &bytes[..]);
        let mut db = Database::new(Default::default());
        db.apply_bytes(Slot(1), &bytes);
        db.check_invariants();
    }

    /// Mutated encodings of real commands get deep into the decoder; whatever decodes must
    /// apply without a panic.
    #[test]
    fn mutated_commands_decode_or_fail_cleanly(
        commands in commands(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut db = Database::new(Default::default());
        for (i, command) in commands.iter().enumerate() {
            let mut bytes = command.encode();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            db.apply_bytes(slot_of(i), &bytes);
            db.check_invariants();
        }
    }
}
