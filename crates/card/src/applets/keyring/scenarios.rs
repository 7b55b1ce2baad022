//! Issuance helpers, a minimal server double, and the keyring's tear scenarios: every renewal
//! form in both modes, and personalisation.
//!
//! [`TestServer`] knows the keys a card was issued with and computes the server side of the
//! authentication and of RENEW. It does not track renewed keys (the real server logic lives in
//! `tessera-server`'s `keyring` module); it exists so tear scenarios and card-level attack
//! tests can drive the applet without the server crate.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::ecdh::EphemeralSecret;
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::keys::AesKey;
use tessera_crypto::mac;
use tessera_crypto::rng::{Rng, SeededRng};
use tessera_crypto::scp03::StaticKeys;
use tessera_proto::keyring::{
    self as proto, CHALLENGE_LEN, ExternalAuthenticate, InternalAuthResponse, KeyKind, Layout,
    Mode, RenewCommand, RenewEntry, RenewForm,
};

use super::{AID, session_static_keys};
use crate::applet::{TearDriver, TearError, TearScenario};
use crate::applets::isd;
use crate::script::Script;

fn unexpected(what: impl Into<String>) -> TearError {
    TearError::Unexpected(what.into())
}

/// A completed mutual authentication, as the server double sees it.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The internal slot the card proved.
    pub internal: u8,
    /// The external slot the server proved.
    pub external: u8,
    /// The server challenge `Rs`.
    pub server_challenge: [u8; CHALLENGE_LEN],
    /// The card challenge `Ra`.
    pub card_challenge: [u8; CHALLENGE_LEN],
    /// The session's SCP03 key set, after authentication with the bottom pair.
    pub session_keys: Option<StaticKeys>,
}

/// The keys of one issued card, held by the server double.
pub struct TestServer {
    /// The card's layout.
    pub layout: Layout,
    /// The card id (the ISD scenarios' [`isd::scenarios::CARD_ID`]).
    pub card_id: Vec<u8>,
    /// Symmetric internal and external keys (index = slot - 1).
    sym_internal: Vec<AesKey>,
    sym_external: Vec<AesKey>,
    /// Asymmetric: the card's internal private keys (given to the card at issuance; the
    /// server double keeps them only to know the public keys) and the server's external keys.
    card_private: Vec<SigningKey>,
    server_private: Vec<SigningKey>,
    rng: SeededRng,
}

impl TestServer {
    /// Deterministic keys for a card of `mode` with `m` internal and `n` external slots.
    pub fn new(mode: Mode, m: u8, n: u8) -> Result<TestServer, TearError> {
        let layout = Layout::new(mode, m, n).map_err(|e| unexpected(e.to_string()))?;
        let aes =
            |seed: u8, count: u8| (1..=count).map(|s| AesKey::Aes128([seed ^ s; 16])).collect();
        let ec = |seed: u64, count: u8| {
            let mut rng = SeededRng::from_u64(seed);
            (0..count).map(|_| SigningKey::generate(&mut rng)).collect()
        };
        Ok(TestServer {
            layout,
            card_id: isd::scenarios::CARD_ID.to_vec(),
            sym_internal: aes(0xA0, m),
            sym_external: aes(0xB0, n),
            card_private: ec(0x1A, m),
            server_private: ec(0x1B, n),
            rng: SeededRng::from_u64(0x4B52),
        })
    }

    /// The personalisation data groups of the keyring: config, then every key at version 1.
    pub fn personalisation(&self) -> Vec<(u16, Vec<u8>)> {
        let mut out = vec![(proto::DGI_CONFIG, self.layout.to_config().to_vec())];
        for slot in 1..=self.layout.internal_slots {
            let i = usize::from(slot - 1);
            let key = match self.layout.mode {
                Mode::Symmetric => self.sym_internal[i].expose_secret().to_vec(),
                Mode::Asymmetric => self.card_private[i].to_bytes().to_vec(),
            };
            out.push((proto::DGI_INTERNAL_KEY, proto::key_dgi_data(slot, 1, &key)));
        }
        for slot in 1..=self.layout.external_slots {
            let i = usize::from(slot - 1);
            let key = match self.layout.mode {
                Mode::Symmetric => self.sym_external[i].expose_secret().to_vec(),
                Mode::Asymmetric => self.server_private[i].public_key().to_sec1_bytes().to_vec(),
            };
            out.push((proto::DGI_EXTERNAL_KEY, proto::key_dgi_data(slot, 1, &key)));
        }
        out
    }

    /// Issues a blank card (ISD personalisation) and personalises its keyring through
    /// INSTALL [for personalization] and STORE DATA, one data group per block.
    pub fn issue(&self, s: &mut Script<'_>) -> Result<(), TearError> {
        isd::scenarios::personalize(s)?;
        personalize_keyring(s, &self.personalisation())
    }

    fn challenge(&mut self) -> [u8; CHALLENGE_LEN] {
        let mut c = [0u8; CHALLENGE_LEN];
        self.rng.fill_random(&mut c);
        c
    }

