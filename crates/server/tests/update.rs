//! The update service on the database (SQLite and PostgreSQL): a card issued through the
//! tunnel (which registers its update key), updates queued sealed and signed, the card's
//! session (PIN, device authentication, packages, receipts), exactly-once delivery, and the
//! server-side refusals.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDb, root};
use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::{Card, CardOptions};
use tessera_proto::update::{AuthMode, Challenge, UpdateCommand, load_commands};
use tessera_server::ServerError;
use tessera_server::db::{Db, Dialect};
use tessera_server::store::Store;
use tessera_server::store::issuance::StartIssuance;
use tessera_server::store::sessions::Exchange;
use tessera_server::store::update::QueueUpdate;

fn relay(card: &mut Card, apdus: &[String]) -> Vec<String> {
    apdus.iter().map(|a| hex::encode_upper(card.transmit(&hex::decode(a).unwrap()))).collect()
}

fn send(card: &mut Card, cmd: &Command) -> Response {
    Response::parse(&card.transmit(&cmd.to_bytes().unwrap())).unwrap()
}

/// Issuer `acme`, its card `CARD-A` issued, and one update (`wifi` = `pw-1`) queued for it:
/// the card and its PIN.
async fn acme_card_with_update(store: &Store) -> (Card, String) {
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let issued = issue(store, "CARD-A").await;
    store.queue_update(&root(), "acme", "CARD-A", &update("wifi", b"pw-1", false)).await.unwrap();
    issued
}

/// Issues a blank in-memory card as `card_id` through the tunnel; returns it and its PIN.
async fn issue(store: &Store, card_id: &str) -> (Card, String) {
    let start = StartIssuance { card_id: card_id.into(), legacy_static_auth: false };
    let issuance = store.start_issuance(&root(), "acme", &start).await.unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let mut step = issuance.session.clone();
    while !step.done {
        let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    assert_eq!(step.outcome.unwrap().result, "issued");
    card.reset();
    (card, issuance.initial_pin)
}

/// VERIFY PIN at the ISD, then SELECT the update applet.
fn pin(card: &mut Card, pin: &str) {
    let isd = Command::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(tessera_server::tunnel::ISD_AID.to_vec())
        .with_le(256);
    assert_eq!(send(card, &isd).sw, StatusWord::SUCCESS);
    let mut block = pin.as_bytes().to_vec();
    block.resize(8, 0xFF);
    let verify = Command::new(0x00, 0x20, 0x00, 0x81).with_data(block);
    assert_eq!(send(card, &verify).sw, StatusWord::SUCCESS);
    let select = Command::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(tessera_proto::update::AID.to_vec())
        .with_le(256);
    assert_eq!(send(card, &select).sw, StatusWord::SUCCESS);
}

fn device_auth(card: &mut Card, challenge: Challenge) -> Vec<u8> {
    let cmd =
        UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(challenge) };
    let r = send(card, &cmd.to_command());
    assert_eq!(r.sw, StatusWord::SUCCESS);
    r.data
}

fn deliver(card: &mut Card, package: &[u8]) -> Response {
    let mut last = Response::status(StatusWord::UNKNOWN);
    for cmd in load_commands(package) {
        last = send(card, &cmd.to_command());
        if last.sw != StatusWord::SUCCESS {
            break;
        }
    }
    last
}

fn read(card: &mut Card, name: &str) -> Vec<u8> {
    let r = send(card, &UpdateCommand::ReadObject(name.as_bytes().to_vec()).to_command());
    assert_eq!(r.sw, StatusWord::SUCCESS);
    r.data
}

fn update(object: &str, value: &[u8], sealed: bool) -> QueueUpdate {
    QueueUpdate { object: object.into(), value_hex: hex::encode(value), sealed, free_read: false }
}

/// Every stored byte of the update tables, for the no-plaintext check.
async fn stored_bytes(db: &TestDb) -> Vec<u8> {
    let db = Db::open(&db.location).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let rows = tx.query("SELECT package, object_name FROM update_packages", &[]).await.unwrap();
    let mut out = Vec::new();
    for r in rows {
        out.extend(r.blob(0).unwrap());
        out.extend(r.text(1).unwrap().into_bytes());
    }
    let audit = tx.query("SELECT detail FROM audit_log", &[]).await.unwrap();
    for r in audit {
        out.extend(r.text(0).unwrap().into_bytes());
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn queued_updates_are_sealed_sequenced_and_delivered_on_receipts(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut card, card_pin) = issue(&store, "CARD-A").await;
    let (_, _) = issue(&store, "CARD-B").await;

    let queue = async |card: &str, object: &str, value: &[u8], sealed: bool| {
        store.queue_update(&root(), "acme", card, &update(object, value, sealed)).await.unwrap()
    };
    assert_eq!(queue("CARD-A", "wifi", b"pw-one", false).await.sequence, 1);
    assert_eq!(queue("CARD-A", "sso", b"tok-two", true).await.sequence, 2);
    // Sequences are per card.
    assert_eq!(queue("CARD-B", "wifi", b"pw-b", false).await.sequence, 1);
    // No plaintext anywhere: packages, names aside, and the audit log.
    let stored = stored_bytes(&db).await;
    for secret in [&b"pw-one"[..], b"tok-two", b"pw-b", hex::encode(b"pw-one").as_bytes()] {
        assert!(!contains(&stored, secret), "{secret:?} is stored in the clear");
    }
    // Refusals change nothing.
    assert!(matches!(
        store.queue_update(&root(), "acme", "NOPE", &update("wifi", b"x", false)).await,
        Err(ServerError::NotFound(_))
    ));
    assert!(matches!(
        store.queue_update(&root(), "acme", "CARD-A", &update("", b"x", false)).await,
        Err(ServerError::BadRequest(_))
    ));

    // The card's session.
    pin(&mut card, &card_pin);
    let challenge = store.update_challenge().await.unwrap();
    let answer = device_auth(&mut card, challenge);
    let auth = store.update_authenticate("acme", "CARD-A", &challenge, &answer).await.unwrap();
    let pending = store.update_pending("acme", &auth).await.unwrap();
    assert_eq!(pending.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
    for (sequence, package) in &pending {
        let r = deliver(&mut card, package);
        assert_eq!(r.sw, StatusWord::SUCCESS);
        // A receipt with a flipped byte is refused and marks nothing.
        let mut forged = r.data.clone();
        let n = forged.len();
        forged[n - 1] ^= 1;
        assert!(matches!(
            store.update_receipt("acme", &auth, &forged).await,
            Err(ServerError::Conflict(_))
        ));
        assert_eq!(store.update_receipt("acme", &auth, &r.data).await.unwrap(), *sequence);
        // The same receipt again: nothing pending matches it.
        assert!(store.update_receipt("acme", &auth, &r.data).await.is_err());
    }
    assert!(store.update_pending("acme", &auth).await.unwrap().is_empty());
    assert_eq!(read(&mut card, "wifi"), b"pw-one");
    assert_eq!(read(&mut card, "sso"), b"tok-two");
    let listed = store.list_updates(&root(), "acme", "CARD-A").await.unwrap();
    assert!(listed.iter().all(|e| e.delivered_at.is_some()));
    assert_eq!(listed[1].mode, "sealed");
    // Card B's queue is untouched.
    let b = store.list_updates(&root(), "acme", "CARD-B").await.unwrap();
    assert_eq!(b.len(), 1);
    assert!(b[0].delivered_at.is_none());

    let audit = store.audit_entries(&root(), 0, 1000).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "update.register").count(), 2);
    assert_eq!(actions.iter().filter(|a| **a == "update.queue").count(), 3);
    assert_eq!(actions.iter().filter(|a| **a == "update.deliver").count(), 2);
    assert!(store.verify_audit(None).await.unwrap().ok);
}
both!(queued_updates_are_sealed_sequenced_and_delivered_on_receipts);

