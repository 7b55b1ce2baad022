#![allow(clippy::unwrap_used)] // tests may unwrap

//! The secure terminal end to end, in process: CA enrolment of cards and terminals, the Fig. 5
//! orchestration (authenticate, else set up with the PIN and authenticate again), services
//! over the level-33 channel, swapping terminal and card, and the terminal-side attacks
//! (another CA, revoked card, tampered answers, a lost PAIR CONFIRM answer).

use std::cell::Cell;

use tessera_apdu::{Command, StatusWord};
use tessera_card::applets::isd::scenarios as isd;
use tessera_card::pin::PinBlock;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::passphrase::KdfCost;
use tessera_host::pairing::PairingError;
use tessera_host::pairing::ca::{CertificationAuthority, LocalCa};
use tessera_host::pairing::enrol::{enrol_card, enrol_terminal};
use tessera_host::pairing::files::{PairingStore, TerminalIdentity};
use tessera_host::pairing::service::{LedgerProvider, NotesProvider};
use tessera_host::pairing::terminal::{Connection, Terminal, connect};
use tessera_host::{CardChannel, ChannelError, InProcessChannel};
use tessera_proto::pairing as proto;

struct Plain<'a>(&'a mut Card);

impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn pin() -> PinBlock {
    PinBlock::from_value(isd::PIN).unwrap()
}

/// An issued card (card id, PIN) enrolled with `ca`, behind an in-process channel.
fn card(ca: &mut LocalCa) -> InProcessChannel<Card> {
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    isd::personalize(&mut Script::new(&mut Plain(&mut card))).unwrap();
    let mut channel = InProcessChannel::new(card);
    enrol_card(&mut channel, ca, &pin(), "card holder").unwrap();
    channel.reset().unwrap();
    channel
}

fn terminal(ca: &mut LocalCa, name: &str) -> Terminal {
    Terminal::new(enrol_terminal(ca, name).unwrap())
}

fn new_ca() -> (tempfile::TempDir, LocalCa) {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::init(&dir.path().join("ca"), "tessera test CA").unwrap();
    (dir, ca)
}

/// Connects, counting how often the PIN was asked for.
fn connect_counting<C: CardChannel>(
    t: &Terminal,
    channel: C,
    store: &mut PairingStore,
) -> (Result<(tessera_host::pairing::terminal::PairedSession<C>, Connection), PairingError>, u32) {
    let asked = Cell::new(0);
    let result = connect(t, channel, store, &mut || {
        asked.set(asked.get() + 1);
        Ok(pin())
    });
    (result, asked.get())
}

#[test]
fn pair_use_services_swap_terminal_and_card() {
    let (_dir, mut ca) = new_ca();
    let mut channel = card(&mut ca);
    let t1 = terminal(&mut ca, "terminal 1");
    let mut store1 = PairingStore::in_memory();

    // First insertion: no pairing, so setup runs (PIN asked once), then authentication.
    let (r, asked) = connect_counting(&t1, &mut channel, &mut store1);
    let (mut session, how) = r.unwrap();
    assert_eq!((how, asked), (Connection::Repaired, 1));
    assert_eq!(session.invoke(&LedgerProvider::credit(300)).unwrap(), 300u64.to_be_bytes());
    assert_eq!(session.invoke(&LedgerProvider::debit(120)).unwrap(), 180u64.to_be_bytes());
    let refused = session.invoke(&LedgerProvider::debit(1000)).unwrap_err();
    assert!(matches!(refused, PairingError::Card { sw: StatusWord::CONDITIONS_NOT_SATISFIED, .. }));
    session.invoke(&NotesProvider::put(2, b"locker 42")).unwrap();
    drop(session);

    // Next insertion: authentication alone, no PIN.
    channel.reset().unwrap();
    let (r, asked) = connect_counting(&t1, &mut channel, &mut store1);
    let (mut session, how) = r.unwrap();
    assert_eq!((how, asked), (Connection::Authenticated, 0));
    assert_eq!(session.invoke(&NotesProvider::get(2)).unwrap(), b"locker 42");
    drop(session);

    // A new terminal: re-pairs with nothing but the PIN; the first keeps working.
    let t2 = terminal(&mut ca, "terminal 2");
    let mut store2 = PairingStore::in_memory();
    channel.reset().unwrap();
    let (r, asked) = connect_counting(&t2, &mut channel, &mut store2);
    let (mut session, how) = r.unwrap();
    assert_eq!((how, asked), (Connection::Repaired, 1));
    assert_eq!(session.invoke(&LedgerProvider::balance()).unwrap(), 180u64.to_be_bytes());
    let history =
        proto::ledger::Entry::parse_all(&session.invoke(&LedgerProvider::history()).unwrap())
            .unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].terminal, t1.identity.key_id().unwrap());
    drop(session);
    channel.reset().unwrap();
    let (r, asked) = connect_counting(&t1, &mut channel, &mut store1);
    assert_eq!((r.unwrap().1, asked), (Connection::Authenticated, 0));

    // A new card: terminal 1 re-pairs with it and keeps both pairings.
    let mut other = card(&mut ca);
    let (r, asked) = connect_counting(&t1, &mut other, &mut store1);
    assert_eq!((r.unwrap().1, asked), (Connection::Repaired, 1));
    assert_eq!(store1.len(), 2);
    channel.reset().unwrap();
    let (r, asked) = connect_counting(&t1, &mut channel, &mut store1);
    assert_eq!((r.unwrap().1, asked), (Connection::Authenticated, 0));
}