    /// SELECT the keyring, then [`TestServer::authenticate_selected`].
    pub fn authenticate(
        &mut self,
        s: &mut Script<'_>,
        internal: u8,
        external: u8,
    ) -> Result<Auth, TearError> {
        s.select(AID)?;
        self.authenticate_selected(s, internal, external)
    }

    /// INTERNAL AUTHENTICATE with `internal`, GET CHALLENGE and EXTERNAL AUTHENTICATE with
    /// `external` on the selected keyring; fails unless the card accepts.
    pub fn authenticate_selected(
        &mut self,
        s: &mut Script<'_>,
        internal: u8,
        external: u8,
    ) -> Result<Auth, TearError> {
        let rs = self.challenge();
        let r = s.expect(&proto::internal_authenticate(internal, &rs), StatusWord::SUCCESS)?;
        let ia = InternalAuthResponse::parse(&r.data, self.layout.mode)
            .map_err(|e| unexpected(e.to_string()))?;
        let card_ephemeral = ia.ephemeral.map(|e| e.to_vec()).unwrap_or_default();
        let message =
            proto::card_auth_message(&self.card_id, internal, ia.version, &rs, &card_ephemeral);
        let slot = usize::from(internal) - 1;
        let ok = match self.layout.mode {
            Mode::Symmetric => {
                mac::verify(&self.sym_internal[slot], &[&message], &ia.proof).is_ok()
            }
            Mode::Asymmetric => Signature::from_bytes(&ia.proof)
                .and_then(|sig| self.card_private[slot].public_key().verify(&message, &sig))
                .is_ok(),
        };
        if !ok {
            return Err(unexpected("card cryptogram does not verify"));
        }
        let r = s.expect(&proto::get_challenge(), StatusWord::SUCCESS)?;
        let ra: [u8; CHALLENGE_LEN] =
            r.data.as_slice().try_into().map_err(|_| unexpected("challenge length"))?;
        let ephemeral = match self.layout.mode {
            Mode::Symmetric => None,
            Mode::Asymmetric => Some(EphemeralSecret::generate(&mut self.rng)),
        };
        let server_ephemeral =
            ephemeral.as_ref().map(|e| e.public_key().to_sec1_bytes()).map(|e| e.to_vec());
        let message = proto::server_auth_message(
            &self.card_id,
            internal,
            external,
            1,
            &rs,
            &ra,
            &card_ephemeral,
            server_ephemeral.as_deref().unwrap_or_default(),
        );
        let ea = ExternalAuthenticate {
            slot: external,
            ephemeral: server_ephemeral.as_deref().and_then(|e| e.try_into().ok()),
            proof: self.prove(external, &message),
        };
        s.expect(&ea.to_command(), StatusWord::SUCCESS)?;
        let bottom =
            internal == self.layout.internal_slots && external == self.layout.external_slots;
        let session_keys = if bottom {
            let (kdf_key, mix) = match (self.layout.mode, ephemeral) {
                (Mode::Asymmetric, Some(e)) => {
                    let peer = PublicKey::from_sec1_bytes(&card_ephemeral)
                        .map_err(|e| unexpected(e.to_string()))?;
                    (e.diffie_hellman(&peer).extract(None), Vec::new())
                }
                _ => {
                    let mix = mac::cmac(
                        &self.sym_external[usize::from(external) - 1],
                        &[&proto::session_mix_message(&self.card_id, &rs, &ra)],
                    );
                    (self.sym_internal[slot].clone(), mix.to_vec())
                }
            };
            let context = proto::session_context(&self.card_id, &rs, &ra, &mix);
            Some(
                session_static_keys(&kdf_key, &context)
                    .map_err(|sw| unexpected(format!("session keys: {sw}")))?,
            )
        } else {
            None
        };
        Ok(Auth { internal, external, server_challenge: rs, card_challenge: ra, session_keys })
    }

