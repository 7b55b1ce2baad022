//! The vault key service on the database (SQLite and PostgreSQL), end to end with in-memory
//! cards: a card issued through the tunnel gets a key pair the server generated, sealed to its
//! attested transport key, at its next sync; the backup flow then moves it to the backup card,
//! which decrypts for it. The attacks: a sealed key for card A offered to card B, a replayed
//! delivery and a replayed or altered attestation, a card that already holds a key, a delivery
//! interrupted after the import (the re-run completes exactly once); escrow and master-key
//! rotation.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDb, root};
use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::applets::isd;
use tessera_card::applets::vault::scenarios::{
    issuance_groups, personalize_vault, test_components,
};
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::age::{P256TagStanza, p256tag_seal};
use tessera_crypto::ecdsa::PublicKey;
use tessera_crypto::rng::SeededRng;
use tessera_proto::vault::{self as proto, Config, KeyOrigin, Role, Status, VaultCommand};
use tessera_server::ServerError;
use tessera_server::db::Db;
use tessera_server::primitives::MasterKey;
use tessera_server::store::Store;
use tessera_server::store::issuance::StartIssuance;
use tessera_server::store::sessions::{CreateSession, Exchange, Outcome};
use tessera_server::store::vault::{VaultPolicy, private_key_context};

const N: u8 = 2;

struct Plain<'a>(&'a mut Card);
impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn send(card: &mut Card, cmd: &Command) -> Response {
    Response::parse(&card.transmit(&cmd.to_bytes().unwrap())).unwrap()
}

fn vault(card: &mut Card, cmd: &VaultCommand) -> Response {
    send(card, &cmd.to_command())
}

fn groups(role: Role) -> Vec<(u16, Vec<u8>)> {
    let issuer: Vec<(u8, [u8; 32])> =
        test_components(N).into_iter().enumerate().map(|(i, c)| (i as u8 + 1, c)).collect();
    issuance_groups(Config::new(role, N).unwrap(), &issuer, None)
}

/// A blank in-memory card whose vault is personalised as a main card (issuer sets every
/// component) with the blank card's initial key set, then issued as `card_id` through the
/// server's tunnel (which registers its device certificate). Returns it and its PIN.
async fn issue_main(store: &Store, card_id: &str) -> (Card, String) {
    issue_with_vault(store, card_id, Role::Main).await
}

/// [`issue_main`] with the vault in `role`.
async fn issue_with_vault(store: &Store, card_id: &str, role: Role) -> (Card, String) {
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    {
        let mut driver = Plain(&mut card);
        let mut s = Script::new(&mut driver);
        isd::scenarios::open_initial(&mut s).unwrap();
        personalize_vault(&mut s, &groups(role)).unwrap();
    }
    card.reset();
    let start = StartIssuance { card_id: card_id.into(), legacy_static_auth: false };
    let issuance = store.start_issuance(&root(), "acme", &start).await.unwrap();
    let mut step = issuance.session.clone();
    while !step.done {
        let responses = relay(&mut card, &step.apdus, &mut Vec::new());
        step = store
            .exchange(&step.session_id, &Exchange { step: step.step, responses })
            .await
            .unwrap();
    }
    assert_eq!(step.outcome.unwrap().result, "issued");
    card.reset();
    (card, issuance.initial_pin)
}

/// The backup card of the same key group (issued locally with the scenarios' keys and PIN).
fn backup_card() -> Card {
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let mut driver = Plain(&mut card);
    let mut s = Script::new(&mut driver);
    tessera_card::applets::vault::scenarios::issue(&mut s, &groups(Role::Backup)).unwrap();
    tessera_card::applets::vault::scenarios::verify_pin(&mut s).unwrap();
    drop(s);
    card
}

/// SELECT the ISD, VERIFY the PIN, SELECT the vault.
fn pin(card: &mut Card, pin: &str) {
    let isd = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(isd::AID.to_vec()).with_le(256);
    assert_eq!(send(card, &isd).sw, StatusWord::SUCCESS);
    let mut block = pin.as_bytes().to_vec();
    block.resize(8, 0xFF);
    let verify = Command::new(0x00, 0x20, 0x00, 0x81).with_data(block);
    assert_eq!(send(card, &verify).sw, StatusWord::SUCCESS);
    select_vault(card);
}

