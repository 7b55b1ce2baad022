//! Setup (Fig. 7), per-insertion authentication (Fig. 6), the paired session (Fig. 8) and the
//! orchestration of Fig. 5, on the terminal side.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::applets::pairing::{
    SESSION_LEVEL, confirmation_matches, confirmations, pairing_key, session_keys,
};
use tessera_card::pin::PinBlock;
use tessera_crypto::CryptoError;
use tessera_crypto::ecdh::EphemeralSecret;
use tessera_crypto::ecdsa::{PublicKey, Signature};
use tessera_crypto::rng::{OsRng, Rng};
use tessera_crypto::scp03::Scp03Host;
use tessera_crypto::x509::{Certificate, Role, verify_chain};
use tessera_proto::pairing::{
    self as proto, AID, NONCE_LEN, PAIRING_KVN, PairBegin, PairBeginResponse, PairConfirm,
    ServiceRequest, Transcript,
};

use super::enrol::{load_crl, select, verify_pin};
use super::files::{PairingStore, TerminalIdentity};
use super::{PairingError, Result};
use crate::channel::CardChannel;
use crate::secure::{SecureChannel, SecureChannelError};

/// A terminal: its identity and its clock.
#[derive(Debug, Clone)]
pub struct Terminal {
    /// Key, certificate, CA certificate, CRL.
    pub identity: TerminalIdentity,
    /// The time at which the card's certificate is judged (Unix seconds).
    pub now: i64,
}

impl Terminal {
    /// A terminal judging time by the system clock.
    pub fn new(identity: TerminalIdentity) -> Self {
        Self { identity, now: super::ca::now() }
    }

    /// Checks a card certificate: chain to the CA, role card, valid now, not revoked by the
    /// terminal's CRL (which must be current). Returns its serial and key.
    fn check_card(&self, der: &[u8]) -> Result<(Vec<u8>, PublicKey)> {
        let cert = Certificate::from_der(der.to_vec())
            .map_err(|e| PairingError::Certificate(format!("card certificate: {e}")))?;
        let info = verify_chain(&cert, &[], &self.identity.ca, self.now, Some(Role::Card))
            .map_err(|e| PairingError::Certificate(format!("card certificate: {e}")))?;
        if let Some(crl) = &self.identity.crl {
            let revoked = crl
                .is_revoked(&self.identity.ca, &info.serial, self.now)
                .map_err(|e| PairingError::Certificate(format!("terminal's CRL: {e}")))?;
            if revoked {
                return Err(PairingError::Certificate("the card certificate is revoked".into()));
            }
        }
        Ok((info.serial, info.public_key))
    }

