//! The card image format and its atomic commit scheme.
//!
//! Layout (all integers big-endian; `docs/card-runtime.md` has the full table):
//!
//! ```text
//! 0      header     magic "TESSCARD", version, flags, KDF parameters, CRC-32   (written once)
//! 512    slot 0     superblock: generation, record offset, length, record CRC, own CRC
//! 1024   slot 1     superblock, same layout
//! 4096.. records    state records, each placed so it never overlaps the live one
//! ```
//!
//! A commit writes the new record where it cannot overlap the live record, flushes, then
//! writes the superblock of generation `g + 1` into slot `(g + 1) % 2` (the slot *not* holding
//! the live generation), and flushes again. Opening picks the valid superblock with the highest
//! generation whose record checks out. A cut before the second flush completes leaves the live
//! superblock and record untouched; a cut after it leaves the new ones durable. Either way the
//! reopened image holds exactly the old or the new state.

use std::path::Path;

use crate::error::CardError;
use crate::storage::Storage;

/// The eight magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"TESSCARD";
/// The only image format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Header flag: the state records are sealed under a passphrase.
pub const FLAG_ENCRYPTED: u16 = 0x0001;
/// Offset of superblock slot 0; slot 1 follows one [`SLOT_STRIDE`] later.
pub const SLOT_OFFSET: u64 = 512;
/// Distance between the two superblock slots (one sector each).
pub const SLOT_STRIDE: u64 = 512;
/// Size of a superblock.
pub const SUPERBLOCK_LEN: usize = 32;
/// Where state records start.
pub const DATA_START: u64 = 4096;
/// Records are placed at multiples of this.
pub const RECORD_ALIGN: u64 = 512;
/// Largest KDF parameter block the header can carry.
pub const MAX_KDF_PARAMS: usize = 512 - 18;
/// Largest state record accepted when opening (a sanity bound against corrupt lengths).
pub const MAX_RECORD: u32 = 16 * 1024 * 1024;
/// Largest file accepted as an image: two records of the largest size after the data start,
/// with alignment. Anything bigger is not one of ours and is not read into memory.
pub const MAX_IMAGE: u64 = DATA_START + 2 * (MAX_RECORD as u64 + RECORD_ALIGN);

const SUPERBLOCK_MAGIC: [u8; 4] = *b"SLOT";

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320): detects torn and corrupt structures.
/// It is not a security measure; encryption at rest authenticates records when enabled.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The image header: written once when the image is made, never rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Flags ([`FLAG_ENCRYPTED`]).
    pub flags: u16,
    /// The passphrase KDF parameters (salt included) when encrypted, else empty.
    pub kdf_params: Vec<u8>,
}

impl Header {
    /// The header's bytes: magic, version, flags, KDF parameter length and bytes, CRC-32.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18 + self.kdf_params.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&(self.kdf_params.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.kdf_params);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses the header at the start of `image`.
    fn decode(path: &Path, image: &[u8]) -> Result<Header, CardError> {
        if image.len() < MAGIC.len() || image[..MAGIC.len()] != MAGIC {
            if image.is_empty() {
                return Err(CardError::truncated(path, "empty file"));
            }
            return Err(CardError::NotAnImage { path: path.to_owned() });
        }
        let fixed =
            image.get(..14).ok_or_else(|| CardError::truncated(path, "header cut short"))?;
        let version = u16::from_be_bytes([fixed[8], fixed[9]]);
        if version != FORMAT_VERSION {
            return Err(CardError::UnsupportedVersion {
                path: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let flags = u16::from_be_bytes([fixed[10], fixed[11]]);
        let kdf_len = u16::from_be_bytes([fixed[12], fixed[13]]) as usize;
        if kdf_len > MAX_KDF_PARAMS {
            return Err(CardError::corrupt(path, "header KDF parameter length out of range"));
        }
        let body = image
            .get(..14 + kdf_len + 4)
            .ok_or_else(|| CardError::truncated(path, "header cut short"))?;
        let (covered, crc) = body.split_at(14 + kdf_len);
        if crc32(covered).to_be_bytes() != crc {
            return Err(CardError::corrupt(path, "header checksum mismatch"));
        }
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(CardError::corrupt(path, format!("unknown header flags {flags:04X}")));
        }
        Ok(Header { flags, kdf_params: covered[14..].to_vec() })
    }

    /// True when records are sealed under a passphrase.
    pub fn encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }
}

/// A superblock: which record holds the state of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Superblock {
    generation: u64,
    offset: u64,
    len: u32,
    record_crc: u32,
}