    /// The server's proof with external slot `external` over `message`.
    pub fn prove(&self, external: u8, message: &[u8]) -> Vec<u8> {
        let slot = usize::from(external).saturating_sub(1);
        match self.layout.mode {
            Mode::Symmetric => self
                .sym_external
                .get(slot)
                .map(|k| mac::cmac(k, &[message]).to_vec())
                .unwrap_or_default(),
            Mode::Asymmetric => self
                .server_private
                .get(slot)
                .map(|k| k.sign(message).to_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    /// A RENEW of `form` after `auth`, with fresh randoms (and new server public keys for
    /// asymmetric external slots), proven with the authenticated external key.
    pub fn renew_command(&mut self, auth: &Auth, form: RenewForm) -> RenewCommand {
        let targets = form.targets(&self.layout).unwrap_or_default();
        let mut entries = Vec::new();
        for (index, (kind, _)) in targets.iter().enumerate() {
            let random = (!(form.single_random() && index == 1)).then(|| self.challenge());
            let public_key = (self.layout.mode == Mode::Asymmetric && *kind == KeyKind::External)
                .then(|| SigningKey::generate(&mut self.rng).public_key().to_sec1_bytes());
            entries.push(RenewEntry { random, public_key });
        }
        let mut cmd = RenewCommand { form, entries, proof: Vec::new() };
        self.sign_renew(auth, &mut cmd);
        cmd
    }

    /// (Re)computes the proof of `cmd` for `auth`.
    pub fn sign_renew(&self, auth: &Auth, cmd: &mut RenewCommand) {
        let message = proto::renew_command_message(
            &self.card_id,
            &auth.server_challenge,
            &auth.card_challenge,
            cmd.form.code(),
            &cmd.body(),
        );
        cmd.proof = self.prove(auth.external, &message);
    }
}

/// INSTALL [for personalization] of the keyring and one STORE DATA block per data group,
/// through the ISD session the caller has open.
pub fn personalize_keyring(s: &mut Script<'_>, groups: &[(u16, Vec<u8>)]) -> Result<(), TearError> {
    let mut install = vec![0x00, AID.len() as u8];
    install.extend_from_slice(AID);
    install.extend_from_slice(&[0, 0, 0]);
    s.secure(
        &Command::new(0x80, 0xE6, 0x20, 0x00).with_data(install).with_le(256),
        StatusWord::SUCCESS,
    )?;
    for (block, (dgi, value)) in groups.iter().enumerate() {
        let last = block + 1 == groups.len();
        isd::scenarios::store(s, block as u8, last, &[(*dgi, value)])?;
    }
    Ok(())
}

/// Sends a RENEW and expects `9000`.
pub fn send_renew(s: &mut Script<'_>, cmd: &RenewCommand) -> Result<Response, TearError> {
    s.expect(&cmd.to_command(), StatusWord::SUCCESS)
}

fn renewal(
    d: &mut dyn TearDriver,
    mode: Mode,
    auth: (u8, u8),
    form: RenewForm,
) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let (m, n) = match mode {
        Mode::Symmetric => (4, 4),
        Mode::Asymmetric => (3, 3),
    };
    let mut server = TestServer::new(mode, m, n)?;
    server.issue(&mut s)?;
    let a = server.authenticate(&mut s, auth.0, auth.1)?;
    let cmd = server.renew_command(&a, form);
    s.arm();
    send_renew(&mut s, &cmd)?;
    Ok(())
}

fn personalisation(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    let server = TestServer::new(Mode::Symmetric, 2, 2)?;
    isd::scenarios::personalize(&mut s)?;
    s.arm();
    personalize_keyring(&mut s, &server.personalisation())
}

macro_rules! scenario {
    ($name:literal, $mode:expr, $auth:expr, $form:expr) => {{
        fn script(d: &mut dyn TearDriver) -> Result<(), TearError> {
            renewal(d, $mode, $auth, $form)
        }
        TearScenario { name: $name, script }
    }};
}

/// Every state-changing command of the keyring, as tear scenarios.
pub fn all() -> Vec<TearScenario> {
    use Mode::{Asymmetric, Symmetric};
    vec![
        TearScenario { name: "keyring personalisation (config and keys)", script: personalisation },
        scenario!(
            "RENEW internal slot (claim 3)",
            Symmetric,
            (3, 4),
            RenewForm::Internal { slot: 4 }
        ),
        scenario!(
            "RENEW external slot (claim 4)",
            Symmetric,
            (4, 3),
            RenewForm::External { slot: 4 }
        ),
        scenario!(
            "RENEW pair, two randoms (claims 5, 9)",
            Symmetric,
            (3, 3),
            RenewForm::Pair { internal: 4, external: 4 }
        ),
        scenario!(
            "RENEW pair, single random (par. 0088)",
            Symmetric,
            (3, 3),
            RenewForm::PairSingleRandom { internal: 4, external: 4 }
        ),
        scenario!(
            "RENEW internal slots from 2 (claim 6)",
            Symmetric,
            (1, 4),
            RenewForm::InternalFrom { slot: 2 }
        ),
        scenario!(
            "RENEW external slots from 2 (claim 7)",
            Symmetric,
            (4, 1),
            RenewForm::ExternalFrom { slot: 2 }
        ),
        scenario!(
            "RENEW all slots from 2 (claim 8)",
            Symmetric,
            (1, 1),
            RenewForm::BothFrom { internal: 2, external: 2 }
        ),
        scenario!(
            "asymmetric RENEW internal slot",
            Asymmetric,
            (2, 3),
            RenewForm::Internal { slot: 3 }
        ),
        scenario!(
            "asymmetric RENEW external slot",
            Asymmetric,
            (3, 2),
            RenewForm::External { slot: 3 }
        ),
        scenario!(
            "asymmetric RENEW internal slots from 2",
            Asymmetric,
            (1, 3),
            RenewForm::InternalFrom { slot: 2 }
        ),
        scenario!(
            "asymmetric RENEW external slots from 2",
            Asymmetric,
            (3, 1),
            RenewForm::ExternalFrom { slot: 2 }
        ),
        scenario!(
            "asymmetric RENEW pair",
            Asymmetric,
            (2, 2),
            RenewForm::Pair { internal: 3, external: 3 }
        ),
        scenario!(
            "asymmetric RENEW all slots from 2",
            Asymmetric,
            (1, 1),
            RenewForm::BothFrom { internal: 2, external: 2 }
        ),
    ]
}
