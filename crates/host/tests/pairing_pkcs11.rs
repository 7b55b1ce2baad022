#![allow(clippy::unwrap_used)] // tests may unwrap

//! The terminal key in a PKCS#11 token: SoftHSM2 (Debian `softhsm2`), with a token the test
//! initialises in a temporary directory. A terminal whose key is generated in the token is
//! enrolled, pairs with a card, uses a service, restarts from its key file and authenticates;
//! the private key is sensitive and not extractable.
//!
//! SoftHSM reads `SOFTHSM2_CONF` when the module initialises, and setting a variable in a
//! running test process is not safe, so the test re-runs this binary for its ignored
//! `in_token` test with the variable set for that child only. Without `softhsm2-util` it
//! skips with a notice, except under `CI=true`, where that is a failure.

use std::path::Path;
use std::process::Command;

use tessera_card::applets::isd::scenarios as isd;
use tessera_card::pin::PinBlock;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::passphrase::KdfCost;
use tessera_crypto::pkcs11::softhsm::{self, MODULE};
use tessera_host::pairing::ca::LocalCa;
use tessera_host::pairing::enrol::{enrol_card, enrol_terminal_key};
use tessera_host::pairing::files::{PairingStore, TerminalIdentity, TerminalKey};
use tessera_host::pairing::pkcs11::{Token, TokenConfig, TokenError};
use tessera_host::pairing::service::LedgerProvider;
use tessera_host::pairing::terminal::{Connection, Terminal, connect};
use tessera_host::{CardChannel, InProcessChannel};
use zeroize::Zeroizing;

const LABEL: &str = "tessera-terminal";
const PIN: &str = "123456";
const CHILD: &str = "TESSERA_PKCS11_CHILD";

#[test]
fn terminal_key_in_a_softhsm_token() {
    if !softhsm::available_for_test("the PKCS#11 terminal-key test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = softhsm::init_token(dir.path(), LABEL, PIN, "654321").unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "in_token", "--nocapture", "--test-threads", "1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && out.contains("1 passed"),
        "{out}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
}

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

fn config(pin: &str) -> TokenConfig {
    TokenConfig {
        module: MODULE.into(),
        token_label: LABEL.into(),
        pin: Zeroizing::new(pin.into()),
    }
}

/// Runs only as the child of [`terminal_key_in_a_softhsm_token`] (SOFTHSM2_CONF set).
#[test]
#[ignore = "run by terminal_key_in_a_softhsm_token with SOFTHSM2_CONF set"]
fn in_token() {
    let Ok(dir) = std::env::var(CHILD) else { panic!("run by terminal_key_in_a_softhsm_token") };
    let dir = Path::new(&dir);

    // A wrong PIN does not open the token.
    assert!(matches!(Token::open(&config("000000")), Err(TokenError::Token(_))));
    let token = Token::open(&config(PIN)).unwrap();

    // The key is generated in the token: sensitive, never extractable; a label in use is
    // refused.
    let key = token.generate("terminal 1").unwrap();
    assert_eq!(key.extractable_and_sensitive().unwrap(), (false, true));
    assert!(matches!(token.generate("terminal 1"), Err(TokenError::Exists(_))));

    // Enrolment: the token key proves possession; the certificate certifies it.
    let mut ca = LocalCa::init(&dir.join("ca"), "tessera test CA").unwrap();
    let enrolled = enrol_terminal_key(&mut ca, "terminal 1", key.clone().into()).unwrap();
    assert_eq!(enrolled.certificate.info().unwrap().public_key, key.public_key());
    let key_path = dir.join("terminal.key");
    enrolled.save(&key_path, "pass", KdfCost::TEST_ONLY).unwrap();

    // The key file names the key; it cannot be used without the token, nor a file key with
    // one.
    let e = TerminalIdentity::load(&key_path, "pass").unwrap_err();
    assert!(e.to_string().contains("PKCS#11 token"), "{e}");
    let identity = TerminalIdentity::load_with_token(&key_path, "pass", Some(&token)).unwrap();
    assert!(matches!(identity.key(), TerminalKey::Token(k) if k.label() == "terminal 1"));

    // A card enrolled with the same CA.
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    isd::personalize(&mut Script::new(&mut Plain(&mut card))).unwrap();
    let mut channel = InProcessChannel::new(card);
    enrol_card(&mut channel, &mut ca, &pin(), "card holder").unwrap();
    channel.reset().unwrap();

    // First insertion: setup (the transcript signed in the token), then a service.
    let terminal = Terminal::new(identity);
    let mut store = PairingStore::open(&dir.join("pairings"), "pass").unwrap();
    let (mut session, how) =
        connect(&terminal, &mut channel, &mut store, &mut || Ok(pin())).unwrap();
    assert_eq!(how, Connection::Repaired);
    assert_eq!(session.invoke(&LedgerProvider::credit(42)).unwrap(), 42u64.to_be_bytes());
    drop(session);
    store.save("pass", KdfCost::TEST_ONLY).unwrap();

    // A restart: a new token session (the module is finalised when the last handle on the
    // token goes), the key file and the store; authentication at once.
    drop((terminal, enrolled, key, token));
    let token = Token::open(&config(PIN)).unwrap();
    let identity = TerminalIdentity::load_with_token(&key_path, "pass", Some(&token)).unwrap();
    let terminal = Terminal::new(identity);
    let mut store = PairingStore::open(&dir.join("pairings"), "pass").unwrap();
    channel.reset().unwrap();
    let (mut session, how) = connect(&terminal, &mut channel, &mut store, &mut || {
        panic!("the PIN must not be asked for")
    })
    .unwrap();
    assert_eq!(how, Connection::Authenticated);
    assert_eq!(session.invoke(&LedgerProvider::balance()).unwrap(), 42u64.to_be_bytes());
}
