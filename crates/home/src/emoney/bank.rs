//! `tessera bank serve`: the reference bank (Fig. 18, claim 6).
//!
//! Over HTTPS with client certificates from the issuer CA ([`super::https`]); an account
//! belongs to the client whose certificate's common name is its holder.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /accounts/{account}` | | `{account, balance, currency, reserved}` |
//! | `POST /vouchers` | `{account, certificate, amount}` (certificate: the card's payment certificate, hex) | `{voucher}`: a signed [`RefillVoucher`] |
//! | `POST /acks` | `{ack, certificate}` (hex) | `{debited, balance}` |
//! | `GET /accounts/{account}/vouchers` | | `{vouchers}`: those issued and not acknowledged (hex) |
//!
//! **Vouchers.** A voucher is bound to the card (the payment certificate's common name, the
//! certificate checked against the issuer CA) and to the bank's next sequence number for that
//! card; the card credits each sequence once. Issuing reserves the amount (a voucher is issued
//! only if the balance less what is reserved covers it) but debits nothing.
//!
//! **Acknowledgement.** The account is debited only on the card's signed acknowledgement
//! (payment key certified by the issuer CA, naming this bank, the voucher's sequence and
//! amount), and exactly once: a second acknowledgement of the same voucher (a retry after a
//! lost answer, or the card's repeated acknowledgement after a retried CREDIT) answers
//! `debited: false` with the balance, and changes nothing.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_crypto::x509::Certificate;
use tessera_proto::home::{RefillAck, RefillVoucher, Signed};

use super::https::Peer;
use super::{
    EmoneyError, Party, Result, UnixClock, bytes_from_hex, card_key, from_hex, to_hex, verify,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    balance INTEGER NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS cards (card BLOB PRIMARY KEY, last_sequence INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vouchers (
    card BLOB NOT NULL,
    sequence INTEGER NOT NULL,
    account TEXT NOT NULL,
    amount INTEGER NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0,
    voucher BLOB NOT NULL,
    PRIMARY KEY (card, sequence)
);
";

/// The outcome of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckOutcome {
    /// The account was debited now (false: it had been for this voucher already).
    pub debited: bool,
    /// The account's balance after.
    pub balance: u64,
}

/// An account as the bank reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// Balance in minor units.
    pub balance: u64,
    /// Issued vouchers not yet acknowledged.
    pub reserved: u64,
}

/// The reference bank.
pub struct Bank {
    party: Party,
    issuer: Certificate,
    currency: [u8; 3],
    db: Mutex<Connection>,
    clock: Arc<dyn UnixClock>,
}