#[test]
fn a_wrong_pin_stops_and_nothing_is_paired() {
    let (_dir, mut ca) = new_ca();
    let mut channel = card(&mut ca);
    let t = terminal(&mut ca, "t");
    let mut store = PairingStore::in_memory();
    let result =
        connect(&t, &mut channel, &mut store, &mut || Ok(PinBlock::from_value(b"0000").unwrap()));
    assert!(matches!(result, Err(PairingError::WrongPin { tries_left: 2 })), "{result:?}");
    assert!(store.is_empty());
}

#[test]
fn a_terminal_refuses_a_card_from_another_ca_or_a_revoked_card() {
    let (_dir, mut ca) = new_ca();
    let (_dir2, mut other_ca) = new_ca();
    let mut foreign = card(&mut other_ca);
    // The terminal's CA differs from the card's: the card refuses the terminal first.
    let t = terminal(&mut ca, "t");
    let mut store = PairingStore::in_memory();
    let (r, _) = connect_counting(&t, &mut foreign, &mut store);
    assert!(
        matches!(r, Err(PairingError::Card { step: "PAIR BEGIN", sw: StatusWord(0x6984) })),
        "{r:?}"
    );
    // A terminal of the card's CA whose CRL revokes the card refuses it before signing.
    let mut channel = card(&mut ca);
    select_pairing(&mut channel);
    let cert = get_card_certificate(&mut channel);
    ca.revoke(&cert.info().unwrap().serial).unwrap();
    let fresh = terminal(&mut ca, "t2"); // carries the CRL with the card revoked
    let mut store = PairingStore::in_memory();
    channel.reset().unwrap();
    let (r, _) = connect_counting(&fresh, &mut channel, &mut store);
    assert!(
        matches!(&r, Err(PairingError::Certificate(m)) if m.contains("revoked")),
        "{:?}",
        r.err()
    );
    assert!(store.is_empty());
}

fn select_pairing(channel: &mut dyn CardChannel) {
    let r = channel
        .transmit(&Command::new(0, 0xA4, 4, 0).with_data(proto::AID.to_vec()).with_le(256))
        .unwrap();
    assert_eq!(r.sw, StatusWord::SUCCESS);
}

fn get_card_certificate(channel: &mut dyn CardChannel) -> tessera_crypto::x509::Certificate {
    let r = channel.transmit(&proto::get_data_command(proto::DATA_CARD_CERTIFICATE)).unwrap();
    assert_eq!(r.sw, StatusWord::SUCCESS);
    tessera_crypto::x509::Certificate::from_der(r.data).unwrap()
}

/// A channel that lets a test rewrite responses (an attacker on the wire) or lose them.
struct Wire<C> {
    inner: C,
    /// Rewrites the response to commands with this INS.
    tamper_ins: Option<u8>,
    /// Loses the response to commands with this INS (after the card processed them).
    lose_ins: Option<u8>,
}