async fn challenges_are_single_use_and_bound_to_the_card(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut card, card_pin) = issue(&store, "CARD-A").await;
    issue(&store, "CARD-B").await;
    pin(&mut card, &card_pin);
    let challenge = store.update_challenge().await.unwrap();
    let answer = device_auth(&mut card, challenge);
    // Card A's answer presented as card B's: refused, and the challenge is used up.
    assert!(matches!(
        store.update_authenticate("acme", "CARD-B", &challenge, &answer).await,
        Err(ServerError::Conflict(m)) if m.contains("signature")
    ));
    assert!(matches!(
        store.update_authenticate("acme", "CARD-A", &challenge, &answer).await,
        Err(ServerError::Conflict(m)) if m.contains("challenge")
    ));
    // A made-up challenge, and a real one with its expiry altered.
    let made_up = Challenge { nonce: [7; 32], expires: challenge.expires };
    let answer = device_auth(&mut card, made_up);
    assert!(store.update_authenticate("acme", "CARD-A", &made_up, &answer).await.is_err());
    let real = store.update_challenge().await.unwrap();
    let altered = Challenge { nonce: real.nonce, expires: real.expires + 1000 };
    let answer = device_auth(&mut card, altered);
    assert!(store.update_authenticate("acme", "CARD-A", &altered, &answer).await.is_err());
    let answer = device_auth(&mut card, real);
    assert!(store.update_authenticate("acme", "CARD-A", &real, &answer).await.is_err());
    // A fresh one works, once.
    let fresh = store.update_challenge().await.unwrap();
    let answer = device_auth(&mut card, fresh);
    store.update_authenticate("acme", "CARD-A", &fresh, &answer).await.unwrap();
    assert!(store.update_authenticate("acme", "CARD-A", &fresh, &answer).await.is_err());
    // Once revoked, the card's valid answer to a fresh challenge is refused.
    store.revoke_card(&root(), "acme", "CARD-A").await.unwrap();
    let fresh = store.update_challenge().await.unwrap();
    let answer = device_auth(&mut card, fresh);
    assert!(matches!(
        store.update_authenticate("acme", "CARD-A", &fresh, &answer).await,
        Err(ServerError::Forbidden(m)) if m.contains("revoked")
    ));
}
both!(challenges_are_single_use_and_bound_to_the_card);

