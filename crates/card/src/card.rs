//! The card facade: power, reset, ATR and APDU exchange over an image.

use std::fs;
use std::path::Path;

use tessera_crypto::passphrase::{KdfParams, PassphraseKey};
use tessera_crypto::rng::OsRng;

use crate::applets;
use crate::error::CardError;
use crate::options::{CardOptions, OpenOptions};
use crate::runtime::{Runtime, initial_state};
use crate::storage::{FileStorage, MemoryStorage, Storage};
use crate::store::{Store, encode_record};

/// The answer to reset: T=1, historical bytes in compact-TLV (ISO/IEC 7816-4 8.1.1).
///
/// `3B 8D 80 01`: TS direct convention, T0 (TD1 present, 13 historical bytes), TD1 (TD2
/// present, T=0), TD2 (T=1). Historical bytes: category `80`, issuer data `57 "tessera"`
/// (tag 5, 7 bytes), card capabilities `73 C0 01 C0` (selection by full and partial DF name;
/// data unit 1 byte; command chaining and extended Lc/Le, one logical channel). Last byte TCK.
pub const ATR: [u8; 18] = atr();

const fn atr() -> [u8; 18] {
    let body: [u8; 17] = [
        0x3B, 0x8D, 0x80, 0x01, 0x80, 0x57, b't', b'e', b's', b's', b'e', b'r', b'a', 0x73, 0xC0,
        0x01, 0xC0,
    ];
    let mut out = [0u8; 18];
    let mut tck = 0u8;
    let mut i = 0;
    while i < 17 {
        out[i] = body[i];
        if i > 0 {
            tck ^= body[i];
        }
        i += 1;
    }
    out[17] = tck;
    out
}

/// A software smart card over a card image.
pub struct Card {
    runtime: Runtime,
    powered: bool,
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("image", &self.runtime.core.store.path())
            .field("generation", &self.runtime.core.store.generation())
            .field("powered", &self.powered)
            .finish_non_exhaustive()
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path, file: &fs::File) -> Result<(), CardError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata().map_err(|e| CardError::io(path, e))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CardError::Permissions { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _file: &fs::File) -> Result<(), CardError> {
    Ok(())
}

/// Takes the image's exclusive lock, waiting at most [`LOCK_WAIT`] for it.
///
/// The wait is for a lock that is about to go: the lock belongs to the open file description,
/// which a child process forked by any thread of the process that last held it shares until
/// it execs (its descriptors close then). Such a child keeps the lock for a moment after the
/// card was dropped; a card that is really in use elsewhere still reports
/// [`CardError::Locked`], after the wait.
fn lock(path: &Path, file: &fs::File) -> Result<(), CardError> {
    let give_up = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < give_up => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(CardError::Locked { path: path.to_owned() });
            }
            Err(fs::TryLockError::Error(e)) => return Err(CardError::io(path, e)),
        }
    }
}

