//! `chubbyctl verify` on real directories: a clean one passes, a flipped byte in the middle of the
//! log is reported with its file and offset, and the directory is never changed.

use paxos_core::{Ballot, Config, Incarnation, MembershipLog, NodeId, Record};
use replicated_log::storage::{FileVfs, Identity, Storage, StorageOptions};
use replicated_log::ClusterId;
use std::path::Path;
use tools::verify::verify_data_dir;

fn write_replica(dir: &Path) {
    let options = StorageOptions {
        segment_bytes: 64 * 1024,
        ..StorageOptions::default()
    };
    let (mut storage, _) = Storage::open(FileVfs, dir, options).unwrap();
    let node = NodeId(1);
    storage
        .set_identity(&Identity {
            cluster: ClusterId(7),
            node,
            incarnation: Incarnation(1),
        })
        .unwrap();
    storage
        .append(&[Record::Bootstrap {
            node,
            incarnation: Incarnation(1),
            membership: MembershipLog::initial(Config::new([node])),
        }])
        .unwrap();
    storage.sync().unwrap();
    for round in 1..=20 {
        storage
            .append(&[Record::Promised(Ballot { round, node })])
            .unwrap();
        storage.sync().unwrap();
    }
}

fn snapshot_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_clean_directory_verifies_and_a_flipped_byte_is_located() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("node-1");
    write_replica(&dir);
    let report = verify_data_dir(&dir).unwrap();
    assert_eq!(report.verdict, "ok", "{report:?}");
    assert_eq!(report.node, Some(1));

    // Flip a byte in the payload of an early batch (batches start on 512-byte sectors; the first
    // sector is the header): acknowledged batches follow it, so it is corruption, not a torn tail.
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let offset = 3 * 512 + 9;
    bytes[offset] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    let before = snapshot_of(&dir);
    let report = verify_data_dir(&dir).unwrap();
    assert_eq!(report.verdict, "damaged", "{report:?}");
    let problem = &report.problems[0];
    assert_eq!(problem.file.as_deref(), Some(segment.as_path()));
    assert!(
        problem.offset.is_some_and(|o| o <= offset as u64),
        "{problem:?}"
    );
    assert_eq!(
        snapshot_of(&dir),
        before,
        "verify must not change the directory"
    );
}
