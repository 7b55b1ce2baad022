//! Chapter: home-card e-money (seed 004, issue 9), all in this process. An issuer CA enrols a
//! home card (TLS key and payment key, wallet in EUR) and an access card; the reference market
//! and bank run on loopback (HTTPS, client certificates from the CA, SQLite in memory), and a
//! tiny SMTP sink stands in for the user's mail server. From the terminal, through the home
//! server: refill from the bank, buy at the market, the settlement notice arrives by e-mail,
//! a replayed payment token is refused, and the purchase is cancelled.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::x509::{self, AltName, Certificate, IssueRequest, Role, Validity};
use tessera_home::emoney::bank::Bank;
use tessera_home::emoney::https::{self, ProxyTransport, call};
use tessera_home::emoney::market::{Market, default_catalogue};
use tessera_home::emoney::notice::{Notifier, Scheduler, SharedWallet, SmtpSettings, TlsPolicy};
use tessera_home::emoney::wallet::{self, CardHomeWallet, HomeWallet, RemoteWallet, WalletPort};
use tessera_home::emoney::{Party, SystemUnixClock, to_hex};
use tessera_home::registry::Registry;
use tessera_home::server::{CardHome, HomeServer, Identity, StandardMarkets};
use tessera_home::terminal::{CardAccess, Terminal};
use tessera_proto::access::HomeServer as PinnedHome;
use tessera_proto::control::Mode;
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::proxy::{demo_ca, enrolled_access_card, enrolled_home_card, now};
use super::{Chapter, Narrator};
use crate::error::{CliError, Exit};

/// The chapter.
pub const CHAPTER: Chapter = Chapter {
    name: "emoney",
    title: "home-card e-money: refill, buy, settlement notice, cancel",
    run,
};

fn fail(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Other, format!("e-money demo: {what}: {e}"))
}

fn money(amount: u64) -> String {
    format!("{}.{:02} EUR", amount / 100, amount % 100)
}

/// A market or bank certificate from the CA (role server, for localhost).
fn party(ca_key: &SigningKey, ca: &Certificate, cn: &str) -> Result<Party, CliError> {
    let key = SigningKey::generate(&mut OsRng);
    let validity = Validity { not_before: now() - 3600, not_after: now() + 86_400 };
    let cert = x509::issue_with_alt_names(
        ca_key,
        ca,
        &IssueRequest {
            subject_cn: cn,
            public_key: &key.public_key(),
            roles: &[Role::Server],
            serial: &x509::random_serial(&mut OsRng),
            validity,
            ca_path_len: None,
        },
        &[AltName::Dns("localhost".into())],
    )
    .map_err(|e| fail("certificate", e))?;
    Party::new(key, cert).map_err(|e| fail("party", e))
}

/// The messages the SMTP sink received.
type Inbox = Arc<Mutex<Vec<String>>>;

/// A minimal SMTP sink on loopback: accepts every message and keeps it (the demo's mail
/// server; no TLS offered).
fn smtp_sink() -> Result<(u16, Inbox), CliError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| fail("SMTP sink", e))?;
    let port = listener.local_addr().map_err(|e| fail("SMTP sink", e))?.port();
    let inbox = Arc::new(Mutex::new(Vec::new()));
    let kept = inbox.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut out = match stream.try_clone() {
                Ok(s) => s,
                Err(_) => continue,
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream);
            let _ = out.write_all(b"220 demo sink\r\n");
            let mut message: Option<String> = None;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Some(m) = message.as_mut() {
                    if line == ".\r\n" {
                        let done = message.take().unwrap_or_default();
                        kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(done);
                        let _ = out.write_all(b"250 kept\r\n");
                    } else {
                        m.push_str(line.strip_prefix('.').unwrap_or(&line));
                    }
                    continue;
                }
                let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" | "HELO" => b"250 demo sink\r\n",
                    "DATA" => {
                        message = Some(String::new());
                        b"354 go on\r\n"
                    }
                    "QUIT" => {
                        let _ = out.write_all(b"221 bye\r\n");
                        break;
                    }
                    _ => b"250 ok\r\n",
                };
                let _ = out.write_all(reply);
            }
        }
    });
    Ok((port, inbox))
}