async fn a_lost_receipt_is_redelivered_and_applied_once(db: TestDb) {
    let store = db.store().await;
    let (mut card, card_pin) = acme_card_with_update(&store).await;

    // First session: the card applies the package, the receipt never reaches the server.
    pin(&mut card, &card_pin);
    let c = store.update_challenge().await.unwrap();
    let answer = device_auth(&mut card, c);
    let auth = store.update_authenticate("acme", "CARD-A", &c, &answer).await.unwrap();
    let (_, package) = store.update_pending("acme", &auth).await.unwrap().remove(0);
    assert_eq!(deliver(&mut card, &package).sw, StatusWord::SUCCESS);
    store.queue_update(&root(), "acme", "CARD-A", &update("wifi", b"pw-2", false)).await.unwrap();

    // Next session: the package is still pending; the card answers "already applied" and
    // does not apply it again; then the newer one.
    card.reset();
    pin(&mut card, &card_pin);
    let c = store.update_challenge().await.unwrap();
    let answer = device_auth(&mut card, c);
    let auth = store.update_authenticate("acme", "CARD-A", &c, &answer).await.unwrap();
    assert_eq!(auth.last_sequence, 1);
    let pending = store.update_pending("acme", &auth).await.unwrap();
    assert_eq!(pending.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
    let again = deliver(&mut card, &pending[0].1);
    assert_eq!(again.sw, StatusWord::SUCCESS);
    assert_eq!(again.data[0], 1, "already applied");
    store.update_receipt("acme", &auth, &again.data).await.unwrap();
    let next = deliver(&mut card, &pending[1].1);
    store.update_receipt("acme", &auth, &next.data).await.unwrap();
    assert_eq!(read(&mut card, "wifi"), b"pw-2");
    assert!(store.update_pending("acme", &auth).await.unwrap().is_empty());
}
both!(a_lost_receipt_is_redelivered_and_applied_once);

/// Runs a sync session to its end; `lose` drops the card's responses to the first step that
/// loads a package (the card applied it, the server never hears), ending the sync there.
async fn sync(
    store: &Store,
    card: &mut Card,
    lose: bool,
) -> Option<tessera_server::store::sessions::Outcome> {
    use tessera_server::store::sessions::CreateSession;
    let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
    while !step.done {
        let responses = relay(card, &step.apdus);
        if lose && step.apdus.iter().any(|a| a.starts_with("80E8")) {
            return None;
        }
        step = store
            .exchange(&step.session_id, &Exchange { step: step.step, responses })
            .await
            .unwrap();
    }
    step.outcome
}

async fn sync_delivers_pending_updates_exactly_once_after_an_interruption(db: TestDb) {
    use tessera_server::StoreConfig;
    let store = db.store_with(StoreConfig { session_ttl_secs: 1, ..StoreConfig::default() }).await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut card, card_pin) = issue(&store, "CARD-A").await;
    // Nothing pending: the sync is as before, no update step.
    let o = sync(&store, &mut card, false).await.unwrap();
    assert_eq!(o.result, "identified");
    assert!(!o.message.contains("updates"), "{}", o.message);
    store.queue_update(&root(), "acme", "CARD-A", &update("wifi", b"pw-1", false)).await.unwrap();
    store.queue_update(&root(), "acme", "CARD-A", &update("sso", b"tok", true)).await.unwrap();

    // Without the PIN the card refuses device authentication: the updates wait.
    card.reset();
    let o = sync(&store, &mut card, false).await.unwrap();
    assert_eq!(o.result, "identified");
    assert!(o.message.contains("PIN"), "{}", o.message);
    let queue = store.list_updates(&root(), "acme", "CARD-A").await.unwrap();
    assert!(queue.iter().all(|e| e.delivered_at.is_none()));

    // With the PIN, but the card's answer to the first package is lost.
    card.reset();
    pin(&mut card, &card_pin);
    assert!(sync(&store, &mut card, true).await.is_none());
    let queue = store.list_updates(&root(), "acme", "CARD-A").await.unwrap();
    assert!(queue.iter().all(|e| e.delivered_at.is_none()));
    // The interrupted session holds the card until it expires.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;

    // The next sync redelivers it: the card answers "already applied", then takes the next.
    card.reset();
    pin(&mut card, &card_pin);
    let o = sync(&store, &mut card, false).await.unwrap();
    assert_eq!(o.result, "identified", "{}", o.message);
    assert!(o.message.ends_with("updates: 2 delivered"), "{}", o.message);
    let queue = store.list_updates(&root(), "acme", "CARD-A").await.unwrap();
    assert!(queue.iter().all(|e| e.delivered_at.is_some()));
    let audit = store.audit_entries(&root(), 0, 1000).await.unwrap();
    let delivered: Vec<&str> =
        audit.iter().filter(|e| e.action == "update.deliver").map(|e| e.detail.as_str()).collect();
    assert_eq!(delivered.len(), 2);
    // Both packages went in one batch and were applied; the card's signed device
    // authentication reports sequence 2, which acknowledges 1; 2 is sent again and answered
    // "already applied".
    assert!(delivered[0].contains("acknowledged by device authentication"), "{}", delivered[0]);
    assert!(delivered[1].contains("already applied"), "{}", delivered[1]);
    read_after_pin(&mut card, &card_pin, "wifi", b"pw-1");
    read_after_pin(&mut card, &card_pin, "sso", b"tok");
    // A later sync has nothing to do.
    card.reset();
    let o = sync(&store, &mut card, false).await.unwrap();
    assert!(!o.message.contains("updates"), "{}", o.message);
}
both!(sync_delivers_pending_updates_exactly_once_after_an_interruption);

fn read_after_pin(card: &mut Card, card_pin: &str, name: &str, expected: &[u8]) {
    card.reset();
    pin(card, card_pin);
    assert_eq!(read(card, name), expected);
}