impl<C: CardChannel> CardChannel for Wire<C> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let ins = command.get(1).copied();
        let mut out = self.inner.transmit_raw(command)?;
        if ins.is_some() && ins == self.lose_ins {
            return Err(ChannelError::CardRemoved);
        }
        if ins.is_some() && ins == self.tamper_ins && out.len() > 2 {
            out[0] ^= 0x01;
        }
        Ok(out)
    }
    fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.atr()
    }
}

#[test]
fn a_response_tampered_on_the_way_back_is_detected() {
    let (_dir, mut ca) = new_ca();
    let channel = card(&mut ca);
    let t = terminal(&mut ca, "t");
    let mut store = PairingStore::in_memory();
    let mut wire = Wire { inner: channel, tamper_ins: None, lose_ins: None };
    let (r, _) = connect_counting(&t, &mut wire, &mut store);
    let (mut session, _) = r.unwrap();
    session.invoke(&LedgerProvider::credit(5)).unwrap();
    drop(session);
    // The service answer (INVOKE, encrypted and R-MACed) is altered by the wire.
    wire.tamper_ins = Some(proto::INS_INVOKE);
    let (r, _) = connect_counting(&t, &mut wire, &mut store);
    let (mut session, how) = r.unwrap();
    assert_eq!(how, Connection::Authenticated);
    let e = session.invoke(&LedgerProvider::balance()).unwrap_err();
    assert!(matches!(e, PairingError::Verification(_)), "{e:?}");
    // The setup answer (PAIR BEGIN: nonce, keys, signature) altered: refused, nothing stored.
    let mut fresh = PairingStore::in_memory();
    wire.tamper_ins = Some(proto::INS_PAIR_BEGIN);
    wire.inner.reset().unwrap();
    let (r, _) = connect_counting(&t, &mut wire, &mut fresh);
    assert!(matches!(r, Err(PairingError::Verification(_))), "{:?}", r.err());
    assert!(fresh.is_empty());
}

#[test]
fn a_lost_pair_confirm_answer_leaves_no_usable_pairing_and_the_next_insertion_repairs() {
    let (_dir, mut ca) = new_ca();
    let channel = card(&mut ca);
    let t = terminal(&mut ca, "t");
    let mut store = PairingStore::in_memory();
    let mut wire =
        Wire { inner: channel, tamper_ins: None, lose_ins: Some(proto::INS_PAIR_CONFIRM) };
    let (r, _) = connect_counting(&t, &mut wire, &mut store);
    assert!(matches!(r, Err(PairingError::Channel(ChannelError::CardRemoved))), "{:?}", r.err());
    assert!(store.is_empty(), "the terminal records a pairing only on the card's 9000");
    // The card staged it; the terminal never learnt it succeeded: the next insertion sets up
    // again (PIN asked) and replaces the staged pairing.
    wire.lose_ins = None;
    wire.inner.reset().unwrap();
    let (r, asked) = connect_counting(&t, &mut wire, &mut store);
    assert_eq!((r.unwrap().1, asked), (Connection::Repaired, 1));
    select_pairing(&mut wire);
    let st = wire.transmit(&proto::get_data_command(proto::DATA_STATUS)).unwrap();
    let st = proto::Status::parse(&st.data).unwrap();
    assert_eq!((st.committed, st.staged), (1, 0));
}

#[test]
fn key_file_and_store_survive_a_restart() {
    let (dir, mut ca) = new_ca();
    let mut channel = card(&mut ca);
    let identity = enrol_terminal(&mut ca, "t").unwrap();
    let key_path = dir.path().join("terminal.key");
    let store_path = dir.path().join("pairings");
    identity.save(&key_path, "pass", KdfCost::TEST_ONLY).unwrap();
    {
        let t = Terminal::new(TerminalIdentity::load(&key_path, "pass").unwrap());
        let mut store = PairingStore::open(&store_path, "pass").unwrap();
        let (r, _) = connect_counting(&t, &mut channel, &mut store);
        assert_eq!(r.unwrap().1, Connection::Repaired);
        store.save("pass", KdfCost::TEST_ONLY).unwrap();
    }
    assert!(TerminalIdentity::load(&key_path, "wrong").is_err());
    let t = Terminal::new(TerminalIdentity::load(&key_path, "pass").unwrap());
    let mut store = PairingStore::open(&store_path, "pass").unwrap();
    channel.reset().unwrap();
    let (r, asked) = connect_counting(&t, &mut channel, &mut store);
    assert_eq!((r.unwrap().1, asked), (Connection::Authenticated, 0));
    // Reopening the CA directory gives the same trust anchor.
    let reopened = LocalCa::open(&dir.path().join("ca")).unwrap();
    assert_eq!(reopened.ca_certificate().unwrap(), ca.ca_certificate().unwrap());
}

