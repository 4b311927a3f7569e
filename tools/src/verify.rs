//! `chubbyctl verify`: an offline check of every checksum in a replica's data directory, without
//! changing a byte of it.
//!
//! The directory is copied into an in-memory disk and opened there with the real storage code, so
//! the verdict is exactly what the replica would decide at its next start (including cutting a
//! torn tail), while the files on disk stay as they are. Every snapshot file is read end to end.

use paxos_core::Slot;
use replicated_log::storage::{
    format::names, verify_snapshot, MemVfs, Opened, Storage, StorageOptions, Vfs, VfsFile,
};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `verify` found.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub data_dir: PathBuf,
    /// `ok`, `empty`, `torn-tail` (clean after cutting an unfinished last batch) or `damaged`.
    pub verdict: &'static str,
    pub cluster: Option<String>,
    pub node: Option<u64>,
    pub incarnation: Option<u64>,
    /// Slot of the snapshot the log names, and the chosen slots after it.
    pub snapshot_slot: Option<u64>,
    pub log_slots: usize,
    pub files_checked: usize,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub file: Option<PathBuf>,
    pub offset: Option<u64>,
    pub what: String,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks `dir` without modifying it. Errors are for a directory that cannot be read at all.
pub fn verify_data_dir(dir: &Path) -> std::io::Result<VerifyReport> {
    let image = Path::new("/data");
    let vfs = MemVfs::new();
    vfs.create_dir(image)?;
    let mut files_checked = 0;
    let mut snapshot_files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue; // moved-aside damaged-<n> directories are not the replica's state
        }
        let name = entry.file_name();
        let bytes = std::fs::read(entry.path())?;
        let path = image.join(&name);
        let mut file = vfs.create(&path)?;
        file.write_at(0, &bytes)?;
        file.sync_data()?;
        files_checked += 1;
        if let names::Name::Snapshot(slot) = names::classify(&name.to_string_lossy()) {
            snapshot_files.push((slot, path));
        }
    }
    vfs.sync_dir(image)?;

    let mut report = VerifyReport {
        data_dir: dir.to_path_buf(),
        verdict: "ok",
        cluster: None,
        node: None,
        incarnation: None,
        snapshot_slot: None,
        log_slots: 0,
        files_checked,
        problems: Vec::new(),
    };
    let on_disk = |path: &Path| path.file_name().map(|name| dir.join(name));
    for (slot, path) in &snapshot_files {
        if let Err(error) = verify_snapshot(&vfs, path) {
            report.problems.push(Problem {
                file: on_disk(path),
                offset: None,
                what: format!("snapshot of slot {}: {error}", slot.0),
            });
        }
    }
    match Storage::open(vfs.clone(), image, StorageOptions::default()) {
        Ok((storage, Opened::Recovered { identity, state })) => {
            report.cluster = Some(identity.cluster.to_string());
            report.node = Some(identity.node.0);
            report.incarnation = Some(identity.incarnation.0);
            report.snapshot_slot = Some(state.snapshot.slot.0);
            report.log_slots = state.log.len();
            if storage.torn_tail().is_some() && report.problems.is_empty() {
                report.verdict = "torn-tail";
            }
            if state.snapshot.slot > Slot::ZERO
                && !snapshot_files
                    .iter()
                    .any(|(s, _)| *s == state.snapshot.slot)
            {
                report.problems.push(Problem {
                    file: None,
                    offset: None,
                    what: format!(
                        "the log names the snapshot of slot {} but its file is missing",
                        state.snapshot.slot.0
                    ),
                });
            }
        }
        Ok((_, Opened::Empty)) => report.verdict = "empty",
        Ok((_, Opened::Damaged { identity, problem })) => {
            if let Some(identity) = identity {
                report.cluster = Some(identity.cluster.to_string());
                report.node = Some(identity.node.0);
                report.incarnation = Some(identity.incarnation.0);
            }
            report.problems.push(Problem {
                file: problem.file.as_deref().and_then(on_disk),
                offset: problem.offset,
                what: problem.kind.to_string(),
            });
        }
        Err(error) => report.problems.push(Problem {
            file: None,
            offset: None,
            what: error.to_string(),
        }),
    }
    if !report.problems.is_empty() {
        report.verdict = "damaged";
    }
    Ok(report)
}
