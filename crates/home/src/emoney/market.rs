//! `tessera market serve`: the reference market (Figs. 17 and 20).
//!
//! Over HTTPS with client certificates from the issuer CA ([`super::https`]); an order belongs
//! to the client certificate that placed it, and only that client may charge, pay or cancel it.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /catalogue` | | `{market, currency, items: [{sku, name, price}]}` |
//! | `POST /orders` | `{sku, quantity}` | the order: `{order, sku, quantity, amount, currency, status}` |
//! | `POST /orders/{order}/charge` | `{card, challenge}` (hex) | `{notice}`: a signed [`ChargeNotice`] |
//! | `POST /orders/{order}/pay` | `{token, certificate}` (hex) | `{settlement}`: a signed [`Settlement`] |
//! | `POST /orders/{order}/cancel-challenge` | `{}` | `{challenge}`: a [`CancelChallenge`] for the card |
//! | `POST /orders/{order}/cancel` | `{request, certificate}` (hex) | `{confirmation}`: a signed [`CancelConfirmation`] |
//! | `GET /orders/{order}` | | the order (with the settlement or confirmation, when made) |
//!
//! **Payment.** The token must be signed by the payment key certified (role card, common name
//! the card id) by the issuer CA, carry exactly what the notice said (card, amount, currency,
//! order, market, time), and its counter must be above the last counter this market saw from
//! that card: a replayed token, a token for another order, and a cloned or rolled-back card
//! (whose counter repeats) are refused. Accepted tokens are recorded, so each is used once.
//!
//! **Cancellation.** Only a paid order, once, and no later than [`CANCEL_WINDOW`] after the
//! time in the market's own charge notice, on the market's [`UnixClock`], and only on the
//! card's own word: the market first hands out a fresh random challenge for the order (a new
//! one replaces the last), the home card signs a [`CancelRequest`] with its payment key
//! (SIGN CANCELLATION REQUEST), and the market verifies it against the payment certificate
//! (issuer CA, role payment, common name the card that paid) and checks that it names exactly
//! the paid order: card, counter, market, order, amount and the outstanding challenge. A
//! request without a signature, by another card, for another order or amount, or replayed
//! (an old challenge, or the order already cancelled) is refused and changes nothing. The
//! challenge is used up by the cancellation. The confirmation is signed; the home card
//! credits the amount back only on it.
//!
//! State is in SQLite (rusqlite); every check and its update run in one transaction.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera_crypto::rng::{OsRng, Rng};
use tessera_crypto::x509::Certificate;
use tessera_proto::home::{
    CANCEL_CHALLENGE_LEN, CancelChallenge, CancelConfirmation, CancelRequest, ChargeNotice,
    PAY_CHALLENGE_LEN, PaymentToken, Signed,
};

use super::https::Peer;
use super::{
    CANCEL_WINDOW, EmoneyError, Party, Result, Settlement, UnixClock, bytes_from_hex, card_key,
    from_hex, to_hex, verify,
};

/// One thing the market sells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Its stock-keeping unit (what an order names).
    pub sku: String,
    /// Its name.
    pub name: String,
    /// Unit price in minor units.
    pub price: u64,
}

/// The reference market's small catalogue.
pub fn default_catalogue() -> Vec<Item> {
    [("tea", "Green tea, 100 g", 450), ("book", "A paperback", 1_250), ("lamp", "Desk lamp", 3_990)]
        .into_iter()
        .map(|(sku, name, price)| Item { sku: sku.into(), name: name.into(), price })
        .collect()
}

/// Most units in one order.
pub const MAX_QUANTITY: u64 = 1_000;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Placed, no notice yet.
    Open,
    /// A charge notice was issued.
    Charged,
    /// Paid and settled.
    Paid,
    /// Paid, then cancelled.
    Cancelled,
}

impl OrderStatus {
    fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Open => "open",
            OrderStatus::Charged => "charged",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<OrderStatus> {
        match s {
            "open" => Ok(OrderStatus::Open),
            "charged" => Ok(OrderStatus::Charged),
            "paid" => Ok(OrderStatus::Paid),
            "cancelled" => Ok(OrderStatus::Cancelled),
            _ => Err(EmoneyError::Setup(format!("order status {s:?} in the database"))),
        }
    }
}

