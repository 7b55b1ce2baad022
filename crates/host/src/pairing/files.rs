//! The terminal's files, sealed under its passphrase (Argon2id + AES-256-GCM, the crypto
//! crate's passphrase module): the key file ([`TerminalIdentity`]) and the pairing store
//! ([`PairingStore`]). Each is written whole to a temporary file and renamed, mode 0600.
//!
//! The terminal's key ([`TerminalKey`]) is either in the key file (sealed PKCS#8) or in a
//! PKCS#11 token ([`super::pkcs11`]); then the key file holds only `pkcs11:<key label>` next to
//! the certificates, and loading it needs the open token ([`TerminalIdentity::load_with_token`]).

use std::path::{Path, PathBuf};

use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::keys::AesKey;
use tessera_crypto::passphrase::{KdfCost, KdfParams, PassphraseKey};
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::{Certificate, Crl};

use super::ca::write_private;
use super::pkcs11::{Token, TokenKey};
use super::{PairingError, Result};

/// Associated data of the key file.
const KEY_FILE_AAD: &[u8] = b"tessera/terminal-key/v1";
/// How the key file names a key kept in a PKCS#11 token: this prefix, then its label.
const TOKEN_KEY_PREFIX: &[u8] = b"pkcs11:";
/// Associated data of the pairing store.
const STORE_AAD: &[u8] = b"tessera/pairing-store/v1";

fn file_err(path: &Path, e: impl std::fmt::Display) -> PairingError {
    PairingError::File(format!("{}: {e}", path.display()))
}

/// Encodes fields as `len32 || bytes`.
fn encode(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Decodes [`encode`]'s output.
fn decode(mut data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (len, rest) = data.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (field, rest) = rest.split_at_checked(len)?;
        out.push(field.to_vec());
        data = rest;
    }
    Some(out)
}

fn seal(path: &Path, passphrase: &str, cost: KdfCost, aad: &[u8], plain: &[u8]) -> Result<()> {
    let params = KdfParams::generate(cost, &mut OsRng)?;
    let key = PassphraseKey::derive(passphrase, &params)?;
    write_private(path, &key.seal(&mut OsRng, plain, aad), false)
}

fn open(path: &Path, passphrase: &str, aad: &[u8]) -> Result<Vec<Vec<u8>>> {
    let blob = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let params = KdfParams::from_blob(&blob).map_err(|e| file_err(path, e))?;
    let key = PassphraseKey::derive(passphrase, &params)?;
    let plain = key
        .open(&blob, aad)
        .map_err(|_| file_err(path, "wrong passphrase, or not this kind of file"))?;
    decode(&plain).ok_or_else(|| file_err(path, "corrupt content"))
}

/// The terminal's signing key, used for proof of possession at enrolment and for the setup
/// transcript signature; signing is its only private operation.
#[derive(Clone)]
pub enum TerminalKey {
    /// A key kept (sealed) in the key file.
    File(SigningKey),
    /// A key kept in a PKCS#11 token, never leaving it; the key file holds its label.
    Token(TokenKey),
}

impl std::fmt::Debug for TerminalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TerminalKey::File(_) => f.write_str("TerminalKey::File(..)"),
            TerminalKey::Token(k) => write!(f, "TerminalKey::Token({:?})", k.label()),
        }
    }
}

impl From<SigningKey> for TerminalKey {
    fn from(key: SigningKey) -> Self {
        TerminalKey::File(key)
    }
}

impl From<TokenKey> for TerminalKey {
    fn from(key: TokenKey) -> Self {
        TerminalKey::Token(key)
    }
}

impl TerminalKey {
    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            TerminalKey::File(k) => k.public_key(),
            TerminalKey::Token(k) => k.public_key(),
        }
    }

    /// ECDSA P-256 / SHA-256 over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Signature> {
        match self {
            TerminalKey::File(k) => Ok(k.sign(message)),
            TerminalKey::Token(k) => Ok(k.sign(message)?),
        }
    }
}