#[test]
fn the_ca_requires_a_fresh_challenge_and_a_valid_proof() {
    use tessera_crypto::ecdsa::SigningKey;
    use tessera_crypto::rng::SeededRng;
    use tessera_crypto::x509::Role;
    use tessera_host::pairing::ca::CertificationRequest;
    let (_dir, mut ca) = new_ca();
    let key = SigningKey::generate(&mut SeededRng::from_u64(1));
    let public_key = key.public_key().to_sec1_bytes();
    let challenge = ca.challenge().unwrap();
    let sign = |c: &[u8; 16]| key.sign(&proto::enrolment_message(b"t", &public_key, c)).to_bytes();
    let mut request = CertificationRequest {
        role: Role::Terminal,
        subject: "t".into(),
        holder_id: b"t".to_vec(),
        public_key,
        challenge,
        proof: sign(&[0; 16]), // over another challenge
    };
    assert!(matches!(ca.certify(&request), Err(PairingError::Ca(_))));
    // The failed attempt consumed the challenge.
    request.proof = sign(&challenge);
    assert!(matches!(ca.certify(&request), Err(PairingError::Ca(_))));
    let challenge = ca.challenge().unwrap();
    request.challenge = challenge;
    request.proof = sign(&challenge);
    let cert = ca.certify(&request).unwrap();
    assert_eq!(cert.info().unwrap().roles, vec![Role::Terminal]);
    request.role = Role::Server;
    request.challenge = ca.challenge().unwrap();
    request.proof = sign(&request.challenge);
    assert!(matches!(ca.certify(&request), Err(PairingError::Ca(_))));
}

/// Responses are plain data the session unwraps: a bare success answer forged by the wire
/// (no R-MAC) is refused.
#[test]
fn a_forged_bare_success_is_refused() {
    let (_dir, mut ca) = new_ca();
    let mut channel = card(&mut ca);
    let t = terminal(&mut ca, "t");
    let mut store = PairingStore::in_memory();
    let (r, _) = connect_counting(&t, &mut channel, &mut store);
    let (session, _) = r.unwrap();
    let inner = session.into_inner();
    // A fresh session whose answer is replaced by a bare 9000 with made-up data.
    inner.reset().unwrap();
    struct Forge<'a>(&'a mut InProcessChannel<Card>);
    impl CardChannel for Forge<'_> {
        fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
            let out = self.0.transmit_raw(command)?;
            if command.get(1) == Some(&proto::INS_INVOKE) {
                let mut forged = 1_000_000u64.to_be_bytes().to_vec();
                forged.extend_from_slice(&[0x90, 0x00]);
                return Ok(forged);
            }
            Ok(out)
        }
        fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
            self.0.reset()
        }
        fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
            self.0.atr()
        }
    }
    let (r, _) = connect_counting(&t, Forge(inner), &mut store);
    let (mut session, _) = r.unwrap();
    let e = session.invoke(&LedgerProvider::balance()).unwrap_err();
    assert!(matches!(e, PairingError::Verification(_)), "{e:?}");
}

/// A card on a disk that loses power during the k-th storage operation counted from PAIR
/// CONFIRM (so in PAIR CONFIRM or in the first authentication after it).
struct Tearing {
    inner: InProcessChannel<Card>,
    disk: tessera_card::storage::TearingDisk,
    cut_at: u64,
}

