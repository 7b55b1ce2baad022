//! Options for making and opening a card.

use zeroize::Zeroizing;

/// How to make a new card (a blank image).
#[derive(Default)]
pub struct CardOptions {
    pub(crate) passphrase: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for CardOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardOptions")
            .field("encrypted", &self.passphrase.is_some())
            .finish_non_exhaustive()
    }
}

impl CardOptions {
    /// Encrypts the image at rest under `passphrase`.
    pub fn passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.passphrase = Some(Zeroizing::new(passphrase.into()));
        self
    }
}

/// How to open an existing card image.
#[derive(Default)]
pub struct OpenOptions {
    pub(crate) passphrase: Option<Zeroizing<String>>,
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
}