impl Superblock {
    fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut out = [0u8; SUPERBLOCK_LEN];
        out[0..4].copy_from_slice(&SUPERBLOCK_MAGIC);
        out[4..12].copy_from_slice(&self.generation.to_be_bytes());
        out[12..20].copy_from_slice(&self.offset.to_be_bytes());
        out[20..24].copy_from_slice(&self.len.to_be_bytes());
        out[24..28].copy_from_slice(&self.record_crc.to_be_bytes());
        let crc = crc32(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Superblock> {
        let bytes: &[u8; SUPERBLOCK_LEN] = bytes.get(..SUPERBLOCK_LEN)?.try_into().ok()?;
        if bytes[0..4] != SUPERBLOCK_MAGIC || crc32(&bytes[..28]).to_be_bytes() != bytes[28..32] {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Some(Superblock {
            generation: u64_at(4),
            offset: u64_at(12),
            len: u32_at(20),
            record_crc: u32_at(24),
        })
    }

    fn slot_offset(generation: u64) -> u64 {
        SLOT_OFFSET + (generation % 2) * SLOT_STRIDE
    }
}

/// An open card image: the storage, its header and the live generation.
pub struct Image {
    storage: Box<dyn Storage>,
    header: Header,
    live: Superblock,
    poisoned: bool,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.storage.path())
            .field("generation", &self.live.generation)
            .finish_non_exhaustive()
    }
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

impl Image {
    /// Writes a new image into empty `storage`: header, then generation 1 holding `record`.
    pub fn create(
        mut storage: Box<dyn Storage>,
        header: Header,
        record: &[u8],
    ) -> Result<Image, CardError> {
        let path = storage.path().to_owned();
        let io = |e| CardError::io(&path, e);
        if storage.size().map_err(io)? != 0 {
            return Err(CardError::AlreadyExists { path });
        }
        let len = u32::try_from(record.len())
            .map_err(|_| CardError::corrupt(&path, "state record too large"))?;
        storage.write_at(0, &header.encode()).map_err(io)?;
        let live = Superblock { generation: 1, offset: DATA_START, len, record_crc: crc32(record) };
        storage.write_at(DATA_START, record).map_err(io)?;
        storage.write_at(Superblock::slot_offset(1), &live.encode()).map_err(io)?;
        storage.flush().map_err(io)?;
        Ok(Image { storage, header, live, poisoned: false })
    }

    /// Opens the image in `storage`, returning it with the live state record.
    pub fn open(mut storage: Box<dyn Storage>) -> Result<(Image, Vec<u8>), CardError> {
        let path = storage.path().to_owned();
        let size = storage.size().map_err(|e| CardError::io(&path, e))?;
        if size > MAX_IMAGE {
            return Err(CardError::NotAnImage { path });
        }
        let bytes = storage.read_all().map_err(|e| CardError::io(&path, e))?;
        let header = Header::decode(&path, &bytes)?;
        if (bytes.len() as u64) < SLOT_OFFSET + SLOT_STRIDE + SUPERBLOCK_LEN as u64 {
            return Err(CardError::truncated(&path, "file ends before the superblocks"));
        }
        // The live generation is the highest one whose superblock is intact and in its slot.
        // A superblock is written only after its record was flushed, so a torn commit leaves
        // at worst an invalid superblock (ignored: the previous generation is live), never a
        // valid one over a bad record. The older slot's record may legitimately have been
        // overwritten by the live one; only the live record must check out, and if it does
        // not the image is corrupt: we do not fall back to an older state silently.
        let live = (0..2u64)
            .filter_map(|slot| {
                let at = SLOT_OFFSET + slot * SLOT_STRIDE;
                let sb = Superblock::decode(&bytes[at as usize..])?;
                (Superblock::slot_offset(sb.generation) == at).then_some(sb)
            })
            .max_by_key(|sb| sb.generation)
            .ok_or_else(|| CardError::corrupt(&path, "no valid superblock"))?;
        if live.len > MAX_RECORD || live.offset < DATA_START {
            return Err(CardError::corrupt(&path, "superblock points outside the record area"));
        }
        let record = usize::try_from(live.offset)
            .ok()
            .and_then(|start| bytes.get(start..start.checked_add(live.len as usize)?))
            .ok_or_else(|| CardError::truncated(&path, "file ends inside the state record"))?;
        if crc32(record) != live.record_crc {
            return Err(CardError::corrupt(&path, "the live state record fails its checksum"));
        }
        let record = record.to_vec();
        Ok((Image { storage, header, live, poisoned: false }, record))
    }

    /// The image header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The storage's name for messages.
    pub fn path(&self) -> &Path {
        self.storage.path()
    }

    /// The live generation (1 for a fresh image, +1 per commit).
    pub fn generation(&self) -> u64 {
        self.live.generation
    }

