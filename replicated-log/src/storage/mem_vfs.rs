//! An in-memory disk that separates written from synced bytes and injects faults, after redb's
//! crash-consistency model: every file keeps a `live` image (what reads see) and a `durable` image
//! (what survives a crash).
//!
//! - `write_at`/`append`/`set_len` change the live image and queue a pending operation;
//!   `sync_data` applies the file's pending operations to its durable image.
//! - Creating, renaming or removing a directory entry changes the live namespace; `sync_dir` of the
//!   directory makes its entries durable. Directories themselves are durable once created (the model
//!   is about files; storage creates its directories before it relies on them).
//! - [`MemVfs::crash`] reverts every file and entry to its durable image. The pending operations
//!   of each file may partially survive as a torn write: a seeded random prefix of them, and
//!   optionally random 512-byte sectors of the rest.
//!
//! Deterministic: no clock, and randomness only from the seed passed to `crash`.

use super::limits::SECTOR_BYTES;
use super::vfs::{DirEntry, Vfs, VfsFile};
use paxos_core::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// How much of the unsynced writes survives a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Every unsynced write is lost.
    Nothing,
    /// A random prefix of the pending writes survives, the last of them possibly cut mid-way.
    Prefix,
    /// A random prefix, and random 512-byte sectors of the pending writes after it.
    PrefixAndSectors,
}

/// A one-shot injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailPoint {
    /// The next `sync_data` returns an error and makes nothing durable.
    SyncData,
    /// The next `sync_dir` returns an error and makes nothing durable.
    SyncDir,
    /// The next `write_at`/`append` returns an error and writes nothing.
    Write,
}

/// Counters of what the disk was asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    pub writes: u64,
    pub bytes_written: u64,
    pub data_syncs: u64,
    pub dir_syncs: u64,
}

#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug, Default)]
struct Disk {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// Live directory entries of files: path to inode.
    live: BTreeMap<PathBuf, u64>,
    /// Durable directory entries of files.
    durable: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    /// Bumped by every crash and wipe: handles opened before are stale.
    generation: u64,
    fail: BTreeSet<FailPoint>,
    /// Mutating operations left before the power goes off (`None`: no limit).
    power_left: Option<u64>,
    powered_off: bool,
    stats: MemStats,
}

/// The in-memory disk. Clones share one disk.
#[derive(Clone, Default)]
pub struct MemVfs {
    disk: Arc<Mutex<Disk>>,
}

impl fmt::Debug for MemVfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disk = self.lock();
        f.debug_struct("MemVfs")
            .field("files", &disk.live.len())
            .field("generation", &disk.generation)
            .finish()
    }
}

/// A file of [`MemVfs`]: names an inode, so it follows renames as a POSIX descriptor does.
pub struct MemFile {
    disk: Arc<Mutex<Disk>>,
    inode: u64,
    generation: u64,
}

impl fmt::Debug for MemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemFile")
            .field("inode", &self.inode)
            .finish()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn write_into(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(data);
}

