//! Snapshot files: chunked write and verified read, corruption detection, atomic install (from the
//! application and from a peer), and what recovery requires of the snapshot the log refers to.

use paxos_core::{Config, Incarnation, MembershipLog, NodeId, Record, Slot, SnapshotHandle};
use proptest::prelude::*;
use replicated_log::storage::format::names;
use replicated_log::storage::limits::SNAPSHOT_CHUNK_BYTES_MAX;
use replicated_log::storage::{
    verify_snapshot, DamageKind, Identity, MemVfs, Opened, Storage, StorageError, StorageOptions,
    Vfs, VfsFile,
};
use replicated_log::wire::ClusterId;
use std::io::{ErrorKind, Read, Write};
use std::path::PathBuf;

const NODE: NodeId = NodeId(1);

fn dir() -> PathBuf {
    PathBuf::from("/data/n1")
}

fn identity() -> Identity {
    Identity {
        cluster: ClusterId(5),
        node: NODE,
        incarnation: Incarnation(1),
    }
}

fn membership() -> MembershipLog {
    MembershipLog::initial(Config::new([NodeId(1), NodeId(2), NodeId(3)]))
}

fn handle(slot: u64) -> SnapshotHandle {
    SnapshotHandle {
        slot: Slot(slot),
        membership: membership(),
    }
}

fn options() -> StorageOptions {
    StorageOptions {
        segment_bytes: 16 * 1024,
        ..StorageOptions::default()
    }
}

fn fresh(vfs: &MemVfs) -> Storage<MemVfs> {
    let (mut storage, opened) = Storage::open(vfs.clone(), dir(), options()).unwrap();
    assert_eq!(opened, Opened::Empty);
    storage.set_identity(&identity()).unwrap();
    storage
        .append(&[Record::Bootstrap {
            node: NODE,
            incarnation: Incarnation(1),
            membership: membership(),
        }])
        .unwrap();
    storage.sync().unwrap();
    storage
}

