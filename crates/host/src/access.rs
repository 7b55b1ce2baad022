//! The host side of the access card (seed 004 Figs. 5 and 7): a typed client of the `access`
//! applet over any [`CardChannel`], its enrolment, and [`AccessCardSession`], which relocks
//! the card after ten minutes without use (the card has no clock; see [`crate::home`]).
//!
//! The terminal uses it for the control channel: [`AccessCard::certificate`] is its TLS
//! client certificate (role access), [`AccessCard::sign_tls13`] its CertificateVerify
//! signature, [`AccessCard::home_server`] the pinned home server (SPKI hash and address) it
//! must find at the other end, [`AccessCard::profiles`] the screen and input layouts.

use std::time::Duration;

use tessera_card::pin::PinBlock;
use tessera_crypto::hash::sha256;
use tessera_crypto::rng::{OsRng, Rng};
use tessera_crypto::x509::{CaSigner, Certificate, Role};
use tessera_proto::access::{
    self as proto, EnrolmentProof, HomeServer, Profiles, REF_PIN, REF_PUK, Status,
};

use crate::channel::CardChannel;
pub use crate::home::{CardError, Clock, IDLE_LIMIT, IdleTimer, ManualClock, Result, SystemClock};
use crate::home::{certify, malformed, run, select_aid};

/// The wire formats of the access applet (`tessera-proto`), for callers of this module.
pub use tessera_proto::access as wire;

/// The SHA-256 of a certificate's SubjectPublicKeyInfo (DER): what the access card pins.
pub fn spki_sha256(certificate: &Certificate) -> Result<[u8; 32]> {
    let spki = certificate.info()?.public_key.to_spki_der()?;
    Ok(sha256(&spki))
}

/// A typed client of the access applet. Call [`AccessCard::select`] first.
#[derive(Debug)]
pub struct AccessCard<C> {
    channel: C,
}

impl<C: CardChannel> AccessCard<C> {
    /// A client over `channel` (no I/O).
    pub fn new(channel: C) -> AccessCard<C> {
        AccessCard { channel }
    }

    /// The channel.
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// Gives the channel back.
    pub fn into_inner(self) -> C {
        self.channel
    }

    fn run(&mut self, cmd: &tessera_apdu::Command, step: &'static str) -> Result<Vec<u8>> {
        run(&mut self.channel, cmd, step)
    }

    /// SELECT the access applet (locked).
    pub fn select(&mut self) -> Result<()> {
        select_aid(&mut self.channel, proto::AID, "SELECT of the access applet")
    }

    /// The applet status.
    pub fn status(&mut self) -> Result<Status> {
        let data = self.run(&proto::get_data_command(proto::DATA_STATUS), "GET DATA (status)")?;
        Status::parse(&data).map_err(malformed)
    }

    /// SET PINS, once, on a new card.
    pub fn set_pins(&mut self, pin: &PinBlock, puk: &PinBlock) -> Result<()> {
        self.run(&proto::set_pins_command(pin.as_bytes(), puk.as_bytes()), "SET PINS").map(|_| ())
    }

    /// VERIFY the PIN: locked → accessible.
    pub fn verify_pin(&mut self, pin: &PinBlock) -> Result<()> {
        self.run(&proto::verify_command(pin.as_bytes()), "VERIFY").map(|_| ())
    }

    /// VERIFY reset: back to locked.
    pub fn relock(&mut self) -> Result<()> {
        self.run(&proto::relock_command(), "VERIFY (reset)").map(|_| ())
    }

    /// RESET RETRY COUNTER of the PIN with the PUK.
    pub fn unblock(&mut self, puk: &PinBlock, new: &PinBlock) -> Result<()> {
        let cmd = proto::unblock_command(puk.as_bytes(), new.as_bytes());
        self.run(&cmd, "RESET RETRY COUNTER").map(|_| ())
    }

    /// CHANGE REFERENCE DATA of the PIN (`puk` false) or the PUK (`puk` true).
    pub fn change_pin(&mut self, puk: bool, old: &PinBlock, new: &PinBlock) -> Result<()> {
        let r = if puk { REF_PUK } else { REF_PIN };
        let cmd = proto::change_command(r, old.as_bytes(), new.as_bytes());
        self.run(&cmd, "CHANGE REFERENCE DATA").map(|_| ())
    }

    /// The access certificate (role access): the control channel's client certificate.
    pub fn certificate(&mut self) -> Result<Certificate> {
        let der = self.run(
            &proto::get_data_command(proto::DATA_ACCESS_CERTIFICATE),
            "GET DATA (access certificate)",
        )?;
        Certificate::from_der(der).map_err(malformed)
    }