    /// Makes `record` the durable state, atomically.
    ///
    /// On any storage error the image is poisoned: what reached the disk is unknown (the old
    /// or the new state, by construction never a mix), so every later commit fails until the
    /// image is reopened.
    pub fn commit(&mut self, record: &[u8]) -> Result<(), CardError> {
        let path = self.storage.path().to_owned();
        if self.poisoned {
            return Err(CardError::Io {
                path,
                source: std::io::Error::other("an earlier write failed; reopen the image"),
            });
        }
        let len = u32::try_from(record.len())
            .ok()
            .filter(|&l| l <= MAX_RECORD)
            .ok_or_else(|| CardError::corrupt(&path, "state record too large"))?;
        let offset = if DATA_START + len as u64 <= self.live.offset {
            DATA_START
        } else {
            align_up(self.live.offset + self.live.len as u64)
        };
        let next = Superblock {
            generation: self.live.generation + 1,
            offset,
            len,
            record_crc: crc32(record),
        };
        let result = (|| {
            self.storage.write_at(offset, record)?;
            self.storage.flush()?;
            self.storage.write_at(Superblock::slot_offset(next.generation), &next.encode())?;
            self.storage.flush()
        })();
        match result {
            Ok(()) => {
                self.live = next;
                Ok(())
            }
            Err(source) => {
                self.poisoned = true;
                Err(CardError::Io { path, source })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemoryStorage, TearMode, TearingDisk};

    #[test]
    fn crc32_check_value() {
        // The standard CRC-32 check value: CRC of ASCII "123456789" is CBF43926.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    fn fresh(record: &[u8]) -> Vec<u8> {
        let disk = TearingDisk::new(Vec::new(), None, TearMode::DropUnflushed);
        let header = Header { flags: 0, kdf_params: Vec::new() };
        Image::create(Box::new(disk.storage()), header, record).unwrap();
        disk.platter()
    }

    #[test]
    fn create_commit_reopen() {
        let mut img = Image::create(
            Box::new(MemoryStorage::new()),
            Header { flags: 0, kdf_params: Vec::new() },
            b"one",
        )
        .unwrap();
        img.commit(b"two, longer than one").unwrap();
        img.commit(b"3").unwrap();
        assert_eq!(img.generation(), 3);
        let bytes = img.storage.read_all().unwrap();
        let (img2, rec) = Image::open(Box::new(MemoryStorage::from_bytes(bytes))).unwrap();
        assert_eq!(rec, b"3");
        assert_eq!(img2.generation(), 3);
    }

    #[test]
    fn every_cut_of_a_commit_yields_old_or_new() {
        let base = fresh(b"old state");
        let new = vec![0xAB; 1500];
        for mode in [
            TearMode::DropUnflushed,
            TearMode::ReorderUnflushed { seed: 1 },
            TearMode::ReorderUnflushed { seed: 99 },
        ] {
            let mut k = 1;
            loop {
                let disk = TearingDisk::new(base.clone(), Some(k), mode);
                let (mut img, _) = Image::open(Box::new(disk.storage())).unwrap();
                let done = img.commit(&new).is_ok();
                let (_, rec) =
                    Image::open(Box::new(MemoryStorage::from_bytes(disk.platter()))).unwrap();
                assert!(rec == b"old state" || rec == new, "mode {mode:?} cut {k}");
                if done {
                    assert_eq!(rec, new);
                    break;
                }
                k += 1;
            }
            assert_eq!(k, 5, "a commit is two writes and two flushes");
        }
    }

    #[test]
    fn damaged_images_give_named_errors() {
        let good = fresh(b"state");
        let open = |b: Vec<u8>| Image::open(Box::new(MemoryStorage::from_bytes(b))).map(|_| ());
        assert!(matches!(open(Vec::new()), Err(CardError::Truncated { .. })));
        assert!(matches!(open(b"garbage garbage".to_vec()), Err(CardError::NotAnImage { .. })));
        assert!(matches!(open(good[..10].to_vec()), Err(CardError::Truncated { .. })));
        assert!(matches!(open(good[..600].to_vec()), Err(CardError::Truncated { .. })));
        assert!(matches!(open(good[..4097].to_vec()), Err(CardError::Truncated { .. })));
        let mut v = good.clone();
        v[9] = 7;
        assert!(matches!(open(v), Err(CardError::UnsupportedVersion { found: 7, .. })));
        let mut c = good.clone();
        c[4096] ^= 1;
        assert!(matches!(open(c), Err(CardError::Corrupt { .. })));
        let mut h = good.clone();
        h[11] ^= 0x80;
        assert!(matches!(open(h), Err(CardError::Corrupt { .. })));
        let mut s = good;
        s[1024 + 5] ^= 1;
        assert!(matches!(open(s), Err(CardError::Corrupt { .. })));
    }
}
