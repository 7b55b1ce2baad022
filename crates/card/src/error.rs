//! Errors opening, creating and writing a card image.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a card image could not be created, opened or written.
///
/// Every variant names the image file: the card never silently resets a file it cannot read.
#[derive(Debug, Error)]
pub enum CardError {
    /// The image file does not exist.
    #[error("card image {path}: no such file (make one with `tessera card new --image {path}`)")]
    Missing {
        /// The image file.
        path: PathBuf,
    },
    /// `create` was asked to make an image where a file already exists.
    #[error("card image {path}: file already exists; refusing to overwrite a card")]
    AlreadyExists {
        /// The image file.
        path: PathBuf,
    },
    /// Another process holds the image's exclusive lock.
    #[error("card image {path}: locked by another process (is a card already serving it?)")]
    Locked {
        /// The image file.
        path: PathBuf,
    },
    /// The image is readable or writable by group or others.
    #[error(
        "card image {path}: permissions {mode:04o} let other users read the card's keys; \
         run `chmod 600 {path}`"
    )]
    Permissions {
        /// The image file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The file does not start with the card image magic.
    #[error("card image {path}: not a tessera card image (bad magic)")]
    NotAnImage {
        /// The image file.
        path: PathBuf,
    },
    /// The image was written by a format version this build does not read.
    #[error(
        "card image {path}: format version {found} is not supported (this build reads {supported})"
    )]
    UnsupportedVersion {
        /// The image file.
        path: PathBuf,
        /// Version found in the header.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The file ends before the structures its header promises.
    #[error("card image {path}: truncated ({detail})")]
    Truncated {
        /// The image file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// A structure in the image fails its checksum or does not decode.
    #[error("card image {path}: corrupt ({detail})")]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The image is encrypted at rest and no passphrase was given.
    #[error("card image {path}: encrypted at rest; a passphrase is required")]
    PassphraseRequired {
        /// The image file.
        path: PathBuf,
    },
    /// The passphrase does not open the image.
    #[error("card image {path}: wrong passphrase")]
    WrongPassphrase {
        /// The image file.
        path: PathBuf,
    },
    /// A passphrase was given but the image is not encrypted.
    #[error("card image {path}: not encrypted at rest, but a passphrase was given")]
    NotEncrypted {
        /// The image file.
        path: PathBuf,
    },
    /// An operating-system error reading or writing the image.
    #[error("card image {path}: {source}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl CardError {
    /// Wraps an I/O error, mapping "not found" to [`CardError::Missing`].
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::NotFound => CardError::Missing { path: path.to_owned() },
            io::ErrorKind::AlreadyExists => CardError::AlreadyExists { path: path.to_owned() },
            _ => CardError::Io { path: path.to_owned(), source },
        }
    }

    pub(crate) fn corrupt(path: &Path, detail: impl Into<String>) -> Self {
        CardError::Corrupt { path: path.to_owned(), detail: detail.into() }
    }

    pub(crate) fn truncated(path: &Path, detail: impl Into<String>) -> Self {
        CardError::Truncated { path: path.to_owned(), detail: detail.into() }
    }

    /// The image file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            CardError::Missing { path }
            | CardError::AlreadyExists { path }
            | CardError::Locked { path }
            | CardError::Permissions { path, .. }
            | CardError::NotAnImage { path }
            | CardError::UnsupportedVersion { path, .. }
            | CardError::Truncated { path, .. }
            | CardError::Corrupt { path, .. }
            | CardError::PassphraseRequired { path }
            | CardError::WrongPassphrase { path }
            | CardError::NotEncrypted { path }
            | CardError::Io { path, .. } => path,
        }
    }
}
