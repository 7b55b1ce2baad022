//! Chapter: the secure terminal (seed 002). A CA certifies a card and two terminals; the first
//! terminal pairs with the card (PIN), uses the ledger and the note store over the level-33
//! channel, authenticates cheaply at the next insertion, then the terminal is swapped and the
//! new one re-pairs automatically.

use std::cell::RefCell;
use std::rc::Rc;

use tessera_apdu::{Command, Response};
use tessera_card::applets::isd::scenarios as isd;
use tessera_card::pin::PinBlock;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_host::pairing::PairingError;
use tessera_host::pairing::ca::LocalCa;
use tessera_host::pairing::enrol::{enrol_card, enrol_terminal};
use tessera_host::pairing::files::PairingStore;
use tessera_host::pairing::service::{LedgerProvider, NotesProvider};
use tessera_host::pairing::terminal::{Terminal, connect};
use tessera_host::pairing::wire as proto;
use tessera_host::{CardChannel, ChannelError, InProcessChannel};

use super::{Chapter, Narrator};
use crate::enroll::pairing_error;
use crate::error::{CliError, Exit};

/// The chapter.
pub const CHAPTER: Chapter = Chapter { name: "pairing", title: "the secure terminal", run };

type Log = Rc<RefCell<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A channel that keeps every exchange for the narrator.
struct Recorder {
    inner: InProcessChannel<Card>,
    log: Log,
}

impl CardChannel for Recorder {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let out = self.inner.transmit_raw(command)?;
        self.log.borrow_mut().push((command.to_vec(), out.clone()));
        Ok(out)
    }
    fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.atr()
    }
}

struct Plain<'a>(&'a mut Card);

impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn name_of(command: &Command) -> &'static str {
    match (command.cla & 0xF0, command.ins) {
        (_, 0xA4) => "SELECT",
        (_, 0x20) => "VERIFY (PIN, redacted)",
        (_, 0xCA) => "GET DATA",
        (_, 0x50) => "INITIALIZE UPDATE",
        (_, 0x82) => "EXTERNAL AUTHENTICATE (level 33)",
        (_, proto::INS_LOAD_CRL) => "LOAD CRL",
        (_, proto::INS_PAIR_BEGIN) => "PAIR BEGIN (terminal certificate, ephemeral key, nonce)",
        (_, proto::INS_PAIR_CONFIRM) => "PAIR CONFIRM (terminal signature, key confirmation)",
        (_, proto::INS_USE_PAIRING) => "USE PAIRING (terminal key id)",
        (_, proto::INS_GENERATE_KEY) => "GENERATE KEY",
        (_, proto::INS_INSTALL_CERTIFICATE) => "INSTALL CERTIFICATE",
        (0x80, proto::INS_INVOKE) => "INVOKE, protected: encrypted and MACed",
        _ => "command",
    }
}

fn show(n: &mut Narrator, log: &Log) {
    for (cmd, rsp) in log.borrow_mut().drain(..) {
        if let (Ok(c), Some(r)) = (Command::parse(&cmd), Response::parse(&rsp)) {
            n.exchange(name_of(&c), &c, &r);
        }
    }
}

fn demo_err(e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Other, format!("demo: {e}"))
}