fn run(n: &mut Narrator) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail("runtime", e))?;
    let (ca_key, ca) = demo_ca()?;
    let market_party = party(&ca_key, &ca, "market.demo")?;
    let bank_party = party(&ca_key, &ca, "bank.demo")?;

    n.say("An issuer CA enrols the home card: a TLS key (role home, \"alice\") and a payment key of its own (role payment, common name the card id HOME-DEMO), the wallet in EUR. The card trusts the market's and the bank's certificates (TRUST), whose common names are their ids in the signed messages.");
    let mut home = enrolled_home_card(&ca_key, &ca)?;
    let hc = |e| fail("home card", e);
    home.trust_market(&market_party.certificate).map_err(hc)?;
    home.trust_bank(&bank_party.certificate).map_err(hc)?;
    home.end().map_err(hc)?;
    let home = Arc::new(CardHome::new(home).map_err(hc)?);

    // Market, bank and the SMTP sink.
    let market_tls = https::server_config(&market_party, &ca).map_err(|e| fail("market", e))?;
    let bank_tls = https::server_config(&bank_party, &ca).map_err(|e| fail("bank", e))?;
    let clock = Arc::new(SystemUnixClock);
    let market =
        Market::open(market_party, ca.clone(), *b"EUR", default_catalogue(), None, clock.clone())
            .map_err(|e| fail("market", e))?;
    let bank =
        Bank::open(bank_party, ca.clone(), *b"EUR", None, clock).map_err(|e| fail("bank", e))?;
    bank.open_account("alice", "alice", 50_000).map_err(|e| fail("bank", e))?;
    let serve = |config, router| {
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            https::serve(config, l, router).await
        })
        .map_err(|e| fail("listen", e))
    };
    let market_at = serve(market_tls, market.clone().router())?;
    let bank_at = serve(bank_tls, bank.clone().router())?;
    let (smtp_port, inbox) = smtp_sink()?;
    n.say(&format!(
        "The reference market (https://localhost:{}) and bank (https://localhost:{}) require client certificates from the CA; alice's bank account holds {}. An SMTP sink listens on port {smtp_port}.",
        market_at.addr.port(),
        bank_at.addr.port(),
        money(50_000)
    ));

    // The home server with the wallet and the settlement notice.
    let identity = Identity::generate(now()).map_err(|e| fail("identity", e))?;
    let registry = Arc::new(Registry::in_memory().map_err(|e| fail("registry", e))?);
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).map_err(|e| fail("roots", e))?;
    let cache = Arc::new(tessera_home::handover::SessionCache::default());
    let markets =
        Arc::new(StandardMarkets::new(roots, home.clone(), cache).map_err(|e| fail("markets", e))?);
    let tls = identity.server_config(registry.clone()).map_err(|e| fail("control TLS", e))?;
    let server = HomeServer::new(tls, registry.clone(), home.clone(), markets);
    let shared: SharedWallet = Arc::new(Mutex::new(CardHomeWallet(home)));
    let notifier = Arc::new(
        Notifier::new(
            SmtpSettings {
                host: "127.0.0.1".into(),
                port: smtp_port,
                from: "home@tessera.demo".into(),
                to: "alice@tessera.demo".into(),
                tls: TlsPolicy::Opportunistic,
                roots: vec![],
            },
            None,
        )
        .map_err(|e| fail("notifier", e))?,
    );
    let scheduler = Scheduler::start(notifier, shared.clone(), Duration::from_secs(3600));
    server.set_wallet(Arc::new(HomeWallet::new(shared, Some(scheduler))).into_handler());
    let running = rt
        .block_on(server.spawn("127.0.0.1:0".parse().map_err(|e| fail("address", e))?))
        .map_err(|e| fail("listen", e))?;

    let (mut access, access_cert) = enrolled_access_card(&ca_key, &ca)?;
    let ac = |e| fail("access card", e);
    access
        .set_home_server(&PinnedHome {
            spki_sha256: identity.spki_sha256(),
            address: running.addr.to_string(),
        })
        .map_err(ac)?;
    registry.admit(access_cert.der(), "alice's phone", now()).map_err(|e| fail("admit", e))?;
    let access = Arc::new(CardAccess::new(access).map_err(ac)?);
    let terminal = Terminal::new(access, identity.spki_sha256(), running.addr.to_string())
        .map_err(|e| fail("terminal", e))?;
    let conn = RefCell::new(terminal.connect().map_err(|e| fail("control channel", e))?);
    conn.borrow_mut().pin2(b"2468").map_err(|e| fail("PIN2", e))?;
    n.say("The terminal opened the control channel with the access card and sent PIN2: the home card is in the encryption-enabled state, the only state in which its wallet works.");

    let mut card = RemoteWallet::new(&conn);
    let mut bank_link =
        ProxyTransport::new(&conn, "localhost", bank_at.addr.port(), Mode::Handover);
    let refill = wallet::refill(&mut card, &mut bank_link, "alice", 20_000)
        .map_err(|e| fail("refill", e))?;
    n.say(&format!(
        "Refill (Fig. 18): the bank signed voucher {} for card {} ({}); the home card checked the bank's signature, credited it and signed an acknowledgement; the bank debited the account on it, once: account balance {}.",
        refill.voucher.message.sequence,
        String::from_utf8_lossy(&refill.voucher.message.card),
        money(refill.voucher.message.amount),
        money(refill.account_balance)
    ));

    let mut shop = ProxyTransport::new(&conn, "localhost", market_at.addr.port(), Mode::Handover);
    let catalogue = call(&mut shop, "GET", "/catalogue", None).map_err(|e| fail("catalogue", e))?;
    n.say(&format!(
        "The catalogue, fetched through the home server in handover mode (the terminal seals the TLS records itself): {}",
        catalogue["items"]
    ));
    let bought =
        wallet::purchase(&mut card, &mut shop, "book", 2).map_err(|e| fail("purchase", e))?;
    n.say(&format!(
        "Payment (Fig. 17): order {} for {}; the market signed a charge notice answering the card's challenge; PAY debited the card and returned a payment token (counter {}) signed by the payment key; the market verified it against the issuer CA and settled. Card balance {}.",
        bought.order.order,
        money(bought.order.amount),
        bought.token.message.counter,
        money(card.info().map_err(|e| fail("wallet", e))?.balance)
    ));
    let path = format!("/orders/{}/pay", bought.order.order);
    let certificate = card.payment_certificate().map_err(|e| fail("certificate", e))?;
    let replay = json!({ "token": to_hex(&bought.token), "certificate": hex::encode(certificate) });
    match call(&mut shop, "POST", &path, Some(&replay)) {
        Err(e) => n.say(&format!("The same payment token again is refused: {e}")),
        Ok(_) => return Err(fail("replay", "the market accepted a token twice")),
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let mail = loop {
        let first =
            inbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner).first().cloned();
        match first {
            Some(m) => break m,
            None if Instant::now() > deadline => return Err(fail("notice", "no e-mail arrived")),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let body: Vec<&str> = mail.lines().skip_while(|l| !l.is_empty()).skip(1).collect();
    n.say(&format!(
        "Settlement notice (Fig. 19, claim 4): after the payment the home server read the new log entries (READ LOG) and mailed the digest:\n  {}",
        body.join("\n  ").trim_end()
    ));

    let receipt =
        wallet::cancel(&mut card, &mut shop, &bought.order.order).map_err(|e| fail("cancel", e))?;
    n.say(&format!(
        "Cancellation (Fig. 20): the card signed a cancellation request for that payment over the market's fresh challenge; within 7 days of the notice (by the market's own signed time), the market checked it and signed a confirmation; CANCEL credited {} back and marked payment {} cancelled. Card balance {}.",
        money(receipt.message.amount),
        receipt.message.payment_counter,
        money(card.info().map_err(|e| fail("wallet", e))?.balance)
    ));
    match wallet::cancel(&mut card, &mut shop, &bought.order.order) {
        Err(e) => n.say(&format!("A second cancellation is refused: {e}")),
        Ok(_) => return Err(fail("cancel", "cancelled twice")),
    }
    drop((bank_link, shop, card));
    let _ = conn.borrow_mut().end();
    rt.block_on(async {
        market_at.stop().await;
        bank_at.stop().await;
    });
    Ok(())
}
