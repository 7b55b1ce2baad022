//! The settlement notice (Fig. 19, claim 4) against a real SMTP server on loopback: Debian's
//! aiosmtpd (`/usr/bin/python3 -m aiosmtpd`, package python3-aiosmtpd, installed by
//! scripts/install-test-deps) with its Mailbox handler writing what it receives to a maildir;
//! once plain, once with STARTTLS required (a certificate from the test CA). Without aiosmtpd
//! the tests are skipped, except with `CI=true`, where they fail.

#![allow(clippy::unwrap_used)]

#[path = "emoney_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tessera_crypto::x509::{AltName, Role};
use tessera_home::emoney::notice::{Notifier, Scheduler, SmtpSettings, TlsPolicy};
use tessera_home::emoney::wallet;

const PYTHON: &str = "/usr/bin/python3";

struct Smtp {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aiosmtpd_available() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "aiosmtpd is missing ({PYTHON} -m aiosmtpd); run scripts/install-test-deps"
        );
        eprintln!("skipped: aiosmtpd is not installed for {PYTHON}");
    }
    ok
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Starts aiosmtpd on a free loopback port, with STARTTLS when `tls` (cert, key) is given.
fn smtp(tls: Option<(String, String)>) -> Smtp {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("maildir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
    if let Some((cert, key)) = tls {
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        cmd.arg("--tlscert").arg(&c).arg("--tlskey").arg(&k);
    }
    cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]).arg(&maildir);
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtp { child, port, maildir, _dir: dir }
}

/// The messages received so far, waiting (bounded) for at least `n`.
fn received(maildir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut out: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(maildir.join("new"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| {
                        let t = e.metadata().unwrap().modified().unwrap();
                        (t, std::fs::read_to_string(e.path()).unwrap().replace("\r\n", "\n"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if out.len() >= n || Instant::now() > deadline {
            out.sort();
            return out.into_iter().map(|(_, m)| m).collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn settings(port: u16, tls: TlsPolicy, roots: Vec<Vec<u8>>) -> SmtpSettings {
    SmtpSettings {
        host: if tls == TlsPolicy::Never { "127.0.0.1".into() } else { "localhost".into() },
        port,
        from: "home@tessera.test".into(),
        to: "alice@tessera.test".into(),
        tls,
        roots,
    }
}

#[test]
fn the_digest_of_new_entries_is_mailed_once_each() {
    if !aiosmtpd_available() {
        return;
    }
    let server = smtp(None);
    let mut w = World::new();
    let mut bank = w.bank_client();
    let mut market = w.market_client();
    wallet::refill(&mut w.card, &mut bank, "alice", 10_000).unwrap();
    let bought = wallet::purchase(&mut w.card, &mut market, "book", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("notice.state");
    // Opportunistic TLS: this server offers no STARTTLS, so the notice goes in plain.
    let notifier =
        Notifier::new(settings(server.port, TlsPolicy::Opportunistic, vec![]), Some(&state))
            .unwrap();
    let sent = notifier.run(&mut w.card).unwrap().unwrap();
    assert_eq!(sent.entries, 2);
    let mail = received(&server.maildir, 1);
    assert_eq!(mail.len(), 1);
    let m = &mail[0];
    assert!(m.contains("Subject: tessera settlement notice: 2 operations"), "{m}");
    assert!(m.contains("To: alice@tessera.test"), "{m}");
    assert!(m.contains("Content-Transfer-Encoding: 7bit"), "{m}");
    assert!(m.contains(" refill +100.00 EUR\n    from bank.test\n    voucher 1\n"), "{m}");
    let payment =
        format!(" payment -12.50 EUR\n    to market.test\n    order {}\n", bought.order.order);
    assert!(m.contains(&payment), "{m}");
    assert!(m.contains("Balance: 87.50 EUR"), "{m}");
    // Nothing new: nothing sent.
    assert!(notifier.run(&mut w.card).unwrap().is_none());
    // The position survives a restart; only the cancellation goes out next.
    wallet::cancel(&mut w.card, &mut market, &bought.order.order).unwrap();
    let again =
        Notifier::new(settings(server.port, TlsPolicy::Opportunistic, vec![]), Some(&state))
            .unwrap();
    assert_eq!(again.next(), sent.next);
    assert_eq!(again.run(&mut w.card).unwrap().unwrap().entries, 1);
    let mail = received(&server.maildir, 2);
    assert_eq!(mail.len(), 2);
    assert!(mail.iter().any(|m| m.contains("1 operation\n")));
    assert!(mail.iter().any(|m| m.contains(" cancellation +12.50 EUR\n    by market.test")));
}

#[test]
fn a_failed_send_keeps_the_entries_for_the_next_run() {
    let mut w = World::new();
    let mut bank = w.bank_client();
    wallet::refill(&mut w.card, &mut bank, "alice", 1_000).unwrap();
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let notifier = Notifier::new(settings(port, TlsPolicy::Never, vec![]), None).unwrap();
    assert!(notifier.run(&mut w.card).is_err());
    assert_eq!(notifier.next(), 0);
}

#[test]
fn starttls_and_the_notice_after_each_payment() {
    if !aiosmtpd_available() {
        return;
    }
    let w = World::new();
    let (key, cert) = w.ca.issue(
        "localhost",
        Role::Server,
        &[AltName::Dns("localhost".into()), AltName::Ip("127.0.0.1".parse().unwrap())],
    );
    let server = smtp(Some((
        pem("CERTIFICATE", cert.der()),
        pem("PRIVATE KEY", &key.to_pkcs8_der().unwrap()),
    )));
    let mut bank = w.bank_client();
    let mut market = w.market_client();
    let World { card, ca, .. } = w;
    let card = Arc::new(Mutex::new(card));
    {
        let mut c = card.lock().unwrap();
        wallet::refill(&mut *c, &mut bank, "alice", 5_000).unwrap();
    }
    // TLS required, the server's certificate checked against the CA.
    let notifier = Arc::new(
        Notifier::new(
            settings(server.port, TlsPolicy::Required, vec![ca.cert.der().to_vec()]),
            None,
        )
        .unwrap(),
    );
    let scheduler = Scheduler::start(notifier.clone(), card.clone(), Duration::from_secs(3600));
    {
        let mut c = card.lock().unwrap();
        wallet::purchase(&mut *c, &mut market, "tea", 1).unwrap();
    }
    scheduler.after_payment();
    let mail = received(&server.maildir, 1);
    scheduler.stop();
    assert_eq!(mail.len(), 1, "one notice after the payment");
    assert!(mail[0].contains(" payment -4.50 EUR\n    to market.test"), "{}", mail[0]);
    assert_eq!(notifier.next(), 3);
    // Required TLS to a server with a certificate from another CA fails, and keeps the entries.
    let stranger = Ca::new("stranger");
    let strict = Notifier::new(
        settings(server.port, TlsPolicy::Required, vec![stranger.cert.der().to_vec()]),
        None,
    )
    .unwrap();
    assert!(strict.run(&mut *card.lock().unwrap()).is_err());
    assert_eq!(strict.next(), 0);
}