fn data(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn write(storage: &Storage<MemVfs>, slot: u64, bytes: &[u8]) -> PathBuf {
    let mut writer = storage.begin_snapshot(&handle(slot)).unwrap();
    // Odd-sized writes, so chunk boundaries fall inside them.
    for piece in bytes.chunks(77_777) {
        writer.write_all(piece).unwrap();
    }
    assert_eq!(writer.data_bytes(), bytes.len() as u64);
    writer.finish().unwrap()
}

/// Writes the snapshot and records it in the log, as the driver does after the application's
/// snapshot is done.
fn take(storage: &mut Storage<MemVfs>, slot: u64, bytes: &[u8]) {
    write(storage, slot, bytes);
    storage.append(&[Record::Snapshot(handle(slot))]).unwrap();
    storage.sync().unwrap();
}

fn read_all(storage: &Storage<MemVfs>) -> (SnapshotHandle, std::io::Result<Vec<u8>>) {
    let (handle, mut reader) = storage.open_snapshot().unwrap().expect("a snapshot");
    let mut out = Vec::new();
    let result = reader.read_to_end(&mut out).map(|_| out);
    (handle, result)
}

#[test]
fn a_snapshot_round_trips_through_several_chunks() {
    let vfs = MemVfs::new();
    let storage = fresh(&vfs);
    assert!(storage.open_snapshot().unwrap().is_none());
    let bytes = data(2 * SNAPSHOT_CHUNK_BYTES_MAX as usize + 12_345, 1);
    let path = write(&storage, 10, &bytes);
    assert_eq!(path, dir().join(names::snapshot(Slot(10))));
    let (h, read) = read_all(&storage);
    assert_eq!(h, handle(10));
    assert_eq!(read.unwrap(), bytes);
    let mut reader = storage.open_snapshot_at(Slot(10)).unwrap();
    let mut again = Vec::new();
    reader.read_to_end(&mut again).unwrap();
    assert_eq!(again, bytes);
    assert!(matches!(
        storage.open_snapshot_at(Slot(11)),
        Err(StorageError::NoSnapshot { .. })
    ));
    // An empty snapshot is a valid one.
    write(&storage, 11, &[]);
    let (h, read) = read_all(&storage);
    assert_eq!((h.slot, read.unwrap()), (Slot(11), Vec::new()));
}

#[test]
fn a_corrupt_chunk_fails_the_read_with_invalid_data_and_its_offset() {
    let vfs = MemVfs::new();
    let storage = fresh(&vfs);
    let bytes = data(3 * SNAPSHOT_CHUNK_BYTES_MAX as usize, 2);
    let path = write(&storage, 10, &bytes);
    let header = vfs.read(&path).unwrap().len() - bytes.len() - 3 * 8 - 8 - 20;
    let second_chunk = header as u64 + 8 + u64::from(SNAPSHOT_CHUNK_BYTES_MAX);
    vfs.flip_bit(&path, second_chunk + 8 + 1000, 6).unwrap();
    let (_, mut reader) = storage.open_snapshot().unwrap().unwrap();
    let mut first = vec![0u8; SNAPSHOT_CHUNK_BYTES_MAX as usize];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(first, bytes[..first.len()], "the good first chunk reads");
    let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData);
    let text = error.to_string();
    assert!(text.contains(&format!("at byte {second_chunk}")), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(matches!(
        verify_snapshot(&vfs, &path),
        Err(StorageError::BadSnapshot { .. })
    ));
}

#[test]
fn truncation_trailing_bytes_and_a_bad_header_are_refused() {
    let vfs = MemVfs::new();
    let storage = fresh(&vfs);
    let bytes = data(5000, 3);
    let path = write(&storage, 10, &bytes);
    let good = vfs.read(&path).unwrap();
    let size = good.len() as u64;

    vfs.truncate(&path, size - 1).unwrap();
    let error = read_all(&storage).1.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData, "{error}");

    let mut file = vfs.open(&path).unwrap();
    file.write_at(0, &good).unwrap();
    file.append(&[0]).unwrap();
    let error = read_all(&storage).1.unwrap_err();
    assert!(error.to_string().contains("after the trailer"), "{error}");

    vfs.truncate(&path, size).unwrap();
    assert_eq!(read_all(&storage).1.unwrap(), bytes);
    // A bad header on the newest file is an error, not a fall back to an older snapshot.
    write(&storage, 5, &data(10, 0));
    vfs.flip_bit(&path, 9, 0).unwrap();
    assert!(matches!(
        storage.open_snapshot(),
        Err(StorageError::BadSnapshot { .. })
    ));
    // Serving a peer skips it: the peer verifies what it gets anyway.
    assert_eq!(
        storage.snapshot_file(Slot(1)),
        Some(dir().join(names::snapshot(Slot(5))))
    );
}

#[test]
fn every_changed_byte_of_a_snapshot_file_is_detected() {
    let vfs = MemVfs::new();
    let storage = fresh(&vfs);
    let path = write(&storage, 3, &data(700, 4));
    let good = vfs.read(&path).unwrap();
    let receiver = MemVfs::new();
    let mut peer = fresh(&receiver);
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x21;
        let result = peer.install_snapshot_bytes(&bad);
        assert!(
            matches!(result, Err(StorageError::BadSnapshot { .. })),
            "byte {at}: {result:?}"
        );
    }
    assert_eq!(
        peer.snapshot_file(Slot::ZERO),
        None,
        "nothing was installed"
    );
    let leftovers: Vec<PathBuf> = receiver
        .files()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(peer.install_snapshot_bytes(&good).unwrap(), handle(3));
}

#[test]
fn a_peer_installs_the_raw_file_bytes() {
    let source_vfs = MemVfs::new();
    let mut source = fresh(&source_vfs);
    let bytes = data(300_000, 5);
    take(&mut source, 10, &bytes);
    assert_eq!(source.snapshot_bytes(Slot(11)).unwrap(), None);
    let raw = source.snapshot_bytes(Slot(10)).unwrap().unwrap();
    let served = source.snapshot_files().snapshot_file(Slot(4)).unwrap();
    assert_eq!(source_vfs.read(&served).unwrap(), raw);

    let vfs = MemVfs::new();
    let mut peer = fresh(&vfs);
    // The transport downloads into a temporary path of the data directory.
    let incoming = peer.incoming_snapshot_path();
    assert!(incoming.starts_with(dir()));
    let mut file = vfs.create(&incoming).unwrap();
    file.write_at(0, &raw).unwrap();
    drop(file);
    assert_eq!(peer.install_snapshot_file(&incoming).unwrap(), handle(10));
    assert!(vfs.read(&incoming).is_err(), "renamed into place");
    peer.append(&[Record::Snapshot(handle(10))]).unwrap();
    peer.sync().unwrap();
    drop(peer);
    vfs.crash(1);
    let (peer, opened) = Storage::open(vfs.clone(), dir(), options()).unwrap();
    assert!(matches!(opened, Opened::Recovered { state, .. } if state.snapshot.slot == Slot(10)));
    assert_eq!(read_all(&peer).1.unwrap(), bytes);
}

