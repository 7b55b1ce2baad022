#![allow(clippy::unwrap_used)] // tests may unwrap

//! The terminal's update session end to end: in-process cards, the server's update service in
//! process, the whole Fig. 2 chain, and each failing step's distinct error.

use tessera_apdu::{Command, Response};
use tessera_card::applets::isd::scenarios::{self as isd_sc, CARD_ID, PKI_T0};
use tessera_card::applets::update::scenarios::{self as sc, KEY_NONCE};
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::hpke::HpkePrivateKey;
use tessera_crypto::rng::SeededRng;
use tessera_crypto::x509::Certificate;
use tessera_host::update::{
    Identification, TrustedIssuers, UpdateError, UpdateServer, UpdateTerminal, run_session,
};
use tessera_host::{CardChannel, InProcessChannel};
use tessera_proto::update::{Challenge, IssuerList, Mode, ReadRule, UpdateCommand};
use tessera_server::update::{
    AuthenticatedCard, IssuerKeys, MemoryUpdateStore, UpdateService, UpdateStore,
};

const NOW: u64 = PKI_T0 as u64 + 1000;
const CARD_B: &[u8] = b"TESSERA-TEST-0002";

struct Plain<'a>(&'a mut Card);
impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// The server's update service in process, as the terminal sees it.
struct Server {
    service: UpdateService<MemoryUpdateStore>,
    rng: SeededRng,
    /// Drop this many receipts (a connection lost on the way back).
    lose_receipts: usize,
}

impl UpdateServer for Server {
    type Session = AuthenticatedCard;
    fn challenge(&mut self) -> Result<Challenge, String> {
        Ok(self.service.challenge(&mut self.rng, NOW))
    }
    fn identity_key(&mut self) -> Result<[u8; 65], String> {
        Ok(self.service.identity_public_key().to_bytes())
    }
    fn authenticate(
        &mut self,
        card_id: Option<&[u8]>,
        challenge: &Challenge,
        answer: &[u8],
    ) -> Result<AuthenticatedCard, String> {
        match card_id {
            Some(id) => self.service.authenticate(id, challenge, answer, NOW),
            None => self.service.authenticate_private(challenge, answer, NOW),
        }
        .map_err(|e| e.to_string())
    }
    fn authenticate_legacy_static(
        &mut self,
        card_id: &[u8],
        answer: &[u8],
    ) -> Result<AuthenticatedCard, String> {
        self.service.authenticate_legacy_static(card_id, answer, NOW).map_err(|e| e.to_string())
    }
    fn pending(&mut self, s: &AuthenticatedCard) -> Result<Vec<(u64, Vec<u8>)>, String> {
        self.service.deliverable(&mut self.rng, s).map_err(|e| e.to_string())
    }
    fn receipt(&mut self, s: &AuthenticatedCard, receipt: &[u8]) -> Result<(), String> {
        if self.lose_receipts > 0 {
            self.lose_receipts -= 1;
            return Err("connection lost".into());
        }
        self.service.accept_receipt(s, receipt).map(|_| ()).map_err(|e| e.to_string())
    }
}

fn publisher() -> SigningKey {
    SigningKey::generate(&mut SeededRng::from_u64(0x9B))
}

fn issuer_list(version: u64, cas: &[(&str, Vec<u8>)], key: &SigningKey) -> Vec<u8> {
    let mut list = IssuerList {
        version,
        issuers: cas.iter().map(|(id, ca)| (id.to_string(), ca.clone())).collect(),
        signature: [0; 64],
    };
    list.signature = key.sign(&list.signed_message()).to_bytes();
    list.to_bytes()
}

fn trusted() -> TrustedIssuers {
    let (_, ca, _) = isd_sc::issuer_pki().unwrap();
    let mut t = TrustedIssuers::new(publisher().public_key());
    t.install(&issuer_list(1, &[("test", ca.der().to_vec())], &publisher())).unwrap();
    t
}

fn send(card: &mut Card, cmd: &Command) -> Response {
    Response::parse(&card.transmit(&cmd.to_bytes().unwrap())).unwrap()
}

/// An issued card registered with `server`.
fn card(server: &mut Server, card_id: &[u8], seed: u64) -> UpdateTerminal<InProcessChannel<Card>> {
    card_with(server, card_id, seed, false)
}

fn card_with(
    server: &mut Server,
    card_id: &[u8],
    seed: u64,
    legacy: bool,
) -> UpdateTerminal<InProcessChannel<Card>> {
    let mut card = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(seed))));
    card.power_on();
    sc::issue(&mut Script::new(&mut Plain(&mut card)), card_id, &[], legacy).unwrap();
    Script::new(&mut Plain(&mut card)).select(tessera_card::applets::isd::AID).unwrap();
    let cert = send(&mut card, &Command::new(0x80, 0xCA, 0x7F, 0x21).with_le(65536)).data;
    let cert = Certificate::from_der(cert[5..].to_vec()).unwrap();
    Script::new(&mut Plain(&mut card)).select(tessera_card::applets::update::AID).unwrap();
    let key = send(
        &mut card,
        &UpdateCommand::GetData(tessera_proto::update::TAG_UPDATE_KEY).to_command(),
    )
    .data;
    server.service.register_card("test", card_id, cert, &KEY_NONCE, &key, NOW as i64).unwrap();
    if legacy {
        server.service.set_legacy_static(card_id, sc::STATIC_AUTH).unwrap();
    }
    card.power_off();
    card.power_on();
    UpdateTerminal::new(InProcessChannel::new(card))
}

