//! Terminal side of the `vault` applet (seed 003): issuance of a main/backup pair, the backup
//! flow, files in the age format through the card, and recovery onto a new card.
//!
//! - [`VaultCard`]: one card's vault commands over any [`CardChannel`].
//! - [`issuance`]: issuing the pair (Fig. 11) and its variants.
//! - [`backup`]: holder components on both cards, key generated on the main card and moved
//!   wrapped to the backup card, confirmed (Figs. 13-15), re-runnable after any failure.
//! - [`files`]: age encryption to the card's `p256tag` recipient, decryption through the card,
//!   and recovery (Figs. 18-19): header-only re-wrap inside the backup card, crash-safe.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::applets::isd;
use tessera_card::pin::PinBlock;
use tessera_proto::vault::{
    self as proto, COMPONENT_CHECK_LEN, COMPONENT_LEN, CONFIRMATION_LEN, PUBLIC_KEY_LEN, Status,
    TranscryptRequest, TranscryptResponse, VaultCommand, WrappedKey,
};
use thiserror::Error;

use crate::channel::{CardChannel, ChannelError};

pub mod backup;
pub mod files;
pub mod issuance;

pub use tessera_proto::vault::AID;

/// What can go wrong talking to a vault.
#[derive(Debug, Error)]
pub enum VaultError {
    /// The channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The card refused a command.
    #[error("the card refused {what}: {sw} ({})", explain(*sw))]
    Refused {
        /// The command.
        what: &'static str,
        /// Its status word.
        sw: StatusWord,
    },
    /// The card answered something that does not parse.
    #[error("the card's answer to {0} does not parse")]
    BadAnswer(&'static str),
    /// The flow found the cards in a state it cannot continue from.
    #[error("{0}")]
    State(String),
    /// A file could not be read, written or parsed.
    #[error("{0}")]
    File(String),
}

fn explain(sw: StatusWord) -> &'static str {
    match sw {
        StatusWord::SECURITY_STATUS_NOT_SATISFIED => "PIN not verified",
        StatusWord::CONDITIONS_NOT_SATISFIED => "not allowed in the card's current state",
        StatusWord::INCORRECT_DATA => {
            "rejected data (wrong key group, modified, or not for this card)"
        }
        StatusWord::INCORRECT_P1P2 => "no such slot",
        StatusWord(0x6300) => "verification failed",
        StatusWord::AUTH_METHOD_BLOCKED => "PIN blocked",
        StatusWord(sw) if sw & 0xFFF0 == 0x63C0 => "wrong PIN",
        StatusWord(0x6A82) => "no vault applet on this card",
        _ => "unexpected status",
    }
}

/// A card's vault, selected.
pub struct VaultCard<C> {
    channel: C,
}

impl<C: CardChannel> VaultCard<C> {
    /// SELECTs the vault on `channel`.
    pub fn select(mut channel: C) -> Result<Self, VaultError> {
        let select = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(AID.to_vec()).with_le(256);
        check(channel.transmit(&select)?, "SELECT vault")?;
        Ok(VaultCard { channel })
    }

    /// The channel underneath.
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// Returns the channel.
    pub fn into_channel(self) -> C {
        self.channel
    }

    /// VERIFY the card holder's global PIN (at the card-management applet), then SELECT the
    /// vault again.
    pub fn verify_pin(&mut self, pin: &[u8]) -> Result<(), VaultError> {
        let block = PinBlock::from_value(pin)
            .map_err(|_| VaultError::State("a PIN is 4 to 12 characters".into()))?;
        let select_isd =
            Command::new(0x00, 0xA4, 0x04, 0x00).with_data(isd::AID.to_vec()).with_le(256);
        check(self.channel.transmit(&select_isd)?, "SELECT card manager")?;
        let verify = Command::new(0x00, 0x20, 0x00, 0x81).with_data(block.as_bytes().to_vec());
        let r = self.channel.transmit(&verify)?;
        let select = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(AID.to_vec()).with_le(256);
        check(self.channel.transmit(&select)?, "SELECT vault")?;
        check(r, "VERIFY PIN")?;
        Ok(())
    }

    fn send(&mut self, cmd: &VaultCommand, what: &'static str) -> Result<Vec<u8>, VaultError> {
        Ok(check(self.channel.transmit(&cmd.to_command())?, what)?.data)
    }

    /// GET DATA status.
    pub fn status(&mut self) -> Result<Status, VaultError> {
        let data = self.send(&VaultCommand::GetData(proto::TAG_STATUS), "GET DATA status")?;
        Status::parse(&data).map_err(|_| VaultError::BadAnswer("GET DATA status"))
    }