    /// Setup (Fig. 7) with the card in `channel`: the PIN must be verified and the pairing
    /// applet selected. Pushes the terminal's CRL to the card first (best effort). Records the pairing in
    /// `store` only once the card accepted PAIR CONFIRM; returns the card's key id.
    pub fn setup(
        &self,
        channel: &mut dyn CardChannel,
        store: &mut PairingStore,
        rng: &mut dyn Rng,
    ) -> Result<Vec<u8>> {
        if let Some(crl) = &self.identity.crl {
            // Best effort: a card of another CA refuses the list (and PAIR BEGIN will refuse
            // the terminal); one holding a newer list keeps it.
            match load_crl(channel, crl.der()) {
                Ok(()) | Err(PairingError::Card { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_random(&mut nonce);
        let ephemeral = EphemeralSecret::generate(rng);
        let begin = PairBegin {
            nonce,
            ephemeral: ephemeral.public_key().to_sec1_bytes(),
            certificate: self.identity.certificate.der().to_vec(),
        };
        let r = channel.transmit(&begin.command())?;
        if r.sw != StatusWord::SUCCESS {
            return Err(PairingError::card("PAIR BEGIN", r.sw));
        }
        let answer = PairBeginResponse::parse(&r.data)
            .map_err(|e| PairingError::Malformed(e.to_string()))?;
        let (card_key_id, card_key) = self.check_card(&answer.certificate)?;
        let card_ephemeral = PublicKey::from_sec1_bytes(&answer.ephemeral)
            .map_err(|_| PairingError::Malformed("card ephemeral key".into()))?;
        let transcript = Transcript {
            card_certificate: &answer.certificate,
            terminal_certificate: &begin.certificate,
            terminal_ephemeral: &begin.ephemeral,
            card_ephemeral: &answer.ephemeral,
            terminal_nonce: &begin.nonce,
            card_nonce: &answer.nonce,
        };
        let signature = Signature::from_bytes(&answer.signature)
            .map_err(|_| PairingError::Malformed("card signature".into()))?;
        card_key
            .verify(&transcript.card_message(), &signature)
            .map_err(|_| PairingError::Verification("the card's setup signature".into()))?;
        let context = transcript.context();
        let key = pairing_key(&ephemeral.diffie_hellman(&card_ephemeral), &context);
        let (card_confirmation, terminal_confirmation) = confirmations(&key, &context);
        if !confirmation_matches(&card_confirmation, &answer.confirmation) {
            return Err(PairingError::Verification("the card's key confirmation".into()));
        }
        let confirm = PairConfirm {
            signature: self.identity.sign(&transcript.terminal_message())?.to_bytes(),
            confirmation: terminal_confirmation,
        };
        let r = channel.transmit(&confirm.command())?;
        if r.sw != StatusWord::SUCCESS {
            return Err(PairingError::card("PAIR CONFIRM", r.sw));
        }
        store.insert(card_key_id.clone(), key);
        Ok(card_key_id)
    }

    /// Per-insertion authentication (Fig. 6) with the pairing applet selected: USE PAIRING,
    /// INITIALIZE UPDATE (the card's diversification data names the card), EXTERNAL
    /// AUTHENTICATE at level 33 under the pairing's keys.
    pub fn authenticate<C: CardChannel>(
        &self,
        mut channel: C,
        store: &PairingStore,
        rng: &mut dyn Rng,
    ) -> std::result::Result<PairedSession<C>, (C, PairingError)> {
        match self.handshake(&mut channel, store, rng) {
            Ok((scp, card_key_id)) => Ok(PairedSession {
                channel: SecureChannel::from_session(channel, scp),
                card_key_id,
            }),
            Err(e) => Err((channel, e)),
        }
    }

    fn handshake(
        &self,
        channel: &mut dyn CardChannel,
        store: &PairingStore,
        rng: &mut dyn Rng,
    ) -> Result<(Scp03Host, Vec<u8>)> {
        let terminal_key_id = self.identity.key_id()?;
        let r = channel.transmit(&proto::use_pairing_command(&terminal_key_id))?;
        match r.sw {
            StatusWord::SUCCESS => {}
            StatusWord::REFERENCED_DATA_NOT_FOUND => return Err(PairingError::NotPaired),
            sw => return Err(PairingError::card("USE PAIRING", sw)),
        }
        let (handshake, iu) = Scp03Host::initialize_update(PAIRING_KVN, 0, rng)?;
        let r = channel.transmit(&iu)?;
        if r.sw != StatusWord::SUCCESS {
            return Err(PairingError::card("INITIALIZE UPDATE", r.sw));
        }
        let hello = handshake.card_hello(&r)?;
        let candidates: Vec<_> = store.matching(&hello.diversification_data).collect();
        let [pairing] = candidates.as_slice() else {
            return Err(PairingError::NotPaired);
        };
        let keys = session_keys(&pairing.key, &pairing.card_key_id, &terminal_key_id);
        let (pending, ea) = hello
            .external_authenticate(&keys, SESSION_LEVEL, None)
            .map_err(|_| PairingError::Verification("the card cryptogram".into()))?;
        let r = channel.transmit(&ea)?;
        if r.sw != StatusWord::SUCCESS {
            return Err(PairingError::card("EXTERNAL AUTHENTICATE", r.sw));
        }
        let scp = pending.finish(&r)?;
        Ok((scp, pairing.card_key_id.clone()))
    }
}

/// An authenticated session with a card's pairing applet at level 33 (C-MAC, C-DECRYPTION,
/// R-MAC, R-ENCRYPTION): every service command is wrapped, every answer unwrapped.
pub struct PairedSession<C> {
    channel: SecureChannel<C>,
    card_key_id: Vec<u8>,
}

impl<C> std::fmt::Debug for PairedSession<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PairedSession({})", hex::encode_upper(&self.card_key_id))
    }
}

impl<C: CardChannel> PairedSession<C> {
    /// The card's key id.
    pub fn card_key_id(&self) -> &[u8] {
        &self.card_key_id
    }

    /// Sends a plain command protected; returns the wire command, the wire response and the
    /// verified plain response. An error status the card sends bare (GlobalPlatform: no R-MAC
    /// on errors) is returned as is: only successes are authenticated.
    pub fn transmit_shown(&mut self, command: &Command) -> Result<(Command, Response, Response)> {
        self.channel.transmit_shown(command).map_err(|e| match e {
            SecureChannelError::Channel(e) => e.into(),
            SecureChannelError::Crypto(
                CryptoError::AuthenticationFailed | CryptoError::Malformed(_),
            ) => PairingError::Verification(
                "the response's R-MAC (tampered on the way back?)".into(),
            ),
            SecureChannelError::Crypto(e) => e.into(),
            SecureChannelError::Refused { step, sw } => PairingError::card(step, sw),
        })
    }

    /// Runs one service operation; `Err` for a refusal or a response that does not verify.
    pub fn invoke(&mut self, request: &ServiceRequest) -> Result<Vec<u8>> {
        let (_, _, plain) = self.transmit_shown(&request.command())?;
        if plain.sw != StatusWord::SUCCESS {
            return Err(PairingError::card("INVOKE", plain.sw));
        }
        Ok(plain.data)
    }

    /// The channel underneath (the session ends on the host side).
    pub fn into_inner(self) -> C {
        self.channel.into_inner()
    }
}

/// How [`connect`] got its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// The existing pairing authenticated at once.
    Authenticated,
    /// Authentication failed; setup ran (with the PIN) and the new pairing authenticated.
    Repaired,
}

/// Fig. 5: select the pairing applet and authenticate; on failure ask for the PIN (only
/// then), verify it, run setup and authenticate again; a second failure stops with
/// [`PairingError::SecondFailure`]. Transport failures stop at once. `store` is updated in
/// memory; the caller saves it when the answer is [`Connection::Repaired`].
pub fn connect<C: CardChannel>(
    terminal: &Terminal,
    mut channel: C,
    store: &mut PairingStore,
    pin: &mut dyn FnMut() -> Result<PinBlock>,
) -> Result<(PairedSession<C>, Connection)> {
    let mut rng = OsRng;
    select(&mut channel, AID, "SELECT of the pairing applet")?;
    let channel = match terminal.authenticate(channel, store, &mut rng) {
        Ok(session) => return Ok((session, Connection::Authenticated)),
        Err((_, PairingError::Channel(e))) => return Err(PairingError::Channel(e)),
        Err((channel, _first)) => channel,
    };
    let mut channel = channel;
    let pin = pin()?;
    verify_pin(&mut channel, &pin)?;
    select(&mut channel, AID, "SELECT of the pairing applet")?;
    terminal.setup(&mut channel, store, &mut rng)?;
    match terminal.authenticate(channel, store, &mut rng) {
        Ok(session) => Ok((session, Connection::Repaired)),
        Err((_, e)) => Err(PairingError::SecondFailure(Box::new(e))),
    }
}