async fn a_rolled_back_card_image_is_refused(db: TestDb) {
    use tessera_card::OpenOptions;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    // The card in an image file; a copy of the file kept aside after issuance.
    let dir = tempfile::tempdir().unwrap();
    let (path, old) = (dir.path().join("card.img"), dir.path().join("old.img"));
    let start = StartIssuance { card_id: "CARD-A".into(), legacy_static_auth: false };
    let issuance = store.start_issuance(&root(), "acme", &start).await.unwrap();
    let mut card = Card::create(&path, CardOptions::default()).unwrap();
    card.power_on();
    let mut step = issuance.session.clone();
    while !step.done {
        let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    card.power_off();
    drop(card);
    std::fs::copy(&path, &old).unwrap();
    let mut card = Card::open(&path, OpenOptions::default()).unwrap();
    card.power_on();
    store.queue_update(&root(), "acme", "CARD-A", &update("wifi", b"new", false)).await.unwrap();
    pin(&mut card, &issuance.initial_pin);
    let c = store.update_challenge().await.unwrap();
    let answer = device_auth(&mut card, c);
    let auth = store.update_authenticate("acme", "CARD-A", &c, &answer).await.unwrap();
    let (_, package) = store.update_pending("acme", &auth).await.unwrap().remove(0);
    let receipt = deliver(&mut card, &package).data;
    store.update_receipt("acme", &auth, &receipt).await.unwrap();

    // The old image authenticates with a valid signature but reports sequence 0.
    let mut copy = Card::open(&old, OpenOptions::default()).unwrap();
    copy.power_on();
    pin(&mut copy, &issuance.initial_pin);
    let c = store.update_challenge().await.unwrap();
    let answer = device_auth(&mut copy, c);
    let err = store.update_authenticate("acme", "CARD-A", &c, &answer).await.unwrap_err();
    assert!(matches!(&err, ServerError::Conflict(m) if m.contains("rolled back")), "{err}");
    // The same through a sync: its own refusal code.
    store.queue_update(&root(), "acme", "CARD-A", &update("wifi", b"newer", false)).await.unwrap();
    copy.reset();
    pin(&mut copy, &issuance.initial_pin);
    let (o, _, loads) =
        run_session(&store, &mut copy, plain_session(&store).await, |_, _| {}).await;
    assert_eq!((o.result.as_str(), loads), ("update-error", 0), "{}", o.message);
    assert!(o.message.contains("refused (rolled-back)"), "{}", o.message);
}
both!(a_rolled_back_card_image_is_refused);

async fn a_package_the_card_refuses_ends_the_sync_and_stays_pending(db: TestDb) {
    let store = db.store().await;
    let (mut card, card_pin) = acme_card_with_update(&store).await;
    // The stored package is altered (its last signature byte): the card refuses it.
    let raw = Db::open(&db.location).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    let row = tx.query_opt("SELECT package FROM update_packages", &[]).await.unwrap().unwrap();
    let mut package = row.blob(0).unwrap();
    let n = package.len();
    package[n - 1] ^= 1;
    tx.execute("UPDATE update_packages SET package = $1", &[package.into()]).await.unwrap();
    tx.commit().await.unwrap();
    card.reset();
    pin(&mut card, &card_pin);
    let o = sync(&store, &mut card, false).await.unwrap();
    assert_eq!(o.result, "update-error", "{}", o.message);
    assert!(o.message.contains("refused (package-signature): update 1"), "{}", o.message);
    let queue = store.list_updates(&root(), "acme", "CARD-A").await.unwrap();
    assert!(queue[0].delivered_at.is_none());
    let r = send(&mut card, &UpdateCommand::ReadObject(b"wifi".to_vec()).to_command());
    assert_ne!(r.sw, StatusWord::SUCCESS, "nothing was applied");
}
both!(a_package_the_card_refuses_ends_the_sync_and_stays_pending);

/// Runs a session from `first` to its end through `card`; `tamper` sees each command (hex)
/// and may alter the card's response. Returns the outcome and everything the terminal sent
/// and received (APDUs, responses, the server's answers as JSON), and how many exchanges
/// carried LOAD PACKAGE commands.
async fn run_session(
    store: &Store,
    card: &mut Card,
    first: tessera_server::store::sessions::TunnelStep,
    mut tamper: impl FnMut(&str, &mut Vec<u8>),
) -> (tessera_server::store::sessions::Outcome, String, usize) {
    let mut trace = serde_json::to_string(&first).unwrap();
    let mut loads = 0;
    let mut step = first;
    while !step.done {
        if step.apdus.iter().any(|a| a.starts_with("80E8")) {
            loads += 1;
        }
        let mut responses = Vec::new();
        for a in &step.apdus {
            let mut r = card.transmit(&hex::decode(a).unwrap());
            tamper(a, &mut r);
            responses.push(hex::encode_upper(r));
        }
        let req = Exchange { step: step.step, responses };
        trace.push_str(&serde_json::to_string(&req).unwrap());
        step = store.exchange(&step.session_id, &req).await.unwrap();
        trace.push_str(&serde_json::to_string(&step).unwrap());
    }
    (step.outcome.unwrap(), trace, loads)
}

async fn plain_session(store: &Store) -> tessera_server::store::sessions::TunnelStep {
    use tessera_server::store::sessions::CreateSession;
    store.create_session("acme", &CreateSession::default()).await.unwrap()
}

async fn private_session(store: &Store) -> tessera_server::store::sessions::TunnelStep {
    use tessera_server::store::update::CreateUpdateSession;
    let req = CreateUpdateSession { mode: "private".into(), card_id: None };
    store.create_update_session("acme", &req).await.unwrap()
}

async fn a_batch_goes_in_one_exchange_and_stops_at_the_first_refusal(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut card, card_pin) = issue(&store, "CARD-A").await;
    for (object, value) in [("a", b"1"), ("b", b"2"), ("c", b"3")] {
        store.queue_update(&root(), "acme", "CARD-A", &update(object, value, false)).await.unwrap();
    }
    // Three packages, one exchange.
    card.reset();
    pin(&mut card, &card_pin);
    let first = plain_session(&store).await;
    let (o, _, loads) = run_session(&store, &mut card, first, |_, _| {}).await;
    assert!(o.message.ends_with("updates: 3 delivered"), "{}", o.message);
    assert_eq!(loads, 1);
    // Three more, the middle one altered in the database: the first is applied and
    // receipted, the card refuses the second and, although valid, the third.
    for (object, value) in [("a", b"4"), ("b", b"5"), ("c", b"6")] {
        store.queue_update(&root(), "acme", "CARD-A", &update(object, value, false)).await.unwrap();
    }
    let raw = Db::open(&db.location).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    let row = tx
        .query_opt("SELECT package FROM update_packages WHERE sequence = 5", &[])
        .await
        .unwrap()
        .unwrap();
    let mut package = row.blob(0).unwrap();
    let n = package.len();
    package[n - 1] ^= 1;
    tx.execute("UPDATE update_packages SET package = $1 WHERE sequence = 5", &[package.into()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    card.reset();
    pin(&mut card, &card_pin);
    let first = plain_session(&store).await;
    let (o, _, loads) = run_session(&store, &mut card, first, |_, _| {}).await;
    assert_eq!((o.result.as_str(), loads), ("update-error", 1), "{}", o.message);
    assert!(
        o.message.ends_with("1 delivered, then refused (package-signature): update 5: the package signature does not verify (6300)"),
        "{}",
        o.message
    );
    let queue = store.list_updates(&root(), "acme", "CARD-A").await.unwrap();
    let delivered: Vec<bool> = queue.iter().map(|e| e.delivered_at.is_some()).collect();
    assert_eq!(delivered, [true, true, true, true, false, false]);
    read_after_pin(&mut card, &card_pin, "a", b"4");
    read_after_pin(&mut card, &card_pin, "b", b"2");
    read_after_pin(&mut card, &card_pin, "c", b"3");
}
both!(a_batch_goes_in_one_exchange_and_stops_at_the_first_refusal);

/// A card answering a batch with the first package's receipt again in the second's place
/// (both receipts are read before either package is marked): the first is delivered and
/// audited once, the second stays pending, and the sync ends refused.
async fn a_receipt_given_twice_in_a_batch_delivers_once(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut card, card_pin) = issue(&store, "CARD-A").await;
    for (object, value) in [("a", b"1"), ("b", b"2")] {
        store.queue_update(&root(), "acme", "CARD-A", &update(object, value, false)).await.unwrap();
    }
    card.reset();
    pin(&mut card, &card_pin);
    let first = plain_session(&store).await;
    let mut kept: Option<Vec<u8>> = None;
    let (o, _, loads) = run_session(&store, &mut card, first, |apdu, r| {
        // A LOAD PACKAGE answered with data: a package's last segment, and its receipt.
        if apdu.starts_with("80E8") && r.len() > 2 {
            match &kept {
                None => kept = Some(r.clone()),
                Some(k) => r.clone_from(k),
            }
        }
    })
    .await;
    assert_eq!((o.result.as_str(), loads), ("update-error", 1), "{}", o.message);
    assert!(o.message.contains("1 delivered, then refused (receipt-mismatch)"), "{}", o.message);
    let queue = store.list_updates(&root(), "acme", "CARD-A").await.unwrap();
    let delivered: Vec<bool> = queue.iter().map(|e| e.delivered_at.is_some()).collect();
    assert_eq!(delivered, [true, false]);
    assert_eq!(audit_count(&store, "update.deliver").await, 1);
    assert!(store.verify_audit(None).await.unwrap().ok);
}
both!(a_receipt_given_twice_in_a_batch_delivers_once);

async fn the_private_variant_never_shows_the_card_id_to_the_terminal(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let id = "CARD-PRIVATE-7";
    let (mut card, card_pin) = issue(&store, id).await;
    store.queue_update(&root(), "acme", id, &update("wifi", b"pw-1", false)).await.unwrap();
    store.queue_update(&root(), "acme", id, &update("sso", b"tok", true)).await.unwrap();
    card.reset();
    pin(&mut card, &card_pin);
    let first = private_session(&store).await;
    let (o, trace, loads) = run_session(&store, &mut card, first, |_, _| {}).await;
    assert_eq!(o.result, "private", "{}", o.message);
    assert!(o.message.ends_with("updates: 2 delivered"), "{}", o.message);
    assert_eq!((o.card_id, loads), (None, 1));
    // Nothing the terminal sent or received names the card: not as text, not as hex.
    let upper = trace.to_uppercase();
    for needle in [id.to_uppercase(), hex::encode_upper(id)] {
        assert!(!upper.contains(&needle), "{needle} in the trace");
    }
    // The packages went wrapped (TUW1), never as stored (TUP1 names the card).
    assert!(upper.contains(&hex::encode_upper(b"TUW1")));
    assert!(!upper.contains(&hex::encode_upper(b"TUP1")));
    read_after_pin(&mut card, &card_pin, "wifi", b"pw-1");
    read_after_pin(&mut card, &card_pin, "sso", b"tok");
    let queue = store.list_updates(&root(), "acme", id).await.unwrap();
    assert!(queue.iter().all(|e| e.delivered_at.is_some()));
    // The server's own record names the card.
    let audit = store.audit_entries(&root(), 0, 1000).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "update.authenticate" && e.subject == id));

    // A sealed identity altered in transit does not open.
    store.queue_update(&root(), "acme", id, &update("wifi", b"pw-2", false)).await.unwrap();
    card.reset();
    pin(&mut card, &card_pin);
    let first = private_session(&store).await;
    let (o, _, _) = run_session(&store, &mut card, first, |apdu, r| {
        if apdu.starts_with("80880100") {
            r[10] ^= 1;
        }
    })
    .await;
    assert_eq!(o.result, "update-error");
    assert!(o.message.contains("refused (sealed-identity)"), "{}", o.message);
    // Without the PIN the card does not answer at all.
    card.reset();
    let first = private_session(&store).await;
    let (o, _, _) = run_session(&store, &mut card, first, |_, _| {}).await;
    assert_eq!(o.result, "update-error");
    assert!(o.message.contains("PIN"), "{}", o.message);
    assert!(!o.message.contains(id), "{}", o.message);
}
both!(the_private_variant_never_shows_the_card_id_to_the_terminal);

