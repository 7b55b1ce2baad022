//! The card's device identity: a P-256 key pair generated on the card at issuance, the
//! device certificate the issuer CA made for it, and the issuer's trust anchors (CA and
//! package-signing certificates).
//!
//! It is card-wide data ([`crate::lifecycle::CardData::device`]): the card-management applet
//! writes it during personalisation, every applet reads it through
//! [`crate::Context::card`]. The private key never leaves the card and has no accessor; the
//! only way to use it is [`DeviceIdentity::sign`], which signs the labelled structures of
//! [`tessera_crypto::device`] (purpose, card id, body), never a caller's digest.

use serde::{Deserialize, Serialize};
use tessera_apdu::StatusWord;
use tessera_crypto::device::Purpose;
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::rng::Rng;
use tessera_crypto::x509::{Certificate, Role, verify_chain};
use zeroize::Zeroize;

/// The card's device identity and trust anchors; empty on a blank card.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// The device private key (32-byte scalar), empty when none was generated.
    secret: Vec<u8>,
    /// The device public key, SEC1 uncompressed; empty when none.
    public: Vec<u8>,
    /// The device certificate (DER), for `public`.
    certificate: Option<Vec<u8>>,
    /// The issuer CA certificate (DER): the trust anchor.
    issuer_ca: Option<Vec<u8>>,
    /// The issuer's package-signing certificate (DER), issued by `issuer_ca`.
    package_signing: Option<Vec<u8>>,
}

impl Drop for DeviceIdentity {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("key", &!self.public.is_empty())
            .field("certificate", &self.certificate.is_some())
            .field("issuer_ca", &self.issuer_ca.is_some())
            .field("package_signing", &self.package_signing.is_some())
            .finish()
    }
}

impl DeviceIdentity {
    /// Generates a fresh key pair with the card's generator, replacing any previous key and
    /// dropping its certificate (which no longer matches). Returns the new public key.
    pub(crate) fn generate(&mut self, rng: &mut dyn Rng) -> PublicKey {
        let key = SigningKey::generate(rng);
        let public = key.public_key();
        self.secret.zeroize();
        self.secret = key.to_bytes().to_vec();
        self.public = public.to_sec1_bytes().to_vec();
        self.certificate = None;
        public
    }

    /// The device public key, if one was generated.
    pub fn public_key(&self) -> Option<PublicKey> {
        PublicKey::from_sec1_bytes(&self.public).ok()
    }

    /// The device certificate (DER), if installed.
    pub fn certificate(&self) -> Option<&[u8]> {
        self.certificate.as_deref()
    }

    /// The issuer CA certificate (DER), if installed.
    pub fn issuer_ca(&self) -> Option<&[u8]> {
        self.issuer_ca.as_deref()
    }

    /// The issuer's package-signing certificate (DER), if installed.
    pub fn package_signing(&self) -> Option<&[u8]> {
        self.package_signing.as_deref()
    }

    /// Signs the labelled structure for `purpose`, this card's `card_id` and `body` (see
    /// [`tessera_crypto::device`]). `6A88` when the card has no device key. Applets reach it
    /// through [`crate::Context::device_sign`], which supplies the card's own id.
    pub(crate) fn sign(
        &self,
        purpose: Purpose,
        card_id: &[u8],
        body: &[u8],
    ) -> Result<Signature, StatusWord> {
        if self.secret.is_empty() {
            return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
        }
        let key = SigningKey::from_bytes(&self.secret).map_err(|_| StatusWord::UNKNOWN)?;
        tessera_crypto::device::sign(&key, purpose, card_id, body)
            .map_err(|_| StatusWord::INCORRECT_DATA)
    }

    /// Installs the issuer CA certificate: it must be a self-signed CA (checked at its own
    /// start time; the card has no clock). Replaces the previous anchor and clears the
    /// certificates that chained to it.
    pub(crate) fn set_issuer_ca(&mut self, der: &[u8]) -> Result<(), StatusWord> {
        let ca = Certificate::from_der(der.to_vec()).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let info = ca.info().map_err(|_| StatusWord::INCORRECT_DATA)?;
        if !info.is_ca {
            return Err(StatusWord::INCORRECT_DATA);
        }
        verify_chain(&ca, &[], &ca, info.validity.not_before, None)
            .map_err(|_| StatusWord::INCORRECT_DATA)?;
        self.issuer_ca = Some(der.to_vec());
        self.certificate = None;
        self.package_signing = None;
        Ok(())
    }

    /// Checks `der` chains to the installed CA with `role` (at its own start time).
    fn check_issued(&self, der: &[u8], role: Role) -> Result<Certificate, StatusWord> {
        let ca = self.issuer_ca.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let ca = Certificate::from_der(ca.clone()).map_err(|_| StatusWord::UNKNOWN)?;
        let cert = Certificate::from_der(der.to_vec()).map_err(|_| StatusWord::INCORRECT_DATA)?;
        let start = cert.info().map_err(|_| StatusWord::INCORRECT_DATA)?.validity.not_before;
        verify_chain(&cert, &[], &ca, start, Some(role)).map_err(|_| StatusWord::INCORRECT_DATA)?;
        Ok(cert)
    }

    /// Installs the package-signing certificate: issued by the installed CA with the
    /// package-signing role. `6985` without a CA.
    pub(crate) fn set_package_signing(&mut self, der: &[u8]) -> Result<(), StatusWord> {
        self.check_issued(der, Role::PackageSigning)?;
        self.package_signing = Some(der.to_vec());
        Ok(())
    }

    /// Installs the device certificate: issued by the installed CA with the device role, for
    /// this card's device key, naming `card_id` as its subject. `6985` without a CA or key.
    pub(crate) fn set_certificate(&mut self, der: &[u8], card_id: &[u8]) -> Result<(), StatusWord> {
        let public = self.public_key().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let info =
            self.check_issued(der, Role::Device)?.info().map_err(|_| StatusWord::INCORRECT_DATA)?;
        if info.public_key != public || info.subject_cn.as_bytes() != card_id {
            return Err(StatusWord::INCORRECT_DATA);
        }
        self.certificate = Some(der.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_crypto::rng::SeededRng;

    #[test]
    fn signs_only_labelled_structures_once_a_key_exists() {
        let mut id = DeviceIdentity::default();
        assert_eq!(
            id.sign(Purpose::DeviceAuthentication, b"C1", b"chal"),
            Err(StatusWord::REFERENCED_DATA_NOT_FOUND)
        );
        let public = id.generate(&mut SeededRng::from_u64(1));
        assert_eq!(id.public_key(), Some(public));
        let sig = id.sign(Purpose::DeviceAuthentication, b"C1", b"chal").unwrap();
        tessera_crypto::device::verify(
            &public,
            Purpose::DeviceAuthentication,
            b"C1",
            b"chal",
            &sig,
        )
        .unwrap();
        // The raw message is not what is signed.
        assert!(public.verify(b"chal", &sig).is_err());
        // Debug shows presence, never the key.
        let shown = format!("{id:?}");
        assert!(shown.contains("key: true") && !shown.contains(&hex::encode(&id.secret)));
    }
}