/// A terminal's key, its certificate (role terminal), the CA certificate and the latest CRL.
#[derive(Clone)]
pub struct TerminalIdentity {
    key: TerminalKey,
    /// The terminal certificate.
    pub certificate: Certificate,
    /// The CA certificate (trust anchor for card certificates).
    pub ca: Certificate,
    /// The latest CRL from the CA.
    pub crl: Option<Crl>,
}

impl std::fmt::Debug for TerminalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalIdentity")
            .field("key", &self.key)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl TerminalIdentity {
    /// An identity from its parts; fails if the certificate is not for `key`.
    pub fn new(
        key: impl Into<TerminalKey>,
        certificate: Certificate,
        ca: Certificate,
        crl: Option<Crl>,
    ) -> Result<Self> {
        let key = key.into();
        if certificate.info()?.public_key != key.public_key() {
            return Err(PairingError::Certificate("certificate is not for this key".into()));
        }
        Ok(Self { key, certificate, ca, crl })
    }

    /// The terminal's key id: its certificate's serial number.
    pub fn key_id(&self) -> Result<Vec<u8>> {
        Ok(self.certificate.info()?.serial)
    }

    /// The terminal's signing key.
    pub fn key(&self) -> &TerminalKey {
        &self.key
    }

    /// Signs a labelled structure the terminal built.
    pub fn sign(&self, message: &[u8]) -> Result<Signature> {
        self.key.sign(message)
    }

    /// Writes the sealed key file (for a key in a token: its label, not the key).
    pub fn save(&self, path: &Path, passphrase: &str, cost: KdfCost) -> Result<()> {
        let key = match &self.key {
            TerminalKey::File(k) => k.to_pkcs8_der()?.to_vec(),
            TerminalKey::Token(k) => [TOKEN_KEY_PREFIX, k.label().as_bytes()].concat(),
        };
        let crl = self.crl.as_ref().map(|c| c.der().to_vec()).unwrap_or_default();
        let plain = encode(&[&key, self.certificate.der(), self.ca.der(), &crl]);
        seal(path, passphrase, cost, KEY_FILE_AAD, &plain)
    }

    /// Reads a sealed key file whose key is in the file.
    pub fn load(path: &Path, passphrase: &str) -> Result<Self> {
        Self::load_with_token(path, passphrase, None)
    }

    /// Reads a sealed key file; a key file naming a key in a PKCS#11 token needs that token
    /// (open and logged in), and one holding its own key refuses a token (a mix-up).
    pub fn load_with_token(path: &Path, passphrase: &str, token: Option<&Token>) -> Result<Self> {
        let fields = open(path, passphrase, KEY_FILE_AAD)?;
        let [key, cert, ca, crl] =
            <[Vec<u8>; 4]>::try_from(fields).map_err(|_| file_err(path, "corrupt content"))?;
        let key: TerminalKey = match (key.strip_prefix(TOKEN_KEY_PREFIX), token) {
            (Some(label), Some(token)) => {
                let label =
                    std::str::from_utf8(label).map_err(|_| file_err(path, "corrupt key label"))?;
                token.key(label)?.into()
            }
            (Some(label), None) => {
                return Err(file_err(
                    path,
                    format!(
                        "the terminal key is in a PKCS#11 token (key label {:?}); give the token",
                        String::from_utf8_lossy(label)
                    ),
                ));
            }
            (None, Some(_)) => {
                return Err(file_err(path, "the key is in this file, not in a PKCS#11 token"));
            }
            (None, None) => SigningKey::from_pkcs8_der(&key).map_err(|e| file_err(path, e))?.into(),
        };
        let crl = (!crl.is_empty()).then(|| Crl::from_der(crl));
        Self::new(key, Certificate::from_der(cert)?, Certificate::from_der(ca)?, crl)
    }
}

/// One pairing as the terminal keeps it.
#[derive(Clone)]
pub struct StoredPairing {
    /// The card's key id (its certificate's serial).
    pub card_key_id: Vec<u8>,
    /// The pairing key (AES-128, zeroised on drop).
    pub key: AesKey,
}