impl Bank {
    /// A bank signing as `party`, accepting cards of `issuer`, accounts in `currency`, its
    /// state in the SQLite file `db` (in memory when `None`).
    pub fn open(
        party: Party,
        issuer: Certificate,
        currency: [u8; 3],
        db: Option<&Path>,
        clock: Arc<dyn UnixClock>,
    ) -> Result<Arc<Bank>> {
        let conn = match db {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        conn.execute_batch(SCHEMA)?;
        Ok(Arc::new(Bank { party, issuer, currency, db: Mutex::new(conn), clock }))
    }

    /// The bank's id and certificate.
    pub fn party(&self) -> &Party {
        &self.party
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens account `name` for the client whose certificate's common name is `holder`, with
    /// `balance`; an existing account is left as it is. Returns whether it was opened now.
    pub fn open_account(&self, name: &str, holder: &str, balance: u64) -> Result<bool> {
        let n = self.db().execute(
            "INSERT OR IGNORE INTO accounts (name, holder, balance) VALUES (?1, ?2, ?3)",
            params![name, holder, balance as i64],
        )?;
        Ok(n == 1)
    }

    fn holder_account(conn: &Connection, holder: &str, name: &str) -> Result<Account> {
        let row: Option<(String, i64)> = conn
            .query_row("SELECT holder, balance FROM accounts WHERE name = ?1", params![name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match row {
            Some((h, balance)) if h == holder => {
                let reserved: i64 = conn.query_row(
                    "SELECT COALESCE(SUM(amount), 0) FROM vouchers WHERE account = ?1 AND settled = 0",
                    params![name],
                    |r| r.get(0),
                )?;
                Ok(Account { balance: balance as u64, reserved: reserved as u64 })
            }
            // Somebody else's account is indistinguishable from a missing one.
            _ => Err(EmoneyError::NotFound(format!("account {name}"))),
        }
    }

    /// The account `name` as its `holder` sees it.
    pub fn account(&self, holder: &str, name: &str) -> Result<Account> {
        Self::holder_account(&self.db(), holder, name)
    }

    /// Issues a voucher of `amount` from account `name` (held by `holder`) for the card whose
    /// payment certificate is `certificate` (DER).
    pub fn voucher(
        &self,
        holder: &str,
        name: &str,
        certificate: &[u8],
        amount: u64,
    ) -> Result<Signed<RefillVoucher>> {
        if amount == 0 || amount > i64::MAX as u64 {
            return Err(EmoneyError::BadRequest("the amount must be positive".into()));
        }
        let now = self.clock.now();
        let card = Certificate::from_der(certificate.to_vec())
            .and_then(|c| c.info())
            .map_err(|e| EmoneyError::BadRequest(format!("payment certificate: {e}")))?
            .subject_cn
            .into_bytes();
        card_key(&self.issuer, certificate, &card, now)?;
        let mut conn = self.db();
        let tx = conn.transaction()?;
        let account = Self::holder_account(&tx, holder, name)?;
        if account.balance.saturating_sub(account.reserved) < amount {
            return Err(EmoneyError::Conflict(format!(
                "account {name} cannot cover {amount} ({} available)",
                account.balance.saturating_sub(account.reserved)
            )));
        }
        let last: i64 = tx
            .query_row("SELECT last_sequence FROM cards WHERE card = ?1", params![&card], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        let sequence = last as u64 + 1;
        tx.execute(
            "INSERT INTO cards (card, last_sequence) VALUES (?1, ?2)
             ON CONFLICT(card) DO UPDATE SET last_sequence = excluded.last_sequence",
            params![&card, sequence as i64],
        )?;
        let voucher = self.party.sign(RefillVoucher {
            bank: self.party.id.as_bytes().to_vec(),
            card: card.clone(),
            sequence,
            currency: self.currency,
            amount,
            time: now,
        });
        tx.execute(
            "INSERT INTO vouchers (card, sequence, account, amount, voucher)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![&card, sequence as i64, name, amount as i64, voucher.to_bytes()],
        )?;
        tx.commit()?;
        Ok(voucher)
    }

    /// The vouchers of account `name` (held by `holder`) issued and not yet acknowledged,
    /// oldest first: what a home server whose answer to `POST /vouchers` was lost settles
    /// again (the reserved amount is released only by the card's acknowledgement).
    pub fn pending(&self, holder: &str, name: &str) -> Result<Vec<Signed<RefillVoucher>>> {
        let conn = self.db();
        Self::holder_account(&conn, holder, name)?;
        let mut stmt = conn.prepare(
            "SELECT voucher FROM vouchers WHERE account = ?1 AND settled = 0 ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![name], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|bytes| {
            Signed::parse(&bytes?)
                .map_err(|e| EmoneyError::Setup(format!("a stored voucher does not parse: {e}")))
        })
        .collect()
    }

    /// Takes the card's acknowledgement (with its payment certificate, DER) and debits the
    /// voucher's account, once (module docs).
    pub fn acknowledge(&self, ack: &Signed<RefillAck>, certificate: &[u8]) -> Result<AckOutcome> {
        let a = &ack.message;
        let key = card_key(&self.issuer, certificate, &a.card, self.clock.now())?;
        verify(&key, ack)?;
        if a.bank != self.party.id.as_bytes() {
            return Err(EmoneyError::Refused("the acknowledgement names another bank".into()));
        }
        let mut conn = self.db();
        let tx = conn.transaction()?;
        let voucher: Option<(String, i64, bool)> = tx
            .query_row(
                "SELECT account, amount, settled FROM vouchers WHERE card = ?1 AND sequence = ?2",
                params![&a.card, a.sequence as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((account, amount, settled)) = voucher else {
            return Err(EmoneyError::NotFound(format!("voucher {} of this card", a.sequence)));
        };
        if amount as u64 != a.amount {
            return Err(EmoneyError::Refused(
                "the acknowledged amount is not the voucher's".into(),
            ));
        }
        if !settled {
            tx.execute(
                "UPDATE accounts SET balance = balance - ?2 WHERE name = ?1",
                params![account, amount],
            )?;
            tx.execute(
                "UPDATE vouchers SET settled = 1 WHERE card = ?1 AND sequence = ?2",
                params![&a.card, a.sequence as i64],
            )?;
        }
        let balance: i64 =
            tx.query_row("SELECT balance FROM accounts WHERE name = ?1", params![account], |r| {
                r.get(0)
            })?;
        tx.commit()?;
        if !settled {
            tracing::info!(account, amount, sequence = a.sequence, "voucher settled");
        }
        Ok(AckOutcome { debited: !settled, balance: balance as u64 })
    }

    /// The HTTP routes (module docs).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/accounts/{account}", get(account))
            .route("/accounts/{account}/vouchers", get(pending))
            .route("/vouchers", post(voucher))
            .route("/acks", post(ack))
            .with_state(self)
    }
}

type S = State<Arc<Bank>>;
type P = ConnectInfo<Peer>;

async fn account(
    State(b): S,
    ConnectInfo(p): P,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>> {
    let a = b.account(&p.subject()?, &name)?;
    let currency = String::from_utf8_lossy(&b.currency).into_owned();
    Ok(Json(
        json!({ "account": name, "balance": a.balance, "reserved": a.reserved, "currency": currency }),
    ))
}

async fn pending(
    State(b): S,
    ConnectInfo(p): P,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>> {
    let vouchers: Vec<String> = b.pending(&p.subject()?, &name)?.iter().map(to_hex).collect();
    Ok(Json(json!({ "vouchers": vouchers })))
}

#[derive(Deserialize)]
struct VoucherBody {
    account: String,
    certificate: String,
    amount: u64,
}

async fn voucher(
    State(b): S,
    ConnectInfo(p): P,
    Json(v): Json<VoucherBody>,
) -> Result<Json<Value>> {
    let certificate = bytes_from_hex(&v.certificate, "certificate")?;
    let voucher = b.voucher(&p.subject()?, &v.account, &certificate, v.amount)?;
    Ok(Json(json!({ "voucher": to_hex(&voucher) })))
}

#[derive(Deserialize)]
struct AckBody {
    ack: String,
    certificate: String,
}

async fn ack(State(b): S, Json(v): Json<AckBody>) -> Result<Json<Value>> {
    let ack = from_hex(&v.ack, "ack")?;
    let certificate = bytes_from_hex(&v.certificate, "certificate")?;
    let outcome = b.acknowledge(&ack, &certificate)?;
    Ok(Json(json!({ "debited": outcome.debited, "balance": outcome.balance })))
}