fn select_vault(card: &mut Card) {
    let select = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(proto::AID.to_vec()).with_le(256);
    assert_eq!(send(card, &select).sw, StatusWord::SUCCESS);
}

fn status(card: &mut Card) -> Status {
    select_vault(card);
    let r = vault(card, &VaultCommand::GetData(proto::TAG_STATUS));
    Status::parse(&r.data).unwrap()
}

fn public_key(card: &mut Card) -> Vec<u8> {
    select_vault(card);
    vault(card, &VaultCommand::GetData(proto::TAG_PUBLIC_KEY)).data
}

/// Relays APDUs to the card, recording them.
fn relay(card: &mut Card, apdus: &[String], seen: &mut Vec<Vec<u8>>) -> Vec<String> {
    apdus
        .iter()
        .map(|a| {
            let a = hex::decode(a).unwrap();
            seen.push(a.clone());
            hex::encode_upper(card.transmit(&a))
        })
        .collect()
}

fn is_ins(apdu: &[u8], ins: u8) -> bool {
    apdu.len() > 1 && apdu[0] == 0x80 && apdu[1] == ins
}

/// What the terminal does to the card's answers on the way to the server.
type Tamper<'a> = &'a mut dyn FnMut(&[u8], Vec<u8>) -> Vec<u8>;

/// A sync of the card; stops without posting once `stop_after` has gone to the card.
async fn sync_with(
    store: &Store,
    card: &mut Card,
    stop_after: Option<u8>,
    tamper: Tamper<'_>,
    seen: &mut Vec<Vec<u8>>,
) -> Option<Outcome> {
    let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
    while !step.done {
        let mut responses = Vec::new();
        for a in &step.apdus {
            let a = hex::decode(a).unwrap();
            seen.push(a.clone());
            let r = tamper(&a, card.transmit(&a));
            responses.push(hex::encode_upper(r));
            if stop_after.is_some_and(|ins| is_ins(&a, ins)) {
                return None;
            }
        }
        step = store
            .exchange(&step.session_id, &Exchange { step: step.step, responses })
            .await
            .unwrap();
    }
    step.outcome
}

async fn sync(store: &Store, card: &mut Card) -> Outcome {
    sync_with(store, card, None, &mut |_, r| r, &mut Vec::new()).await.unwrap()
}

async fn deliveries(store: &Store, card_id: &str) -> usize {
    let entries = store.audit_entries(&root(), 0, 1000).await.unwrap();
    entries.iter().filter(|e| e.action == "vault.deliver" && e.subject == card_id).count()
}

async fn sealed_private(db: &TestDb, card_id: &str) -> Option<Vec<u8>> {
    let raw = Db::open(&db.location).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    let row = tx
        .query_opt("SELECT sealed_private FROM vault_keys WHERE card_id = $1", &[card_id.into()])
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    row.opt_blob(0).unwrap()
}