impl std::fmt::Debug for StoredPairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredPairing({})", hex::encode_upper(&self.card_key_id))
    }
}

/// The terminal's pairings with many cards, keyed by card key id.
#[derive(Debug, Default)]
pub struct PairingStore {
    path: Option<PathBuf>,
    entries: Vec<StoredPairing>,
}

impl PairingStore {
    /// An empty store kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Opens the store at `path`, or an empty one if the file does not exist yet.
    pub fn open(path: &Path, passphrase: &str) -> Result<Self> {
        if !path.exists() {
            return Ok(Self { path: Some(path.to_owned()), entries: Vec::new() });
        }
        let fields = open(path, passphrase, STORE_AAD)?;
        if fields.len() % 2 != 0 {
            return Err(file_err(path, "corrupt content"));
        }
        let entries = fields
            .chunks(2)
            .map(|pair| {
                let key =
                    AesKey::from_slice(&pair[1]).map_err(|_| file_err(path, "corrupt key"))?;
                Ok(StoredPairing { card_key_id: pair[0].clone(), key })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { path: Some(path.to_owned()), entries })
    }

    /// Writes the store (no-op for an in-memory store).
    pub fn save(&self, passphrase: &str, cost: KdfCost) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let fields: Vec<&[u8]> = self
            .entries
            .iter()
            .flat_map(|e| [e.card_key_id.as_slice(), e.key.expose_secret()])
            .collect();
        seal(path, passphrase, cost, STORE_AAD, &encode(&fields))
    }

    /// The pairing with this card.
    pub fn get(&self, card_key_id: &[u8]) -> Option<&StoredPairing> {
        self.entries.iter().find(|e| e.card_key_id == card_key_id)
    }

    /// The pairings whose card key id starts like the card's diversification data (the key
    /// id, zero padded to 10 bytes).
    pub fn matching(&self, diversification: &[u8; 10]) -> impl Iterator<Item = &StoredPairing> {
        self.entries.iter().filter(move |e| {
            let n = e.card_key_id.len().min(10);
            e.card_key_id[..n] == diversification[..n]
                && diversification[n..].iter().all(|&b| b == 0)
        })
    }

    /// Records (or replaces) the pairing with a card.
    pub fn insert(&mut self, card_key_id: Vec<u8>, key: AesKey) {
        self.remove(&card_key_id);
        self.entries.push(StoredPairing { card_key_id, key });
    }

    /// Forgets the pairing with a card.
    pub fn remove(&mut self, card_key_id: &[u8]) {
        self.entries.retain(|e| e.card_key_id != card_key_id);
    }

    /// How many cards this terminal is paired with.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the store holds no pairing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn store_round_trips_sealed_and_refuses_a_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairings");
        let mut store = PairingStore::open(&path, "pw").unwrap();
        assert!(store.is_empty());
        store.insert(vec![1; 16], AesKey::Aes128([7; 16]));
        store.insert(vec![2; 16], AesKey::Aes128([8; 16]));
        store.insert(vec![1; 16], AesKey::Aes128([9; 16]));
        store.save("pw", KdfCost::TEST_ONLY).unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(16).any(|w| w == [9; 16]), "the key is not in clear");
        let back = PairingStore::open(&path, "pw").unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.get(&[1; 16]).unwrap().key.expose_secret(), &[9; 16]);
        let mut div = [0u8; 10];
        div.copy_from_slice(&[2; 10]);
        assert_eq!(back.matching(&div).count(), 1);
        assert!(PairingStore::open(&path, "other").is_err());
    }

    #[test]
    fn field_decoding_refuses_truncation() {
        let e = encode(&[b"ab", b"", b"cde"]);
        assert_eq!(decode(&e).unwrap(), vec![b"ab".to_vec(), vec![], b"cde".to_vec()]);
        for cut in 1..e.len() {
            if cut != 6 && cut != 10 {
                assert!(decode(&e[..cut]).is_none(), "cut {cut}");
            }
        }
    }
}
