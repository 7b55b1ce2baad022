//! A test CA and terminal double, enrolment helpers, and the pairing applet's tear scenarios:
//! every state-changing command (GENERATE KEY, both INSTALL CERTIFICATEs, LOAD CRL, PAIR
//! CONFIRM, the first authentication that commits a staged pairing, every service write).
//!
//! [`TestTerminal`] computes the terminal side of setup and authentication from the same
//! `tessera-proto` definitions the real terminal (`tessera_host::pairing`) uses; it exists so
//! card-level attack and tearing tests can drive the applet without the host crate.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::ecdh::EphemeralSecret;
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::keys::AesKey;
use tessera_crypto::rng::{Rng, SeededRng};
use tessera_crypto::scp03::StaticKeys;
use tessera_crypto::x509::{
    self, Certificate, Crl, IssueRequest, Revoked, Role, Validity, self_signed_ca,
};
use tessera_proto::pairing::{
    self as proto, CERT_CA, CERT_CARD, EnrolmentProof, PairBegin, PairBeginResponse, PairConfirm,
    ServiceRequest, Transcript,
};

use super::{AID, SESSION_LEVEL, confirmations, pairing_key, session_keys};
use crate::applet::{TearDriver, TearError, TearScenario};
use crate::applets::isd;
use crate::pin::PinBlock;
use crate::script::Script;

fn unexpected(what: impl Into<String>) -> TearError {
    TearError::Unexpected(what.into())
}

/// The validity window of the test certificates (2023-11 to 2033-05).
pub const VALIDITY: Validity = Validity { not_before: 1_700_000_000, not_after: 2_000_000_000 };

/// A test certification authority with deterministic keys.
pub struct TestCa {
    key: SigningKey,
    /// The CA certificate.
    pub certificate: Certificate,
    rng: SeededRng,
}

impl TestCa {
    /// A CA named `name` with keys from `seed`.
    pub fn new(name: &str, seed: u64) -> Result<TestCa, TearError> {
        let mut rng = SeededRng::from_u64(seed);
        let key = SigningKey::generate(&mut rng);
        let certificate = self_signed_ca(&key, name, &[0x01], VALIDITY)
            .map_err(|e| unexpected(format!("CA: {e}")))?;
        Ok(TestCa { key, certificate, rng })
    }

    /// Issues an end-entity certificate.
    pub fn issue(
        &mut self,
        name: &str,
        public_key: &PublicKey,
        role: Role,
        validity: Validity,
    ) -> Result<Certificate, TearError> {
        let serial = x509::random_serial(&mut self.rng);
        x509::issue(
            &self.key,
            &self.certificate,
            &IssueRequest {
                subject_cn: name,
                public_key,
                roles: &[role],
                serial: &serial,
                validity,
                ca_path_len: None,
            },
        )
        .map_err(|e| unexpected(format!("issue: {e}")))
    }

    /// A CRL revoking `serials`, issued at `this_update`.
    pub fn crl(&self, serials: &[&[u8]], this_update: i64) -> Result<Crl, TearError> {
        let revoked: Vec<Revoked> = serials
            .iter()
            .map(|s| Revoked { serial: s.to_vec(), revoked_at: this_update })
            .collect();
        x509::make_crl(&self.key, &self.certificate, &revoked, this_update, this_update + 86_400, 1)
            .map_err(|e| unexpected(format!("CRL: {e}")))
    }
}

/// The serial number of a certificate (its key id).
pub fn serial(cert: &Certificate) -> Result<Vec<u8>, TearError> {
    cert.info().map(|i| i.serial).map_err(|e| unexpected(format!("certificate: {e}")))
}

/// VERIFY of the global PIN (the ISD must be selected).
pub fn verify_pin_command(pin: &[u8]) -> Result<Command, TearError> {
    let block = PinBlock::from_value(pin).map_err(|sw| unexpected(format!("PIN block: {sw}")))?;
    Ok(Command::new(0x00, 0x20, 0x00, 0x81).with_data(block.as_bytes().to_vec()))
}

/// Selects the ISD, verifies the scenarios' PIN, selects the pairing applet.
pub fn verify_pin(s: &mut Script<'_>) -> Result<(), TearError> {
    s.select(isd::AID)?;
    s.expect(&verify_pin_command(isd::scenarios::PIN)?, StatusWord::SUCCESS)?;
    s.select(AID)?;
    Ok(())
}

