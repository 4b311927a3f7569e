//! Online restore (`Command::Restore`): refused into a non-empty database without force and for a
//! snapshot that does not check out; otherwise every session ends, every node is renumbered above
//! every instance handed out before (so an old sequencer never validates again), and replicas that
//! apply the same restore reach the same digest.

mod common;

use chubby_db::admin::AdminRefusal;
use chubby_db::{Command, EventKind, LockMode, Op, Reply, SequencerInvalid, Slot};
use common::{p, Harness};

/// A source database: nested nodes, an ephemeral node, a held lock.
fn source() -> (Harness, chubby_db::Sequencer) {
    let mut h = Harness::new();
    let a = h.open();
    h.mkdir(a, "/d");
    h.create(a, "/d/f", b"contents");
    h.create(a, "/l", b"");
    h.ok(a, Op::create_ephemeral(p("/d/e"), b"eph".to_vec()));
    let sequencer = h.lock(a, "/l", LockMode::Exclusive);
    (h, sequencer)
}

fn restore(h: &mut Harness, snapshot: &[u8], force: bool) -> Reply {
    h.apply(Command::Restore {
        snapshot: snapshot.to_vec(),
        force,
    })
}

#[test]
fn restore_into_an_empty_database_brings_the_permanent_namespace_and_renumbers_it() {
    let (src, old_sequencer) = source();
    let bytes = src.db.snapshot().to_bytes();
    let mut dst = Harness::new();
    let Reply::Restored(report) = restore(&mut dst, &bytes, false) else {
        panic!("an empty database takes a restore");
    };
    assert_eq!(report.slot, dst.slot);
    assert_eq!(report.snapshot_slot, src.slot);
    assert_eq!(report.sessions_ended, 0);
    assert_eq!(report.digest, dst.db.digest());
    // Permanent nodes come back with their contents; the ephemeral one does not.
    assert_eq!(&dst.db.get(&p("/d/f")).unwrap().contents[..], b"contents");
    assert!(!dst.exists("/d/e"));
    assert_eq!(report.nodes, 4, "/, /d, /d/f, /l");
    // Instances are renumbered above both counters, keeping their order.
    for path in ["/", "/d", "/d/f", "/l"] {
        let before = src.db.stat(&p(path)).unwrap().instance;
        let after = dst.db.stat(&p(path)).unwrap().instance;
        assert_eq!(after, before + report.instance_offset, "{path}");
    }
    // The lock is free and the sequencer issued in the source cluster never validates here.
    assert!(dst.db.lock(&p("/l")).unwrap().holders.is_empty());
    assert_eq!(
        dst.db.check_sequencer(&old_sequencer),
        Err(SequencerInvalid::InstanceChanged)
    );
    // New nodes get instances above every restored one.
    let s = dst.open();
    dst.create(s, "/new", b"");
    let newest = dst.db.stat(&p("/new")).unwrap().instance;
    assert!(newest > dst.db.stat(&p("/d/f")).unwrap().instance);
}

#[test]
fn restore_refuses_a_non_empty_database_without_force_and_changes_nothing() {
    let (src, _) = source();
    let bytes = src.db.snapshot().to_bytes();
    let mut dst = Harness::new();
    let s = dst.open();
    dst.create(s, "/mine", b"x");
    match restore(&mut dst, &bytes, false) {
        Reply::RestoreRefused(AdminRefusal::NotEmpty { nodes: 1 }) => {}
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    // Only the applied slot moved.
    assert!(dst.exists("/mine"));
    assert!(dst.db.session(s).is_some());
}

#[test]
fn a_forced_restore_ends_every_session_and_invalidates_every_earlier_sequencer() {
    let (src, _) = source();
    let bytes = src.db.snapshot().to_bytes();
    let mut dst = Harness::new();
    let a = dst.open();
    let b = dst.open();
    dst.create(a, "/l", b"");
    dst.ok(b, Op::create_ephemeral(p("/eph"), b"".to_vec()));
    let held = dst.lock(a, "/l", LockMode::Exclusive);
    assert_eq!(dst.db.check_sequencer(&held), Ok(()));
    let next_instance_before = dst.db.stat(&p("/eph")).unwrap().instance + 1;

    let Reply::Restored(report) = restore(&mut dst, &bytes, true) else {
        panic!("force restores a non-empty database");
    };
    assert_eq!(report.sessions_ended, 2);
    assert!(dst.db.session(a).is_none() && dst.db.session(b).is_none());
    assert_eq!(dst.events_for(a), vec![EventKind::SessionExpired]);
    assert_eq!(dst.events_for(b), vec![EventKind::SessionExpired]);
    assert!(!dst.exists("/eph"));
    // /l exists again (from the snapshot) but as a new instance: the old grant is dead.
    assert!(dst.exists("/l"));
    assert!(report.instance_offset >= next_instance_before);
    assert_eq!(
        dst.db.check_sequencer(&held),
        Err(SequencerInvalid::InstanceChanged)
    );
    // Session ids are never reused: a new session is numbered above both.
    let c = dst.open();
    assert!(c > a && c > b);
}

#[test]
fn a_snapshot_that_does_not_check_out_is_refused() {
    let (src, _) = source();
    let mut bytes = src.db.snapshot().to_bytes();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    let mut dst = Harness::new();
    match restore(&mut dst, &bytes, false) {
        Reply::RestoreRefused(AdminRefusal::InvalidSnapshot { why }) => {
            assert!(why.contains("checksum") || why.contains("CRC"), "{why}")
        }
        other => panic!("expected InvalidSnapshot, got {other:?}"),
    }
    match restore(&mut dst, b"not a snapshot", false) {
        Reply::RestoreRefused(AdminRefusal::InvalidSnapshot { .. }) => {}
        other => panic!("expected InvalidSnapshot, got {other:?}"),
    }
}

#[test]
fn replicas_applying_the_same_restore_reach_the_same_digest() {
    let (src, _) = source();
    let bytes = src.db.snapshot().to_bytes();
    let mut one = Harness::new();
    let s = one.open();
    one.create(s, "/x", b"1");
    let mut two = Harness::new();
    let t = two.open();
    two.create(t, "/x", b"1");
    assert_eq!(one.db.digest(), two.db.digest());
    restore(&mut one, &bytes, true);
    restore(&mut two, &bytes, true);
    assert_eq!(one.db.digest(), two.db.digest());
    assert_eq!(one.db.applied(), Slot(one.slot));
    // And through a snapshot of the restored state, as a catching-up replica would get it.
    let copy = chubby_db::Database::from_snapshot(&mut &one.db.snapshot().to_bytes()[..]).unwrap();
    assert_eq!(copy.digest(), two.db.digest());
}
