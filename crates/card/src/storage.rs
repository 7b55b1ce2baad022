//! Storage backends for the card image: a file, memory, and a tearing disk for tests.
//!
//! The image code ([`crate::image`]) sees storage as a flat byte array that it reads, writes at
//! offsets and flushes. A write is *volatile* until the next [`Storage::flush`] returns: only
//! then may the image code rely on it surviving a power cut. The [`TearingStorage`] backend
//! makes exactly that model concrete so the atomic-commit scheme can be tested against it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A byte store the card image lives in.
pub trait Storage: Send {
    /// A name for error messages: the file path, or a descriptive pseudo-path.
    fn path(&self) -> &Path;
    /// The current length in bytes (volatile view: includes unflushed writes).
    fn size(&mut self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`; fails if that runs past the end.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`, extending the store with zeros if `offset` is past the end.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every earlier write durable.
    fn flush(&mut self) -> io::Result<()>;

    /// Reads the whole store.
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.size()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "image larger than memory"))?;
        let mut buf = vec![0; len];
        self.read_at(0, &mut buf)?;
        Ok(buf)
    }
}

/// A card image in a file, held under an exclusive lock for as long as the value lives.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
}

impl FileStorage {
    /// Wraps a file the caller has opened read-write and locked.
    pub(crate) fn new(file: File, path: PathBuf) -> Self {
        Self { file, path }
    }
}

impl Storage for FileStorage {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.write_all(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        // fdatasync: the data and the file length reach the disk before we go on.
        self.file.sync_data()
    }
}

/// A card image in memory: for tests, benchmarks and the demo. Nothing survives the process.
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    bytes: Vec<u8>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `bytes` (e.g. an image captured from another backend).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn write_into(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) -> io::Result<()> {
    let start = usize::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
    let end = start
        .checked_add(data.len())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(data);
    Ok(())
}

fn read_from(bytes: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let src = usize::try_from(offset)
        .ok()
        .and_then(|start| bytes.get(start..start.checked_add(buf.len())?))
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of image"))?;
    buf.copy_from_slice(src);
    Ok(())
}

impl Storage for MemoryStorage {
    fn path(&self) -> &Path {
        Path::new("(memory)")
    }