async fn key_service_delivers_a_sealed_key_then_backup_moves_it(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    assert!(matches!(
        store.provision_vault_key(&root(), "acme", "NOPE").await,
        Err(ServerError::NotFound(_))
    ));
    let (mut main, main_pin) = issue_main(&store, "CARD-A").await;
    assert_eq!(status(&mut main).key, None);
    let info = store.provision_vault_key(&root(), "acme", "CARD-A").await.unwrap();
    assert_eq!((info.status.as_str(), info.private_key_held, info.escrow), ("queued", true, false));
    assert!(matches!(
        store.provision_vault_key(&root(), "acme", "CARD-A").await,
        Err(ServerError::Conflict(_))
    ));

    // Without the PIN, IMPORT SEALED is refused: the key waits.
    main.reset();
    let o = sync(&store, &mut main).await;
    assert_eq!(o.result, "identified", "{}", o.message);
    assert!(o.message.contains("vault key: pending") && o.message.contains("PIN"), "{}", o.message);
    assert_eq!(status(&mut main).key, None);
    assert_eq!(store.vault_key(&root(), "acme", "CARD-A").await.unwrap().status, "queued");

    // With the PIN: delivered, attested, and nothing secret kept (no escrow).
    main.reset();
    pin(&mut main, &main_pin);
    let o = sync(&store, &mut main).await;
    assert_eq!(o.result, "identified", "{}", o.message);
    assert!(o.message.contains("vault key: delivered"), "{}", o.message);
    assert_eq!(status(&mut main).key, Some(KeyOrigin::Sealed));
    assert_eq!(hex::encode(public_key(&mut main)), info.public_key);
    let after = store.vault_key(&root(), "acme", "CARD-A").await.unwrap();
    assert_eq!((after.status.as_str(), after.private_key_held), ("delivered", false));
    assert_eq!(sealed_private(&db, "CARD-A").await, None);
    assert_eq!(deliveries(&store, "CARD-A").await, 1);
    // The next sync has no vault step.
    let o = sync(&store, &mut main).await;
    assert!(!o.message.contains("vault key"), "{}", o.message);

    // The backup flow moves the key to the backup card as for a generated one.
    let mut backup = backup_card();
    select_vault(&mut main);
    let blob = vault(&mut main, &VaultCommand::Export);
    assert_eq!(blob.sw, StatusWord::SUCCESS);
    let blob = proto::WrappedKey::parse(&blob.data).unwrap();
    let confirmation = vault(&mut backup, &VaultCommand::ImportWrapped(blob));
    assert_eq!(confirmation.sw, StatusWord::SUCCESS);
    let confirm = VaultCommand::ConfirmBackup(confirmation.data.try_into().unwrap());
    assert_eq!(vault(&mut main, &confirm).sw, StatusWord::SUCCESS);
    assert!(status(&mut main).backup_created);
    assert_eq!(hex::encode(public_key(&mut backup)), info.public_key);
    assert_eq!(status(&mut backup).key, Some(KeyOrigin::Wrapped));
    // The backup card opens a file key wrapped to the provisioned recipient.
    let recipient = PublicKey::from_sec1_bytes(&hex::decode(&info.public_key).unwrap()).unwrap();
    let file_key = [0x42u8; 16];
    let P256TagStanza { enc, body } = p256tag_seal(&recipient, &file_key).unwrap();
    select_vault(&mut backup);
    let r = vault(&mut backup, &VaultCommand::Decrypt { enc, body });
    assert_eq!((r.sw, r.data.as_slice()), (StatusWord::SUCCESS, &file_key[..]));
}
both!(key_service_delivers_a_sealed_key_then_backup_moves_it);

