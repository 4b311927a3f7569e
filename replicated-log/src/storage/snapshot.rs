//! Application snapshot files: written in checksummed chunks under a temporary name and installed
//! atomically; read back with every chunk verified. Storage never interprets the bytes.
//!
//! Layout (see `docs/storage-format.md`): a header with the postcard-encoded [`SnapshotHandle`],
//! chunks `length u32 | crc32 u32 | data`, an end frame (eight zero bytes), and a trailer with the
//! total data length and the crc of every byte before the trailer.

use super::error::StorageError;
use super::format::{
    self, check_chunk, decode_chunk_header, decode_snapshot_header, decode_snapshot_trailer, names,
    FormatError, FRAME_HEADER_BYTES, SNAPSHOT_HEADER_FIXED_BYTES, SNAPSHOT_TRAILER_BYTES,
};
use super::limits::SNAPSHOT_CHUNK_BYTES_MAX;
use super::store::StopFlag;
use super::vfs::{parent_of, Vfs, VfsFile};
use super::wal::{io_error, sync_error};
use paxos_core::{Slot, SnapshotHandle};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Writes one snapshot file. Owns a clone of the file system, so it can run on another thread while
/// the WAL keeps going. Nothing is visible under the final name until [`SnapshotWriter::finish`].
pub struct SnapshotWriter<V: Vfs> {
    vfs: V,
    dir: PathBuf,
    temp: PathBuf,
    path: PathBuf,
    file: V::File,
    offset: u64,
    /// Data not yet written as a chunk. Invariant: shorter than `SNAPSHOT_CHUNK_BYTES_MAX`.
    chunk: Vec<u8>,
    /// crc of every byte written so far.
    file_crc: crc32fast::Hasher,
    data_bytes: u64,
    stop: StopFlag,
}

impl<V: Vfs> fmt::Debug for SnapshotWriter<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("temp", &self.temp)
            .field("data_bytes", &self.data_bytes)
            .finish()
    }
}

impl<V: Vfs> SnapshotWriter<V> {
    pub(crate) fn create(
        vfs: V,
        dir: &Path,
        handle: &SnapshotHandle,
        n: u64,
        stop: StopFlag,
    ) -> Result<SnapshotWriter<V>, StorageError> {
        let temp = dir.join(names::snapshot_temp(handle.slot, n));
        let file = vfs
            .create(&temp)
            .map_err(io_error("create snapshot file", &temp))?;
        let mut writer = SnapshotWriter {
            vfs,
            dir: dir.to_path_buf(),
            path: dir.join(names::snapshot(handle.slot)),
            temp,
            file,
            offset: 0,
            chunk: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES_MAX as usize),
            file_crc: crc32fast::Hasher::new(),
            data_bytes: 0,
            stop,
        };
        let header = format::encode_snapshot_header(handle);
        writer
            .put(&header)
            .map_err(io_error("write snapshot file", &writer.temp))?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_at(self.offset, bytes)?;
        self.file_crc.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn emit_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(self.chunk.len() + FRAME_HEADER_BYTES as usize);
        bytes.extend_from_slice(&format::encode_chunk_header(&self.chunk));
        bytes.extend_from_slice(&self.chunk);
        self.put(&bytes)?;
        self.data_bytes += self.chunk.len() as u64;
        self.chunk.clear();
        Ok(())
    }

    /// Data bytes accepted so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes + self.chunk.len() as u64
    }

    /// Writes the last chunk and the trailer, syncs the file, renames it to its final name and
    /// syncs the directory. Returns the final path. A failed fsync stops the whole storage.
    pub fn finish(mut self) -> Result<PathBuf, StorageError> {
        self.stop.check()?;
        let temp = self.temp.clone();
        self.emit_chunk()
            .and_then(|()| self.put(&[0u8; FRAME_HEADER_BYTES as usize]))
            .map_err(io_error("write snapshot file", &temp))?;
        let trailer = format::encode_snapshot_trailer(self.data_bytes, self.file_crc.finalize());
        self.file
            .write_at(self.offset, &trailer)
            .map_err(io_error("write snapshot file", &temp))?;
        if let Err(e) = self.file.sync_data().map_err(sync_error(&temp)) {
            self.stop.stop(e.to_string());
            return Err(e);
        }
        self.vfs
            .rename(&temp, &self.path)
            .map_err(io_error("rename snapshot into place", &temp))?;
        if let Err(e) = self.vfs.sync_dir(&self.dir).map_err(sync_error(&self.dir)) {
            self.stop.stop(e.to_string());
            return Err(e);
        }
        Ok(self.path)
    }
}

