//! E-money from the terminal through the home server: the market and the bank reached through
//! market sessions in handover mode (the terminal seals the TLS records with handed-over
//! keys) and relay mode, the home card's wallet commands through the control channel's
//! `Wallet` frames, only while the home card is unlocked by PIN2.

#![allow(clippy::unwrap_used)]

#[path = "emoney_support.rs"]
mod support;

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use support::*;
use tessera_crypto::x509::Role;
use tessera_home::SoftwareKey;
use tessera_home::emoney::EmoneyError;
use tessera_home::emoney::https::ProxyTransport;
use tessera_home::emoney::market::OrderStatus;
use tessera_home::emoney::wallet::{self, HomeWallet, RemoteWallet, WalletPort};
use tessera_home::handover::SessionCache;
use tessera_home::registry::Registry;
use tessera_home::server::{HomeServer, Identity, SoftwareHomeCard, StandardMarkets};
use tessera_home::terminal::Terminal;
use tessera_proto::control::Mode;
use tokio_rustls::rustls::pki_types::CertificateDer;

const HOME_PIN2: &[u8] = b"2222";

struct Home {
    w: World,
    terminal: Terminal,
    home_tls_fp: [u8; 32],
    _running: tessera_home::server::Running,
}

fn home() -> Home {
    let World { rt, ca, market, market_at, market_clock, bank, bank_at, card, tls } = World::new();
    // The home card's TLS key (role home) as the home server's market handshakes use it.
    let (key, cert) = ca.issue("alice", Role::Home, &[]);
    let home_tls_fp = tessera_home::fingerprint(cert.der());
    let key = SoftwareKey::new(key, vec![CertificateDer::from(cert.der().to_vec())]);
    let home_card = Arc::new(SoftwareHomeCard::new(key, HOME_PIN2));
    let cache = Arc::new(SessionCache::default());
    let markets = Arc::new(StandardMarkets::new(ca.roots(), home_card.clone(), cache).unwrap());
    let identity = Identity::generate(now()).unwrap();
    let registry = Arc::new(Registry::in_memory().unwrap());
    let server = HomeServer::new(
        identity.server_config(registry.clone()).unwrap(),
        registry.clone(),
        home_card,
        markets,
    );
    // The wallet: the enrolled in-memory home card, behind the home server.
    let shared: Arc<Mutex<dyn WalletPort + Send>> = Arc::new(Mutex::new(card));
    server.set_wallet(Arc::new(HomeWallet::new(shared, None)).into_handler());
    let running = rt.block_on(server.clone().spawn("127.0.0.1:0".parse().unwrap())).unwrap();
    let (access_key, access_cert) = ca.issue("phone", Role::Access, &[]);
    registry.admit(access_cert.der(), "phone", now()).unwrap();
    let access =
        SoftwareKey::new(access_key, vec![CertificateDer::from(access_cert.der().to_vec())]);
    let terminal =
        Terminal::new(Arc::new(access), identity.spki_sha256(), running.addr.to_string()).unwrap();
    // The world keeps a spare card in place of the one the home server now holds.
    let card = support::home_card(&ca, "SPARE", &[]);
    let w = World { rt, ca, market, market_at, market_clock, bank, bank_at, card, tls };
    Home { w, terminal, home_tls_fp, _running: running }
}

#[test]
fn refill_buy_and_cancel_from_the_terminal_in_handover_mode() {
    let h = home();
    let conn = RefCell::new(h.terminal.connect().unwrap());
    // Locked until PIN2: the wallet is refused.
    let mut remote = RemoteWallet::new(&conn);
    match remote.info() {
        Err(EmoneyError::Card(m)) => assert!(m.contains("locked"), "{m}"),
        other => panic!("{other:?}"),
    }
    conn.borrow_mut().pin2(HOME_PIN2).unwrap();
    let mut bank = ProxyTransport::new(&conn, "localhost", h.w.bank_at.addr.port(), Mode::Handover);
    let refill = wallet::refill(&mut remote, &mut bank, "alice", 20_000).unwrap();
    assert!(refill.debited);
    let mut shop =
        ProxyTransport::new(&conn, "localhost", h.w.market_at.addr.port(), Mode::Handover);
    let bought = wallet::purchase(&mut remote, &mut shop, "lamp", 2).unwrap();
    assert_eq!(bought.order.amount, 7_980);
    assert_eq!(remote.info().unwrap().balance, 12_020);
    // The market saw the home card's TLS certificate (through the handover) and the payment.
    let order = h.w.market.status(&h.home_tls_fp, &bought.order.order).unwrap();
    assert_eq!(order.status, OrderStatus::Paid);
    wallet::cancel(&mut remote, &mut shop, &bought.order.order).unwrap();
    assert_eq!(remote.info().unwrap().balance, 20_000);
    assert_eq!(remote.read_log(0).unwrap().len(), 3);
    // Relay mode works the same way.
    let mut relayed =
        ProxyTransport::new(&conn, "localhost", h.w.market_at.addr.port(), Mode::Relay);
    wallet::purchase(&mut remote, &mut relayed, "tea", 1).unwrap();
    assert_eq!(remote.info().unwrap().balance, 19_550);
    // The user's "end": the card goes back to waiting, the wallet is refused again.
    conn.borrow_mut().end().unwrap();
    assert!(matches!(remote.challenge(), Err(EmoneyError::Card(_))));
}

#[test]
fn malformed_wallet_requests_change_nothing() {
    let h = home();
    let conn = RefCell::new(h.terminal.connect().unwrap());
    conn.borrow_mut().pin2(HOME_PIN2).unwrap();
    for bad in [&[][..], &[0x09], &[0x02, 1, 2, 3], &[0x06, 0, 0]] {
        let reply = conn.borrow_mut().wallet(bad).unwrap();
        assert!(matches!(wallet::parse_reply(&reply), Err(EmoneyError::Card(_))), "{bad:?}");
    }
    let mut remote = RemoteWallet::new(&conn);
    assert_eq!(remote.info().unwrap().balance, 0);
    assert_eq!(remote.read_log(0).unwrap().len(), 0);
}
