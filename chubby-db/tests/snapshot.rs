//! Snapshots: frozen, checksummed, restorable anywhere with the same digest; corruption and
//! truncation are typed errors that leave the database unchanged.

mod common;

use chubby_db::{
    Command, Config, Database, LockMode, Op, RestoreError, Slot, Snapshot, WatchKinds,
};
use common::{p, Harness};
use std::io;

/// A database with something of everything: nested nodes, ephemerals, held and queued locks,
/// a lock-delay, watches, a reply cache, a master epoch.
fn busy() -> Harness {
    let mut h = Harness::new();
    let a = h.open();
    let b = h.open();
    let c = h.open();
    h.mkdir(a, "/d");
    h.create(a, "/d/f", b"contents");
    h.create(a, "/l", b"");
    h.create(a, "/delayed", b"");
    h.ok(b, Op::create_ephemeral(p("/d/e"), b"eph".to_vec()));
    h.lock(a, "/l", LockMode::Shared);
    h.ok(
        b,
        Op::Acquire {
            path: p("/l"),
            mode: LockMode::Exclusive,
            wait: true,
        },
    );
    h.lock(c, "/delayed", LockMode::Exclusive);
    h.watch(a, "/d", WatchKinds::ALL);
    h.master_changed(3, 2_000);
    h.now_ms = 10_000;
    h.keep_alive(a);
    h.keep_alive(b);
    h.tick(14_000); // c expires: /delayed is in lock-delay
    h
}

fn restored(snapshot: &Snapshot) -> Database {
    let db = Database::from_snapshot(&mut &snapshot.to_bytes()[..]).unwrap();
    db.check_invariants();
    db
}

#[test]
fn restore_reproduces_the_state_and_digest() {
    let h = busy();
    assert!(h.db.lock(&p("/delayed")).unwrap().delay_until_ms.is_some());
    let snapshot = h.db.snapshot();
    assert_eq!(snapshot.digest(), h.db.digest());
    assert_eq!(snapshot.applied(), Slot(h.slot));
    let copy = restored(&snapshot);
    assert_eq!(copy.digest(), h.db.digest());
    assert_eq!(copy.get(&p("/d/f")), h.db.get(&p("/d/f")));
    assert_eq!(copy.lock(&p("/l")), h.db.lock(&p("/l")));
    assert_eq!(
        copy.session(h.db.sessions()[0]),
        h.db.session(h.db.sessions()[0])
    );
    assert_eq!(copy.config(), h.db.config());
    assert_eq!(copy.master_epoch(), h.db.master_epoch());
}

#[test]
fn a_restored_replica_goes_on_exactly_like_the_original() {
    let mut h = busy();
    let mut copy = restored(&h.db.snapshot());
    let session = h.db.sessions()[0];
    let commands = [
        Command::Tick { now_ms: 30_000 },
        Command::OpenSession {
            now_ms: 30_001,
            lease_ms: None,
        },
        Command::MultiOp {
            session: chubby_db::SessionId(4),
            seq: chubby_db::RequestSeq(1),
            op: chubby_db::MultiOp::new().then(Op::create_file(p("/after"), vec![])),
        },
        Command::CloseSession { session },
    ];
    for command in &commands {
        h.slot += 1;
        let original = h.db.apply(Slot(h.slot), command);
        let replica = copy.apply(Slot(h.slot), command);
        assert_eq!(original, replica);
        assert_eq!(h.db.digest(), copy.digest());
    }
}

#[test]
fn a_snapshot_is_frozen_and_written_on_another_thread() {
    let mut h = busy();
    let snapshot = h.db.snapshot();
    let digest = snapshot.digest();
    let s = h.db.sessions()[0];
    h.ok(
        s,
        Op::Set {
            path: p("/d/f"),
            contents: b"changed".to_vec(),
        },
    );
    h.create(s, "/new", b"");
    assert_ne!(h.db.digest(), digest);
    assert_eq!(snapshot.digest(), digest);
    let writer = snapshot.into_writer();
    let bytes = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        writer(&mut bytes).unwrap();
        bytes
    })
    .join()
    .unwrap();
    let old = Database::from_snapshot(&mut &bytes[..]).unwrap();
    assert_eq!(old.digest(), digest);
    assert_eq!(&*old.get(&p("/d/f")).unwrap().contents, b"contents");
    assert!(old.stat(&p("/new")).is_err());
}

#[test]
fn every_flipped_bit_and_every_truncation_is_caught() {
    let mut h = Harness::new();
    let s = h.open();
    h.create(s, "/f", b"x");
    let bytes = h.db.snapshot().to_bytes();
    let mut target = Database::new(Config::default());
    let pristine = target.digest();
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[at] ^= 1 << bit;
            assert!(
                target.restore(&mut &bad[..]).is_err(),
                "flip at {at} bit {bit}"
            );
        }
        assert!(
            target.restore(&mut &bytes[..at]).is_err(),
            "truncated at {at}"
        );
    }
    assert_eq!(target.digest(), pristine, "failed restores change nothing");
    target.restore(&mut &bytes[..]).unwrap();
    assert_eq!(target.digest(), h.db.digest());
}

#[test]
fn restore_errors_are_typed() {
    let db = Database::new(Config::default());
    let bytes = db.snapshot().to_bytes();
    let restore = |bytes: &[u8]| Database::from_snapshot(&mut &bytes[..]).unwrap_err();
    assert!(matches!(
        restore(&bytes[..10]),
        RestoreError::Truncated { bytes: 10 }
    ));
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(matches!(restore(&bad), RestoreError::BadMagic));
    let mut bad = bytes.clone();
    bad[8] = 2;
    assert!(matches!(
        restore(&bad),
        RestoreError::UnsupportedVersion { version: 2 }
    ));
    let mut bad = bytes.clone();
    bad.insert(12, 0);
    assert!(matches!(restore(&bad), RestoreError::LengthMismatch { .. }));
    let mut bad = bytes.clone();
    bad[12] ^= 0x40;
    assert!(matches!(
        restore(&bad),
        RestoreError::ChecksumMismatch { .. }
    ));
    let error: io::Error = restore(&bad).into();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn reset_forgets_everything_but_the_config() {
    let config = Config {
        contents_bytes_max: 100,
        ..Config::default()
    };
    let mut h = Harness::with_config(config.clone());
    let s = h.open();
    h.create(s, "/f", b"");
    h.db.reset();
    h.db.check_invariants();
    assert_eq!(h.db.digest(), Database::new(config.clone()).digest());
    assert_eq!(h.db.config(), &config);
}

#[test]
fn the_digest_covers_the_config() {
    let a = Database::new(Config::default());
    let b = Database::new(Config {
        lease_ms_default: 13_000,
        ..Config::default()
    });
    assert_ne!(a.digest(), b.digest());
}