async fn each_failing_check_ends_the_sync_with_its_own_error(db: TestDb) {
    let store = db.store().await;
    let (mut card, card_pin) = acme_card_with_update(&store).await;
    let mut run = async |tamper: &dyn Fn(&str, &mut Vec<u8>)| {
        card.reset();
        pin(&mut card, &card_pin);
        let first = plain_session(&store).await;
        let (o, _, _) = run_session(&store, &mut card, first, tamper).await;
        assert_eq!(o.result, "update-error", "{}", o.message);
        o.message
    };
    // The device signature over the challenge.
    let m = run(&|a, r| {
        if a.starts_with("80880000") {
            r[20] ^= 1;
        }
    })
    .await;
    assert!(m.contains("refused (device-signature)"), "{m}");
    // The card refuses device authentication.
    let m = run(&|a, r| {
        if a.starts_with("80880000") {
            *r = vec![0x6A, 0x88];
        }
    })
    .await;
    assert!(m.contains("refused (device-authentication-refused)") && m.contains("6A88"), "{m}");
    // The receipt's signature, then its digest (the card applied the package: the next
    // sync gets "already applied").
    let m = run(&|a, r| {
        if a.starts_with("80E880") {
            let n = r.len();
            r[n - 3] ^= 1;
        }
    })
    .await;
    assert!(m.contains("refused (receipt-signature)"), "{m}");
    let m = run(&|a, r| {
        if a.starts_with("80E880") {
            r[12] ^= 1;
        }
    })
    .await;
    assert!(m.contains("refused (receipt-mismatch)"), "{m}");
    assert!(store.list_updates(&root(), "acme", "CARD-A").await.unwrap()[0].delivered_at.is_none());
    let first = plain_session(&store).await;
    card.reset();
    pin(&mut card, &card_pin);
    let (o, _, _) = run_session(&store, &mut card, first, |_, _| {}).await;
    assert!(o.message.ends_with("updates: 1 delivered"), "{}", o.message);
}
both!(each_failing_check_ends_the_sync_with_its_own_error);