fn apply(image: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => write_into(image, *offset, data),
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

impl Disk {
    /// Counts one mutating operation against the power budget; errors once the power is off.
    fn mutate(&mut self) -> io::Result<()> {
        if let Some(left) = self.power_left {
            if left == 0 {
                self.powered_off = true;
            } else {
                self.power_left = Some(left - 1);
            }
        }
        if self.powered_off {
            return Err(io::Error::other("simulated power loss: the disk is off"));
        }
        Ok(())
    }

    fn inode(&mut self, handle: &MemFile) -> io::Result<&mut Inode> {
        if handle.generation != self.generation {
            return Err(io::Error::other(
                "stale file handle: the disk crashed since it was opened",
            ));
        }
        self.inodes
            .get_mut(&handle.inode)
            .ok_or_else(|| io::Error::other("file handle of a lost inode"))
    }

    fn check_dir(&self, path: &Path) -> io::Result<()> {
        if self.dirs.contains(&parent(path)) {
            Ok(())
        } else {
            Err(not_found(&parent(path)))
        }
    }

    fn write(&mut self, handle: &MemFile, offset: Option<u64>, data: &[u8]) -> io::Result<()> {
        self.mutate()?;
        if self.fail.remove(&FailPoint::Write) {
            return Err(io::Error::other("injected write failure"));
        }
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        let inode = self.inode(handle)?;
        let offset = offset.unwrap_or(inode.live.len() as u64);
        write_into(&mut inode.live, offset, data);
        inode.pending.push(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    /// The image a file has after a crash: durable plus whatever of the pending writes survives.
    fn torn_image(inode: &Inode, tear: Tear, rng: &mut Rng) -> Vec<u8> {
        let mut image = inode.durable.clone();
        if tear == Tear::Nothing || inode.pending.is_empty() {
            return image;
        }
        let count = inode.pending.len();
        let whole = rng.below(count as u64 + 1) as usize;
        for op in &inode.pending[..whole] {
            apply(&mut image, op);
        }
        let rest = &inode.pending[whole..];
        if let Some(Pending::Write { offset, data }) = rest.first() {
            let cut = rng.below(data.len() as u64 + 1) as usize;
            write_into(&mut image, *offset, &data[..cut]);
        }
        if tear == Tear::PrefixAndSectors {
            for op in rest {
                if let Pending::Write { offset, data } = op {
                    Self::surviving_sectors(&mut image, *offset, data, rng);
                }
            }
        }
        image
    }

    /// Applies each 512-byte sector (by file offset) of a write with probability 1/4.
    fn surviving_sectors(image: &mut Vec<u8>, offset: u64, data: &[u8], rng: &mut Rng) {
        let end = offset + data.len() as u64;
        let mut sector = offset / SECTOR_BYTES * SECTOR_BYTES;
        while sector < end {
            let from = sector.max(offset);
            let to = (sector + SECTOR_BYTES).min(end);
            if rng.chance(250_000) {
                let slice = &data[(from - offset) as usize..(to - offset) as usize];
                write_into(image, from, slice);
            }
            sector += SECTOR_BYTES;
        }
    }
}

impl MemVfs {
    pub fn new() -> MemVfs {
        MemVfs::default()
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Power loss: every file and directory entry reverts to its durable image; each file's unsynced
    /// writes are lost or survive torn (the kind of tear drawn per file from `seed`). Handles opened
    /// before are stale afterwards, and the power is on again.
    pub fn crash(&self, seed: u64) {
        self.crash_inner(seed, None);
    }

    /// As [`MemVfs::crash`], with the same kind of tear for every file.
    pub fn crash_with(&self, seed: u64, tear: Tear) {
        self.crash_inner(seed, Some(tear));
    }

    fn crash_inner(&self, seed: u64, tear: Option<Tear>) {
        let mut rng = Rng::new(seed);
        let mut disk = self.lock();
        let reachable: BTreeSet<u64> = disk.durable.values().copied().collect();
        let mut inodes = BTreeMap::new();
        for (id, inode) in &disk.inodes {
            if !reachable.contains(id) {
                continue;
            }
            let tear = tear.unwrap_or(match rng.below(3) {
                0 => Tear::Nothing,
                1 => Tear::Prefix,
                _ => Tear::PrefixAndSectors,
            });
            let image = Disk::torn_image(inode, tear, &mut rng);
            let survivor = Inode {
                live: image.clone(),
                durable: image,
                pending: Vec::new(),
            };
            inodes.insert(*id, survivor);
        }
        disk.inodes = inodes;
        disk.live = disk.durable.clone();
        disk.generation += 1;
        disk.powered_off = false;
        disk.power_left = None;
        disk.fail.clear();
    }

    /// After `ops` more mutating operations (create, write, set_len, sync, rename, remove,
    /// create_dir, sync_dir) every further one fails as if the power went off, until `crash`. Used
    /// to stop storage at each step of a multi-step operation.
    pub fn power_off_after(&self, ops: u64) {
        self.lock().power_left = Some(ops);
    }

    /// Cancels a pending [`MemVfs::power_off_after`]. Once the power went off, it stays off until
    /// `crash`.
    pub fn cancel_power_off(&self) {
        self.lock().power_left = None;
    }

    /// Whether the power went off (see [`MemVfs::power_off_after`]).
    pub fn powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// Makes the next operation of that kind fail.
    pub fn fail_next(&self, point: FailPoint) {
        self.lock().fail.insert(point);
    }

    /// Media corruption: flips one bit of the file, in what reads see and in what survives a crash.
    pub fn flip_bit(&self, path: &Path, byte_offset: u64, bit: u8) -> io::Result<()> {
        assert!(bit < 8, "a byte has eight bits");
        self.on_media(path, |image| {
            if let Some(byte) = image.get_mut(byte_offset as usize) {
                *byte ^= 1 << bit;
            }
        })
    }

    /// Media damage: cuts the file to `len` bytes (or extends it with zeros).
    pub fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.on_media(path, |image| image.resize(len as usize, 0))
    }

    /// The file disappears for good (an operator deleted it and the deletion is durable). Unlike
    /// [`Vfs::remove`], no `sync_dir` is needed.
    pub fn remove_durably(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        let found = disk.live.remove(path).is_some() | disk.durable.remove(path).is_some();
        if found {
            Ok(())
        } else {
            Err(not_found(path))
        }
    }

    /// The disk is replaced by an empty one (directories included).
    pub fn wipe(&self) {
        let mut disk = self.lock();
        disk.inodes.clear();
        disk.live.clear();
        disk.durable.clear();
        disk.dirs.clear();
        disk.generation += 1;
    }

    fn on_media(&self, path: &Path, change: impl Fn(&mut Vec<u8>)) -> io::Result<()> {
        let mut disk = self.lock();
        let id = disk
            .live
            .get(path)
            .or_else(|| disk.durable.get(path))
            .copied()
            .ok_or_else(|| not_found(path))?;
        let inode = disk.inodes.get_mut(&id).expect("entries name inodes");
        change(&mut inode.live);
        change(&mut inode.durable);
        Ok(())
    }

    /// What a crash with no torn writes would leave of the file (`None`: the entry is not durable).
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.lock();
        let id = disk.durable.get(path)?;
        Some(disk.inodes[id].durable.clone())
    }

    /// Every live file path, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().live.keys().cloned().collect()
    }

    pub fn stats(&self) -> MemStats {
        self.lock().stats
    }
}

impl VfsFile for MemFile {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let disk = Arc::clone(&self.disk);
        let mut disk = disk.lock().unwrap_or_else(PoisonError::into_inner);
        disk.write(self, Some(offset), data)
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let disk = Arc::clone(&self.disk);
        let mut disk = disk.lock().unwrap_or_else(PoisonError::into_inner);
        disk.write(self, None, data)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let disk = Arc::clone(&self.disk);
        let mut disk = disk.lock().unwrap_or_else(PoisonError::into_inner);
        let live = &disk.inode(self)?.live;
        let start = (offset as usize).min(live.len());
        let n = buf.len().min(live.len() - start);
        buf[..n].copy_from_slice(&live[start..start + n]);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(disk.inode(self)?.live.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let disk = Arc::clone(&self.disk);
        let mut disk = disk.lock().unwrap_or_else(PoisonError::into_inner);
        disk.mutate()?;
        let inode = disk.inode(self)?;
        inode.live.resize(len as usize, 0);
        inode.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let disk = Arc::clone(&self.disk);
        let mut disk = disk.lock().unwrap_or_else(PoisonError::into_inner);
        disk.mutate()?;
        if disk.fail.remove(&FailPoint::SyncData) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        disk.stats.data_syncs += 1;
        let inode = disk.inode(self)?;
        for op in std::mem::take(&mut inode.pending) {
            apply(&mut inode.durable, &op);
        }
        Ok(())
    }
}

impl Vfs for MemVfs {
    type File = MemFile;

    fn create(&self, path: &Path) -> io::Result<MemFile> {
        let mut disk = self.lock();
        disk.mutate()?;
        disk.check_dir(path)?;
        let generation = disk.generation;
        if let Some(id) = disk.live.get(path).copied() {
            // Truncating an existing file is a pending length change, as in a real page cache.
            let inode = disk.inodes.get_mut(&id).expect("entries name inodes");
            inode.live.clear();
            inode.pending.push(Pending::SetLen(0));
            return Ok(self.handle(id, generation));
        }
        let id = disk.next_inode;
        disk.next_inode += 1;
        disk.inodes.insert(id, Inode::default());
        disk.live.insert(path.to_path_buf(), id);
        Ok(self.handle(id, generation))
    }

    fn open(&self, path: &Path) -> io::Result<MemFile> {
        let disk = self.lock();
        let id = *disk.live.get(path).ok_or_else(|| not_found(path))?;
        Ok(self.handle(id, disk.generation))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let disk = self.lock();
        let id = disk.live.get(path).ok_or_else(|| not_found(path))?;
        Ok(disk.inodes[id].live.clone())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        disk.mutate()?;
        disk.check_dir(to)?;
        let id = disk.live.remove(from).ok_or_else(|| not_found(from))?;
        disk.live.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        disk.mutate()?;
        disk.live.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let disk = self.lock();
        if !disk.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        let files = disk
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| name(p))
            .map(|name| DirEntry {
                name,
                is_dir: false,
            });
        let dirs = disk
            .dirs
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| name(p))
            .map(|name| DirEntry { name, is_dir: true });
        let mut entries: Vec<DirEntry> = files.chain(dirs).collect();
        entries.sort();
        Ok(entries)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        if disk.dirs.contains(path) {
            return Ok(());
        }
        disk.mutate()?;
        for ancestor in path.ancestors() {
            disk.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        disk.mutate()?;
        if disk.fail.remove(&FailPoint::SyncDir) {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        if !disk.dirs.contains(path) {
            return Err(not_found(path));
        }
        disk.stats.dir_syncs += 1;
        let in_dir = |p: &PathBuf| p.parent() == Some(path);
        disk.durable.retain(|p, _| !in_dir(p));
        let entries: Vec<(PathBuf, u64)> = disk
            .live
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        disk.durable.extend(entries);
        Ok(())
    }
}

impl MemVfs {
    fn handle(&self, inode: u64, generation: u64) -> MemFile {
        MemFile {
            disk: Arc::clone(&self.disk),
            inode,
            generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/data")
    }

    #[test]
    fn unsynced_data_and_entries_are_lost_in_a_crash() {
        let vfs = MemVfs::new();
        vfs.create_dir(&dir()).unwrap();
        let path = dir().join("a");
        let mut file = vfs.create(&path).unwrap();
        file.write_at(0, b"hello").unwrap();
        file.sync_data().unwrap();
        vfs.crash_with(1, Tear::Nothing);
        assert!(vfs.read(&path).is_err(), "the entry was never synced");

        let mut file = vfs.create(&path).unwrap();
        file.write_at(0, b"hello").unwrap();
        file.sync_data().unwrap();
        vfs.sync_dir(&dir()).unwrap();
        file.append(b" world").unwrap();
        vfs.crash_with(1, Tear::Nothing);
        assert_eq!(vfs.read(&path).unwrap(), b"hello");
        assert!(
            file.append(b"!").is_err(),
            "handles are stale after a crash"
        );
    }

    #[test]
    fn a_torn_write_keeps_a_prefix_of_the_pending_bytes() {
        let vfs = MemVfs::new();
        vfs.create_dir(&dir()).unwrap();
        let path = dir().join("a");
        let mut file = vfs.create(&path).unwrap();
        file.sync_data().unwrap();
        vfs.sync_dir(&dir()).unwrap();
        let data: Vec<u8> = (1..=200u8).collect();
        let mut lengths = BTreeSet::new();
        for seed in 0..40 {
            let mut file = vfs.open(&path).unwrap();
            file.write_at(0, &data).unwrap();
            vfs.crash_with(seed, Tear::Prefix);
            let image = vfs.read(&path).unwrap();
            assert_eq!(image, data[..image.len()], "a prefix survives");
            lengths.insert(image.len());
            vfs.truncate(&path, 0).unwrap();
        }
        assert!(lengths.len() > 5, "the cut point varies with the seed");
    }

    #[test]
    fn renames_are_durable_after_the_directory_sync() {
        let vfs = MemVfs::new();
        vfs.create_dir(&dir()).unwrap();
        let (tmp, fin) = (dir().join("x.tmp"), dir().join("x"));
        let mut file = vfs.create(&tmp).unwrap();
        file.write_at(0, b"v1").unwrap();
        file.sync_data().unwrap();
        vfs.rename(&tmp, &fin).unwrap();
        vfs.crash(3);
        assert!(vfs.read(&fin).is_err());
        let mut file = vfs.create(&tmp).unwrap();
        file.write_at(0, b"v2").unwrap();
        file.sync_data().unwrap();
        vfs.rename(&tmp, &fin).unwrap();
        vfs.sync_dir(&dir()).unwrap();
        vfs.crash(3);
        assert_eq!(vfs.read(&fin).unwrap(), b"v2");
        assert!(vfs.read(&tmp).is_err());
    }

    #[test]
    fn injected_failures_and_power_off() {
        let vfs = MemVfs::new();
        vfs.create_dir(&dir()).unwrap();
        let mut file = vfs.create(&dir().join("a")).unwrap();
        vfs.fail_next(FailPoint::SyncData);
        assert!(file.sync_data().is_err());
        assert!(file.sync_data().is_ok(), "one-shot");
        vfs.power_off_after(1);
        assert!(file.write_at(0, b"x").is_ok());
        assert!(file.write_at(0, b"y").is_err());
        assert!(vfs.powered_off());
        assert!(vfs.sync_dir(&dir()).is_err());
        vfs.crash(0);
        assert!(!vfs.powered_off());
    }
}