    /// GET DATA public key (uncompressed SEC1).
    pub fn public_key(&mut self) -> Result<[u8; PUBLIC_KEY_LEN], VaultError> {
        let data =
            self.send(&VaultCommand::GetData(proto::TAG_PUBLIC_KEY), "GET DATA public key")?;
        data.try_into().map_err(|_| VaultError::BadAnswer("GET DATA public key"))
    }

    /// GET DATA transport key (for IMPORT SEALED).
    pub fn transport_key(&mut self) -> Result<Vec<u8>, VaultError> {
        self.send(&VaultCommand::GetData(proto::TAG_TRANSPORT_KEY), "GET DATA transport key")
    }

    /// PUT COMPONENT; returns the card's check value of the component.
    pub fn put_component(
        &mut self,
        slot: u8,
        component: &[u8; COMPONENT_LEN],
    ) -> Result<[u8; COMPONENT_CHECK_LEN], VaultError> {
        let data = self
            .send(&VaultCommand::PutComponent { slot, component: *component }, "PUT COMPONENT")?;
        data.try_into().map_err(|_| VaultError::BadAnswer("PUT COMPONENT"))
    }

    /// GENERATE; returns the public key.
    pub fn generate(&mut self) -> Result<[u8; PUBLIC_KEY_LEN], VaultError> {
        let data = self.send(&VaultCommand::Generate, "GENERATE")?;
        data.try_into().map_err(|_| VaultError::BadAnswer("GENERATE"))
    }

    /// IMPORT SEALED; returns the public key.
    pub fn import_sealed(&mut self, sealed: Vec<u8>) -> Result<[u8; PUBLIC_KEY_LEN], VaultError> {
        let data = self.send(&VaultCommand::ImportSealed(sealed), "IMPORT SEALED")?;
        data.try_into().map_err(|_| VaultError::BadAnswer("IMPORT SEALED"))
    }

    /// EXPORT; returns the wrapped key.
    pub fn export(&mut self) -> Result<WrappedKey, VaultError> {
        let data = self.send(&VaultCommand::Export, "EXPORT")?;
        WrappedKey::parse(&data).map_err(|_| VaultError::BadAnswer("EXPORT"))
    }

    /// IMPORT WRAPPED; returns the confirmation.
    pub fn import_wrapped(
        &mut self,
        blob: &WrappedKey,
    ) -> Result<[u8; CONFIRMATION_LEN], VaultError> {
        let data = self.send(&VaultCommand::ImportWrapped(blob.clone()), "IMPORT WRAPPED")?;
        data.try_into().map_err(|_| VaultError::BadAnswer("IMPORT WRAPPED"))
    }

    /// CONFIRM BACKUP.
    pub fn confirm_backup(&mut self, c: &[u8; CONFIRMATION_LEN]) -> Result<(), VaultError> {
        self.send(&VaultCommand::ConfirmBackup(*c), "CONFIRM BACKUP").map(|_| ())
    }

    /// LOCK EXPORT (permanent).
    pub fn lock_export(&mut self) -> Result<(), VaultError> {
        self.send(&VaultCommand::LockExport, "LOCK EXPORT").map(|_| ())
    }

    /// DECRYPT a `p256tag` stanza; returns the file key.
    pub fn decrypt(
        &mut self,
        enc: &[u8; proto::ENC_LEN],
        body: &[u8; proto::BODY_LEN],
    ) -> Result<zeroize::Zeroizing<[u8; proto::FILE_KEY_LEN]>, VaultError> {
        let data = zeroize::Zeroizing::new(
            self.send(&VaultCommand::Decrypt { enc: *enc, body: *body }, "DECRYPT")?,
        );
        let mut key = zeroize::Zeroizing::new([0u8; proto::FILE_KEY_LEN]);
        if data.len() != proto::FILE_KEY_LEN {
            return Err(VaultError::BadAnswer("DECRYPT"));
        }
        key.copy_from_slice(&data);
        Ok(key)
    }

    /// TRANSCRYPT.
    pub fn transcrypt(&mut self, req: TranscryptRequest) -> Result<TranscryptResponse, VaultError> {
        let data = self.send(&VaultCommand::Transcrypt(Box::new(req)), "TRANSCRYPT")?;
        TranscryptResponse::parse(&data).map_err(|_| VaultError::BadAnswer("TRANSCRYPT"))
    }
}

fn check(r: Response, what: &'static str) -> Result<Response, VaultError> {
    if r.sw == StatusWord::SUCCESS { Ok(r) } else { Err(VaultError::Refused { what, sw: r.sw }) }
}