async fn a_scheduled_password_change_reaches_the_card_at_its_next_sync(db: TestDb) {
    use tessera_server::store::update::schedule::ScheduleUpdate;
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut card, card_pin) = issue(&store, "CARD-A").await;
    let every = 30 * 86_400;
    let req = ScheduleUpdate {
        object: "wifi".into(),
        every_secs: every,
        generate: "password:20".into(),
        sealed: false,
        free_read: false,
        first_due: None,
    };
    let s = store.update_schedule(&root(), "acme", "CARD-A", &req).await.unwrap();
    assert_eq!((s.runs, s.generate.as_str()), (0, "password:20"));
    let bad = ScheduleUpdate { generate: "password:4".into(), ..req.clone() };
    assert!(matches!(
        store.update_schedule(&root(), "acme", "CARD-A", &bad).await,
        Err(ServerError::BadRequest(_))
    ));
    assert!(matches!(
        store.update_schedule(&root(), "acme", "NOPE", &req).await,
        Err(ServerError::NotFound(_))
    ));

    // Due now: the next sync generates, seals, queues and delivers it.
    card.reset();
    pin(&mut card, &card_pin);
    let first = plain_session(&store).await;
    let (o, _, _) = run_session(&store, &mut card, first, |_, _| {}).await;
    assert!(o.message.ends_with("updates: 1 delivered"), "{}", o.message);
    card.reset();
    pin(&mut card, &card_pin);
    let one = read(&mut card, "wifi");
    assert_eq!(one.len(), 20);
    assert!(one.iter().all(u8::is_ascii_alphanumeric));
    // The server kept no plaintext: not in the packages, not in the audit log.
    assert!(!contains(&stored_bytes(&db).await, &one));
    let s = &store.update_schedules(&root(), "acme", "CARD-A").await.unwrap()[0];
    assert_eq!(s.runs, 1);
    let due = s.next_due;

    // Not due again before its period: the next sync has nothing to do.
    card.reset();
    let first = plain_session(&store).await;
    let (o, _, _) = run_session(&store, &mut card, first, |_, _| {}).await;
    assert!(!o.message.contains("updates"), "{}", o.message);
    assert!(store.update_run_due("acme", "CARD-A", due - 1).await.unwrap().is_empty());
    // Thirty days on (the clock injected): a new password, delivered at the next sync.
    let queued = store.update_run_due("acme", "CARD-A", due).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        store.update_schedules(&root(), "acme", "CARD-A").await.unwrap()[0].next_due,
        due + every
    );
    card.reset();
    pin(&mut card, &card_pin);
    let first = plain_session(&store).await;
    let (o, _, _) = run_session(&store, &mut card, first, |_, _| {}).await;
    assert!(o.message.ends_with("updates: 1 delivered"), "{}", o.message);
    let two = read_after_pin_value(&mut card, &card_pin);
    assert_eq!(two.len(), 20);
    assert_ne!(one, two);
    let audit = store.audit_entries(&root(), 0, 1000).await.unwrap();
    let runs = audit.iter().filter(|e| e.action == "update.schedule.run").count();
    assert_eq!(runs, 2);

    // Unscheduled: nothing more is generated.
    store.update_unschedule(&root(), "acme", "CARD-A", "wifi").await.unwrap();
    assert!(store.update_run_due("acme", "CARD-A", due + 10 * every).await.unwrap().is_empty());
    assert!(matches!(
        store.update_unschedule(&root(), "acme", "CARD-A", "wifi").await,
        Err(ServerError::NotFound(_))
    ));
}
both!(a_scheduled_password_change_reaches_the_card_at_its_next_sync);

fn read_after_pin_value(card: &mut Card, card_pin: &str) -> Vec<u8> {
    card.reset();
    pin(card, card_pin);
    read(card, "wifi")
}

async fn the_legacy_static_authenticator_is_opt_in_and_replayable(db: TestDb) {
    use tessera_server::store::update::CreateUpdateSession;
    let store = db.store().await;
    let (mut card, card_pin) = acme_card_with_update(&store).await;
    let legacy =
        CreateUpdateSession { mode: "legacy-static".into(), card_id: Some("CARD-A".into()) };
    // Opt-in per card: none registered, no legacy session.
    assert!(matches!(
        store.create_update_session("acme", &legacy).await,
        Err(ServerError::Conflict(m)) if m.contains("no legacy static authenticator")
    ));
    let value = [0x42u8; 16];
    store.update_set_legacy_static(&root(), "acme", "CARD-A", Some(value)).await.unwrap();
    let answer_with = |v: [u8; 16]| {
        move |apdu: &str, r: &mut Vec<u8>| {
            if apdu.starts_with("80880") {
                *r = [&v[..], &[0x90, 0x00]].concat();
            }
        }
    };

    // Without the switch: a static authenticator in place of the challenge's signature is
    // refused.
    card.reset();
    pin(&mut card, &card_pin);
    let (o, _, _) =
        run_session(&store, &mut card, plain_session(&store).await, answer_with(value)).await;
    assert_eq!(o.result, "update-error");
    assert!(o.message.contains("refused (device-signature)"), "{}", o.message);

    // With it, a terminal that saw the value once presents it again, no card answering DEVICE
    // AUTHENTICATE: the server accepts (that is the point), audits the session as legacy and
    // sends the packages, which only the real card could open (this card never
    // authenticated, so it refuses them).
    card.reset();
    pin(&mut card, &card_pin);
    let first = store.create_update_session("acme", &legacy).await.unwrap();
    let session_id = first.session_id.clone();
    let (o, _, loads) = run_session(&store, &mut card, first, answer_with(value)).await;
    assert_eq!((o.result.as_str(), loads), ("update-error", 1), "{}", o.message);
    assert!(o.message.starts_with("LEGACY static authenticator (replayable"), "{}", o.message);
    assert!(o.message.contains("refused (not-authenticated)"), "{}", o.message);
    let audit = store.audit_entries(&root(), 0, 1000).await.unwrap();
    let marked: Vec<_> = audit.iter().filter(|e| e.action == "update.legacy_static").collect();
    assert_eq!(marked.len(), 1);
    assert!(marked[0].detail.contains(&session_id) && marked[0].detail.contains("replayable"));
    // A wrong value is refused; a removed one cannot be used at all.
    card.reset();
    pin(&mut card, &card_pin);
    let first = store.create_update_session("acme", &legacy).await.unwrap();
    let (o, _, _) = run_session(&store, &mut card, first, answer_with([0x43; 16])).await;
    assert!(o.message.contains("refused (legacy-static)"), "{}", o.message);
    store.update_set_legacy_static(&root(), "acme", "CARD-A", None).await.unwrap();
    assert!(store.create_update_session("acme", &legacy).await.is_err());
    assert!(store.list_updates(&root(), "acme", "CARD-A").await.unwrap()[0].delivered_at.is_none());
}
both!(the_legacy_static_authenticator_is_opt_in_and_replayable);

// The combined first step (`SessionOptions::device_auth`): identification, counters and the
// update step's device authentication in one exchange; the packages in the next.

async fn combined_session(
    store: &Store,
    card_id: &str,
) -> tessera_server::store::sessions::TunnelStep {
    use tessera_server::store::sessions::{CreateSession, SessionOptions};
    let req = CreateSession { card_id: Some(card_id.into()) };
    let options = SessionOptions { read_counters: true, device_auth: true };
    store.create_session_with("acme", &req, options).await.unwrap()
}