impl<V: Vfs> Write for SnapshotWriter<V> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = SNAPSHOT_CHUNK_BYTES_MAX as usize - self.chunk.len();
        let take = room.min(buf.len());
        self.chunk.extend_from_slice(&buf[..take]);
        if self.chunk.len() == SNAPSHOT_CHUNK_BYTES_MAX as usize {
            self.emit_chunk()?;
        }
        Ok(take)
    }

    /// Durability comes from `finish`; flushing only bounds what is buffered.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn invalid(path: &Path, offset: u64, why: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot {} at byte {offset}: {why}", path.display()),
    )
}

/// Reads `len` bytes at `offset`; fewer means the file ends early.
fn read_exact_at<F: VfsFile>(
    file: &mut F,
    path: &Path,
    offset: u64,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = file.read_at(offset, &mut buf)?;
    if n < len {
        let e = FormatError::Truncated {
            needed: len as u64,
            available: n as u64,
        };
        return Err(invalid(path, offset, e));
    }
    Ok(buf)
}

/// Reads a snapshot file's header. The outer error is IO; the inner one says the bytes are bad.
pub(crate) fn read_snapshot_header<V: Vfs>(
    vfs: &V,
    path: &Path,
) -> Result<Result<SnapshotHandle, FormatError>, StorageError> {
    let mut file = vfs
        .open(path)
        .map_err(io_error("open snapshot file", path))?;
    Ok(read_header(&mut file, path)?.map(|(handle, _)| handle))
}

fn read_header<F: VfsFile>(
    file: &mut F,
    path: &Path,
) -> Result<Result<(SnapshotHandle, usize), FormatError>, StorageError> {
    let mut want = SNAPSHOT_HEADER_FIXED_BYTES;
    loop {
        let mut bytes = vec![0u8; want];
        let n = file
            .read_at(0, &mut bytes)
            .map_err(io_error("read snapshot file", path))?;
        bytes.truncate(n);
        match decode_snapshot_header(&bytes) {
            Err(FormatError::Truncated { needed, .. }) if n == want && needed as usize > want => {
                want = needed as usize;
            }
            other => return Ok(other),
        }
    }
}

/// Reads a snapshot file's data, verifying every chunk as it comes and the trailer at the end. A
/// corruption is an `io::Error` of kind `InvalidData` that names the file and the offset.
pub struct SnapshotReader<V: Vfs> {
    file: V::File,
    path: PathBuf,
    size: u64,
    /// Next byte of the file to read.
    offset: u64,
    chunk: Vec<u8>,
    /// Position in `chunk`. Invariant: at most `chunk.len()`.
    pos: usize,
    file_crc: crc32fast::Hasher,
    data_bytes: u64,
    done: bool,
}

impl<V: Vfs> fmt::Debug for SnapshotReader<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .finish()
    }
}