fn run(n: &mut Narrator) -> Result<(), CliError> {
    let mut ca = LocalCa::in_memory("tessera demo CA").map_err(pairing_error)?;
    n.say(
        "Certification (Fig. 9). A CA (here in memory; `tessera enroll` keeps one in a directory; later the server) certifies an \
         issued card and two terminals. The card's pairing applet generates its own P-256 key and \
         signs a labelled enrolment structure over the CA's challenge (proof of possession); the \
         CA issues the card certificate (role card); the card stores it and the CA certificate, \
         which closes its one-time enrolment state. Terminal keys are made and certified the \
         same way and kept in a passphrase-sealed key file.",
    );
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    isd::personalize(&mut Script::new(&mut Plain(&mut card)))
        .map_err(|e| demo_err(format!("{e:?}")))?;
    let log: Log = Rc::default();
    let mut channel = Recorder { inner: InProcessChannel::new(card), log: log.clone() };
    let pin = PinBlock::from_value(isd::PIN).map_err(demo_err)?;
    let cert =
        enrol_card(&mut channel, &mut ca, &pin, "demo card holder").map_err(pairing_error)?;
    show(n, &log);
    let serial = cert.info().map(|i| hex::encode_upper(i.serial)).unwrap_or_default();
    n.say(&format!("The card is enrolled: certificate serial {serial} (its key id)."));
    let terminal_a = Terminal::new(enrol_terminal(&mut ca, "terminal A").map_err(pairing_error)?);
    let terminal_b = Terminal::new(enrol_terminal(&mut ca, "terminal B").map_err(pairing_error)?);

    channel.reset()?;
    n.say(
        "Insertion into terminal A (Fig. 5). It first tries to authenticate: USE PAIRING names \
         its pairing, which the card does not have (6A88). So it asks the holder for the PIN, \
         verifies it, and runs setup (Fig. 7): PAIR BEGIN carries the terminal certificate, an \
         ephemeral public key and a nonce; the card checks chain, role, validity and revocation, \
         answers with its certificate, its ephemeral key, its nonce, its signature over the \
         transcript and a key confirmation. PAIR CONFIRM carries the terminal's signature and \
         confirmation: the card stores the pairing STAGED. Then authentication runs again and \
         commits it.",
    );
    let mut store_a = PairingStore::in_memory();
    let mut asked = false;
    let (mut session, how) = connect(&terminal_a, &mut channel, &mut store_a, &mut || {
        asked = true;
        Ok(pin.clone())
    })
    .map_err(pairing_error)?;
    show(n, &log);
    n.say(&format!("Result: {how:?}; PIN asked: {asked}."));

    n.say(
        "Services (Fig. 8): every command is INVOKE naming a service (P1) and an operation (P2), \
         wrapped at SCP03 level 33: C-MAC and encrypted data out, R-MAC and encrypted data back.",
    );
    let balance = session.invoke(&LedgerProvider::credit(1500)).map_err(pairing_error)?;
    session.invoke(&NotesProvider::put(0, b"wifi: correct horse")).map_err(pairing_error)?;
    show(n, &log);
    n.say(&format!(
        "Ledger balance after CREDIT 1500: {}. A note is stored in slot 0.",
        proto::ledger::parse_balance(&balance).map_err(demo_err)?
    ));
    drop(session);

    channel.reset()?;
    n.say(
        "Next insertion into terminal A: USE PAIRING, INITIALIZE UPDATE and EXTERNAL \
         AUTHENTICATE under the pairing's keys: no certificate, no signature, no PIN, and the \
         card writes nothing.",
    );
    let (mut session, how) = connect(&terminal_a, &mut channel, &mut store_a, &mut || {
        Err(PairingError::File("the PIN is not needed here".into()))
    })
    .map_err(pairing_error)?;
    let note = session.invoke(&NotesProvider::get(0)).map_err(pairing_error)?;
    show(n, &log);
    n.say(&format!("Result: {how:?}; the note reads {:?}.", String::from_utf8_lossy(&note)));
    drop(session);

    channel.reset()?;
    n.say(
        "The holder moves the card to terminal B. B has no pairing with this card: its \
         authentication fails, it asks for the PIN and pairs, with no other step. The card now \
         keeps both pairings (up to eight).",
    );
    let mut store_b = PairingStore::in_memory();
    let (mut session, how) =
        connect(&terminal_b, &mut channel, &mut store_b, &mut || Ok(pin.clone()))
            .map_err(pairing_error)?;
    let balance = session.invoke(&LedgerProvider::balance()).map_err(pairing_error)?;
    show(n, &log);
    n.say(&format!(
        "Result: {how:?}; balance seen from terminal B: {}.",
        proto::ledger::parse_balance(&balance).map_err(demo_err)?
    ));
    drop(session);
    channel.reset()?;
    let (_, how) = connect(&terminal_a, &mut channel, &mut store_a, &mut || {
        Err(PairingError::File("the PIN is not needed here".into()))
    })
    .map_err(pairing_error)?;
    log.borrow_mut().clear();
    n.say(&format!("Back in terminal A: {how:?}, no PIN."));
    Ok(())
}
