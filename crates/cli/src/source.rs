//! Where a command finds its card: an image run in process, or a PC/SC reader.

use std::path::{Path, PathBuf};

use clap::Args;
use tessera_card::{Card, OpenOptions};
use tessera_host::{CardChannel, InProcessChannel, PcscChannel};
use zeroize::Zeroizing;

use crate::error::{CliError, Exit};

/// The card a command talks to.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CardSource {
    /// Card image file: the card runs inside this process.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// PC/SC reader holding the card (`tessera reader list` shows the names).
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,
}

/// The passphrase of an image encrypted at rest.
#[derive(Debug, Args)]
pub struct PassphraseArg {
    /// File whose content (one trailing newline removed) is the image's passphrase.
    #[arg(long, value_name = "F")]
    pub passphrase_file: Option<PathBuf>,
}

impl PassphraseArg {
    /// Reads the passphrase, if one was given.
    pub fn read(&self) -> Result<Option<Zeroizing<String>>, CliError> {
        let Some(path) = &self.passphrase_file else { return Ok(None) };
        let text = std::fs::read_to_string(path).map(Zeroizing::new).map_err(|e| {
            CliError::new(
                Exit::Other,
                format!("cannot read passphrase file {}: {e}", path.display()),
            )
        })?;
        let trimmed = text.strip_suffix('\n').unwrap_or(&text);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(CliError::usage(format!("passphrase file {} is empty", path.display())));
        }
        Ok(Some(Zeroizing::new(trimmed.to_owned())))
    }
}

/// Opens the card image at `path`.
pub fn open_image(path: &Path, passphrase: &PassphraseArg) -> Result<Card, CliError> {
    let mut options = OpenOptions::default();
    if let Some(p) = passphrase.read()? {
        options = options.passphrase(p.as_str());
    }
    Ok(Card::open(path, options)?)
}

impl CardSource {
    /// Opens a channel to the card.
    pub fn open(&self, passphrase: &PassphraseArg) -> Result<Box<dyn CardChannel>, CliError> {
        match (&self.image, &self.reader) {
            (Some(path), _) => Ok(Box::new(InProcessChannel::new(open_image(path, passphrase)?))),
            (None, Some(reader)) => Ok(Box::new(PcscChannel::connect(Some(reader))?)),
            (None, None) => Err(CliError::usage("give --image FILE or --reader NAME")),
        }
    }
}
