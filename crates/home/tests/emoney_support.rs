//! Shared by the e-money tests (included with `#[path]`): an issuer CA, an enrolled in-memory
//! home card trusting the market and the bank, and the market and bank servers on loopback.
#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::new_without_default)]

use std::sync::Arc;

use tessera_card::applets::isd;
use tessera_card::pin::PinBlock;
use tessera_card::{Card, CardOptions};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::scp03::StaticKeys;
use tessera_crypto::x509::{self, AltName, Certificate, IssueRequest, Role, Validity};
use tessera_home::SoftwareKey;
use tessera_home::emoney::bank::Bank;
use tessera_home::emoney::https::{self, DirectTransport, Running};
use tessera_home::emoney::market::{Market, default_catalogue};
use tessera_home::emoney::{FixedClock, Party};
use tessera_host::InProcessChannel;
use tessera_host::home::{HomeCard, HomeCardSession, ManualClock, personalize_card_id};
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::pki_types::CertificateDer;

pub type Session = HomeCardSession<InProcessChannel<Card>, ManualClock>;

pub const PIN1: &[u8] = b"1111";
pub const PIN2: &[u8] = b"2222";

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn pin(v: &[u8]) -> PinBlock {
    PinBlock::from_value(v).unwrap()
}

pub struct Ca {
    pub key: SigningKey,
    pub cert: Certificate,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = SigningKey::generate(&mut OsRng);
        let v = Validity { not_before: now() - 86_400, not_after: now() + 365 * 86_400 };
        let cert = x509::self_signed_ca(&key, name, &x509::random_serial(&mut OsRng), v).unwrap();
        Ca { key, cert }
    }

    pub fn issue(&self, cn: &str, role: Role, alt: &[AltName]) -> (SigningKey, Certificate) {
        let key = SigningKey::generate(&mut OsRng);
        let v = Validity { not_before: now() - 86_400, not_after: now() + 365 * 86_400 };
        let cert = x509::issue_with_alt_names(
            &self.key,
            &self.cert,
            &IssueRequest {
                subject_cn: cn,
                public_key: &key.public_key(),
                roles: &[role],
                serial: &x509::random_serial(&mut OsRng),
                validity: v,
                ca_path_len: None,
            },
            alt,
        )
        .unwrap();
        (key, cert)
    }

    /// A market or bank: role server, for `localhost` and `127.0.0.1`.
    pub fn party(&self, cn: &str) -> Party {
        let alt = [AltName::Dns("localhost".into()), AltName::Ip("127.0.0.1".parse().unwrap())];
        let (key, cert) = self.issue(cn, Role::Server, &alt);
        Party::new(key, cert).unwrap()
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(self.cert.der().to_vec())).unwrap();
        roots
    }

    /// A TLS client key (role home) as the home server's market connections use.
    pub fn tls_key(&self, cn: &str) -> Arc<SoftwareKey> {
        let (key, cert) = self.issue(cn, Role::Home, &[]);
        Arc::new(SoftwareKey::new(key, vec![CertificateDer::from(cert.der().to_vec())]))
    }
}

/// An in-memory home card with card id `id`, enrolled by `ca` (wallet in EUR), trusting the
/// given market and bank certificates, left in the enabled state.
pub fn home_card(ca: &Ca, id: &str, trust: &[(&Certificate, bool)]) -> Session {
    let mut channel = InProcessChannel::new(Card::in_memory(CardOptions::default()));
    personalize_card_id(&mut channel, &StaticKeys::gp_test_keys(isd::INITIAL_KVN), id.as_bytes())
        .unwrap();
    let mut card = HomeCard::new(channel);
    card.select().unwrap();
    card.set_pins(&pin(PIN1), &pin(PIN2), &pin(b"99999999")).unwrap();
    card.verify_pin1(&pin(PIN1)).unwrap();
    card.verify_pin2(&pin(PIN2)).unwrap();
    card.enrol(&ca.key, &ca.cert, id.as_bytes(), "alice", *b"EUR").unwrap();
    for (cert, market) in trust {
        if *market { card.trust_market(cert).unwrap() } else { card.trust_bank(cert).unwrap() }
    }
    card.end().unwrap();
    let mut session = HomeCardSession::new(card, ManualClock::new());
    session.verify_pin2(&pin(PIN2)).unwrap();
    session
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The issuer, a market and a bank on loopback (with their clocks), and an enrolled card.
pub struct World {
    pub rt: tokio::runtime::Runtime,
    pub ca: Ca,
    pub market: Arc<Market>,
    pub market_at: Running,
    pub market_clock: FixedClock,
    pub bank: Arc<Bank>,
    pub bank_at: Running,
    pub card: Session,
    pub tls: Arc<SoftwareKey>,
}

impl World {
    pub fn new() -> World {
        Self::with_market_db(None)
    }

    pub fn with_market_db(db: Option<&std::path::Path>) -> World {
        let rt = runtime();
        let ca = Ca::new("tessera test issuer");
        let market_party = ca.party("market.test");
        let bank_party = ca.party("bank.test");
        let card = home_card(
            &ca,
            "HOME-1",
            &[(&market_party.certificate, true), (&bank_party.certificate, false)],
        );
        let market_clock = FixedClock::new(now());
        let market_tls = https::server_config(&market_party, &ca.cert).unwrap();
        let market = Market::open(
            market_party,
            ca.cert.clone(),
            *b"EUR",
            default_catalogue(),
            db,
            Arc::new(market_clock.clone()),
        )
        .unwrap();
        let bank_tls = https::server_config(&bank_party, &ca.cert).unwrap();
        let bank = Bank::open(
            bank_party,
            ca.cert.clone(),
            *b"EUR",
            None,
            Arc::new(FixedClock::new(now())),
        )
        .unwrap();
        bank.open_account("alice", "alice", 100_000).unwrap();
        let market_at = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            https::serve(market_tls, l, market.clone().router()).await.unwrap()
        });
        let bank_at = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            https::serve(bank_tls, l, bank.clone().router()).await.unwrap()
        });
        let tls = ca.tls_key("alice");
        World { rt, ca, market, market_at, market_clock, bank, bank_at, card, tls }
    }

    pub fn market_client(&self) -> DirectTransport {
        DirectTransport::new(
            self.tls.clone(),
            self.ca.roots(),
            "localhost",
            self.market_at.addr.port(),
        )
        .unwrap()
    }

    pub fn bank_client(&self) -> DirectTransport {
        DirectTransport::new(
            self.tls.clone(),
            self.ca.roots(),
            "localhost",
            self.bank_at.addr.port(),
        )
        .unwrap()
    }

    /// The card's balance.
    pub fn balance(&mut self) -> u64 {
        self.card.card().unwrap().wallet().unwrap().balance
    }
}
