//! The persistent store: every applet's committed state in one image, committed atomically.
//!
//! The plaintext of a state record is a map from owner to state bytes, sorted by owner:
//!
//! ```text
//! u16 entry count
//! per entry:  u8 owner length | owner (an applet AID; the empty owner is the card-wide state)
//!             u32 state length | state bytes (the owner's own encoding, postcard for ours)
//! ```
//!
//! When the image is encrypted at rest the record on disk is that plaintext sealed with
//! `tessera_crypto::passphrase` (AES-256-GCM under the Argon2id-derived key), with the image
//! header and the record's generation number as associated data, so a record cannot be moved
//! to another generation or another image undetected.

use std::collections::BTreeMap;

use tessera_crypto::passphrase::{KdfParams, PassphraseKey};
use tessera_crypto::rng::OsRng;

use crate::error::CardError;
use crate::image::{FLAG_ENCRYPTED, Header, Image};
use crate::storage::Storage;

/// Owner key of the card-wide persistent state.
pub(crate) const CARD_OWNER: &[u8] = &[];

/// Committed state, by owner.
pub(crate) type StateMap = BTreeMap<Vec<u8>, Vec<u8>>;

/// Encodes a state map canonically (sorted by owner).
pub(crate) fn encode_record(map: &StateMap) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(2 + map.iter().map(|(k, v)| 5 + k.len() + v.len()).sum::<usize>());
    out.extend_from_slice(&(map.len() as u16).to_be_bytes());
    for (owner, state) in map {
        out.push(owner.len() as u8);
        out.extend_from_slice(owner);
        out.extend_from_slice(&(state.len() as u32).to_be_bytes());
        out.extend_from_slice(state);
    }
    out
}

/// Decodes [`encode_record`] output; `None` if malformed.
pub(crate) fn decode_record(mut bytes: &[u8]) -> Option<StateMap> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = bytes.split_at_checked(n)?;
        *bytes = tail;
        Some(head)
    }
    let count = u16::from_be_bytes(take(&mut bytes, 2)?.try_into().ok()?);
    let mut map = StateMap::new();
    for _ in 0..count {
        let owner_len = take(&mut bytes, 1)?[0] as usize;
        let owner = take(&mut bytes, owner_len)?.to_vec();
        let len = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().ok()?) as usize;
        let state = take(&mut bytes, len)?.to_vec();
        if map.insert(owner, state).is_some() {
            return None; // duplicate owner: not canonical
        }
    }
    bytes.is_empty().then_some(map)
}

/// An open image plus the committed state map (and the at-rest key when encrypted).
pub(crate) struct Store {
    image: Image,
    key: Option<PassphraseKey>,
    committed: StateMap,
}

fn aad(header: &Header, generation: u64) -> Vec<u8> {
    let mut aad = header.encode();
    aad.extend_from_slice(&generation.to_be_bytes());
    aad
}

impl Store {
    /// Makes a new image holding `initial`.
    pub(crate) fn create(
        storage: Box<dyn Storage>,
        key: Option<PassphraseKey>,
        initial: StateMap,
    ) -> Result<Store, CardError> {
        let header = match &key {
            Some(key) => {
                Header { flags: FLAG_ENCRYPTED, kdf_params: key.params().to_bytes().to_vec() }
            }
            None => Header { flags: 0, kdf_params: Vec::new() },
        };
        let plain = encode_record(&initial);
        let record = match &key {
            Some(key) => key.seal(&mut OsRng, &plain, &aad(&header, 1)),
            None => plain,
        };
        let image = Image::create(storage, header, &record)?;
        Ok(Store { image, key, committed: initial })
    }

    /// Opens the image in `storage`; the passphrase is required exactly when it is encrypted.
    pub(crate) fn open(
        storage: Box<dyn Storage>,
        passphrase: Option<&str>,
    ) -> Result<Store, CardError> {
        let (image, record) = Image::open(storage)?;
        let path = image.path().to_owned();
        let header = image.header().clone();
        let (key, plain) = match (header.encrypted(), passphrase) {
            (false, None) => (None, record),
            (false, Some(_)) => return Err(CardError::NotEncrypted { path }),
            (true, None) => return Err(CardError::PassphraseRequired { path }),
            (true, Some(passphrase)) => {
                let params = KdfParams::from_bytes(&header.kdf_params)
                    .map_err(|e| CardError::corrupt(&path, format!("KDF parameters: {e}")))?;
                let key = PassphraseKey::derive(passphrase, &params)
                    .map_err(|e| CardError::corrupt(&path, format!("KDF parameters: {e}")))?;
                let plain = key
                    .open(&record, &aad(&header, image.generation()))
                    .map_err(|_| CardError::WrongPassphrase { path: path.clone() })?;
                (Some(key), plain.to_vec())
            }
        };
        let committed = decode_record(&plain)
            .ok_or_else(|| CardError::corrupt(&path, "state record does not decode"))?;
        Ok(Store { image, key, committed })
    }

    /// The storage's name for messages.
    pub(crate) fn path(&self) -> &std::path::Path {
        self.image.path()
    }

    /// The committed state of `owner`.
    pub(crate) fn get(&self, owner: &[u8]) -> Option<&[u8]> {
        self.committed.get(owner).map(Vec::as_slice)
    }

    /// The committed state of every owner.
    pub(crate) fn committed(&self) -> &StateMap {
        &self.committed
    }

    /// The live generation.
    pub(crate) fn generation(&self) -> u64 {
        self.image.generation()
    }

    /// Atomically replaces the state of the given owners. Does nothing when nothing differs.
    pub(crate) fn commit(&mut self, changes: &[(&[u8], &[u8])]) -> Result<(), CardError> {
        if changes.iter().all(|(owner, state)| self.get(owner) == Some(*state)) {
            return Ok(());
        }
        let mut next = self.committed.clone();
        for (owner, state) in changes {
            next.insert(owner.to_vec(), state.to_vec());
        }
        let plain = encode_record(&next);
        let record = match &self.key {
            Some(key) => {
                key.seal(&mut OsRng, &plain, &aad(self.image.header(), self.image.generation() + 1))
            }
            None => plain,
        };
        self.image.commit(&record)?;
        self.committed = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_rejects_malformed() {
        let mut m = StateMap::new();
        m.insert(Vec::new(), vec![1, 2, 3]);
        m.insert(vec![0xA0, 0, 0, 1, 0x51], vec![]);
        let enc = encode_record(&m);
        assert_eq!(decode_record(&enc), Some(m));
        for cut in 0..enc.len() {
            assert_eq!(decode_record(&enc[..cut]), None, "prefix {cut}");
        }
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(decode_record(&long), None);
        assert_eq!(decode_record(&[0, 0]), Some(StateMap::new()));
    }
}