    /// The issuer CA certificate installed on the card.
    pub fn ca_certificate(&mut self) -> Result<Certificate> {
        let der =
            self.run(&proto::get_data_command(proto::DATA_CA_CERTIFICATE), "GET DATA (CA)")?;
        Certificate::from_der(der).map_err(malformed)
    }

    /// TLS 1.3 client CertificateVerify signature (DER) over the content built from this
    /// SHA-256 transcript hash. Unlocked only.
    pub fn sign_tls13(&mut self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>> {
        self.run(&proto::sign_tls13_command(transcript_hash), "SIGN CV (TLS 1.3)")
    }

    /// TLS 1.2 client CertificateVerify signature (DER) over the handshake messages.
    pub fn sign_tls12(&mut self, handshake_messages: &[u8]) -> Result<Vec<u8>> {
        self.run(&proto::sign_tls12_command(handshake_messages), "SIGN CV (TLS 1.2)")
    }

    /// The pinned home server. Unlocked only; `None` when none is pinned.
    pub fn home_server(&mut self) -> Result<Option<HomeServer>> {
        let r = self.channel.transmit(&proto::get_data_command(proto::DATA_HOME_SERVER))?;
        if r.sw == tessera_apdu::StatusWord::REFERENCED_DATA_NOT_FOUND {
            return Ok(None);
        }
        let data = crate::home::check(r, "GET DATA (home server)")?;
        HomeServer::parse(&data).map(Some).map_err(malformed)
    }

    /// Pins the home server, the first time (unlocked).
    pub fn set_home_server(&mut self, server: &HomeServer) -> Result<()> {
        self.run(&proto::put_home_server_command(server), "PUT DATA (home server)").map(|_| ())
    }

    /// Replaces the pinned home server, authorised by the PUK (unlocked).
    pub fn replace_home_server(&mut self, puk: &PinBlock, server: &HomeServer) -> Result<()> {
        let cmd = proto::replace_home_server_command(puk.as_bytes(), server);
        self.run(&cmd, "PUT DATA (home server, PUK)").map(|_| ())
    }

    /// The terminal profiles (unlocked).
    pub fn profiles(&mut self) -> Result<Profiles> {
        let data =
            self.run(&proto::get_data_command(proto::DATA_PROFILES), "GET DATA (profiles)")?;
        Profiles::parse(&data).map_err(malformed)
    }

    /// Replaces the terminal profiles (unlocked).
    pub fn set_profiles(&mut self, profiles: &Profiles) -> Result<()> {
        self.run(&proto::put_profiles_command(profiles), "PUT DATA (profiles)").map(|_| ())
    }

    /// Enrols the card (unlocked, card id `card_id`): installs the CA certificate, generates
    /// the access key, checks its proof of possession, issues its certificate (role access,
    /// common name `subject`) with `ca` and installs it.
    pub fn enrol(
        &mut self,
        ca: &dyn CaSigner,
        ca_certificate: &Certificate,
        card_id: &[u8],
        subject: &str,
    ) -> Result<Certificate> {
        self.run(
            &proto::install_certificate_command(proto::CERT_CA, ca_certificate.der()),
            "INSTALL CERTIFICATE (CA)",
        )?;
        let mut challenge = [0u8; proto::CHALLENGE_LEN];
        OsRng.fill_random(&mut challenge);
        let data = self.run(&proto::generate_key_command(&challenge), "GENERATE KEY")?;
        let proof = EnrolmentProof::parse(&data).map_err(malformed)?;
        let message =
            proto::enrolment_message(card_id, proto::KEY_ACCESS, &proof.public_key, &challenge);
        let certificate = certify(ca, ca_certificate, &proof, &message, subject, Role::Access)?;
        self.run(
            &proto::install_certificate_command(proto::CERT_ACCESS, certificate.der()),
            "INSTALL CERTIFICATE (access)",
        )?;
        Ok(certificate)
    }
}

/// An access card in use by the terminal, relocked (VERIFY reset) before any command once it
/// has been unused for the idle limit (ten minutes by default); that command then fails
/// with [`CardError::IdleFallback`] and the user must enter the PIN again.
#[derive(Debug)]
pub struct AccessCardSession<C, K = SystemClock> {
    card: AccessCard<C>,
    idle: IdleTimer<K>,
}

impl<C: CardChannel, K: Clock> AccessCardSession<C, K> {
    /// A session over a card whose access applet is selected.
    pub fn new(card: AccessCard<C>, clock: K) -> Self {
        AccessCardSession { card, idle: IdleTimer::new(clock) }
    }

    /// A session over a card the caller has just unlocked with VERIFY (the idle clock starts
    /// now): for a terminal that verifies the PIN before it builds the session.
    pub fn unlocked(card: AccessCard<C>, clock: K) -> Self {
        let mut session = Self::new(card, clock);
        session.idle.start();
        session
    }