/// The challenge in a combined first step's DEVICE AUTHENTICATE (`80 88 00 00 Lc challenge`).
fn challenge_of(apdu: &str) -> Challenge {
    let bytes = hex::decode(apdu).unwrap();
    assert_eq!(&bytes[..4], [0x80, 0x88, 0x00, 0x00], "{apdu}");
    Challenge::parse(&bytes[5..5 + 40]).unwrap()
}

fn is_load(step: &tessera_server::store::sessions::TunnelStep) -> bool {
    step.apdus.iter().any(|a| a.starts_with("80E8"))
}

async fn delivered(store: &Store, card_id: &str) -> usize {
    let queue = store.list_updates(&root(), "acme", card_id).await.unwrap();
    queue.iter().filter(|e| e.delivered_at.is_some()).count()
}

async fn audit_count(store: &Store, action: &str) -> usize {
    let audit = store.audit_entries(&root(), 0, 10_000).await.unwrap();
    audit.iter().filter(|e| e.action == action).count()
}

async fn the_combined_first_step_delivers_in_three_requests(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut card, card_pin) = issue(&store, "CARD-A").await;
    // Nothing pending: the first step is the identification and the counters only.
    let first = combined_session(&store, "CARD-A").await;
    assert_eq!(first.apdus.len(), 3, "{:?}", first.apdus);
    let req = Exchange { step: 0, responses: relay(&mut card, &first.apdus) };
    let last = store.exchange(&first.session_id, &req).await.unwrap();
    assert!(last.done);
    assert!(!last.outcome.unwrap().message.contains("updates"));

    store.queue_update(&root(), "acme", "CARD-A", &update("wifi", b"pw-1", false)).await.unwrap();
    card.reset();
    pin(&mut card, &card_pin);
    // Request 1: SELECT ISD, GET DATA card id, GET DATA key information, SELECT update,
    // DEVICE AUTHENTICATE.
    let first = combined_session(&store, "CARD-A").await;
    assert_eq!(first.apdus.len(), 5, "{:?}", first.apdus);
    assert!(first.apdus[3].starts_with("00A40400"), "{:?}", first.apdus);
    challenge_of(&first.apdus[4]);
    let id = first.session_id.clone();
    let req0 = Exchange { step: 0, responses: relay(&mut card, &first.apdus) };
    // Too few answers for the combined step: refused, nothing changes.
    let short = Exchange { step: 0, responses: req0.responses[..3].to_vec() };
    assert!(matches!(store.exchange(&id, &short).await, Err(ServerError::BadRequest(_))));
    // Request 2: the card authenticated; the package goes out. On PostgreSQL in two round
    // trips: the session's read with the card's, the challenge's `DELETE`, device
    // authentication's reads and the packages'; then the writes and the commit.
    let trips = store.db().round_trips();
    let packages = store.exchange(&id, &req0).await.unwrap();
    let request_2 = store.db().round_trips() - trips;
    assert!(is_load(&packages) && !packages.done, "{packages:?}");
    // A retried first exchange: the same answer, nothing more happens.
    assert_eq!(store.exchange(&id, &req0).await.unwrap(), packages);
    assert_eq!(delivered(&store, "CARD-A").await, 0);
    // Request 3: the receipt; delivered, the session ends.
    // On PostgreSQL in two round trips as well: the session's read with the packages out
    // and the next batch's; then the writes and the commit.
    let req1 = Exchange { step: 1, responses: relay(&mut card, &packages.apdus) };
    let trips = store.db().round_trips();
    let last = store.exchange(&id, &req1).await.unwrap();
    let request_3 = store.db().round_trips() - trips;
    assert!(last.done && last.apdus.is_empty());
    if store.db().dialect() == Dialect::Postgres {
        assert_eq!((request_2, request_3), (2, 2));
    }
    let outcome = last.outcome.clone().unwrap();
    assert_eq!(outcome.result, "identified");
    assert!(outcome.message.ends_with("updates: 1 delivered"), "{}", outcome.message);
    // Both retried: the same answers; delivered once, audited once.
    assert!(matches!(store.exchange(&id, &req0).await, Err(ServerError::Gone(_))));
    assert_eq!(store.exchange(&id, &req1).await.unwrap(), last);
    assert_eq!(delivered(&store, "CARD-A").await, 1);
    assert_eq!(audit_count(&store, "update.deliver").await, 1);
    let audit = store.audit_entries(&root(), 0, 10_000).await.unwrap();
    let created = audit.iter().find(|e| e.action == "session.create" && e.subject == id).unwrap();
    assert!(created.detail.contains("\"device_auth\":true"), "{}", created.detail);
    assert!(audit.iter().any(|e| e.action == "session.end" && e.subject == id));
    read_after_pin(&mut card, &card_pin, "wifi", b"pw-1");
}
both!(the_combined_first_step_delivers_in_three_requests);

async fn a_replayed_device_authentication_is_refused_in_the_combined_step(db: TestDb) {
    let store = db.store().await;
    let (mut card, card_pin) = acme_card_with_update(&store).await;
    card.reset();
    pin(&mut card, &card_pin);
    // An earlier session: the card's answers are recorded, the session runs to its end.
    let earlier = combined_session(&store, "CARD-A").await;
    let recorded = relay(&mut card, &earlier.apdus);
    let step = store
        .exchange(&earlier.session_id, &Exchange { step: 0, responses: recorded.clone() })
        .await
        .unwrap();
    let req = Exchange { step: 1, responses: relay(&mut card, &step.apdus) };
    assert!(store.exchange(&earlier.session_id, &req).await.unwrap().done);
    // A new update, a new session: the recorded answers (a valid identification, counters
    // and a device signature over the earlier challenge) presented again.
    store.queue_update(&root(), "acme", "CARD-A", &update("wifi", b"pw-2", false)).await.unwrap();
    let now = combined_session(&store, "CARD-A").await;
    assert_eq!(now.apdus.len(), 5);
    let fresh = challenge_of(&now.apdus[4]);
    let replay = Exchange { step: 0, responses: recorded };
    let end = store.exchange(&now.session_id, &replay).await.unwrap();
    let outcome = end.outcome.unwrap();
    assert!(end.done && end.apdus.is_empty(), "nothing goes out");
    assert_eq!(outcome.result, "update-error", "{}", outcome.message);
    assert!(outcome.message.contains("refused (device-signature)"), "{}", outcome.message);
    assert_eq!(delivered(&store, "CARD-A").await, 1, "pw-2 stays pending");
    // The session's challenge was used up by the refused answer.
    card.reset();
    pin(&mut card, &card_pin);
    let answer = device_auth(&mut card, fresh);
    let err = store.update_authenticate("acme", "CARD-A", &fresh, &answer).await.unwrap_err();
    assert!(err.to_string().contains("challenge"), "{err}");
}
both!(a_replayed_device_authentication_is_refused_in_the_combined_step);