async fn attacks_on_the_delivery_fail_and_change_nothing(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut a, a_pin) = issue_main(&store, "CARD-A").await;
    let (mut b, b_pin) = issue_main(&store, "CARD-B").await;
    let info_a = store.provision_vault_key(&root(), "acme", "CARD-A").await.unwrap();
    pin(&mut a, &a_pin);
    let mut seen = Vec::new();
    let o = sync_with(&store, &mut a, None, &mut |_, r| r, &mut seen).await.unwrap();
    assert!(o.message.contains("vault key: delivered"), "{}", o.message);
    let import = seen.iter().find(|x| is_ins(x, proto::INS_IMPORT_SEALED)).unwrap().clone();

    // The sealed key for card A offered to card B: refused, B unchanged.
    pin(&mut b, &b_pin);
    let before = b.persistent_state();
    let r = Response::parse(&b.transmit(&import)).unwrap();
    assert_eq!(r.sw, StatusWord::INCORRECT_DATA);
    assert_eq!(status(&mut b).key, None);
    assert_eq!(b.persistent_state(), before);
    // The same delivery replayed to card A: it holds its key already, refused, unchanged.
    let before = a.persistent_state();
    select_vault(&mut a);
    let r = Response::parse(&a.transmit(&import)).unwrap();
    assert_eq!(r.sw, StatusWord::CONDITIONS_NOT_SATISFIED);
    assert_eq!(a.persistent_state(), before);
    assert_eq!(hex::encode(public_key(&mut a)), info_a.public_key);
    assert_eq!(deliveries(&store, "CARD-A").await, 1);

    // An attestation of another nonce (replayed by the terminal), or with its own transport
    // key substituted: nothing is sealed nor sent, the key stays queued.
    store.provision_vault_key(&root(), "acme", "CARD-B").await.unwrap();
    select_vault(&mut b);
    let old = vault(&mut b, &VaultCommand::Attest(vec![7; 32]));
    assert_eq!(old.sw, StatusWord::SUCCESS);
    let replayed = old.to_bytes();
    let mut replay = |apdu: &[u8], r: Vec<u8>| {
        if is_ins(apdu, proto::INS_ATTEST) { replayed.clone() } else { r }
    };
    let mut seen = Vec::new();
    let o = sync_with(&store, &mut b, None, &mut replay, &mut seen).await.unwrap();
    assert_eq!(o.result, "vault-error", "{}", o.message);
    assert!(o.message.contains("does not verify"), "{}", o.message);
    assert!(!seen.iter().any(|x| is_ins(x, proto::INS_IMPORT_SEALED)));
    let foreign = tessera_crypto::hpke::HpkePrivateKey::generate(&mut SeededRng::from_u64(9));
    let mut substitute = |apdu: &[u8], mut r: Vec<u8>| {
        if is_ins(apdu, proto::INS_ATTEST) && r.len() > 66 {
            r[1..66].copy_from_slice(&foreign.public_key().to_bytes());
        }
        r
    };
    let o = sync_with(&store, &mut b, None, &mut substitute, &mut seen).await.unwrap();
    assert_eq!(o.result, "vault-error", "{}", o.message);
    assert!(!seen.iter().any(|x| is_ins(x, proto::INS_IMPORT_SEALED)));
    assert_eq!(status(&mut b).key, None);
    assert_eq!(store.vault_key(&root(), "acme", "CARD-B").await.unwrap().status, "queued");
    // An honest sync then delivers.
    let o = sync(&store, &mut b).await;
    assert!(o.message.contains("vault key: delivered"), "{}", o.message);

    // A card that already holds a key: refused before anything is sent, unchanged.
    let (mut c, c_pin) = issue_main(&store, "CARD-C").await;
    pin(&mut c, &c_pin);
    let own = vault(&mut c, &VaultCommand::Generate).data;
    store.provision_vault_key(&root(), "acme", "CARD-C").await.unwrap();
    let before = c.persistent_state();
    let mut seen = Vec::new();
    let o = sync_with(&store, &mut c, None, &mut |_, r| r, &mut seen).await.unwrap();
    assert_eq!(o.result, "vault-error", "{}", o.message);
    assert!(o.message.contains("already holds another key"), "{}", o.message);
    assert!(!seen.iter().any(|x| is_ins(x, proto::INS_IMPORT_SEALED)));
    assert_eq!(public_key(&mut c), own);
    assert_eq!(c.persistent_state(), before);
    let refused = store.vault_key(&root(), "acme", "CARD-C").await.unwrap();
    assert_eq!((refused.status.as_str(), refused.private_key_held), ("refused", false));
    assert_eq!(deliveries(&store, "CARD-C").await, 0);

    // A backup card: the key service delivers to main cards only (the backup flow moves it).
    let (mut bk, bk_pin) = issue_with_vault(&store, "CARD-BK", Role::Backup).await;
    store.provision_vault_key(&root(), "acme", "CARD-BK").await.unwrap();
    pin(&mut bk, &bk_pin);
    let mut seen = Vec::new();
    let o = sync_with(&store, &mut bk, None, &mut |_, r| r, &mut seen).await.unwrap();
    assert_eq!(o.result, "vault-error", "{}", o.message);
    assert!(o.message.contains("a backup card"), "{}", o.message);
    assert!(!seen.iter().any(|x| is_ins(x, proto::INS_IMPORT_SEALED)));
    assert_eq!(status(&mut bk).key, None);
    assert_eq!(store.vault_key(&root(), "acme", "CARD-BK").await.unwrap().status, "refused");
}
both!(attacks_on_the_delivery_fail_and_change_nothing);