/// An order as the market reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order reference.
    pub order: String,
    /// What was ordered.
    pub sku: String,
    /// How many.
    pub quantity: u64,
    /// Total in minor units.
    pub amount: u64,
    /// ISO 4217 letters.
    pub currency: String,
    /// Where it stands.
    pub status: OrderStatus,
    /// The settlement (hex), once paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement: Option<String>,
    /// The cancellation confirmation (hex), once cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<String>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    reference TEXT PRIMARY KEY,
    client BLOB NOT NULL,
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL,
    card BLOB,
    challenge BLOB,
    notice_time INTEGER,
    counter INTEGER,
    settlement BLOB,
    confirmation BLOB
);
CREATE TABLE IF NOT EXISTS cards (card BLOB PRIMARY KEY, last_counter INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (digest BLOB PRIMARY KEY, reference TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cancel_challenges (reference TEXT PRIMARY KEY, challenge BLOB NOT NULL);
";

/// The reference market.
pub struct Market {
    party: Party,
    issuer: Certificate,
    currency: [u8; 3],
    catalogue: Vec<Item>,
    db: Mutex<Connection>,
    clock: Arc<dyn UnixClock>,
}

struct Row {
    client: Vec<u8>,
    sku: String,
    quantity: u64,
    amount: u64,
    status: OrderStatus,
    card: Option<Vec<u8>>,
    notice_time: Option<i64>,
    counter: Option<u64>,
    settlement: Option<Vec<u8>>,
    confirmation: Option<Vec<u8>>,
}

impl Market {
    /// A market signing as `party`, accepting cards of `issuer`, selling `catalogue` in
    /// `currency`, its state in the SQLite file `db` (in memory when `None`).
    pub fn open(
        party: Party,
        issuer: Certificate,
        currency: [u8; 3],
        catalogue: Vec<Item>,
        db: Option<&Path>,
        clock: Arc<dyn UnixClock>,
    ) -> Result<Arc<Market>> {
        let conn = match db {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        conn.execute_batch(SCHEMA)?;
        Ok(Arc::new(Market { party, issuer, currency, catalogue, db: Mutex::new(conn), clock }))
    }

    /// The market's id and certificate.
    pub fn party(&self) -> &Party {
        &self.party
    }

    /// The catalogue.
    pub fn catalogue(&self) -> &[Item] {
        &self.catalogue
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn currency(&self) -> String {
        String::from_utf8_lossy(&self.currency).into_owned()
    }

    /// Places an order for `client` (its certificate fingerprint).
    pub fn order(&self, client: &[u8; 32], sku: &str, quantity: u64) -> Result<Order> {
        let item = self
            .catalogue
            .iter()
            .find(|i| i.sku == sku)
            .ok_or_else(|| EmoneyError::BadRequest(format!("no item {sku:?}")))?;
        if quantity == 0 || quantity > MAX_QUANTITY {
            return Err(EmoneyError::BadRequest(format!("quantity 1 to {MAX_QUANTITY}")));
        }
        let amount = item.price * quantity;
        let mut random = [0u8; 8];
        OsRng.fill_random(&mut random);
        let reference = format!("ord-{}", hex::encode(random));
        self.db().execute(
            "INSERT INTO orders (reference, client, sku, quantity, amount, status)
             VALUES (?1, ?2, ?3, ?4, ?5, 'open')",
            params![reference, &client[..], sku, quantity as i64, amount as i64],
        )?;
        Ok(Order {
            order: reference,
            sku: sku.into(),
            quantity,
            amount,
            currency: self.currency(),
            status: OrderStatus::Open,
            settlement: None,
            confirmation: None,
        })
    }

    fn row(conn: &Connection, reference: &str) -> Result<Row> {
        conn.query_row(
            "SELECT client, sku, quantity, amount, status, card, challenge, notice_time, counter,
                    settlement, confirmation FROM orders WHERE reference = ?1",
            params![reference],
            |r| {
                Ok((
                    Row {
                        client: r.get(0)?,
                        sku: r.get(1)?,
                        quantity: r.get::<_, i64>(2)? as u64,
                        amount: r.get::<_, i64>(3)? as u64,
                        status: OrderStatus::Open,
                        card: r.get(5)?,
                        notice_time: r.get(7)?,
                        counter: r.get::<_, Option<i64>>(8)?.map(|c| c as u64),
                        settlement: r.get(9)?,
                        confirmation: r.get(10)?,
                    },
                    r.get::<_, String>(4)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| EmoneyError::NotFound(format!("order {reference}")))
        .and_then(|(mut row, status)| {
            row.status = OrderStatus::parse(&status)?;
            Ok(row)
        })
    }

    /// The order, if `client` placed it.
    fn owned(conn: &Connection, client: &[u8; 32], reference: &str) -> Result<Row> {
        let row = Self::row(conn, reference)?;
        if row.client != client {
            // Indistinguishable from a missing order for anybody else.
            return Err(EmoneyError::NotFound(format!("order {reference}")));
        }
        Ok(row)
    }

    /// The order as `client` sees it.
    pub fn status(&self, client: &[u8; 32], reference: &str) -> Result<Order> {
        let row = Self::owned(&self.db(), client, reference)?;
        Ok(Order {
            order: reference.into(),
            sku: row.sku,
            quantity: row.quantity,
            amount: row.amount,
            currency: self.currency(),
            status: row.status,
            settlement: row.settlement.map(hex::encode),
            confirmation: row.confirmation.map(hex::encode),
        })
    }

    /// A charge notice for `card` answering its `challenge` (a new notice replaces an
    /// earlier one until the order is paid).
    pub fn charge(
        &self,
        client: &[u8; 32],
        reference: &str,
        card: &[u8],
        challenge: [u8; PAY_CHALLENGE_LEN],
    ) -> Result<Signed<ChargeNotice>> {
        if card.is_empty() || card.len() > tessera_proto::home::MAX_ID_LEN {
            return Err(EmoneyError::BadRequest("a card id has 1 to 32 bytes".into()));
        }
        let conn = self.db();
        let row = Self::owned(&conn, client, reference)?;
        if !matches!(row.status, OrderStatus::Open | OrderStatus::Charged) {
            return Err(EmoneyError::Conflict(format!(
                "order {reference} is {}",
                row.status.as_str()
            )));
        }
        let now = self.clock.now();
        let notice = ChargeNotice {
            market: self.party.id.as_bytes().to_vec(),
            order: reference.as_bytes().to_vec(),
            currency: self.currency,
            amount: row.amount,
            time: now,
            card: card.to_vec(),
            challenge,
        };
        conn.execute(
            "UPDATE orders SET status = 'charged', card = ?2, challenge = ?3, notice_time = ?4
             WHERE reference = ?1",
            params![reference, card, &challenge[..], now],
        )?;
        Ok(self.party.sign(notice))
    }

    /// Verifies a payment token with the card's payment `certificate` (DER) and settles the
    /// order (see the module docs for every check).
    pub fn pay(
        &self,
        client: &[u8; 32],
        reference: &str,
        token: &Signed<PaymentToken>,
        certificate: &[u8],
    ) -> Result<Signed<Settlement>> {
        let now = self.clock.now();
        let mut conn = self.db();
        let tx = conn.transaction()?;
        let row = Self::owned(&tx, client, reference)?;
        match row.status {
            OrderStatus::Charged => {}
            OrderStatus::Open => {
                return Err(EmoneyError::Conflict(format!("order {reference} has no notice")));
            }
            OrderStatus::Paid | OrderStatus::Cancelled => {
                return Err(EmoneyError::Conflict(format!(
                    "order {reference} is paid already: a payment token is accepted once"
                )));
            }
        }
        let digest = tessera_crypto::hash::sha256(&token.to_bytes());
        let seen: Option<String> = tx
            .query_row(
                "SELECT reference FROM tokens WHERE digest = ?1",
                params![&digest[..]],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = seen {
            return Err(EmoneyError::Conflict(format!(
                "payment token already used (order {other})"
            )));
        }
        let t = &token.message;
        let key = card_key(&self.issuer, certificate, &t.card, now)?;
        verify(&key, token)?;
        let expected = (
            row.card.as_deref(),
            row.amount,
            self.currency,
            reference.as_bytes(),
            self.party.id.as_bytes(),
            row.notice_time,
        );
        let got =
            (Some(&t.card[..]), t.amount, t.currency, &t.order[..], &t.market[..], Some(t.time));
        if expected != got {
            return Err(EmoneyError::Refused(
                "the payment token does not match the charge notice".into(),
            ));
        }
        let last: Option<i64> = tx
            .query_row("SELECT last_counter FROM cards WHERE card = ?1", params![&t.card], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(last) = last
            && t.counter <= last as u64
        {
            return Err(EmoneyError::Conflict(format!(
                "card counter {} is not above {last}, the last this market saw: a cloned or \
                 rolled-back card",
                t.counter
            )));
        }
        let settlement = self.party.sign(Settlement {
            market: self.party.id.as_bytes().to_vec(),
            card: t.card.clone(),
            counter: t.counter,
            order: reference.as_bytes().to_vec(),
            amount: t.amount,
            time: now,
        });
        tx.execute(
            "INSERT INTO cards (card, last_counter) VALUES (?1, ?2)
             ON CONFLICT(card) DO UPDATE SET last_counter = excluded.last_counter",
            params![&t.card, t.counter as i64],
        )?;
        tx.execute(
            "INSERT INTO tokens (digest, reference) VALUES (?1, ?2)",
            params![&digest[..], reference],
        )?;
        tx.execute(
            "UPDATE orders SET status = 'paid', counter = ?2, settlement = ?3 WHERE reference = ?1",
            params![reference, t.counter as i64, settlement.to_bytes()],
        )?;
        tx.commit()?;
        tracing::info!(order = reference, amount = t.amount, "order paid");
        Ok(settlement)
    }

    /// The paid order's card and payment counter, if it may still be cancelled
    /// at `now` (see the module docs).
    fn cancellable(reference: &str, row: &Row, now: i64) -> Result<(Vec<u8>, u64)> {
        match row.status {
            OrderStatus::Paid => {}
            OrderStatus::Cancelled => {
                return Err(EmoneyError::Conflict(format!(
                    "order {reference} is cancelled already (GET /orders/{reference} has the \
                     confirmation)"
                )));
            }
            _ => return Err(EmoneyError::Conflict(format!("order {reference} is not paid"))),
        }
        let (Some(card), Some(counter), Some(noticed)) =
            (row.card.clone(), row.counter, row.notice_time)
        else {
            return Err(EmoneyError::Setup(format!("order {reference}: paid without a notice")));
        };
        if now.saturating_sub(noticed) > CANCEL_WINDOW {
            return Err(EmoneyError::Conflict(format!(
                "order {reference} was charged more than 7 days ago ({}s); it can no longer be \
                 cancelled",
                now.saturating_sub(noticed)
            )));
        }
        Ok((card, counter))
    }

    /// A fresh challenge for cancelling a paid order (within [`CANCEL_WINDOW`]): what the
    /// home card's signed [`CancelRequest`] must answer. A new one replaces the last.
    pub fn cancel_challenge(&self, client: &[u8; 32], reference: &str) -> Result<CancelChallenge> {
        let now = self.clock.now();
        let mut conn = self.db();
        let tx = conn.transaction()?;
        let row = Self::owned(&tx, client, reference)?;
        Self::cancellable(reference, &row, now)?;
        let mut challenge = [0u8; CANCEL_CHALLENGE_LEN];
        OsRng.fill_random(&mut challenge);
        tx.execute(
            "INSERT INTO cancel_challenges (reference, challenge) VALUES (?1, ?2)
             ON CONFLICT(reference) DO UPDATE SET challenge = excluded.challenge",
            params![reference, &challenge[..]],
        )?;
        tx.commit()?;
        Ok(CancelChallenge {
            market: self.party.id.as_bytes().to_vec(),
            order: reference.as_bytes().to_vec(),
            challenge,
        })
    }

    /// Cancels a paid order within [`CANCEL_WINDOW`] of its notice on the card's signed
    /// `request`, verified with its payment `certificate` (DER); the signed confirmation. See
    /// the module docs for every check; a refusal changes nothing.
    pub fn cancel(
        &self,
        client: &[u8; 32],
        reference: &str,
        request: &Signed<CancelRequest>,
        certificate: &[u8],
    ) -> Result<Signed<CancelConfirmation>> {
        let now = self.clock.now();
        let mut conn = self.db();
        let tx = conn.transaction()?;
        let row = Self::owned(&tx, client, reference)?;
        let (card, counter) = Self::cancellable(reference, &row, now)?;
        let challenge: Option<Vec<u8>> = tx
            .query_row(
                "SELECT challenge FROM cancel_challenges WHERE reference = ?1",
                params![reference],
                |r| r.get(0),
            )
            .optional()?;
        let Some(challenge) = challenge else {
            return Err(EmoneyError::Conflict(format!(
                "order {reference} has no cancellation challenge (POST \
                 /orders/{reference}/cancel-challenge first)"
            )));
        };
        // The paying card's payment key, and its signature over the request.
        let key = card_key(&self.issuer, certificate, &card, now)?;
        verify(&key, request)
            .map_err(|e| EmoneyError::Refused(format!("cancellation request: {}", e.reason())))?;
        let r = &request.message;
        if r.card != card
            || r.counter != counter
            || r.market != self.party.id.as_bytes()
            || r.order != reference.as_bytes()
            || r.amount != row.amount
        {
            return Err(EmoneyError::Refused(format!(
                "the cancellation request does not name order {reference} as paid (card, \
                 counter, market, order and amount must match)"
            )));
        }
        if r.challenge[..] != challenge[..] {
            return Err(EmoneyError::Refused(
                "the cancellation request does not answer the outstanding challenge (replayed \
                 or stale)"
                    .into(),
            ));
        }
        let confirmation = self.party.sign(CancelConfirmation {
            market: self.party.id.as_bytes().to_vec(),
            card,
            counter,
            order: reference.as_bytes().to_vec(),
            amount: row.amount,
            time: now,
        });
        tx.execute(
            "UPDATE orders SET status = 'cancelled', confirmation = ?2 WHERE reference = ?1",
            params![reference, confirmation.to_bytes()],
        )?;
        tx.execute("DELETE FROM cancel_challenges WHERE reference = ?1", params![reference])?;
        tx.commit()?;
        tracing::info!(order = reference, "order cancelled on the card's signed request");
        Ok(confirmation)
    }

    /// The HTTP routes (module docs).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/catalogue", get(catalogue))
            .route("/orders", post(order))
            .route("/orders/{order}", get(status))
            .route("/orders/{order}/charge", post(charge))
            .route("/orders/{order}/pay", post(pay))
            .route("/orders/{order}/cancel-challenge", post(cancel_challenge))
            .route("/orders/{order}/cancel", post(cancel))
            .with_state(self)
    }
}

type S = State<Arc<Market>>;
type P = ConnectInfo<Peer>;

async fn catalogue(State(m): S) -> Json<Value> {
    Json(json!({ "market": m.party.id, "currency": m.currency(), "items": m.catalogue }))
}

#[derive(Deserialize)]
struct OrderBody {
    sku: String,
    #[serde(default = "one")]
    quantity: u64,
}

fn one() -> u64 {
    1
}

async fn order(State(m): S, ConnectInfo(p): P, Json(b): Json<OrderBody>) -> Result<Json<Order>> {
    Ok(Json(m.order(&p.fingerprint()?, &b.sku, b.quantity)?))
}

async fn status(
    State(m): S,
    ConnectInfo(p): P,
    UrlPath(r): UrlPath<String>,
) -> Result<Json<Order>> {
    Ok(Json(m.status(&p.fingerprint()?, &r)?))
}

#[derive(Deserialize)]
struct ChargeBody {
    card: String,
    challenge: String,
}

async fn charge(
    State(m): S,
    ConnectInfo(p): P,
    UrlPath(r): UrlPath<String>,
    Json(b): Json<ChargeBody>,
) -> Result<Json<Value>> {
    let card = bytes_from_hex(&b.card, "card")?;
    let challenge = bytes_from_hex(&b.challenge, "challenge")?
        .try_into()
        .map_err(|_| EmoneyError::BadRequest("the challenge has 16 bytes".into()))?;
    let notice = m.charge(&p.fingerprint()?, &r, &card, challenge)?;
    Ok(Json(json!({ "notice": to_hex(&notice) })))
}

#[derive(Deserialize)]
struct PayBody {
    token: String,
    certificate: String,
}

async fn pay(
    State(m): S,
    ConnectInfo(p): P,
    UrlPath(r): UrlPath<String>,
    Json(b): Json<PayBody>,
) -> Result<Json<Value>> {
    let token = from_hex(&b.token, "token")?;
    let certificate = bytes_from_hex(&b.certificate, "certificate")?;
    let settlement = m.pay(&p.fingerprint()?, &r, &token, &certificate)?;
    Ok(Json(json!({ "settlement": to_hex(&settlement) })))
}

async fn cancel_challenge(
    State(m): S,
    ConnectInfo(p): P,
    UrlPath(r): UrlPath<String>,
) -> Result<Json<Value>> {
    let what = m.cancel_challenge(&p.fingerprint()?, &r)?;
    Ok(Json(json!({ "challenge": hex::encode(what.to_bytes()) })))
}

/// The body of a cancellation; both fields are required (a missing one is refused with the
/// reason, not a parse error).
#[derive(Deserialize)]
struct CancelBody {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    certificate: Option<String>,
}

async fn cancel(
    State(m): S,
    ConnectInfo(p): P,
    UrlPath(r): UrlPath<String>,
    Json(b): Json<CancelBody>,
) -> Result<Json<Value>> {
    let client = p.fingerprint()?;
    // Somebody else's order stays indistinguishable from a missing one.
    m.status(&client, &r)?;
    let (Some(request), Some(certificate)) = (b.request, b.certificate) else {
        return Err(EmoneyError::Refused(
            "a cancellation needs the card's signed request (request) and its payment \
             certificate (certificate)"
                .into(),
        ));
    };
    let request = from_hex(&request, "cancellation request")?;
    let certificate = bytes_from_hex(&certificate, "certificate")?;
    let confirmation = m.cancel(&client, &r, &request, &certificate)?;
    Ok(Json(json!({ "confirmation": to_hex(&confirmation) })))
}