async fn an_expired_challenge_is_refused_in_the_combined_step(db: TestDb) {
    let store = db.store().await;
    let (mut card, card_pin) = acme_card_with_update(&store).await;
    card.reset();
    pin(&mut card, &card_pin);
    let mut first = combined_session(&store, "CARD-A").await;
    // Time passes: the challenge's 120 s run out before the answer arrives (its recorded
    // expiry moved into the past, in the session and in the challenge table alike; the card
    // signs that same challenge).
    let issued = challenge_of(&first.apdus[4]);
    let expired = Challenge { nonce: issued.nonce, expires: issued.expires - 1000 };
    let raw = Db::open(&db.location).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    let row = tx
        .query_opt("SELECT state FROM sessions WHERE id = $1", &[first.session_id.as_str().into()])
        .await
        .unwrap()
        .unwrap();
    let state = row.text(0).unwrap();
    let (old, new) = (hex::encode(issued.to_bytes()), hex::encode(expired.to_bytes()));
    assert!(state.contains(&old), "{state}");
    tx.execute(
        "UPDATE sessions SET state = $1 WHERE id = $2",
        &[state.replace(&old, &new).into(), first.session_id.as_str().into()],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE update_challenges SET expires = $1 WHERE nonce = $2",
        &[(expired.expires as i64).into(), expired.nonce.to_vec().into()],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let cmd = UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(expired) };
    first.apdus[4] = hex::encode_upper(cmd.to_command().to_bytes().unwrap());

    let req = Exchange { step: 0, responses: relay(&mut card, &first.apdus) };
    let end = store.exchange(&first.session_id, &req).await.unwrap();
    let outcome = end.outcome.unwrap();
    assert!(end.done && !outcome.message.contains("delivered"), "{}", outcome.message);
    assert!(outcome.message.contains("refused (challenge)"), "{}", outcome.message);
    assert_eq!(delivered(&store, "CARD-A").await, 0);
}
both!(an_expired_challenge_is_refused_in_the_combined_step);

async fn a_rolled_back_counter_in_the_combined_step_flags_and_delivers_nothing(db: TestDb) {
    let store = db.store().await;
    let (mut card, card_pin) = acme_card_with_update(&store).await;
    // The server has seen a higher ISD key version than this card image presents.
    let raw = Db::open(&db.location).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    tx.execute(
        "INSERT INTO card_counters (issuer_id, card_id, name, value, updated_at) \
         VALUES ('acme', 'CARD-A', 'isd.kvn', 200, 0) \
         ON CONFLICT (issuer_id, card_id, name) DO UPDATE SET value = 200",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    card.reset();
    pin(&mut card, &card_pin);
    let first = combined_session(&store, "CARD-A").await;
    assert_eq!(first.apdus.len(), 5);
    let challenge = challenge_of(&first.apdus[4]);
    let responses = relay(&mut card, &first.apdus);
    // The card did sign the challenge; the server does not look at it.
    let answer = Response::parse(&hex::decode(&responses[4]).unwrap()).unwrap();
    assert_eq!(answer.sw, StatusWord::SUCCESS);
    let req = Exchange { step: 0, responses };
    let end = store.exchange(&first.session_id, &req).await.unwrap();
    let outcome = end.outcome.clone().unwrap();
    assert!(end.done && end.apdus.is_empty());
    assert_eq!(outcome.result, "flagged", "{}", outcome.message);
    assert_eq!(delivered(&store, "CARD-A").await, 0);
    assert_eq!(audit_count(&store, "card.flag").await, 1);
    // The discarded answer is worth nothing later: its challenge was used up.
    let err = store.update_authenticate("acme", "CARD-A", &challenge, &answer.data).await;
    assert!(err.unwrap_err().to_string().contains("challenge"));
    // A retry gets the stored answer; still nothing delivered.
    assert_eq!(store.exchange(&first.session_id, &req).await.unwrap(), end);
    assert_eq!(delivered(&store, "CARD-A").await, 0);
}
both!(a_rolled_back_counter_in_the_combined_step_flags_and_delivers_nothing);

async fn another_card_answering_a_combined_step_changes_nothing(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut card_a, pin_a) = issue(&store, "CARD-A").await;
    let (mut card_b, pin_b) = issue(&store, "CARD-B").await;
    store.queue_update(&root(), "acme", "CARD-A", &update("wifi", b"pw-a", false)).await.unwrap();
    store.queue_update(&root(), "acme", "CARD-B", &update("wifi", b"pw-b", false)).await.unwrap();
    card_b.reset();
    pin(&mut card_b, &pin_b);
    let first = combined_session(&store, "CARD-A").await;
    // Card B answers the session opened for card A (its own id, its own signature).
    let wrong = Exchange { step: 0, responses: relay(&mut card_b, &first.apdus) };
    let err = store.exchange(&first.session_id, &wrong).await.unwrap_err();
    assert!(
        matches!(&err, ServerError::Conflict(m) if m.contains("CARD-B") && m.contains("opened for CARD-A")),
        "{err}"
    );
    assert_eq!(delivered(&store, "CARD-A").await + delivered(&store, "CARD-B").await, 0);
    // Nothing changed: card A answers the same step and gets its package, only its own.
    card_a.reset();
    pin(&mut card_a, &pin_a);
    let right = Exchange { step: 0, responses: relay(&mut card_a, &first.apdus) };
    let (outcome, _, loads) = {
        let step = store.exchange(&first.session_id, &right).await.unwrap();
        assert!(is_load(&step));
        run_session(&store, &mut card_a, step, |_, _| {}).await
    };
    assert_eq!(loads, 1);
    assert!(outcome.message.ends_with("updates: 1 delivered"), "{}", outcome.message);
    assert_eq!(delivered(&store, "CARD-A").await, 1);
    assert_eq!(delivered(&store, "CARD-B").await, 0);
}
both!(another_card_answering_a_combined_step_changes_nothing);
