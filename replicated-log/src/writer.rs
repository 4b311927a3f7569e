//! Group commit: one thread owns the storage, takes every record queued since its last sync, writes
//! them with one write and one fdatasync, then tells the driver which persists are durable.
//!
//! A failed fsync is fatal (the page cache's state is unknown afterwards): the writer reports it and
//! stops; the driver shuts the replica down.

use crate::storage::{Identity, SnapshotReader, SnapshotWriter, Storage, StorageError, Vfs};
use crate::wire::ClusterId;
use hdrhistogram::Histogram;
use paxos_core::{Record, Slot, SnapshotHandle};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// Work for the writer thread, done in the order sent.
pub(crate) enum Job {
    /// Make `records` durable; `ticket` is reported back once they are.
    Persist { records: Vec<Record>, ticket: u64 },
    /// Open a writer for a snapshot of the application at `handle`.
    BeginSnapshot { handle: SnapshotHandle },
    /// Verify and install a snapshot file received from a peer, then open it for restore.
    InstallReceived { path: PathBuf },
    /// Move the damaged state aside before a rebuild.
    Quarantine,
    /// The spare segment asked for is zero-filled and synced (or failed).
    SpareReady {
        path: PathBuf,
        result: Result<(), StorageError>,
    },
}

/// What the writer reports back to the driver.
pub(crate) enum Done<V: Vfs> {
    Synced {
        through: u64,
    },
    SnapshotWriter {
        handle: SnapshotHandle,
        writer: Result<SnapshotWriter<V>, StorageError>,
    },
    SnapshotReceived(Result<(SnapshotHandle, SnapshotReader<V>), StorageError>),
    Quarantined(Result<PathBuf, StorageError>),
    /// A snapshot written on a blocking thread is durable (or failed).
    SnapshotTaken(Result<SnapshotHandle, StorageError>),
    /// A peer's snapshot file arrived at this path (or could not be fetched).
    SnapshotFetched(Result<PathBuf, crate::transport::TransportError>),
    /// Storage failed in a way that must stop the replica (a failed fsync, an unwritable disk).
    Fatal(StorageError),
}

/// Group-commit figures, shared with the driver for metrics.
#[derive(Debug)]
pub(crate) struct WriterStats {
    pub fsyncs: u64,
    pub records: u64,
    pub bytes: u64,
    pub batch_records_max: u64,
    pub fsync_micros: Histogram<u64>,
}

impl WriterStats {
    pub fn new() -> WriterStats {
        WriterStats {
            fsyncs: 0,
            records: 0,
            bytes: 0,
            batch_records_max: 0,
            fsync_micros: Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds"),
        }
    }
}

/// The newest local snapshot file, served to peers that need to catch up.
#[derive(Debug, Default)]
pub(crate) struct LatestSnapshot {
    pub path: Mutex<Option<(Slot, PathBuf)>>,
}

impl crate::transport::SnapshotSource for LatestSnapshot {
    fn snapshot_file(&self, min_slot: Slot) -> Option<PathBuf> {
        let latest = self.path.lock().expect("snapshot path lock");
        latest
            .as_ref()
            .filter(|(slot, _)| *slot >= min_slot)
            .map(|(_, path)| path.clone())
    }
}

pub(crate) struct Writer<V: Vfs> {
    pub storage: Storage<V>,
    pub cluster: ClusterId,
    pub jobs: mpsc::UnboundedReceiver<Job>,
    pub done: mpsc::UnboundedSender<Done<V>>,
    pub stats: Arc<Mutex<WriterStats>>,
    pub latest: Arc<LatestSnapshot>,
    /// To report a spare segment made on another thread; weak, so the queue still closes when the
    /// driver goes.
    pub jobs_tx: mpsc::WeakUnboundedSender<Job>,
}

