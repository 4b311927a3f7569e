//! The narrow file-system interface storage runs over, and its real implementation.
//!
//! The same storage code runs over [`FileVfs`] (std::fs) and over
//! [`MemVfs`](super::mem_vfs::MemVfs), an in-memory disk that separates written from synced bytes
//! and injects faults. The interface names the durability points explicitly: file data is durable
//! after [`VfsFile::sync_data`]; a created, renamed or removed directory entry is durable after
//! [`Vfs::sync_dir`] on its directory.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
}

/// A file system: cheap to clone (a handle), usable from several threads.
pub trait Vfs: Clone + Send + Sync + fmt::Debug + 'static {
    type File: VfsFile;

    /// Creates a file for reading and writing, truncating it if it exists.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Replaces `to` with `from` atomically; durable after `sync_dir` of both parents.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; durable after `sync_dir` of its parent.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The entries of a directory, sorted by name. Names that are not UTF-8 are skipped.
    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>>;
    /// Creates a directory and its missing parents.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable: fsync of the directory.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on a data directory, held until the returned lock is dropped. Only
    /// a file system other processes share needs one; the default takes none.
    fn lock_dir(&self, _dir: &Path) -> Result<Option<super::DirLock>, super::LockError> {
        Ok(None)
    }
}

/// An open file. Offsets are bytes from the start of the file.
pub trait VfsFile: Send + fmt::Debug + 'static {
    /// Writes all of `data` at `offset`, extending the file with zeros if needed.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Writes all of `data` at the end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// fdatasync: the file's data (and the size needed to read it) is durable when this returns Ok.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The real file system through std::fs.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileVfs;

/// A file of [`FileVfs`].
#[derive(Debug)]
pub struct FsFile {
    file: File,
}

impl VfsFile for FsFile {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.write_all(data)
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.seek(SeekFrom::End(0))?;
        self.file.write_all(data)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.seek(SeekFrom::Start(offset))?;
        let mut filled = 0;
        while filled < buf.len() {
            match self.file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Vfs for FileVfs {
    type File = FsFile;

    fn create(&self, path: &Path) -> io::Result<FsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(FsFile { file })
    }

    fn open(&self, path: &Path) -> io::Result<FsFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(FsFile { file })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let is_dir = entry.file_type()?.is_dir();
            entries.push(DirEntry { name, is_dir });
        }
        entries.sort();
        Ok(entries)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        // On Linux, fsync of a directory opened read-only makes its entries durable.
        File::open(path)?.sync_all()
    }

    fn lock_dir(&self, dir: &Path) -> Result<Option<super::DirLock>, super::LockError> {
        super::DirLock::acquire(dir).map(Some)
    }
}

/// The directory that holds `path`, for `sync_dir` after a rename or remove.
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
