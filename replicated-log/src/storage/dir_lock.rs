//! [`DirLock`]: an exclusive advisory lock on a data directory, so that two processes never run
//! storage over the same directory, and an operator tool can tell that a replica is stopped.
//!
//! The lock is `flock(LOCK_EX | LOCK_NB)` on a file named `LOCK` in the directory (through rustix;
//! std's `File::try_lock` is the same call but needs Rust 1.89, above this workspace's MSRV). The
//! kernel releases it when the process exits, however it exits, so a crashed
//! replica never leaves a stale lock behind. The holder writes its process id into the file, for
//! error messages and for operators (`kill $(cat DIR/LOCK)`); the pid is information, never the lock.
//! `LOCK` is not one of storage's names: `open` and `quarantine` leave it where it is.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file's name inside a data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// How long `acquire` waits when the holder is this very process: a replica shut down in-process
/// (tests, an embedding application reopening its log) releases the lock when its writer thread
/// finishes, shortly after `Log::shutdown` returns.
const SAME_PROCESS_WAIT_MAX: Duration = Duration::from_secs(10);
const RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Holds the lock on one data directory until dropped.
#[derive(Debug)]
pub struct DirLock {
    /// Closing the file releases the lock.
    _file: File,
    path: PathBuf,
}

/// Why a directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock: a replica (or an operator tool) is using the directory.
    InUse {
        dir: PathBuf,
        /// The holder's process id as it wrote it, if readable.
        pid: Option<u32>,
    },
    /// The lock file could not be created, opened or written.
    Io { path: PathBuf, source: io::Error },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::InUse { dir, pid } => {
                write!(
                    f,
                    "data directory {} is in use by another process",
                    dir.display()
                )?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                write!(
                    f,
                    ": two replicas must never share a directory; stop that process first, or \
                     point this one at its own directory"
                )
            }
            LockError::Io { path, source } => {
                write!(f, "could not lock {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::Io { source, .. } => Some(source),
            LockError::InUse { .. } => None,
        }
    }
}

/// Whether a directory's lock is free, without keeping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    /// Nobody holds it (or the directory or its lock file does not exist).
    Free,
    /// A process holds it; its pid if it wrote one.
    Held { pid: Option<u32> },
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist), creating `dir/LOCK` if needed, and writes this
    /// process's id into it. Fails at once with `InUse` if another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE_NAME);
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // Never truncate on open: the file may be the holder's, with its pid in it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        let started = Instant::now();
        loop {
            match try_lock(&file) {
                Ok(true) => break,
                Ok(false) => {
                    let pid = read_pid(&mut file);
                    let ours = pid == Some(std::process::id());
                    if !ours || started.elapsed() >= SAME_PROCESS_WAIT_MAX {
                        return Err(LockError::InUse {
                            dir: dir.to_path_buf(),
                            pid,
                        });
                    }
                    std::thread::sleep(RETRY_INTERVAL);
                }
                Err(source) => return Err(io_error(source)),
            }
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(io_error)?;
        Ok(DirLock { _file: file, path })
    }

    /// Whether `dir` is locked right now. Takes and drops the lock to find out; the answer can be
    /// stale as soon as it returns, so a tool that needs the directory to stay free holds it with
    /// [`DirLock::acquire`] instead.
    pub fn probe(dir: &Path) -> Result<LockState, LockError> {
        if !dir.join(LOCK_FILE_NAME).exists() {
            return Ok(LockState::Free);
        }
        let path = dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?;
        match try_lock(&file) {
            Ok(true) => Ok(LockState::Free),
            Ok(false) => Ok(LockState::Held {
                pid: read_pid(&mut file),
            }),
            Err(source) => Err(LockError::Io { path, source }),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: true if this file now holds the lock, false if another open file
/// does. The lock goes with the open file: closing it (or exiting) releases it.
fn try_lock(file: &File) -> io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    use rustix::io::Errno;
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

/// The pid the holder wrote, if the file holds one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_in_another_process_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        assert_eq!(
            DirLock::probe(dir.path()).unwrap(),
            LockState::Held {
                pid: Some(std::process::id())
            }
        );
        drop(lock);
        assert_eq!(DirLock::probe(dir.path()).unwrap(), LockState::Free);
        // Another process (flock(1), which writes no pid) holds the lock while we try.
        std::fs::write(dir.path().join(LOCK_FILE_NAME), "").unwrap();
        let mut holder = std::process::Command::new("flock")
            .arg(dir.path().join(LOCK_FILE_NAME))
            .args(["sleep", "5"])
            .spawn()
            .expect("flock(1) from util-linux runs");
        let deadline = Instant::now() + Duration::from_secs(3);
        while DirLock::probe(dir.path()).unwrap() == LockState::Free && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let result = DirLock::acquire(dir.path());
        let _ = holder.kill();
        let _ = holder.wait();
        let error = result.unwrap_err();
        assert!(
            matches!(error, LockError::InUse { pid: None, .. }),
            "expected InUse, got {error}"
        );
        assert!(error.to_string().contains("is in use by another process"));
    }

    #[test]
    fn a_lock_released_in_this_process_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(lock);
        });
        let again = DirLock::acquire(dir.path()).unwrap();
        releaser.join().unwrap();
        drop(again);
    }

    #[test]
    fn a_missing_directory_is_free_to_probe_and_an_error_to_lock() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert_eq!(DirLock::probe(&missing).unwrap(), LockState::Free);
        assert!(matches!(
            DirLock::acquire(&missing),
            Err(LockError::Io { .. })
        ));
    }
}