/// Runs `action` with the power failing after each possible number of disk operations, until it
/// completes; `check` sees the storage reopened after each crash and whether `action` returned Ok.
fn at_every_crash_point(
    setup: impl Fn() -> (MemVfs, Storage<MemVfs>),
    action: impl Fn(&mut Storage<MemVfs>) -> Result<(), StorageError>,
    check: impl Fn(u64, &MemVfs, Storage<MemVfs>, Opened, bool),
) {
    for ops in 0.. {
        let (vfs, mut storage) = setup();
        vfs.power_off_after(ops);
        let done = action(&mut storage).is_ok();
        let finished = !vfs.powered_off();
        drop(storage);
        vfs.crash(ops);
        let (storage, opened) = Storage::open(vfs.clone(), dir(), options()).unwrap();
        check(ops, &vfs, storage, opened, done);
        if finished {
            assert!(done);
            return;
        }
    }
}

#[test]
fn a_crash_while_taking_a_snapshot_leaves_the_old_one() {
    let old = data(9000, 6);
    let new = data(2 * SNAPSHOT_CHUNK_BYTES_MAX as usize, 7);
    let setup = || {
        let vfs = MemVfs::new();
        let mut storage = fresh(&vfs);
        take(&mut storage, 5, &old);
        (vfs, storage)
    };
    let action = |storage: &mut Storage<MemVfs>| {
        let mut writer = storage.begin_snapshot(&handle(9))?;
        writer
            .write_all(&new)
            .map_err(|e| StorageError::BadSnapshot {
                path: dir(),
                why: e.to_string(),
            })?;
        writer.finish()?;
        storage.append(&[Record::Snapshot(handle(9))])?;
        storage.sync().map(|_| ())
    };
    let check = |ops, _: &MemVfs, storage: Storage<MemVfs>, opened, done| {
        let Opened::Recovered { state, .. } = opened else {
            panic!("ops {ops}: {opened:?}");
        };
        let (h, read) = read_all(&storage);
        assert_eq!(h.slot, state.snapshot.slot, "ops {ops}");
        let expected = if h.slot == Slot(9) { &new } else { &old };
        assert_eq!(&read.unwrap(), expected, "ops {ops}");
        if done {
            assert_eq!(h.slot, Slot(9), "ops {ops}: acknowledged snapshot lost");
        }
        // Only the snapshot the log refers to is kept.
        let snaps = storage.snapshot_files();
        assert_eq!(snaps.newest().unwrap().map(|(s, _)| s), Some(h.slot));
    };
    at_every_crash_point(setup, action, check);
}

#[test]
fn a_crash_while_installing_a_peer_snapshot_is_all_or_nothing() {
    let source_vfs = MemVfs::new();
    let mut source = fresh(&source_vfs);
    let bytes = data(40_000, 8);
    take(&mut source, 12, &bytes);
    let raw = source.snapshot_bytes(Slot(12)).unwrap().unwrap();
    let setup = || {
        let vfs = MemVfs::new();
        let storage = fresh(&vfs);
        (vfs, storage)
    };
    let action = |storage: &mut Storage<MemVfs>| storage.install_snapshot_bytes(&raw).map(|_| ());
    let check = |ops, vfs: &MemVfs, _: Storage<MemVfs>, opened, _done| {
        assert!(matches!(opened, Opened::Recovered { .. }), "ops {ops}");
        // Unreferenced by the log, the installed file is removed at open; before that, whatever
        // survived under the final name was whole (checked in `install_is_durable_when_it_returns`).
        assert!(vfs
            .files()
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".tmp")));
    };
    at_every_crash_point(setup, action, check);
}