impl<V: Vfs> SnapshotReader<V> {
    pub(crate) fn open(
        vfs: &V,
        path: &Path,
    ) -> Result<(SnapshotHandle, SnapshotReader<V>), StorageError> {
        let mut file = vfs
            .open(path)
            .map_err(io_error("open snapshot file", path))?;
        let (handle, header_len) =
            read_header(&mut file, path)?.map_err(|e| StorageError::BadSnapshot {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
        let header = read_exact_at(&mut file, path, 0, header_len)
            .map_err(io_error("read snapshot file", path))?;
        let mut file_crc = crc32fast::Hasher::new();
        file_crc.update(&header);
        let size = file.size().map_err(io_error("read snapshot file", path))?;
        let reader = SnapshotReader {
            file,
            path: path.to_path_buf(),
            size,
            offset: header_len as u64,
            chunk: Vec::new(),
            pos: 0,
            file_crc,
            data_bytes: 0,
            done: false,
        };
        Ok((handle, reader))
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let at = self.offset;
        let head = read_exact_at(&mut self.file, &self.path, at, FRAME_HEADER_BYTES as usize)?;
        let header = decode_chunk_header(&head).map_err(|e| invalid(&self.path, at, e))?;
        self.file_crc.update(&head);
        self.offset += FRAME_HEADER_BYTES;
        let Some((len, crc)) = header else {
            return self.finish_trailer();
        };
        let data = read_exact_at(&mut self.file, &self.path, self.offset, len as usize)?;
        check_chunk(&data, crc).map_err(|e| invalid(&self.path, at, e))?;
        self.file_crc.update(&data);
        self.offset += u64::from(len);
        self.data_bytes += u64::from(len);
        self.chunk = data;
        self.pos = 0;
        Ok(())
    }

    fn finish_trailer(&mut self) -> io::Result<()> {
        let at = self.offset;
        let bytes = read_exact_at(&mut self.file, &self.path, at, SNAPSHOT_TRAILER_BYTES)?;
        let (total, crc) =
            decode_snapshot_trailer(&bytes).map_err(|e| invalid(&self.path, at, e))?;
        if total != self.data_bytes {
            let why = format!(
                "trailer says {total} data bytes, chunks hold {}",
                self.data_bytes
            );
            return Err(invalid(&self.path, at, why));
        }
        let computed = self.file_crc.clone().finalize();
        if crc != computed {
            let e = FormatError::ChecksumMismatch {
                stored: crc,
                computed,
            };
            return Err(invalid(&self.path, at, e));
        }
        let end = at + SNAPSHOT_TRAILER_BYTES as u64;
        if end != self.size {
            let why = format!("{} bytes after the trailer", self.size.saturating_sub(end));
            return Err(invalid(&self.path, end, why));
        }
        self.done = true;
        self.chunk.clear();
        self.pos = 0;
        Ok(())
    }
}

impl<V: Vfs> Read for SnapshotReader<V> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads a whole snapshot file, checking every byte of it. Returns its handle.
pub fn verify_snapshot<V: Vfs>(vfs: &V, path: &Path) -> Result<SnapshotHandle, StorageError> {
    let (handle, mut reader) = SnapshotReader::open(vfs, path)?;
    match io::copy(&mut reader, &mut io::sink()) {
        Ok(_) => Ok(handle),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(StorageError::BadSnapshot {
            path: path.to_path_buf(),
            why: e.to_string(),
        }),
        Err(e) => Err(io_error("read snapshot file", path)(e)),
    }
}

/// The snapshot files of a data directory, for whoever serves them to peers (the transport runs on
/// other threads than the WAL writer). Cheap to clone.
#[derive(Clone, Debug)]
pub struct SnapshotFiles<V: Vfs> {
    vfs: V,
    dir: PathBuf,
}

impl<V: Vfs> SnapshotFiles<V> {
    pub(crate) fn new(vfs: V, dir: PathBuf) -> SnapshotFiles<V> {
        SnapshotFiles { vfs, dir }
    }

    /// The slots of the snapshot files present, newest first.
    fn slots(&self) -> Result<Vec<Slot>, StorageError> {
        let entries = self
            .vfs
            .list(&self.dir)
            .map_err(io_error("list the data directory", &self.dir))?;
        let mut slots: Vec<Slot> = entries
            .iter()
            .filter(|e| !e.is_dir)
            .filter_map(|e| match names::classify(&e.name) {
                names::Name::Snapshot(slot) => Some(slot),
                _ => None,
            })
            .collect();
        slots.sort_unstable_by(|a, b| b.cmp(a));
        Ok(slots)
    }

    /// Whether a snapshot file for `slot` is present.
    pub fn has(&self, slot: Slot) -> Result<bool, StorageError> {
        Ok(self.slots()?.contains(&slot))
    }

    /// The newest snapshot file by name, unchecked.
    pub(crate) fn newest_unchecked(&self) -> Result<Option<PathBuf>, StorageError> {
        let slots = self.slots()?;
        Ok(slots
            .first()
            .map(|slot| self.dir.join(names::snapshot(*slot))))
    }

    /// The newest snapshot file whose header checks out, if any.
    pub fn newest(&self) -> Result<Option<(Slot, PathBuf)>, StorageError> {
        for slot in self.slots()? {
            let path = self.dir.join(names::snapshot(slot));
            if read_snapshot_header(&self.vfs, &path)?.is_ok() {
                return Ok(Some((slot, path)));
            }
            tracing::warn!(path = %path.display(), "snapshot file header does not check out");
        }
        Ok(None)
    }

    /// Path of the newest snapshot file covering at least `min_slot` whose header checks out (the
    /// receiver verifies the whole file).
    pub fn snapshot_file(&self, min_slot: Slot) -> Option<PathBuf> {
        match self.newest() {
            Ok(Some((slot, path))) if slot >= min_slot => Some(path),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for snapshot files");
                None
            }
        }
    }

    /// The raw bytes of that file (for the simulator, which has no files to send).
    pub fn snapshot_bytes(&self, min_slot: Slot) -> Result<Option<Vec<u8>>, StorageError> {
        let Some((slot, path)) = self.newest()? else {
            return Ok(None);
        };
        if slot < min_slot {
            return Ok(None);
        }
        let bytes = self
            .vfs
            .read(&path)
            .map_err(io_error("read snapshot file", &path))?;
        Ok(Some(bytes))
    }
}

/// The directory to sync after a file moved out of `path`'s directory.
pub(crate) fn source_dir(path: &Path) -> PathBuf {
    parent_of(path)
}