impl<V: Vfs> Writer<V> {
    /// Runs until the driver drops its sender or storage fails.
    pub fn run(mut self) {
        while let Some(job) = self.jobs.blocking_recv() {
            let mut batch = vec![job];
            while let Ok(more) = self.jobs.try_recv() {
                batch.push(more);
            }
            if let Err(error) = self.run_batch(batch) {
                tracing::error!(%error, "storage failed: the replica stops");
                let _ = self.done.send(Done::Fatal(error));
                return;
            }
            self.prepare_spare();
        }
    }

    /// Persists are merged into one sync; the other jobs run in their place in the queue.
    fn run_batch(&mut self, batch: Vec<Job>) -> Result<(), StorageError> {
        let mut through = None;
        for job in batch {
            match job {
                Job::Persist { records, ticket } => {
                    self.identity_first(&records)?;
                    self.storage.append(&records)?;
                    through = Some(ticket);
                }
                other => {
                    if let Some(ticket) = through.take() {
                        self.sync(ticket)?;
                    }
                    self.run_other(other)?;
                }
            }
        }
        if let Some(ticket) = through {
            self.sync(ticket)?;
        }
        Ok(())
    }

    /// Zero-fills the next segment on a helper thread, so the sync that rolls to it does not.
    fn prepare_spare(&mut self) {
        let Some((path, capacity)) = self.storage.spare_wanted() else {
            return;
        };
        let vfs = self.storage.vfs().clone();
        let jobs = self.jobs_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || {
                let result = crate::storage::prepare_spare(&vfs, &path, capacity);
                if let Some(jobs) = jobs.upgrade() {
                    let _ = jobs.send(Job::SpareReady { path, result });
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the spare-segment thread");
        }
    }

    fn sync(&mut self, ticket: u64) -> Result<(), StorageError> {
        let started = Instant::now();
        let report = self.storage.sync()?;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        {
            let mut stats = self.stats.lock().expect("writer stats lock");
            stats.fsyncs += 1;
            stats.records += report.records;
            stats.bytes += report.bytes;
            stats.batch_records_max = stats.batch_records_max.max(report.records);
            let _ = stats.fsync_micros.record(micros.max(1));
        }
        // A synced snapshot record compacts the log and removes older snapshot files: only then
        // does the newest snapshot change (listing the directory on every sync would cost).
        if report.compacted {
            self.refresh_latest();
        }
        let _ = self.done.send(Done::Synced { through: ticket });
        Ok(())
    }

    /// The identity file is written before the record that creates (or re-creates) the replica, so a
    /// log without an identity file always means lost files.
    fn identity_first(&mut self, records: &[Record]) -> Result<(), StorageError> {
        for record in records {
            let (node, incarnation) = match record {
                Record::Bootstrap {
                    node, incarnation, ..
                }
                | Record::RebuildBegan { node, incarnation } => (*node, *incarnation),
                _ => continue,
            };
            self.storage.set_identity(&Identity {
                cluster: self.cluster,
                node,
                incarnation,
            })?;
        }
        Ok(())
    }

    fn run_other(&mut self, job: Job) -> Result<(), StorageError> {
        match job {
            Job::Persist { .. } => unreachable!("handled by run_batch"),
            Job::BeginSnapshot { handle } => {
                let writer = self.storage.begin_snapshot(&handle);
                let _ = self.done.send(Done::SnapshotWriter { handle, writer });
            }
            Job::InstallReceived { path } => {
                let result = self
                    .storage
                    .install_snapshot_file(&path)
                    .and_then(|handle| {
                        let opened = self.storage.open_snapshot_at(handle.slot)?;
                        Ok((handle, opened))
                    });
                self.refresh_latest();
                let _ = self.done.send(Done::SnapshotReceived(result));
            }
            Job::SpareReady { path, result } => self.storage.spare_ready(path, result),
            Job::Quarantine => {
                let result = self.storage.quarantine();
                let _ = self.done.send(Done::Quarantined(result));
            }
        }
        Ok(())
    }

    pub(crate) fn refresh_latest(&self) {
        let newest = self.storage.snapshot_files().newest().ok().flatten();
        *self.latest.path.lock().expect("snapshot path lock") = newest;
    }
}