#[test]
fn install_is_durable_when_it_returns() {
    let source_vfs = MemVfs::new();
    let mut source = fresh(&source_vfs);
    take(&mut source, 12, &data(40_000, 9));
    let raw = source.snapshot_bytes(Slot(12)).unwrap().unwrap();
    for ops in 0.. {
        let vfs = MemVfs::new();
        let mut storage = fresh(&vfs);
        vfs.power_off_after(ops);
        let done = storage.install_snapshot_bytes(&raw).is_ok();
        let finished = !vfs.powered_off();
        drop(storage);
        vfs.crash(ops);
        let path = dir().join(names::snapshot(Slot(12)));
        match vfs.read(&path) {
            Ok(found) => assert_eq!(found, raw, "ops {ops}: a partial file under the final name"),
            Err(_) => assert!(!done, "ops {ops}: installed but lost"),
        }
        if finished {
            break;
        }
    }
}

#[test]
fn recovery_requires_the_snapshot_the_log_refers_to() {
    let vfs = MemVfs::new();
    let mut storage = fresh(&vfs);
    take(&mut storage, 4, &data(100, 1));
    drop(storage);
    let path = dir().join(names::snapshot(Slot(4)));
    vfs.flip_bit(&path, 30, 1).unwrap();
    let (_, opened) = Storage::open(vfs.clone(), dir(), options()).unwrap();
    let Opened::Damaged { problem, .. } = opened else {
        panic!("{opened:?}");
    };
    assert_eq!(problem.file, Some(path.clone()));
    assert!(matches!(
        problem.kind,
        DamageKind::BadSnapshot { slot: Slot(4), .. }
    ));

    vfs.remove_durably(&path).unwrap();
    let (_, opened) = Storage::open(vfs.clone(), dir(), options()).unwrap();
    let Opened::Damaged { problem, .. } = opened else {
        panic!("{opened:?}");
    };
    assert_eq!(problem.kind, DamageKind::SnapshotMissing { slot: Slot(4) });
}

#[test]
fn a_snapshot_writer_runs_on_another_thread_while_the_wal_goes_on() {
    let vfs = MemVfs::new();
    let mut storage = fresh(&vfs);
    let writer = storage.begin_snapshot(&handle(2)).unwrap();
    let bytes = data(600_000, 3);
    let thread_bytes = bytes.clone();
    let worker = std::thread::spawn(move || {
        let mut writer = writer;
        writer.write_all(&thread_bytes).unwrap();
        writer.finish().unwrap()
    });
    for round in 1..=20 {
        storage
            .append(&[Record::Promised(paxos_core::Ballot { round, node: NODE })])
            .unwrap();
        storage.sync().unwrap();
    }
    worker.join().unwrap();
    storage.append(&[Record::Snapshot(handle(2))]).unwrap();
    assert!(storage.sync().unwrap().compacted);
    assert_eq!(read_all(&storage).1.unwrap(), bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes offered as a peer's snapshot are refused, never a panic.
    #[test]
    fn arbitrary_snapshot_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let vfs = MemVfs::new();
        let mut storage = fresh(&vfs);
        prop_assert!(storage.install_snapshot_bytes(&bytes).is_err());
    }

    /// Arbitrary bytes after a valid snapshot header are refused by the chunk reader.
    #[test]
    fn arbitrary_chunks_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let vfs = MemVfs::new();
        let mut storage = fresh(&vfs);
        let mut bytes = replicated_log::storage::format::encode_snapshot_header(&handle(1));
        bytes.extend_from_slice(&tail);
        prop_assert!(storage.install_snapshot_bytes(&bytes).is_err());
    }

    /// Arbitrary bytes in a segment after a valid header: open never panics, whatever it decides.
    #[test]
    fn arbitrary_segment_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let vfs = MemVfs::new();
        drop(fresh(&vfs));
        let path = dir().join(names::segment(0));
        let mut image = vfs.read(&path).unwrap();
        let at = 1024;
        let end = (at + tail.len()).min(image.len());
        image[at..end].copy_from_slice(&tail[..end - at]);
        let mut file = vfs.open(&path).unwrap();
        file.write_at(0, &image).unwrap();
        file.sync_data().unwrap();
        drop(file);
        let _ = Storage::open(vfs.clone(), dir(), options());
    }
}
