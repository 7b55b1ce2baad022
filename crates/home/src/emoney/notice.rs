//! The settlement notice (Fig. 19, claim 4): the home server reads the card's new log entries
//! (READ LOG from the counter after the last one it mailed) and e-mails the user a digest
//! over SMTP (`lettre`), with STARTTLS when the server offers it ([`TlsPolicy`]), on a
//! schedule and after each payment ([`Scheduler`]).
//!
//! The counter mailed last is kept in a state file, written (by rename) only after the SMTP
//! server accepted the message, so a failed send is retried with the same entries next time
//! and an entry is never skipped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::client::{Certificate as SmtpCertificate, Tls, TlsParameters};
use lettre::{SmtpTransport, Transport};
use tessera_proto::home::{EntryKind, LogEntry, WalletInfo};

use super::wallet::WalletPort;
use super::{EmoneyError, Result};

/// When to use TLS with the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS when the server offers it, else plain (the default).
    Opportunistic,
    /// STARTTLS required.
    Required,
    /// Never (a local relay).
    Never,
}

/// Where and how to send notices.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// The SMTP server's host name (also the name its certificate must carry).
    pub host: String,
    /// Its port (25, 587, or a test server's).
    pub port: u16,
    /// The sender address.
    pub from: String,
    /// The user's address.
    pub to: String,
    /// When to use TLS.
    pub tls: TlsPolicy,
    /// Root certificates (DER) the SMTP server's certificate must chain to, for TLS.
    pub roots: Vec<Vec<u8>>,
}

/// Sends settlement digests.
pub struct Notifier {
    smtp: SmtpSettings,
    state: Option<PathBuf>,
    next: Mutex<u64>,
}

/// What one run of the notifier did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Entries in the digest.
    pub entries: usize,
    /// The next counter to mail.
    pub next: u64,
}

impl Notifier {
    /// A notifier keeping its position in `state` (a small text file; in memory when `None`).
    pub fn new(smtp: SmtpSettings, state: Option<&Path>) -> Result<Notifier> {
        let next = match state {
            Some(p) if p.exists() => std::fs::read_to_string(p)
                .map_err(|e| EmoneyError::Setup(format!("{}: {e}", p.display())))?
                .trim()
                .parse()
                .map_err(|_| EmoneyError::Setup(format!("{}: not a counter", p.display())))?,
            _ => 0,
        };
        Ok(Notifier { smtp, state: state.map(Path::to_path_buf), next: Mutex::new(next) })
    }

    /// The next counter to mail.
    pub fn next(&self) -> u64 {
        *self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the entries not mailed yet and mails them; `None` when there were none.
    pub fn run(&self, card: &mut dyn WalletPort) -> Result<Option<Sent>> {
        let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries = card.read_log(*next)?;
        let Some(last) = entries.last().map(|e| e.counter) else { return Ok(None) };
        let info = card.info()?;
        let (subject, body) = digest(&entries, &info);
        self.send(&subject, body)?;
        let new_next = last + 1;
        if let Some(p) = &self.state {
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, format!("{new_next}\n"))
                .and_then(|()| std::fs::rename(&tmp, p))
                .map_err(|e| EmoneyError::Setup(format!("{}: {e}", p.display())))?;
        }
        *next = new_next;
        Ok(Some(Sent { entries: entries.len(), next: new_next }))
    }

    fn send(&self, subject: &str, body: String) -> Result<()> {
        let s = &self.smtp;
        let bad = |e: &dyn std::fmt::Display| EmoneyError::Setup(format!("notice e-mail: {e}"));
        let message = lettre::Message::builder()
            .from(s.from.parse().map_err(|e| bad(&e))?)
            .to(s.to.parse().map_err(|e| bad(&e))?)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| bad(&e))?;
        let tls = match s.tls {
            TlsPolicy::Never => Tls::None,
            policy => {
                let mut params = TlsParameters::builder(s.host.clone());
                for der in &s.roots {
                    params = params.add_root_certificate(
                        SmtpCertificate::from_der(der.clone()).map_err(|e| bad(&e))?,
                    );
                }
                let params = params.build_rustls().map_err(|e| bad(&e))?;
                if policy == TlsPolicy::Required {
                    Tls::Required(params)
                } else {
                    Tls::Opportunistic(params)
                }
            }
        };
        let mailer = SmtpTransport::builder_dangerous(s.host.as_str())
            .port(s.port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(30)))
            .build();
        mailer
            .send(&message)
            .map_err(|e| EmoneyError::Transport(format!("SMTP {}:{}: {e}", s.host, s.port)))?;
        Ok(())
    }
}

