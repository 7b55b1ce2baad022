//! Options for making and opening a card.

use tessera_crypto::passphrase::KdfCost;
use tessera_crypto::rng::{OsRng, Rng};
use zeroize::Zeroizing;

/// How to make a new card (a blank image).
///
/// Defaults: not encrypted at rest, the operating system's random generator, and the
/// card-management applet's documented test key set (see [`crate::applets::isd`]).
pub struct CardOptions {
    pub(crate) passphrase: Option<Zeroizing<String>>,
    pub(crate) kdf_cost: KdfCost,
    pub(crate) rng: Box<dyn Rng + Send>,
    pub(crate) provisioning: crate::applets::Provisioning,
}

impl Default for CardOptions {
    fn default() -> Self {
        Self {
            passphrase: None,
            kdf_cost: KdfCost::RECOMMENDED,
            rng: Box::new(OsRng),
            provisioning: crate::applets::Provisioning::default(),
        }
    }
}

impl std::fmt::Debug for CardOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardOptions")
            .field("encrypted", &self.passphrase.is_some())
            .field("kdf_cost", &self.kdf_cost)
            .finish_non_exhaustive()
    }
}

impl CardOptions {
    /// Encrypts the image at rest under `passphrase` (Argon2id, then AES-256-GCM).
    pub fn passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.passphrase = Some(Zeroizing::new(passphrase.into()));
        self
    }

    /// The Argon2id cost for the passphrase (default [`KdfCost::RECOMMENDED`]; tests use
    /// [`KdfCost::TEST_ONLY`]).
    pub fn kdf_cost(mut self, cost: KdfCost) -> Self {
        self.kdf_cost = cost;
        self
    }

    /// The card's random generator (default: the operating system's). A seeded generator makes
    /// runs reproducible, for tests only.
    pub fn rng(mut self, rng: Box<dyn Rng + Send>) -> Self {
        self.rng = rng;
        self
    }

    /// What the applets of a blank card start with (initial key set, ...).
    pub fn provisioning(mut self, provisioning: crate::applets::Provisioning) -> Self {
        self.provisioning = provisioning;
        self
    }
}

/// How to open an existing card image.
pub struct OpenOptions {
    pub(crate) passphrase: Option<Zeroizing<String>>,
    pub(crate) rng: Box<dyn Rng + Send>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self { passphrase: None, rng: Box::new(OsRng) }
    }
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("passphrase", &self.passphrase.as_ref().map(|_| "(redacted)"))
            .finish_non_exhaustive()
    }
}

impl OpenOptions {
    /// The passphrase of an image encrypted at rest.
    pub fn passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.passphrase = Some(Zeroizing::new(passphrase.into()));
        self
    }

    /// The card's random generator (default: the operating system's).
    pub fn rng(mut self, rng: Box<dyn Rng + Send>) -> Self {
        self.rng = rng;
        self
    }
}