/// GENERATE KEY with a fixed challenge; checks the proof of possession, returns the key.
pub fn generate_key(s: &mut Script<'_>) -> Result<PublicKey, TearError> {
    let challenge = [0xC4; proto::CHALLENGE_LEN];
    let r = s.expect(&proto::generate_key_command(&challenge), StatusWord::SUCCESS)?;
    let proof = EnrolmentProof::parse(&r.data).map_err(|e| unexpected(e.to_string()))?;
    let key = PublicKey::from_sec1_bytes(&proof.public_key)
        .map_err(|e| unexpected(format!("card key: {e}")))?;
    let signature =
        Signature::from_bytes(&proof.signature).map_err(|e| unexpected(e.to_string()))?;
    key.verify(
        &proto::enrolment_message(isd::scenarios::CARD_ID, &proof.public_key, &challenge),
        &signature,
    )
    .map_err(|_| unexpected("proof of possession does not verify"))?;
    Ok(key)
}

/// Issues the card (ISD personalisation), verifies the PIN and enrols the pairing applet with
/// `ca`. Returns the card certificate. The pairing applet is left selected, PIN verified.
pub fn enrol(s: &mut Script<'_>, ca: &mut TestCa) -> Result<Certificate, TearError> {
    isd::scenarios::personalize(s)?;
    verify_pin(s)?;
    let key = generate_key(s)?;
    s.expect(
        &proto::install_certificate_command(CERT_CA, ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    let cert = ca.issue("card", &key, Role::Card, VALIDITY)?;
    s.expect(&proto::install_certificate_command(CERT_CARD, cert.der()), StatusWord::SUCCESS)?;
    Ok(cert)
}

/// A terminal double: its key, certificate and, after setup, the pairing.
pub struct TestTerminal {
    /// The terminal's signing key.
    pub key: SigningKey,
    /// Its certificate.
    pub certificate: Certificate,
    /// The pairing key agreed at the last completed setup.
    pub pairing_key: Option<AesKey>,
    /// The card's key id learnt at setup.
    pub card_key_id: Vec<u8>,
    rng: SeededRng,
}

/// A PAIR BEGIN answered, before PAIR CONFIRM.
pub struct HalfSetup {
    /// PAIR CONFIRM, ready to send.
    pub confirm: PairConfirm,
    pairing_key: AesKey,
    card_key_id: Vec<u8>,
}

impl TestTerminal {
    /// A terminal with a key from `seed` and a certificate from `ca` (role terminal).
    pub fn new(ca: &mut TestCa, seed: u64) -> Result<TestTerminal, TearError> {
        let mut rng = SeededRng::from_u64(seed);
        let key = SigningKey::generate(&mut rng);
        let certificate = ca.issue("terminal", &key.public_key(), Role::Terminal, VALIDITY)?;
        Ok(TestTerminal { key, certificate, pairing_key: None, card_key_id: Vec::new(), rng })
    }

    /// The terminal's key id.
    pub fn key_id(&self) -> Result<Vec<u8>, TearError> {
        serial(&self.certificate)
    }

    /// PAIR BEGIN as this terminal would send it, with a fresh ephemeral key.
    pub fn begin_command(&mut self) -> (EphemeralSecret, PairBegin) {
        let mut nonce = [0u8; proto::NONCE_LEN];
        self.rng.fill_random(&mut nonce);
        let ephemeral = EphemeralSecret::generate(&mut self.rng);
        let begin = PairBegin {
            nonce,
            ephemeral: ephemeral.public_key().to_sec1_bytes(),
            certificate: self.certificate.der().to_vec(),
        };
        (ephemeral, begin)
    }

    /// Sends PAIR BEGIN, checks the card's answer (signature, confirmation; the chain is the
    /// host's business) and prepares PAIR CONFIRM.
    pub fn begin(&mut self, s: &mut Script<'_>) -> Result<HalfSetup, TearError> {
        let (ephemeral, begin) = self.begin_command();
        let r = s.expect(&begin.command(), StatusWord::SUCCESS)?;
        let answer = PairBeginResponse::parse(&r.data).map_err(|e| unexpected(e.to_string()))?;
        let card_cert = Certificate::from_der(answer.certificate.clone())
            .map_err(|e| unexpected(e.to_string()))?;
        let card_info = card_cert.info().map_err(|e| unexpected(e.to_string()))?;
        let card_ephemeral =
            PublicKey::from_sec1_bytes(&answer.ephemeral).map_err(|e| unexpected(e.to_string()))?;
        let transcript = Transcript {
            card_certificate: &answer.certificate,
            terminal_certificate: &begin.certificate,
            terminal_ephemeral: &begin.ephemeral,
            card_ephemeral: &answer.ephemeral,
            terminal_nonce: &begin.nonce,
            card_nonce: &answer.nonce,
        };
        let signature =
            Signature::from_bytes(&answer.signature).map_err(|e| unexpected(e.to_string()))?;
        card_info
            .public_key
            .verify(&transcript.card_message(), &signature)
            .map_err(|_| unexpected("card signature does not verify"))?;
        let context = transcript.context();
        let key = pairing_key(&ephemeral.diffie_hellman(&card_ephemeral), &context);
        let (card_confirmation, terminal_confirmation) = confirmations(&key, &context);
        if card_confirmation != answer.confirmation {
            return Err(unexpected("card key confirmation does not verify"));
        }
        Ok(HalfSetup {
            confirm: PairConfirm {
                signature: self.key.sign(&transcript.terminal_message()).to_bytes(),
                confirmation: terminal_confirmation,
            },
            pairing_key: key,
            card_key_id: card_info.serial,
        })
    }

    /// Completes a setup after PAIR CONFIRM answered `9000`.
    pub fn finish(&mut self, half: HalfSetup) {
        self.pairing_key = Some(half.pairing_key);
        self.card_key_id = half.card_key_id;
    }

    /// Full setup (PIN already verified, pairing applet selected).
    pub fn pair(&mut self, s: &mut Script<'_>) -> Result<(), TearError> {
        let half = self.begin(s)?;
        s.expect(&half.confirm.command(), StatusWord::SUCCESS)?;
        self.finish(half);
        Ok(())
    }

    /// This terminal's SCP03 keys for the pairing.
    pub fn session_keys(&self) -> Result<StaticKeys, TearError> {
        let key = self.pairing_key.as_ref().ok_or_else(|| unexpected("not paired"))?;
        Ok(session_keys(key, &self.card_key_id, &self.key_id()?))
    }

    /// USE PAIRING and an SCP03 session at level 33 (pairing applet selected).
    pub fn authenticate(&mut self, s: &mut Script<'_>) -> Result<(), TearError> {
        s.expect(&proto::use_pairing_command(&self.key_id()?), StatusWord::SUCCESS)?;
        s.open_session(&self.session_keys()?, SESSION_LEVEL)
    }
}

/// Sends one service operation through the script's open session.
pub fn invoke(
    s: &mut Script<'_>,
    request: &ServiceRequest,
    sw: StatusWord,
) -> Result<Response, TearError> {
    s.secure(&request.command(), sw)
}

/// An enrolled card with a committed pairing with a terminal; the session is open.
pub fn paired(s: &mut Script<'_>) -> Result<(TestCa, TestTerminal), TearError> {
    let mut ca = TestCa::new("Test CA", 0xCA)?;
    enrol(s, &mut ca)?;
    let mut terminal = TestTerminal::new(&mut ca, 0x7E)?;
    terminal.pair(s)?;
    terminal.authenticate(s)?;
    Ok((ca, terminal))
}

fn generate(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    isd::scenarios::personalize(&mut s)?;
    verify_pin(&mut s)?;
    s.arm();
    generate_key(&mut s).map(|_| ())
}

fn install_ca(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let ca = TestCa::new("Test CA", 0xCA)?;
    isd::scenarios::personalize(&mut s)?;
    verify_pin(&mut s)?;
    generate_key(&mut s)?;
    s.arm();
    s.expect(
        &proto::install_certificate_command(CERT_CA, ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    Ok(())
}

fn install_card(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let mut ca = TestCa::new("Test CA", 0xCA)?;
    isd::scenarios::personalize(&mut s)?;
    verify_pin(&mut s)?;
    let key = generate_key(&mut s)?;
    s.expect(
        &proto::install_certificate_command(CERT_CA, ca.certificate.der()),
        StatusWord::SUCCESS,
    )?;
    let cert = ca.issue("card", &key, Role::Card, VALIDITY)?;
    s.arm();
    s.expect(&proto::install_certificate_command(CERT_CARD, cert.der()), StatusWord::SUCCESS)?;
    Ok(())
}

fn load_crl(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let (ca, terminal) = paired(&mut s)?;
    let crl = ca.crl(&[&terminal.key_id()?], 1_800_000_000)?;
    s.arm();
    s.expect(&proto::load_crl_command(crl.der()), StatusWord::SUCCESS)?;
    Ok(())
}

fn pair_confirm(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let mut ca = TestCa::new("Test CA", 0xCA)?;
    enrol(&mut s, &mut ca)?;
    let mut terminal = TestTerminal::new(&mut ca, 0x7E)?;
    let half = terminal.begin(&mut s)?;
    s.arm();
    s.expect(&half.confirm.command(), StatusWord::SUCCESS)?;
    Ok(())
}

fn first_authentication(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let mut ca = TestCa::new("Test CA", 0xCA)?;
    enrol(&mut s, &mut ca)?;
    let mut terminal = TestTerminal::new(&mut ca, 0x7E)?;
    terminal.pair(&mut s)?;
    s.expect(&proto::use_pairing_command(&terminal.key_id()?), StatusWord::SUCCESS)?;
    s.arm();
    s.open_session(&terminal.session_keys()?, SESSION_LEVEL)
}

fn ledger_credit(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    paired(&mut s)?;
    s.arm();
    let credit = ServiceRequest {
        service: proto::ServiceId::Ledger,
        op: proto::ledger::OP_CREDIT,
        data: 500u64.to_be_bytes().to_vec(),
    };
    invoke(&mut s, &credit, StatusWord::SUCCESS).map(|_| ())
}

fn note_put(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    paired(&mut s)?;
    s.arm();
    let put = ServiceRequest {
        service: proto::ServiceId::Notes,
        op: proto::notes::OP_PUT,
        data: b"\x03the door code is 0000".to_vec(),
    };
    invoke(&mut s, &put, StatusWord::SUCCESS).map(|_| ())
}

fn ledger_debit(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    paired(&mut s)?;
    let credit = ServiceRequest {
        service: proto::ServiceId::Ledger,
        op: proto::ledger::OP_CREDIT,
        data: 500u64.to_be_bytes().to_vec(),
    };
    invoke(&mut s, &credit, StatusWord::SUCCESS)?;
    s.arm();
    let debit = ServiceRequest {
        service: proto::ServiceId::Ledger,
        op: proto::ledger::OP_DEBIT,
        data: 120u64.to_be_bytes().to_vec(),
    };
    invoke(&mut s, &debit, StatusWord::SUCCESS).map(|_| ())
}

fn note_delete(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    paired(&mut s)?;
    let put = ServiceRequest {
        service: proto::ServiceId::Notes,
        op: proto::notes::OP_PUT,
        data: b"\x05gone soon".to_vec(),
    };
    invoke(&mut s, &put, StatusWord::SUCCESS)?;
    s.arm();
    let delete = ServiceRequest {
        service: proto::ServiceId::Notes,
        op: proto::notes::OP_DELETE,
        data: vec![5],
    };
    invoke(&mut s, &delete, StatusWord::SUCCESS).map(|_| ())
}

/// Every state-changing command of the pairing applet, as tear scenarios.
pub fn all() -> Vec<TearScenario> {
    vec![
        TearScenario { name: "pairing GENERATE KEY", script: generate },
        TearScenario { name: "pairing INSTALL CERTIFICATE (CA)", script: install_ca },
        TearScenario { name: "pairing INSTALL CERTIFICATE (card)", script: install_card },
        TearScenario { name: "pairing LOAD CRL (drops a revoked pairing)", script: load_crl },
        TearScenario { name: "pairing PAIR CONFIRM (stages)", script: pair_confirm },
        TearScenario {
            name: "pairing first EXTERNAL AUTHENTICATE (commits)",
            script: first_authentication,
        },
        TearScenario { name: "ledger CREDIT", script: ledger_credit },
        TearScenario { name: "ledger DEBIT", script: ledger_debit },
        TearScenario { name: "notes PUT", script: note_put },
        TearScenario { name: "notes DELETE", script: note_delete },
    ]
}