fn money(amount: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", amount / 100, amount % 100)
}

/// `YYYY-MM-DD HH:MM UTC` of Unix seconds (the civil calendar from day numbers, after
/// Howard Hinnant's `civil_from_days`).
pub fn utc(seconds: i64) -> String {
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}

/// The subject and body of the digest of `entries` (the wallet's state in `info`).
pub fn digest(entries: &[LogEntry], info: &WalletInfo) -> (String, String) {
    let currency = String::from_utf8_lossy(&info.currency).into_owned();
    let subject = format!(
        "tessera settlement notice: {} operation{}",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" }
    );
    let mut body = String::from("New entries in your home card's settlement log:\n\n");
    for e in entries {
        let party = String::from_utf8_lossy(&e.party);
        let reference = String::from_utf8_lossy(&e.reference);
        let (what, sign, party_line, reference_line) = match e.kind {
            EntryKind::Payment => {
                ("payment", "-", format!("to {party}"), format!("order {reference}"))
            }
            EntryKind::Cancellation => {
                ("cancellation", "+", format!("by {party}"), format!("order {reference}"))
            }
            EntryKind::Refill => (
                "refill",
                "+",
                format!("from {party}"),
                match <[u8; 8]>::try_from(e.reference.as_slice()) {
                    Ok(b) => format!("voucher {}", u64::from_be_bytes(b)),
                    Err(_) => format!("voucher {}", hex::encode(&e.reference)),
                },
            ),
        };
        body.push_str(&format!(
            "#{} {} {what} {sign}{}{}\n    {party_line}\n    {reference_line}\n",
            e.counter,
            utc(e.time),
            money(e.amount, &currency),
            if e.cancelled { " (cancelled)" } else { "" },
        ));
    }
    body.push_str(&format!(
        "\nBalance: {}\nA payment can be cancelled within 7 days of its charge\n\
         notice (tessera wallet cancel).\n",
        money(info.balance, &currency)
    ));
    (subject, body)
}

/// What the scheduler's thread is told.
enum Event {
    Payment,
    Stop,
}

/// Runs a [`Notifier`] every `interval` and after each payment, on its own thread.
pub struct Scheduler {
    tx: mpsc::Sender<Event>,
    thread: Option<std::thread::JoinHandle<()>>,
    results: Arc<Mutex<Vec<RunOutcome>>>,
}

/// What one scheduled run did, or why it failed.
pub type RunOutcome = std::result::Result<Option<Sent>, String>;

/// A wallet shared by the home server's threads.
pub type SharedWallet = Arc<Mutex<dyn WalletPort + Send>>;

impl Scheduler {
    /// Starts it.
    pub fn start(notifier: Arc<Notifier>, card: SharedWallet, interval: Duration) -> Scheduler {
        let (tx, rx) = mpsc::channel();
        let results = Arc::new(Mutex::new(Vec::new()));
        let log = results.clone();
        let thread = std::thread::spawn(move || {
            loop {
                match rx.recv_timeout(interval) {
                    Ok(Event::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Ok(Event::Payment) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                let r = {
                    let mut card = card.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    notifier.run(&mut *card)
                };
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "settlement notice not sent");
                }
                let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                log.push(r.map_err(|e| e.to_string()));
            }
        });
        Scheduler { tx, thread: Some(thread), results }
    }

    /// A payment happened: send the notice now.
    pub fn after_payment(&self) {
        let _ = self.tx.send(Event::Payment);
    }

    /// The outcomes of the runs so far (drained).
    pub fn take_results(&self) -> Vec<RunOutcome> {
        std::mem::take(&mut *self.results.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        let _ = self.tx.send(Event::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.tx.send(Event::Stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        // Known points: the epoch, a leap day, the end of 1999, before the epoch.
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(946_684_799), "1999-12-31 23:59 UTC");
        assert_eq!(utc(-86_400), "1969-12-31 00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