impl CardChannel for Tearing {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if command.get(1) == Some(&proto::INS_PAIR_CONFIRM) {
            self.disk.arm(Some(self.cut_at));
        }
        let out = self.inner.transmit_raw(command)?;
        if self.disk.is_cut() {
            return Err(ChannelError::CardRemoved);
        }
        Ok(out)
    }
    fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.atr()
    }
}

#[test]
fn a_pairing_cut_by_a_power_loss_never_authenticates_and_the_next_insertion_repairs() {
    use tessera_card::OpenOptions;
    use tessera_card::storage::{MemoryStorage, TearMode, TearingDisk};
    let (_dir, mut ca) = new_ca();
    let t = terminal(&mut ca, "t");
    let mut cuts = 0;
    let mut seen = [0u32; 2];
    for k in 1.. {
        let disk = TearingDisk::new(Vec::new(), None, TearMode::ReorderUnflushed { seed: k });
        let mut card = Card::create_on(Box::new(disk.storage()), CardOptions::default()).unwrap();
        card.power_on();
        isd::personalize(&mut Script::new(&mut Plain(&mut card))).unwrap();
        let mut channel = InProcessChannel::new(card);
        enrol_card(&mut channel, &mut ca, &pin(), "card").unwrap();
        channel.reset().unwrap();
        let mut tearing = Tearing { inner: channel, disk: disk.clone(), cut_at: k };
        let mut store = PairingStore::in_memory();
        let (r, _) = connect_counting(&t, &mut tearing, &mut store);
        if !disk.is_cut() {
            assert_eq!(r.unwrap().1, Connection::Repaired);
            break;
        }
        cuts += 1;
        assert!(r.is_err());
        // Cut during PAIR CONFIRM: the terminal kept nothing. Cut later (during the first
        // authentication, which commits the staged pairing): the terminal has the pairing.
        let confirmed = !store.is_empty();
        seen[usize::from(confirmed)] += 1;
        // Power back on, whatever the image holds: a terminal without the pairing cannot
        // authenticate and sets up again (PIN asked); one with it authenticates (no PIN) and
        // commits the staged pairing then.
        let card = Card::open_on(
            Box::new(MemoryStorage::from_bytes(disk.platter())),
            OpenOptions::default(),
        )
        .unwrap();
        let mut channel = InProcessChannel::new(card);
        let (r, asked) = connect_counting(&t, &mut channel, &mut store);
        let expected =
            if confirmed { (Connection::Authenticated, 0) } else { (Connection::Repaired, 1) };
        assert_eq!((r.unwrap().1, asked), expected, "cut {k}");
        select_pairing(&mut channel);
        let st = channel.transmit(&proto::get_data_command(proto::DATA_STATUS)).unwrap();
        let st = proto::Status::parse(&st.data).unwrap();
        assert_eq!((st.committed, st.staged), (1, 0), "cut {k}");
    }
    assert!(cuts > 1, "PAIR CONFIRM and the first authentication write the image");
    assert!(seen[0] > 0 && seen[1] > 0, "cuts in both commands: {seen:?}");
}

#[test]
fn a_second_authentication_failure_stops_with_a_clear_error() {
    let (_dir, mut ca) = new_ca();
    let channel = card(&mut ca);
    let t = terminal(&mut ca, "t");
    let mut store = PairingStore::in_memory();
    // Every INITIALIZE UPDATE answer is altered: the card cryptogram never verifies.
    let mut wire = Wire { inner: channel, tamper_ins: Some(0x50), lose_ins: None };
    let (r, asked) = connect_counting(&t, &mut wire, &mut store);
    assert_eq!(asked, 1, "setup ran once between the two attempts");
    assert!(matches!(r, Err(PairingError::SecondFailure(_))), "{:?}", r.err());
}

#[test]
fn a_terminal_refuses_an_expired_card_certificate() {
    let (_dir, mut ca) = new_ca();
    let mut channel = card(&mut ca);
    let mut t = terminal(&mut ca, "t");
    t.now += 3 * 365 * 86_400; // past the card certificate's two years
    let mut store = PairingStore::in_memory();
    let (r, _) = connect_counting(&t, &mut channel, &mut store);
    assert!(
        matches!(&r, Err(PairingError::Certificate(m)) if m.contains("not valid")),
        "{:?}",
        r.err()
    );
    assert!(store.is_empty());
}