    fn size(&mut self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_from(&self.bytes, offset, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        write_into(&mut self.bytes, offset, data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What reaches the platter of a [`TearingStorage`] when power is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TearMode {
    /// Only flushed data survives: every write since the last completed flush is lost, and so is
    /// the torn prefix of the write in progress. The kindest model of a disk.
    DropUnflushed,
    /// A disk with a write-back cache that reorders: each 512-byte sector touched by a write
    /// since the last completed flush independently lands or not (a pseudo-random choice made
    /// from `seed`), and the write in progress lands as a prefix cut at an arbitrary byte
    /// (not even sector-aligned), sector by sector under the same coin. Harsher than real
    /// drives, which at least write a sector atomically.
    ReorderUnflushed {
        /// Seed of the coin that decides which sectors land.
        seed: u64,
    },
}

/// Sector size of the [`TearMode::ReorderUnflushed`] model.
pub const SECTOR: u64 = 512;

#[derive(Debug)]
struct Disk {
    /// What is guaranteed on the platter: the image as of the last completed flush.
    durable: Vec<u8>,
    /// The volatile view (page cache): durable plus unflushed writes, in order.
    cache: Vec<u8>,
    /// Writes since the last completed flush, in order, as (offset, bytes).
    pending: Vec<(u64, Vec<u8>)>,
    /// Number of write and flush operations attempted so far.
    ops: u64,
    /// The operation (1-based) during which power is cut; `None` never cuts.
    cut_at: Option<u64>,
    mode: TearMode,
    /// Power has been cut: every operation fails from now on.
    dead: bool,
    /// The platter after every completed flush, oldest first.
    snapshots: Vec<Vec<u8>>,
}

/// The shared disk behind a [`TearingStorage`]; keep a clone to inspect the platter after the
/// card has lost power.
#[derive(Debug, Clone)]
pub struct TearingDisk {
    disk: Arc<Mutex<Disk>>,
}

impl TearingDisk {
    /// A disk holding `image` (fully durable), which will lose power during operation
    /// `cut_at` (1-based count of writes and flushes), or never when `None`.
    pub fn new(image: Vec<u8>, cut_at: Option<u64>, mode: TearMode) -> Self {
        let disk = Disk {
            cache: image.clone(),
            durable: image,
            pending: Vec::new(),
            ops: 0,
            cut_at,
            mode,
            dead: false,
            snapshots: Vec::new(),
        };
        Self { disk: Arc::new(Mutex::new(disk)) }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A panic while holding this lock can only come from a test; keep going with its data.
        self.disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A storage handle on this disk for a card to use.
    pub fn storage(&self) -> TearingStorage {
        TearingStorage { disk: self.clone() }
    }

    /// Restarts the operation count at zero and sets the operation during which power will be
    /// cut (`None`: never). Lets a test run a setup script uncut, then arm the cut.
    pub fn arm(&self, cut_at: Option<u64>) {
        let mut d = self.lock();
        d.ops = 0;
        d.cut_at = cut_at;
        d.snapshots.clear();
    }

    /// The platter after each flush completed since the disk was made or last armed: every
    /// state a power cut at some point could have left (besides the state at arming).
    pub fn snapshots(&self) -> Vec<Vec<u8>> {
        self.lock().snapshots.clone()
    }

    /// True once the power has been cut.
    pub fn is_cut(&self) -> bool {
        self.lock().dead
    }

    /// Write and flush operations attempted so far.
    pub fn operations(&self) -> u64 {
        self.lock().ops
    }

    /// What is on the platter now: after a cut, the bytes a rebooted card would read.
    pub fn platter(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }
}

/// Sectors (by index) covered by `len` bytes at `offset`.
fn sectors(offset: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / SECTOR..(offset + len - 1) / SECTOR + 1
}

/// A small deterministic coin (splitmix64); not for secrets, only for choosing torn sectors.
fn coin(seed: u64, op: u64, sector: u64) -> bool {
    let mut z =
        seed ^ op.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 1 == 1
}

impl Disk {
    fn cut(&mut self, in_progress: Option<(u64, &[u8])>) {
        self.dead = true;
        let TearMode::ReorderUnflushed { seed } = self.mode else {
            return; // DropUnflushed: the platter keeps the last flushed state.
        };
        let mut writes: Vec<(u64, Vec<u8>)> = std::mem::take(&mut self.pending);
        if let Some((offset, data)) = in_progress {
            // The write in progress is torn at an arbitrary byte.
            let keep = if data.is_empty() {
                0
            } else {
                (seed.wrapping_add(self.ops).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize
                    % (data.len() + 1)
            };
            writes.push((offset, data[..keep].to_vec()));
        }
        // Decide per sector whether the cache's final content of that sector lands.
        let mut landed: Vec<u64> = Vec::new();
        for (offset, data) in &writes {
            for s in sectors(*offset, data.len() as u64) {
                if !landed.contains(&s) && coin(seed, self.ops, s) {
                    landed.push(s);
                }
            }
        }
        // Rebuild the final volatile content of each landing sector from the writes in order.
        let mut view = self.durable.clone();
        for (offset, data) in &writes {
            let _ = write_into(&mut view, *offset, data);
        }
        for s in landed {
            let start = (s * SECTOR) as usize;
            let end = (start + SECTOR as usize).min(view.len());
            if start >= end {
                continue;
            }
            if self.durable.len() < end {
                self.durable.resize(end, 0);
            }
            self.durable[start..end].copy_from_slice(&view[start..end]);
        }
    }
}

/// A storage backend on a [`TearingDisk`] that loses power at a chosen operation.
///
/// The model: writes go to a volatile cache that reads see; a flush makes them durable. Power is
/// cut *during* operation number `cut_at` (counting writes and flushes from 1): a write in
/// progress is torn, a flush in progress does not complete, and what of the unflushed data
/// reaches the platter is decided by the [`TearMode`]. After the cut every operation fails with
/// an I/O error, as a card without power answers nothing.
#[derive(Debug, Clone)]
pub struct TearingStorage {
    disk: TearingDisk,
}

fn power_cut() -> io::Error {
    io::Error::other("power cut")
}

impl Storage for TearingStorage {
    fn path(&self) -> &Path {
        Path::new("(tearing disk)")
    }

    fn size(&mut self) -> io::Result<u64> {
        let d = self.disk.lock();
        if d.dead {
            return Err(power_cut());
        }
        Ok(d.cache.len() as u64)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.disk.lock();
        if d.dead {
            return Err(power_cut());
        }
        read_from(&d.cache, offset, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.disk.lock();
        if d.dead {
            return Err(power_cut());
        }
        d.ops += 1;
        if d.cut_at == Some(d.ops) {
            d.cut(Some((offset, data)));
            return Err(power_cut());
        }
        write_into(&mut d.cache, offset, data)?;
        d.pending.push((offset, data.to_vec()));
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut d = self.disk.lock();
        if d.dead {
            return Err(power_cut());
        }
        d.ops += 1;
        if d.cut_at == Some(d.ops) {
            d.cut(None);
            return Err(power_cut());
        }
        d.durable = d.cache.clone();
        d.pending.clear();
        let platter = d.durable.clone();
        d.snapshots.push(platter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_back_and_extends() {
        let mut m = MemoryStorage::new();
        m.write_at(4, b"abc").unwrap();
        assert_eq!(m.size().unwrap(), 7);
        let mut b = [0u8; 7];
        m.read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"\0\0\0\0abc");
        assert!(m.read_at(5, &mut [0u8; 3]).is_err());
        assert!(m.read_at(u64::MAX, &mut [0u8; 1]).is_err());
    }

    #[test]
    fn tearing_drop_mode_keeps_only_flushed_writes() {
        let disk = TearingDisk::new(vec![0; 8], Some(3), TearMode::DropUnflushed);
        let mut s = disk.storage();
        s.write_at(0, b"AAAA").unwrap(); // op 1
        s.flush().unwrap(); // op 2
        assert!(s.write_at(4, b"BBBB").is_err()); // op 3: cut
        assert!(disk.is_cut());
        assert_eq!(disk.platter(), b"AAAA\0\0\0\0");
        assert!(s.read_at(0, &mut [0u8; 1]).is_err(), "a dead disk answers nothing");
    }

    #[test]
    fn tearing_cut_during_flush_loses_the_unflushed_write() {
        let disk = TearingDisk::new(vec![1; 4], Some(2), TearMode::DropUnflushed);
        let mut s = disk.storage();
        s.write_at(0, b"xy").unwrap();
        assert!(s.flush().is_err());
        assert_eq!(disk.platter(), vec![1; 4]);
    }

    #[test]
    fn tearing_reorder_mode_lands_whole_sectors_of_the_final_content() {
        // Writes over four sectors; whatever lands is, per sector, either the old content or
        // the cache's final content for that sector, and across seeds both outcomes occur.
        let old = vec![0u8; 4 * SECTOR as usize];
        let mut seen_old = false;
        let mut seen_new = false;
        for seed in 0..32 {
            let disk = TearingDisk::new(old.clone(), Some(3), TearMode::ReorderUnflushed { seed });
            let mut s = disk.storage();
            s.write_at(0, &vec![7u8; 2 * SECTOR as usize]).unwrap();
            s.write_at(2 * SECTOR, &vec![9u8; 2 * SECTOR as usize]).unwrap();
            assert!(s.flush().is_err());
            let p = disk.platter();
            for sector in p.chunks(SECTOR as usize) {
                let first = sector[0];
                assert!(sector.iter().all(|&b| b == first), "a sector is never mixed here");
                if first == 0 {
                    seen_old = true;
                } else {
                    seen_new = true;
                }
            }
        }
        assert!(seen_old && seen_new);
    }

    #[test]
    fn tearing_reorder_mode_tears_the_write_in_progress() {
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let disk = TearingDisk::new(Vec::new(), Some(1), TearMode::ReorderUnflushed { seed });
            let mut s = disk.storage();
            assert!(s.write_at(0, &[5u8; 100]).is_err());
            let p = disk.platter();
            assert!(p.iter().all(|&b| b == 5));
            lengths.insert(p.len());
        }
        assert!(lengths.len() > 2, "torn writes land with various prefix lengths: {lengths:?}");
    }
}