fn server() -> Server {
    let mut service = UpdateService::new(
        MemoryUpdateStore::default(),
        HpkePrivateKey::generate(&mut SeededRng::from_u64(0x5E)),
    );
    let (_, ca, _) = isd_sc::issuer_pki().unwrap();
    service.add_issuer(IssuerKeys {
        id: "test".into(),
        ca,
        package_signer: Box::new(sc::package_signer()),
    });
    Server { service, rng: SeededRng::from_u64(3), lose_receipts: 0 }
}

fn queue(server: &mut Server, card_id: &[u8], name: &[u8], value: &[u8], mode: Mode) -> u64 {
    let Server { service, rng, .. } = server;
    service.queue(rng, card_id, name, value, mode, ReadRule::Pin).unwrap()
}

#[test]
fn a_session_runs_the_chain_and_delivers_every_pending_update() {
    let mut server = server();
    let mut t = card(&mut server, CARD_ID, 1);
    queue(&mut server, CARD_ID, b"wifi", b"pw-1", Mode::Apply);
    queue(&mut server, CARD_ID, b"cert", &vec![0x30; 5000], Mode::Sealed);
    let report =
        run_session(&mut t, &trusted(), b"1234", Identification::Plain, &mut server).unwrap();
    assert_eq!((report.issuer.as_str(), report.delivered), ("test", vec![1, 2]));
    assert_eq!(t.read(b"wifi").unwrap(), b"pw-1");
    assert_eq!(t.read(b"cert").unwrap(), vec![0x30; 5000]);
    // Nothing left: the next session delivers nothing.
    let report =
        run_session(&mut t, &trusted(), b"1234", Identification::Plain, &mut server).unwrap();
    assert!(report.delivered.is_empty());
}

/// A channel that keeps every byte exchanged with the card, both ways.
struct Recording<C> {
    inner: C,
    answers: Vec<Vec<u8>>,
}

impl<C: CardChannel> CardChannel for Recording<C> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, tessera_host::ChannelError> {
        let r = self.inner.transmit_raw(command)?;
        self.answers.push(command.to_vec());
        self.answers.push(r.clone());
        Ok(r)
    }
    fn reset(&mut self) -> Result<Vec<u8>, tessera_host::ChannelError> {
        self.inner.reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, tessera_host::ChannelError> {
        self.inner.atr()
    }
}

#[test]
fn the_privacy_variant_never_shows_the_card_id_to_the_terminal() {
    let mut server = server();
    let t = card(&mut server, CARD_ID, 2);
    queue(&mut server, CARD_ID, b"wifi", b"pw-p", Mode::Apply);
    let mut t = UpdateTerminal::new(Recording { inner: t.into_channel(), answers: Vec::new() });
    let report =
        run_session(&mut t, &trusted(), b"1234", Identification::Private, &mut server).unwrap();
    assert_eq!(report.delivered, vec![1]);
    assert_eq!(t.read(b"wifi").unwrap(), b"pw-p");
    let seen = t.into_channel().answers;
    assert!(seen.len() > 5);
    assert!(
        !seen.iter().any(|a| a.windows(CARD_ID.len()).any(|w| w == CARD_ID)),
        "the card id passed through the terminal"
    );
}

#[test]
fn each_failing_step_stops_the_session_with_its_own_error() {
    let mut server = server();
    let mut t = card(&mut server, CARD_ID, 3);
    queue(&mut server, CARD_ID, b"wifi", b"pw", Mode::Apply);
    // Issuer list: bad signature, older version, card's issuer missing.
    let (_, ca, _) = isd_sc::issuer_pki().unwrap();
    let mut tr = TrustedIssuers::new(publisher().public_key());
    let forged = issuer_list(
        1,
        &[("test", ca.der().to_vec())],
        &SigningKey::generate(&mut SeededRng::from_u64(1)),
    );
    assert!(matches!(tr.install(&forged), Err(UpdateError::IssuerListSignature)));
    tr.install(&issuer_list(5, &[("other", vec![0x30, 0x00])], &publisher())).unwrap();
    assert!(matches!(
        tr.install(&issuer_list(4, &[("test", ca.der().to_vec())], &publisher())),
        Err(UpdateError::IssuerListOlder { offered: 4, held: 5 })
    ));
    assert!(matches!(
        run_session(&mut t, &tr, b"1234", Identification::Plain, &mut server),
        Err(UpdateError::IssuerNotTrusted)
    ));
    // Wrong PIN.
    assert!(matches!(
        run_session(&mut t, &trusted(), b"9999", Identification::Plain, &mut server),
        Err(UpdateError::WrongPin { tries_left: 2 })
    ));
    // A card the server does not know.
    let mut stranger = {
        let mut other = self::server();
        card(&mut other, CARD_B, 4)
    };
    assert!(matches!(
        run_session(&mut stranger, &trusted(), b"1234", Identification::Plain, &mut server),
        Err(UpdateError::ServerRefused(_))
    ));
    // Nothing was delivered by the failed sessions.
    assert_eq!(server.service.store().pending(CARD_ID).len(), 1);
}