    /// Sets another idle limit.
    pub fn with_idle_limit(mut self, limit: Duration) -> Self {
        self.idle = self.idle.with_limit(limit);
        self
    }

    /// True while the host believes the card unlocked.
    pub fn is_unlocked(&self) -> bool {
        self.idle.is_running()
    }

    /// Relocks the card if it has been idle for the limit; true if it did.
    pub fn poll(&mut self) -> Result<bool> {
        self.expire().map(|idle| idle.is_some())
    }

    /// The idle check: VERIFY reset and the idle time if the timer expired.
    fn expire(&mut self) -> Result<Option<Duration>> {
        match self.idle.expire() {
            Some(idle) => self.card.relock().map(|()| Some(idle)),
            None => Ok(None),
        }
    }

    /// VERIFY the PIN; starts the idle clock.
    pub fn verify_pin(&mut self, pin: &PinBlock) -> Result<()> {
        self.poll()?;
        self.card.verify_pin(pin)?;
        self.idle.start();
        Ok(())
    }

    /// Relocks now (the user's "operation over").
    pub fn relock(&mut self) -> Result<()> {
        self.idle.stop();
        self.card.relock()
    }

    /// The card after the idle check, the use recorded.
    pub fn card(&mut self) -> Result<&mut AccessCard<C>> {
        if let Some(idle) = self.expire()? {
            return Err(CardError::IdleFallback(idle));
        }
        self.idle.touch();
        Ok(&mut self.card)
    }

    /// [`AccessCard::sign_tls13`] after the idle check.
    pub fn sign_tls13(&mut self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>> {
        self.card()?.sign_tls13(transcript_hash)
    }

    /// [`AccessCard::sign_tls12`] after the idle check.
    pub fn sign_tls12(&mut self, handshake_messages: &[u8]) -> Result<Vec<u8>> {
        self.card()?.sign_tls12(handshake_messages)
    }

    /// The card without the idle check (status, certificates).
    pub fn card_unchecked(&mut self) -> &mut AccessCard<C> {
        &mut self.card
    }

    /// Gives the card back.
    pub fn into_inner(self) -> AccessCard<C> {
        self.card
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_crypto::tls::certificate_verify::verify_tls13_client;
    use tessera_crypto::x509::verify_chain;
    use tessera_proto::access::TerminalProfile;

    use super::*;
    use crate::home::tests::{blank, ca, pin};

    #[test]
    fn enrol_pin_the_home_server_and_relock_when_idle() {
        let ca = ca();
        let mut card = AccessCard::new(blank(b"ACCESS-1"));
        card.select().unwrap();
        card.set_pins(&pin(b"4321"), &pin(b"87654321")).unwrap();
        assert!(matches!(card.home_server(), Err(CardError::Locked)));
        card.verify_pin(&pin(b"4321")).unwrap();
        let cert = card.enrol(&ca.key, &ca.certificate, b"ACCESS-1", "alice's phone").unwrap();
        verify_chain(&cert, &[], &ca.certificate, 1_800_000_000, Some(Role::Access)).unwrap();
        assert_eq!(card.certificate().unwrap(), cert);
        assert_eq!(card.home_server().unwrap(), None);
        let pinned = HomeServer {
            spki_sha256: spki_sha256(&ca.certificate).unwrap(),
            address: "home.example:8443".into(),
        };
        card.set_home_server(&pinned).unwrap();
        assert_eq!(card.home_server().unwrap(), Some(pinned.clone()));
        let other = HomeServer { spki_sha256: [0; 32], address: "evil.example:1".into() };
        assert!(card.set_home_server(&other).is_err());
        assert!(matches!(
            card.replace_home_server(&pin(b"00000000"), &other),
            Err(CardError::WrongPin { tries_left: 2 })
        ));
        assert_eq!(card.home_server().unwrap(), Some(pinned));
        let profiles = Profiles(vec![TerminalProfile {
            name: "phone".into(),
            screen: "compact".into(),
            input: "keypad".into(),
        }]);
        card.set_profiles(&profiles).unwrap();
        assert_eq!(card.profiles().unwrap(), profiles);

        let clock = ManualClock::new();
        let mut session = AccessCardSession::new(card, clock.clone());
        session.verify_pin(&pin(b"4321")).unwrap();
        let sig = session.sign_tls13(&[3; 32]).unwrap();
        verify_tls13_client(&cert.info().unwrap().public_key, &[3; 32], &sig).unwrap();
        clock.advance(IDLE_LIMIT);
        assert!(matches!(session.sign_tls13(&[3; 32]), Err(CardError::IdleFallback(_))));
        assert!(!session.card_unchecked().status().unwrap().accessible);
        assert!(matches!(session.card_unchecked().sign_tls13(&[3; 32]), Err(CardError::Locked)));
    }
}