/// How long [`lock`] waits for an image's lock before reporting it locked.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Card {
    /// Makes a blank card image at `path` and opens it. Fails if the file exists.
    ///
    /// The image is written completely to a temporary file beside `path` (mode 0600, locked),
    /// made durable, then hard-linked to `path`, which fails if `path` appeared meanwhile: a
    /// crash never leaves a half-made image under the card's name. The lock is held while the
    /// card lives.
    pub fn create(path: &Path, options: CardOptions) -> Result<Card, CardError> {
        if fs::symlink_metadata(path).is_ok() {
            return Err(CardError::AlreadyExists { path: path.to_owned() });
        }
        let name = path.file_name().ok_or_else(|| {
            CardError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
            )
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
        let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
        // A leftover of a crashed `create` by an earlier process that had our pid.
        let _ = fs::remove_file(&tmp);
        let mut open = fs::OpenOptions::new();
        open.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            open.mode(0o600);
        }
        let file = open.open(&tmp).map_err(|e| CardError::io(path, e))?;
        let made = lock(path, &file)
            .and_then(|()| {
                Card::create_on(Box::new(FileStorage::new(file, path.to_owned())), options)
            })
            .and_then(|card| {
                fs::hard_link(&tmp, path).map_err(|e| CardError::io(path, e))?;
                Ok(card)
            });
        // The temporary name goes in every case; the image lives on under `path` if linked.
        let _ = fs::remove_file(&tmp);
        let card = made?;
        // Make the new directory entry durable too.
        fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| CardError::io(path, e))?;
        Ok(card)
    }

    /// Opens the card image at `path`, locking it exclusively.
    ///
    /// Refuses an image that group or others may read or write (the image holds the card's
    /// keys; `chmod 600` fixes it).
    pub fn open(path: &Path, options: OpenOptions) -> Result<Card, CardError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| CardError::io(path, e))?;
        lock(path, &file)?;
        check_permissions(path, &file)?;
        Card::open_on(Box::new(FileStorage::new(file, path.to_owned())), options)
    }

    /// A blank card whose image lives in memory (tests, benchmarks, the demo). A passphrase in
    /// `options` is ignored: nothing of a memory image is ever at rest.
    pub fn in_memory(mut options: CardOptions) -> Card {
        options.passphrase = None;
        match Card::create_on(Box::new(MemoryStorage::new()), options) {
            Ok(card) => card,
            // Memory storage cannot fail to write; an error here is a bug in this crate.
            Err(e) => unreachable!("memory image creation failed: {e}"),
        }
    }

    /// Makes a blank card image on empty `storage`.
    pub fn create_on(storage: Box<dyn Storage>, options: CardOptions) -> Result<Card, CardError> {
        let path = storage.path().to_owned();
        let applets = applets::registry(&options.provisioning);
        let key = match &options.passphrase {
            None => None,
            Some(passphrase) => {
                let derived = KdfParams::generate(options.kdf_cost, &mut OsRng)
                    .and_then(|params| PassphraseKey::derive(passphrase.as_bytes(), &params));
                Some(
                    derived
                        .map_err(|e| CardError::corrupt(&path, format!("passphrase key: {e}")))?,
                )
            }
        };
        let store = Store::create(storage, key, initial_state(&applets))?;
        Ok(Card { runtime: Runtime::new(store, applets, options.rng)?, powered: false })
    }

    /// Opens the card image held by `storage`.
    pub fn open_on(storage: Box<dyn Storage>, options: OpenOptions) -> Result<Card, CardError> {
        let store = Store::open(storage, options.passphrase.as_deref().map(String::as_str))?;
        let applets = applets::registry(&applets::Provisioning::default());
        Ok(Card { runtime: Runtime::new(store, applets, options.rng)?, powered: false })
    }

    /// The committed persistent state in its canonical encoding (the plaintext of the live
    /// state record): equal bytes mean equal card state. Used by the tearing test.
    pub fn persistent_state(&self) -> Vec<u8> {
        encode_record(self.runtime.core.store.committed())
    }

    /// The image's live generation: 1 when made, +1 per commit.
    pub fn generation(&self) -> u64 {
        self.runtime.core.store.generation()
    }

    /// Powers the card on (cold reset) and returns the ATR. Volatile state starts empty.
    pub fn power_on(&mut self) -> Vec<u8> {
        self.runtime.clear_volatile();
        self.powered = true;
        ATR.to_vec()
    }

    /// Warm reset: returns the ATR; volatile state is cleared.
    pub fn reset(&mut self) -> Vec<u8> {
        self.power_on()
    }

    /// Powers the card off; volatile state is cleared.
    pub fn power_off(&mut self) {
        self.runtime.clear_volatile();
        self.powered = false;
    }

    /// The answer to reset.
    pub fn atr(&self) -> &[u8] {
        &ATR
    }

    /// Processes one command APDU and returns the response data followed by SW1 SW2.
    ///
    /// Never panics: malformed input gets an ISO status word. A card that is not powered is
    /// powered on implicitly (a reader would have done so).
    pub fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
        if !self.powered {
            self.power_on();
        }
        self.runtime.transmit(command).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atr_checksum_makes_xor_of_t0_to_tck_zero() {
        // ISO/IEC 7816-3 8.2.5: the XOR of all bytes from T0 to TCK inclusive is zero.
        assert_eq!(ATR[1..].iter().fold(0, |a, b| a ^ b), 0);
        assert_eq!(ATR[1] & 0x0F, 13, "T0 announces the 13 historical bytes");
    }

    #[test]
    fn a_card_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Card>();
    }

    #[test]
    fn garbage_never_panics() {
        let mut card = Card::in_memory(CardOptions::default());
        assert_eq!(card.power_on(), ATR);
        assert_eq!(card.transmit(&[]), [0x67, 0x00]);
        assert_eq!(card.transmit(&[0xFF, 0, 0, 0]), [0x6E, 0x00]);
    }
}
