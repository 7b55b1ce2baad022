//! Chapter: remote card data update (seed 000). Two issued cards, the server's update service
//! in process: the admin queues a new Wi-Fi password (applied) and a single-sign-on token
//! (kept sealed) for card A; A's session runs the whole chain (issuer check, PIN, device
//! authentication, packages, receipts); then A's package is shown failing on card B, and an
//! old package failing to come back.

use tessera_apdu::{Command, Response};
use tessera_card::applets::isd::scenarios as isd_sc;
use tessera_card::applets::update::scenarios as sc;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::hpke::HpkePrivateKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::Certificate;
use tessera_host::update::{
    Identification, TrustedIssuers, UpdateServer, UpdateTerminal, run_session,
};
use tessera_host::{CardChannel, ChannelError, InProcessChannel};
use tessera_proto::update::{self as proto, Challenge, IssuerList, Mode, ReadRule, UpdateCommand};
use tessera_server::update::{AuthenticatedCard, IssuerKeys, MemoryUpdateStore, UpdateService};

use super::{Chapter, Narrator};
use crate::error::{CliError, Exit};

/// The chapter.
pub const CHAPTER: Chapter = Chapter { name: "update", title: "remote card data update", run };

/// The demo's clock: inside the test PKI's validity.
const NOW: u64 = isd_sc::PKI_T0 as u64 + 86_400;
const CARD_B: &[u8] = b"TESSERA-TEST-0002";

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Other, e.to_string())
}

struct Direct<'a>(&'a mut Card);
impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// A channel that keeps every exchange for the narrator.
struct Recorded {
    inner: InProcessChannel<Card>,
    log: Vec<(Command, Response)>,
}

impl CardChannel for Recorded {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.inner.transmit_raw(command)
    }
    fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.atr()
    }
    fn transmit(&mut self, command: &Command) -> Result<Response, ChannelError> {
        let r = self.inner.transmit(command)?;
        self.log.push((command.clone(), r.clone()));
        Ok(r)
    }
}

fn name_of(cmd: &Command) -> &'static str {
    match cmd.ins {
        0xA4 => "SELECT",
        0xCA => "GET DATA",
        0x20 => "VERIFY (PIN)",
        0x88 => "DEVICE AUTHENTICATE (server challenge, signed by the device key)",
        0xE8 => "LOAD PACKAGE (answer: signed receipt)",
        0xB0 => "READ OBJECT",
        _ => "command",
    }
}

/// The update service in process, as the terminal sees it.
struct Server {
    service: UpdateService<MemoryUpdateStore>,
}