async fn an_interrupted_delivery_completes_exactly_once(db: TestDb) {
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut d, d_pin) = issue_main(&store, "CARD-D").await;
    let info = store.provision_vault_key(&root(), "acme", "CARD-D").await.unwrap();
    pin(&mut d, &d_pin);
    // The card imports the key, but its answer never reaches the server.
    let stopped =
        sync_with(&store, &mut d, Some(proto::INS_IMPORT_SEALED), &mut |_, r| r, &mut Vec::new())
            .await;
    assert!(stopped.is_none());
    assert_eq!(status(&mut d).key, Some(KeyOrigin::Sealed));
    assert_eq!(store.vault_key(&root(), "acme", "CARD-D").await.unwrap().status, "queued");
    // The abandoned session expires (time passes); the re-run completes without a second
    // import.
    let raw = Db::open(&db.location).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    tx.execute("UPDATE sessions SET expires_at = 0 WHERE status = 'active'", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let mut seen = Vec::new();
    let o = sync_with(&store, &mut d, None, &mut |_, r| r, &mut seen).await.unwrap();
    assert!(o.message.contains("already on the card"), "{}", o.message);
    assert!(!seen.iter().any(|x| is_ins(x, proto::INS_IMPORT_SEALED)));
    assert_eq!(hex::encode(public_key(&mut d)), info.public_key);
    assert_eq!(store.vault_key(&root(), "acme", "CARD-D").await.unwrap().status, "delivered");
    assert_eq!(deliveries(&store, "CARD-D").await, 1);
    let o = sync(&store, &mut d).await;
    assert!(!o.message.contains("vault key"), "{}", o.message);
    assert_eq!(deliveries(&store, "CARD-D").await, 1);
}
both!(an_interrupted_delivery_completes_exactly_once);

async fn escrow_keeps_the_key_sealed_and_rotation_reseals_it(db: TestDb) {
    let mut store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    assert_eq!(store.vault_policy(&root(), "acme").await.unwrap(), VaultPolicy { escrow: false });
    store.set_vault_policy(&root(), "acme", &VaultPolicy { escrow: true }).await.unwrap();
    let (mut e, e_pin) = issue_main(&store, "CARD-E").await;
    let info = store.provision_vault_key(&root(), "acme", "CARD-E").await.unwrap();
    assert!(info.escrow);
    pin(&mut e, &e_pin);
    let o = sync(&store, &mut e).await;
    assert!(o.message.contains("vault key: delivered"), "{}", o.message);
    let after = store.vault_key(&root(), "acme", "CARD-E").await.unwrap();
    assert_eq!((after.status.as_str(), after.private_key_held), ("delivered", true));
    // The escrowed key opens under the new master key after rotation, and is the card's.
    let new = MasterKey::generate();
    store.rotate_master_key(&root(), new.clone()).await.unwrap();
    let sealed = sealed_private(&db, "CARD-E").await.unwrap();
    let private = new.open(&sealed, &private_key_context("acme", "CARD-E")).unwrap();
    let sk = tessera_crypto::ecdsa::SigningKey::from_bytes(&private).unwrap();
    assert_eq!(hex::encode(sk.public_key().to_sec1_bytes()), info.public_key);
}
both!(escrow_keeps_the_key_sealed_and_rotation_reseals_it);

async fn an_update_only_private_session_runs_no_vault_step(db: TestDb) {
    use tessera_server::store::update::{CreateUpdateSession, QueueUpdate};
    let store = db.store().await;
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut p, p_pin) = issue_main(&store, "CARD-P").await;
    let update = QueueUpdate {
        object: "wifi".into(),
        value_hex: hex::encode(b"pw"),
        sealed: false,
        free_read: false,
    };
    store.queue_update(&root(), "acme", "CARD-P", &update).await.unwrap();
    store.provision_vault_key(&root(), "acme", "CARD-P").await.unwrap();
    pin(&mut p, &p_pin);
    let req = CreateUpdateSession { mode: "private".into(), card_id: None };
    let mut step = store.create_update_session("acme", &req).await.unwrap();
    let mut seen = Vec::new();
    while !step.done {
        let responses = relay(&mut p, &step.apdus, &mut seen);
        step = store
            .exchange(&step.session_id, &Exchange { step: step.step, responses })
            .await
            .unwrap();
    }
    let o = step.outcome.unwrap();
    assert!(!o.message.contains("vault key"), "{}", o.message);
    assert!(!seen.iter().any(|x| is_ins(x, proto::INS_ATTEST)));
    assert_eq!(status(&mut p).key, None);
    assert_eq!(store.vault_key(&root(), "acme", "CARD-P").await.unwrap().status, "queued");
    // The card's ordinary sync delivers it.
    pin(&mut p, &p_pin);
    let o = sync(&store, &mut p).await;
    assert!(o.message.contains("vault key: delivered"), "{}", o.message);
}
both!(an_update_only_private_session_runs_no_vault_step);
