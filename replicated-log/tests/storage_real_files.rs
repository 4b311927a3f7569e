//! Storage over real files (FileVfs) in a temporary directory, and a measurement of what segment
//! preallocation buys (ignored by default: it is a measurement, not a test).

use paxos_core::{
    Ballot, Config, Entry, EntryId, EntryKind, Epoch, Incarnation, MembershipLog, NodeId, Record,
    Slot, SnapshotHandle, Value,
};
use replicated_log::storage::{
    FileVfs, Identity, Opened, Storage, StorageOptions, SyncReport, Vfs,
};
use replicated_log::wire::ClusterId;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const NODE: NodeId = NodeId(3);

fn identity() -> Identity {
    Identity {
        cluster: ClusterId(77),
        node: NODE,
        incarnation: Incarnation(1),
    }
}

fn membership() -> MembershipLog {
    MembershipLog::initial(Config::new([NodeId(1), NodeId(2), NodeId(3)]))
}

fn bootstrap() -> Record {
    Record::Bootstrap {
        node: NODE,
        incarnation: Incarnation(1),
        membership: membership(),
    }
}

fn accepted(slot: u64, len: usize) -> Record {
    let ballot = Ballot {
        round: 1,
        node: NODE,
    };
    Record::Accepted {
        slot: Slot(slot),
        ballot,
        value: Value::new(vec![Entry {
            id: EntryId {
                epoch: Epoch(ballot),
                seq: slot,
            },
            kind: EntryKind::App(vec![slot as u8; len]),
        }]),
    }
}

fn start(dir: &Path, options: StorageOptions) -> Storage<FileVfs> {
    let (mut storage, opened) = Storage::open(FileVfs, dir, options).unwrap();
    assert_eq!(opened, Opened::Empty);
    storage.set_identity(&identity()).unwrap();
    storage.append(&[bootstrap()]).unwrap();
    storage.sync().unwrap();
    storage
}

#[test]
fn append_sync_and_reopen_on_a_real_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let options = StorageOptions {
        segment_bytes: 64 * 1024,
        ..StorageOptions::default()
    };
    let mut storage = start(&dir, options.clone());
    let mut rolled = false;
    for slot in 1..=200 {
        storage.append(&[accepted(slot, 1024)]).unwrap();
        if slot % 4 == 0 {
            rolled |= storage.sync().unwrap().rolled;
        }
    }
    assert!(rolled, "64 KiB segments roll under 200 KiB of records");
    let handle = SnapshotHandle {
        slot: Slot(150),
        membership: membership(),
    };
    let snapshot: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let mut writer = storage.begin_snapshot(&handle).unwrap();
    writer.write_all(&snapshot).unwrap();
    writer.finish().unwrap();
    storage.append(&[Record::Snapshot(handle.clone())]).unwrap();
    let report: SyncReport = storage.sync().unwrap();
    assert!(report.compacted);
    let state = storage.state().cloned().unwrap();
    assert_eq!(state.log.len(), 50);
    drop(storage);

    let (storage, opened) = Storage::open(FileVfs, &dir, options.clone()).unwrap();
    assert_eq!(
        opened,
        Opened::Recovered {
            identity: identity(),
            state
        }
    );
    let (found, mut reader) = storage.open_snapshot().unwrap().unwrap();
    assert_eq!(found, handle);
    let mut read = Vec::new();
    reader.read_to_end(&mut read).unwrap();
    assert_eq!(read, snapshot);
    let names: Vec<String> = FileVfs
        .list(&dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    let seq = segment_seq(&names);
    assert_eq!(
        names,
        [
            "LOCK".to_owned(), // the data directory's lock, held while storage is open
            "identity".to_owned(),
            "snapshot-00000000000000000150.snap".to_owned(),
            format!("wal-{seq:020}.log"),
        ]
    );
}

/// The one WAL segment's number, from a listing.
fn segment_seq(names: &[String]) -> u64 {
    let wal: Vec<&String> = names.iter().filter(|n| n.starts_with("wal-")).collect();
    assert_eq!(wal.len(), 1, "{names:?}");
    wal[0][4..24].parse().unwrap()
}

#[test]
fn a_received_snapshot_file_is_installed_from_another_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let source_dir = tmp.path().join("source");
    let mut source = start(&source_dir, StorageOptions::default());
    let handle = SnapshotHandle {
        slot: Slot(9),
        membership: membership(),
    };
    let mut writer = source.begin_snapshot(&handle).unwrap();
    writer.write_all(b"application state").unwrap();
    writer.finish().unwrap();
    source.append(&[Record::Snapshot(handle.clone())]).unwrap();
    source.sync().unwrap();
    let served = source.snapshot_file(Slot(9)).unwrap();

    let dir = tmp.path().join("replica");
    let mut replica = start(&dir, StorageOptions::default());
    let download = tmp.path().join("download.part");
    std::fs::copy(&served, &download).unwrap();
    assert_eq!(replica.install_snapshot_file(&download).unwrap(), handle);
    assert!(!download.exists());
    let mut reader = replica.open_snapshot_at(Slot(9)).unwrap();
    let mut read = String::new();
    reader.read_to_string(&mut read).unwrap();
    assert_eq!(read, "application state");

    // A corrupt download is refused and leaves nothing in place.
    let incoming = replica.incoming_snapshot_path();
    let mut bytes = std::fs::read(&served).unwrap();
    let last = bytes.len() - 30;
    bytes[last] ^= 1;
    std::fs::write(&incoming, &bytes).unwrap();
    assert!(replica.install_snapshot_file(&incoming).is_err());
    assert!(replica.snapshot_file(Slot(10)).is_none());
}

#[test]
fn an_unusable_data_directory_is_an_error_that_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let error = Storage::open(FileVfs, file.join("data"), StorageOptions::default()).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("could not create the data directory"),
        "{text}"
    );
    assert!(text.contains("check"), "{text}");
}

struct Figures {
    syncs_per_second: f64,
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

fn measure(dir: &Path, preallocate: bool, syncs: usize) -> Figures {
    let options = StorageOptions {
        preallocate,
        ..StorageOptions::default()
    };
    let mut storage = start(dir, options);
    let mut latencies = Vec::with_capacity(syncs);
    let began = Instant::now();
    for slot in 1..=syncs as u64 {
        storage.append(&[accepted(slot, 1024)]).unwrap();
        let t = Instant::now();
        let report = storage.sync().unwrap();
        latencies.push(t.elapsed());
        assert_eq!((report.batches, report.rolled), (1, false));
    }
    let total = began.elapsed();
    latencies.sort();
    Figures {
        syncs_per_second: syncs as f64 / total.as_secs_f64(),
        mean: latencies.iter().sum::<Duration>() / syncs as u32,
        p50: latencies[syncs / 2],
        p99: latencies[syncs * 99 / 100],
    }
}

/// Run with `cargo test -p replicated-log --release --test storage_real_files -- --ignored
/// --nocapture`. Each iteration appends one 1 KiB record and syncs it (one write + one fdatasync).
#[test]
#[ignore = "a measurement, not a test"]
fn measure_sync_latency_preallocated_or_not() {
    let base = std::env::var_os("STORAGE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    for round in 0..3 {
        for preallocate in [true, false] {
            let tmp = tempfile::tempdir_in(&base).unwrap();
            let f = measure(&tmp.path().join("data"), preallocate, 2000);
            println!(
                "round {round} preallocated={preallocate}: {:.0} syncs/s, mean {:?}, p50 {:?}, p99 {:?}",
                f.syncs_per_second, f.mean, f.p50, f.p99
            );
        }
    }
}