/// A relay that hands card B the packages queued for card A.
struct Misrouting<'a> {
    inner: &'a mut Server,
    from: Vec<u8>,
}

impl UpdateServer for Misrouting<'_> {
    type Session = AuthenticatedCard;
    fn challenge(&mut self) -> Result<Challenge, String> {
        self.inner.challenge()
    }
    fn identity_key(&mut self) -> Result<[u8; 65], String> {
        self.inner.identity_key()
    }
    fn authenticate(
        &mut self,
        card_id: Option<&[u8]>,
        challenge: &Challenge,
        answer: &[u8],
    ) -> Result<AuthenticatedCard, String> {
        self.inner.authenticate(card_id, challenge, answer)
    }
    fn pending(&mut self, _: &AuthenticatedCard) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let a = AuthenticatedCard { card_id: self.from.clone(), last_sequence: 0, private: false };
        self.inner.pending(&a)
    }
    fn receipt(&mut self, s: &AuthenticatedCard, receipt: &[u8]) -> Result<(), String> {
        self.inner.receipt(s, receipt)
    }
}

#[test]
fn card_a_update_delivered_to_card_b_fails_and_stays_pending_for_a() {
    let mut server = server();
    let mut a = card(&mut server, CARD_ID, 5);
    let mut b = card(&mut server, CARD_B, 6);
    queue(&mut server, CARD_ID, b"wifi", b"for-a", Mode::Apply);
    let mut relay = Misrouting { inner: &mut server, from: CARD_ID.to_vec() };
    assert!(matches!(
        run_session(&mut b, &trusted(), b"1234", Identification::Plain, &mut relay),
        Err(UpdateError::WrongCard { sequence: 1 })
    ));
    let report =
        run_session(&mut a, &trusted(), b"1234", Identification::Plain, &mut server).unwrap();
    assert_eq!(report.delivered, vec![1]);
}

#[test]
fn a_lost_receipt_is_redelivered_once_at_the_next_session() {
    let mut server = server();
    let mut t = card(&mut server, CARD_ID, 7);
    queue(&mut server, CARD_ID, b"wifi", b"pw-1", Mode::Apply);
    queue(&mut server, CARD_ID, b"wifi", b"pw-2", Mode::Apply);
    server.lose_receipts = 1;
    assert!(matches!(
        run_session(&mut t, &trusted(), b"1234", Identification::Plain, &mut server),
        Err(UpdateError::ServerRefused(_))
    ));
    // Package 1 was applied on the card but is still pending; 2 was never sent.
    assert_eq!(server.service.store().pending(CARD_ID).len(), 2);
    let report =
        run_session(&mut t, &trusted(), b"1234", Identification::Plain, &mut server).unwrap();
    assert_eq!(report.delivered, vec![1, 2]);
    assert_eq!(t.read(b"wifi").unwrap(), b"pw-2");
}

#[test]
fn the_legacy_static_authenticator_works_only_where_personalised_and_is_replayable() {
    let mut server = server();
    let mut legacy = card_with(&mut server, CARD_ID, 8, true);
    let mut modern = card_with(&mut server, CARD_B, 9, false);
    queue(&mut server, CARD_ID, b"wifi", b"legacy-pw", Mode::Apply);
    let report =
        run_session(&mut legacy, &trusted(), b"1234", Identification::LegacyStatic, &mut server)
            .unwrap();
    assert_eq!(report.delivered, vec![1]);
    assert_eq!(legacy.read(b"wifi").unwrap(), b"legacy-pw");
    // A card without it refuses (6985): no silent downgrade.
    assert!(matches!(
        run_session(&mut modern, &trusted(), b"1234", Identification::LegacyStatic, &mut server),
        Err(UpdateError::DeviceAuthenticationRefused(tessera_apdu::StatusWord(0x6985)))
    ));
    // Why it is legacy only: the value seen once authenticates again, with no card at all.
    assert!(server.service.authenticate_legacy_static(CARD_ID, &sc::STATIC_AUTH, NOW).is_ok());
    assert!(server.service.authenticate_legacy_static(CARD_ID, &[0; 16], NOW).is_err());
    assert!(server.service.authenticate_legacy_static(CARD_B, &sc::STATIC_AUTH, NOW).is_err());
}