impl UpdateServer for Server {
    type Session = AuthenticatedCard;
    fn challenge(&mut self) -> Result<Challenge, String> {
        Ok(self.service.challenge(&mut OsRng, NOW))
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
    fn pending(&mut self, s: &AuthenticatedCard) -> Result<Vec<(u64, Vec<u8>)>, String> {
        self.service.deliverable(&mut OsRng, s).map_err(|e| e.to_string())
    }
    fn receipt(&mut self, s: &AuthenticatedCard, receipt: &[u8]) -> Result<(), String> {
        self.service.accept_receipt(s, receipt).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Issues a card with `card_id` and registers it with the service.
fn issue(server: &mut Server, card_id: &[u8]) -> Result<UpdateTerminal<Recorded>, CliError> {
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    sc::issue(&mut Script::new(&mut Direct(&mut card)), card_id, &[], false)
        .map_err(|e| other(format!("{e:?}")))?;
    let mut ch = InProcessChannel::new(card);
    let select = |aid: &[u8]| Command::new(0x00, 0xA4, 0x04, 0x00).with_data(aid.to_vec());
    ch.transmit(&select(tessera_card::applets::isd::AID))?;
    let cert = ch.transmit(&Command::new(0x80, 0xCA, 0x7F, 0x21).with_le(65536))?.data;
    let cert = cert.get(5..).ok_or_else(|| other("no device certificate"))?;
    let cert = Certificate::from_der(cert.to_vec()).map_err(other)?;
    ch.transmit(&select(proto::AID))?;
    let key = ch.transmit(&UpdateCommand::GetData(proto::TAG_UPDATE_KEY).to_command())?.data;
    server
        .service
        .register_card("demo", card_id, cert, &sc::KEY_NONCE, &key, NOW as i64)
        .map_err(other)?;
    Ok(UpdateTerminal::new(Recorded { inner: ch, log: Vec::new() }))
}

fn show_log(n: &mut Narrator, t: &mut UpdateTerminal<Recorded>) {
    let log = std::mem::take(&mut t.channel_mut().log);
    for (cmd, rsp) in &log {
        n.exchange(name_of(cmd), cmd, rsp);
    }
}

fn run(n: &mut Narrator) -> Result<(), CliError> {
    let (_, ca, _) = isd_sc::issuer_pki().map_err(|e| other(format!("{e:?}")))?;
    let mut service =
        UpdateService::new(MemoryUpdateStore::default(), HpkePrivateKey::generate(&mut OsRng));
    service.add_issuer(IssuerKeys {
        id: "demo".into(),
        ca: ca.clone(),
        package_signer: Box::new(sc::package_signer()),
    });
    let mut server = Server { service };
    let mut a = issue(&mut server, isd_sc::CARD_ID)?;
    let mut b = issue(&mut server, CARD_B)?;
    n.say(
        "Two cards are issued: each generated a device key and a separate HPKE update key on the \
         card; the server registered them after checking the device certificate chain and the \
         device key's signature over the update key.",
    );

    // The issuer publishes a signed list of issuers; the terminal trusts only what it names.
    let publisher = tessera_crypto::ecdsa::SigningKey::generate(&mut OsRng);
    let mut list = IssuerList {
        version: 1,
        issuers: vec![("demo".into(), ca.der().to_vec())],
        signature: [0; 64],
    };
    list.signature = publisher.sign(&list.signed_message()).to_bytes();
    let mut trusted = TrustedIssuers::new(publisher.public_key());
    trusted.install(&list.to_bytes()).map_err(other)?;

    let svc = &mut server.service;
    svc.queue(
        &mut OsRng,
        isd_sc::CARD_ID,
        b"wifi",
        b"correct-horse-2026",
        Mode::Apply,
        ReadRule::Pin,
    )
    .map_err(other)?;
    svc.queue(&mut OsRng, isd_sc::CARD_ID, b"sso", b"sso-token-7f3a", Mode::Sealed, ReadRule::Pin)
        .map_err(other)?;
    let a_handle =
        AuthenticatedCard { card_id: isd_sc::CARD_ID.to_vec(), last_sequence: 0, private: false };
    let first =
        svc.pending(&a_handle).into_iter().next().ok_or_else(|| other("nothing pending"))?.bytes;
    n.say(
        "The admin queues two updates for card A: a new Wi-Fi password (applied at once) and a \
         single-sign-on token (kept sealed on the card, decrypted at each use). The server seals \
         each to A's update key, signs it with the issuer's package-signing key, gives it A's \
         next sequence number and forgets the plaintext.",
    );

    let report = run_session(&mut a, &trusted, isd_sc::PIN, Identification::Plain, &mut server)
        .map_err(other)?;
    show_log(n, &mut a);
    n.say(&format!(
        "Card A's session: issuer {} is on the trusted list, the PIN is verified on the card, the \
         server's single-use challenge is signed by the device key, and updates {:?} are applied \
         with a signed receipt each.",
        report.issuer, report.delivered
    ));
    let wifi = a.read(b"wifi").map_err(other)?;
    let sso = a.read(b"sso").map_err(other)?;
    show_log(n, &mut a);
    n.say(&format!(
        "Card A now reads wifi = {:?} and sso = {:?} (the token decrypted on the card just now).",
        String::from_utf8_lossy(&wifi),
        String::from_utf8_lossy(&sso)
    ));

    // Card A's first package, handed to card B.
    let svc = &mut server.service;
    svc.queue(&mut OsRng, isd_sc::CARD_ID, b"wifi", b"only-for-a", Mode::Apply, ReadRule::Pin)
        .map_err(other)?;
    let package =
        svc.pending(&a_handle).into_iter().next().ok_or_else(|| other("nothing pending"))?.bytes;
    b.verify_pin(isd_sc::PIN).map_err(other)?;
    let challenge = server.challenge().map_err(other)?;
    b.device_authenticate(challenge, proto::AuthMode::Plain).map_err(other)?;
    let as_is = b.load_package(3, &package);
    // Any refusal ends the card's device authentication: a fresh one for the next attempt.
    let challenge = server.challenge().map_err(other)?;
    b.device_authenticate(challenge, proto::AuthMode::Plain).map_err(other)?;
    let mut parsed = proto::Package::parse(&package).map_err(other)?;
    parsed.card_id = CARD_B.to_vec();
    parsed.signature = sc::package_signer().sign(&parsed.signed_message()).to_bytes();
    let resigned = b.load_package(3, &parsed.to_bytes());
    show_log(n, &mut b);
    n.say(&format!(
        "Card A's next package delivered to card B: {}. Even re-addressed to B and signed by the \
         issuer: {}. Only A's update key opens it.",
        as_is.err().map(|e| e.to_string()).unwrap_or_else(|| "accepted?!".into()),
        resigned.err().map(|e| e.to_string()).unwrap_or_else(|| "accepted?!".into()),
    ));
    if b.read(b"wifi").map(|_| ()).is_ok() {
        return Err(other("card B holds an object it should not"));
    }
    let _ = b.channel_mut().log.drain(..);

    // An old password coming back.
    a.verify_pin(isd_sc::PIN).map_err(other)?;
    let challenge = server.challenge().map_err(other)?;
    a.device_authenticate(challenge, proto::AuthMode::Plain).map_err(other)?;
    let r = a.load_package(1, &first);
    show_log(n, &mut a);
    n.say(&format!(
        "Replaying card A's first package (the old password): {}.",
        r.err().map(|e| e.to_string()).unwrap_or_else(|| "accepted?!".into())
    ));
    Ok(())
}
