//! The keyring service on the database (SQLite and PostgreSQL, the same suite): records sealed
//! under the master key, the issuer's policy, audit entries, and `tessera sync` driving the
//! real card runtime's keyring applet through the APDU tunnel: renewal with two-phase commit,
//! a relay killed mid-renewal then a resynchronising sync, replicas taking alternate steps, a
//! rolled-back card image suspended, root compromise reported as re-issue.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDb, root};
use tessera_card::applets::isd::scenarios as isd;
use tessera_card::applets::keyring::scenarios::personalize_keyring;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_server::db::Value;
use tessera_server::store::keyring::{
    KeyringLayout, KeyringMode, KeyringPolicy, KeyringStatus, ReportCompromise,
};
use tessera_server::store::sessions::{CreateSession, Exchange, Outcome};
use tessera_server::{ServerError, Store};

struct Direct<'a>(&'a mut Card);

impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn card_id() -> &'static str {
    std::str::from_utf8(isd::CARD_ID).unwrap()
}

const SYM_3X3: KeyringLayout =
    KeyringLayout { mode: KeyringMode::Symmetric, internal_slots: 3, external_slots: 3 };

/// A card personalised like at issuance, with the keyring the server generated for it.
async fn card_with_keyring(store: &Store, layout: KeyringLayout) -> (Card, Vec<(u16, Vec<u8>)>) {
    store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    store.register_card(&root(), "acme", card_id()).await.unwrap();
    let groups = store.issue_keyring(&root(), "acme", card_id(), &layout).await.unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let mut d = Direct(&mut card);
    let mut s = Script::new(&mut d);
    isd::personalize(&mut s).unwrap();
    personalize_keyring(&mut s, &groups).unwrap();
    card.reset();
    (card, groups)
}

fn relay(card: &mut Card, apdus: &[String]) -> Vec<String> {
    apdus.iter().map(|a| hex::encode_upper(card.transmit(&hex::decode(a).unwrap()))).collect()
}

/// `tessera sync` against `stores` (one replica per step, in turn).
async fn sync_on(stores: &[&Store], card: &mut Card) -> Outcome {
    card.reset();
    let mut step = stores[0].create_session("acme", &CreateSession::default()).await.unwrap();
    let mut turn = 0;
    while !step.done {
        turn += 1;
        let store = stores[turn % stores.len()];
        let req = Exchange { step: step.step, responses: relay(card, &step.apdus) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    step.outcome.unwrap()
}

async fn sync(store: &Store, card: &mut Card) -> Outcome {
    sync_on(&[store], card).await
}

async fn status(store: &Store) -> KeyringStatus {
    store.keyring_status(&root(), "acme", card_id()).await.unwrap()
}

fn version(s: &KeyringStatus, kind: &str, slot: u8) -> (u32, Option<u32>) {
    let v = s.slots.iter().find(|v| v.kind == kind && v.slot == slot).unwrap();
    (v.server_version, v.card_version)
}

/// Every slot: the server's version equals the card's last report; nothing pending.
fn assert_agree(s: &KeyringStatus) {
    assert_eq!(s.state, "ok", "{s:?}");
    for v in &s.slots {
        assert_eq!(Some(v.server_version), v.card_version, "{v:?}");
        assert_eq!(v.pending_version, None, "{v:?}");
    }
}

async fn audit_actions(store: &Store) -> Vec<String> {
    store.audit_entries(&root(), 0, 1000).await.unwrap().into_iter().map(|e| e.action).collect()
}

async fn compromise(store: &Store, kind: &str, slot: u8) {
    let report = ReportCompromise { kind: kind.into(), slot };
    store.keyring_compromised(&root(), "acme", card_id(), &report).await.unwrap();
}

async fn records_are_sealed_and_policies_validated(db: TestDb) {
    let store = db.store().await;
    let (_card, groups) = card_with_keyring(&store, SYM_3X3).await;
    // The raw row holds none of the keys the card got.
    let mut tx = store.db().begin().await.unwrap();
    let row = tx
        .query_opt(
            "SELECT sealed_record FROM keyring_cards WHERE card_id = $1",
            &[Value::from(card_id())],
        )
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let raw = row.blob(0).unwrap();
    let mut keys = 0;
    for (dgi, value) in &groups {
        if *dgi == tessera_proto::keyring::DGI_INTERNAL_KEY {
            let key = &value[value.len() - 16..];
            assert!(!raw.windows(16).any(|w| w == key), "a key in the clear");
            keys += 1;
        }
    }
    assert_eq!(keys, 3);
    let s = status(&store).await;
    assert_eq!((s.mode, s.state.as_str(), s.slots.len()), (KeyringMode::Symmetric, "ok", 6));
    assert_eq!(version(&s, "internal", 3), (1, None), "no report before the first sync");
    // Issuing twice is refused and changes nothing.
    assert!(matches!(
        store.issue_keyring(&root(), "acme", card_id(), &SYM_3X3).await,
        Err(ServerError::Conflict(_))
    ));
    // A card of another issuer, an unknown card: not found.
    assert!(matches!(
        store.keyring_status(&root(), "acme", "NOPE").await,
        Err(ServerError::NotFound(_))
    ));

    // Policy: default, set, bad values refused.
    assert_eq!(store.keyring_policy(&root(), "acme").await.unwrap(), KeyringPolicy::default());
    let p = KeyringPolicy {
        intervals: vec![Some(3600), None, Some(86_400)],
        single_random: true,
        layout: Some(SYM_3X3),
    };
    store.set_keyring_policy(&root(), "acme", &p).await.unwrap();
    assert_eq!(store.keyring_policy(&root(), "acme").await.unwrap(), p);
    for bad in [
        KeyringPolicy { intervals: vec![Some(1)], ..p.clone() },
        KeyringPolicy { intervals: vec![None; 9], ..p.clone() },
        KeyringPolicy { layout: Some(KeyringLayout { internal_slots: 9, ..SYM_3X3 }), ..p.clone() },
        KeyringPolicy { layout: Some(KeyringLayout { external_slots: 0, ..SYM_3X3 }), ..p.clone() },
    ] {
        assert!(matches!(
            store.set_keyring_policy(&root(), "acme", &bad).await,
            Err(ServerError::BadRequest(_))
        ));
    }
    assert_eq!(store.keyring_policy(&root(), "acme").await.unwrap(), p);
    // Bad compromise reports.
    for (kind, slot) in [("internal", 0), ("internal", 4), ("sideways", 2)] {
        let r = ReportCompromise { kind: kind.into(), slot };
        assert!(matches!(
            store.keyring_compromised(&root(), "acme", card_id(), &r).await,
            Err(ServerError::BadRequest(_))
        ));
    }
    let actions = audit_actions(&store).await;
    assert!(actions.contains(&"keyring.issue".to_owned()));
    assert_eq!(actions.iter().filter(|a| *a == "keyring.policy").count(), 1);
    assert!(store.verify_audit(None).await.unwrap().ok);
}
both!(records_are_sealed_and_policies_validated);

async fn sync_renews_through_the_tunnel(db: TestDb) {
    for mode in [KeyringMode::Symmetric, KeyringMode::Asymmetric] {
        let other;
        let db = match mode {
            KeyringMode::Symmetric => &db,
            KeyringMode::Asymmetric => {
                other = fresh(&db).await;
                &other
            }
        };
        let store = db.store().await;
        let (mut card, _) = card_with_keyring(&store, KeyringLayout { mode, ..SYM_3X3 }).await;
        // Nothing due: the sync authenticates, opens the session and records the card's
        // versions.
        let o = sync(&store, &mut card).await;
        assert_eq!(o.result, "synced", "{o:?}");
        assert_agree(&status(&store).await);
        // The bottom key reported compromised: the bottom pair is renewed from level 1.
        compromise(&store, "internal", 3).await;
        assert_eq!(status(&store).await.forced_level, Some(0));
        let o = sync(&store, &mut card).await;
        assert_eq!(o.result, "synced", "{o:?}");
        assert!(o.message.contains("1 renewal"), "{o:?}");
        let s = status(&store).await;
        assert_agree(&s);
        assert_eq!(s.forced_level, None);
        assert_eq!(version(&s, "internal", 3), (2, Some(2)));
        assert_eq!(version(&s, "external", 3), (2, Some(2)));
        assert_eq!(version(&s, "internal", 2), (1, Some(1)));
        // Level 1: slots 2 and 3 both, from the root pair.
        compromise(&store, "external", 2).await;
        assert_eq!(sync(&store, &mut card).await.result, "synced");
        let s = status(&store).await;
        assert_agree(&s);
        assert_eq!(version(&s, "internal", 2), (2, Some(2)));
        assert_eq!(version(&s, "internal", 3), (3, Some(3)));
        assert_eq!(version(&s, "internal", 1), (1, Some(1)), "the root is never renewed");
        let actions = audit_actions(&store).await;
        assert_eq!(actions.iter().filter(|a| *a == "keyring.renew.start").count(), 2);
        assert_eq!(actions.iter().filter(|a| *a == "keyring.renew.commit").count(), 2);
        assert!(store.verify_audit(None).await.unwrap().ok);
    }
}
both!(sync_renews_through_the_tunnel);

/// A second database of the same kind as `db`.
async fn fresh(db: &TestDb) -> TestDb {
    match db.location {
        tessera_server::db::DbLocation::Sqlite(_) => TestDb::sqlite(),
        tessera_server::db::DbLocation::Postgres(_) => TestDb::postgres().await.unwrap(),
    }
}

/// Sends a sync's APDUs to the card until the RENEW has reached it, and drops the card's
/// answer to it (the relay dies). Returns the abandoned session's id.
async fn sync_killed_at_renew(store: &Store, card: &mut Card) -> String {
    card.reset();
    let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
    loop {
        assert!(!step.done, "the sync ended before any RENEW");
        let responses = relay(card, &step.apdus);
        if step.apdus.iter().any(|a| a.starts_with("80C4")) {
            return step.session_id;
        }
        let req = Exchange { step: step.step, responses };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
}

async fn expire(store: &Store, session: &str) {
    let mut tx = store.db().begin().await.unwrap();
    tx.execute("UPDATE sessions SET expires_at = 0 WHERE id = $1", &[Value::from(session)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.expire_sessions().await.unwrap(), 1);
}

async fn a_relay_killed_mid_renewal_resynchronises_at_the_next_sync(db: TestDb) {
    let store = db.store().await;
    let (mut card, _) = card_with_keyring(&store, SYM_3X3).await;
    compromise(&store, "internal", 3).await;
    let session = sync_killed_at_renew(&store, &mut card).await;
    // The server stored phase one before the RENEW left: the renewal is pending.
    let s = status(&store).await;
    assert_eq!(s.state, "renewal-pending");
    let v = s.slots.iter().find(|v| v.kind == "internal" && v.slot == 3).unwrap();
    assert_eq!((v.server_version, v.pending_version), (1, Some(2)));
    expire(&store, &session).await;
    // The card committed the renewal; the server did not see it. The next sync runs it again
    // from the same upper pair and both sides agree.
    let o = sync(&store, &mut card).await;
    assert_eq!(o.result, "synced", "{o:?}");
    assert!(o.message.contains("resynchronised"), "{o:?}");
    let s = status(&store).await;
    assert_agree(&s);
    assert_eq!(version(&s, "internal", 3), (3, Some(3)), "renewed on the card twice");
    // And again at another point: the card never saw the RENEW (dropped on the way in).
    compromise(&store, "internal", 3).await;
    card.reset();
    let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
    loop {
        if step.apdus.iter().any(|a| a.starts_with("80C4")) {
            break;
        }
        let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    expire(&store, &step.session_id).await;
    assert_eq!(sync(&store, &mut card).await.result, "synced");
    let s = status(&store).await;
    assert_agree(&s);
    assert_eq!(version(&s, "internal", 3), (4, Some(4)));
    // Every phase one and every commit is in the audit log: two interrupted starts, two
    // re-run starts, two commits.
    let actions = audit_actions(&store).await;
    assert_eq!(actions.iter().filter(|a| *a == "keyring.renew.start").count(), 4);
    assert_eq!(actions.iter().filter(|a| *a == "keyring.renew.commit").count(), 2);
}
both!(a_relay_killed_mid_renewal_resynchronises_at_the_next_sync);

async fn replicas_take_alternate_steps_of_one_sync(db: TestDb) {
    let a = db.store().await;
    let b = db.store().await;
    let (mut card, _) = card_with_keyring(&a, SYM_3X3).await;
    compromise(&a, "internal", 2).await;
    let o = sync_on(&[&a, &b], &mut card).await;
    assert_eq!(o.result, "synced", "{o:?}");
    let s = status(&b).await;
    assert_agree(&s);
    assert_eq!(version(&s, "internal", 2), (2, Some(2)));
}
both!(replicas_take_alternate_steps_of_one_sync);

async fn a_rolled_back_card_is_flagged_and_root_compromise_means_reissue(db: TestDb) {
    let store = db.store().await;
    let (mut card, groups) = card_with_keyring(&store, SYM_3X3).await;
    // A second card with the same (old) image: a copy made before the renewal.
    let mut copy = Card::in_memory(CardOptions::default());
    copy.power_on();
    {
        let mut d = Direct(&mut copy);
        let mut s = Script::new(&mut d);
        isd::personalize(&mut s).unwrap();
        personalize_keyring(&mut s, &groups).unwrap();
    }
    compromise(&store, "internal", 3).await;
    assert_eq!(sync(&store, &mut card).await.result, "synced");
    let o = sync(&store, &mut copy).await;
    assert_eq!(o.result, "flagged", "{o:?}");
    assert_eq!(status(&store).await.state, "suspended");
    assert!(store.get_card(&root(), "acme", card_id()).await.unwrap().flagged.is_some());
    // A suspended card gets no keyring commands until an administrator acts.
    let o = sync(&store, &mut card).await;
    assert_eq!(o.result, "flagged");
    // Resynchronisation is refused for a card that is not suspended, and must be approved: the
    // copy (say, the holder's restored image) is then renewed from the level that still
    // authenticates, and the other image is the odd one out.
    let s2 = status(&store).await;
    assert!(!s2.resync_approved);
    let approved = store.keyring_approve_resync(&root(), "acme", card_id()).await.unwrap();
    assert!(approved.resync_approved);
    let o = sync(&store, &mut copy).await;
    assert_eq!(o.result, "synced", "{o:?}");
    assert!(o.message.contains("resynchronised"), "{o:?}");
    let s3 = status(&store).await;
    assert_agree(&s3);
    assert!(!s3.resync_approved);
    assert!(matches!(
        store.keyring_approve_resync(&root(), "acme", card_id()).await,
        Err(ServerError::Conflict(_))
    ));
    assert_eq!(sync(&store, &mut card).await.result, "flagged");
    let actions = audit_actions(&store).await;
    for a in ["keyring.suspend", "keyring.resync_approved", "keyring.resume"] {
        assert!(actions.contains(&a.to_owned()), "{a}");
    }

    let store2 = fresh(&db).await;
    let store2 = store2.store().await;
    let (mut card, _) = card_with_keyring(&store2, SYM_3X3).await;
    compromise(&store2, "external", 1).await;
    assert_eq!(status(&store2).await.state, "needs-reissue");
    let o = sync(&store2, &mut card).await;
    assert_eq!(o.result, "needs-reissue", "{o:?}");
    assert!(o.message.contains("re-issue"));
}
both!(a_rolled_back_card_is_flagged_and_root_compromise_means_reissue);

async fn a_malformed_keyring_step_changes_nothing(db: TestDb) {
    let store = db.store().await;
    let (mut card, _) = card_with_keyring(&store, SYM_3X3).await;
    card.reset();
    let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
    for _ in 0..2 {
        let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    // Now at the keyring's SELECT.
    assert_eq!(step.apdus.len(), 1);
    let bad = Exchange { step: step.step, responses: vec!["9000".into(), "9000".into()] };
    assert!(matches!(
        store.exchange(&step.session_id, &bad).await,
        Err(ServerError::BadRequest(_))
    ));
    // A card that refuses: the sync ends with a keyring error, the records unchanged.
    let refused = Exchange { step: step.step, responses: vec!["6A82".into()] };
    let end = store.exchange(&step.session_id, &refused).await.unwrap();
    assert!(end.done);
    assert_eq!(end.outcome.unwrap().result, "keyring-error");
    let s = status(&store).await;
    assert_eq!(s.state, "ok");
    assert_eq!(version(&s, "internal", 3), (1, None));
}
both!(a_malformed_keyring_step_changes_nothing);

async fn issuance_installs_the_keyring_of_the_issuer_policy(db: TestDb) {
    use tessera_server::store::issuance::StartIssuance;
    for mode in [KeyringMode::Symmetric, KeyringMode::Asymmetric] {
        let other;
        let db = match mode {
            KeyringMode::Symmetric => &db,
            KeyringMode::Asymmetric => {
                other = fresh(&db).await;
                &other
            }
        };
        let store = db.store().await;
        store.create_issuer(&root(), "acme", "Acme").await.unwrap();
        let layout = KeyringLayout { mode, internal_slots: 4, external_slots: 2 };
        let policy = KeyringPolicy { layout: Some(layout), ..KeyringPolicy::default() };
        store.set_keyring_policy(&root(), "acme", &policy).await.unwrap();
        let start = StartIssuance { card_id: "NEW-1".into(), legacy_static_auth: false };
        let issuance = store.start_issuance(&root(), "acme", &start).await.unwrap();
        let mut card = Card::in_memory(CardOptions::default());
        card.power_on();
        let mut step = issuance.session.clone();
        while !step.done {
            let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
            step = store.exchange(&step.session_id, &req).await.unwrap();
        }
        assert_eq!(step.outcome.unwrap().result, "issued");
        // The server's copy is recorded (audited), every slot at version 1.
        let s = store.keyring_status(&root(), "acme", "NEW-1").await.unwrap();
        assert_eq!((s.mode, s.slots.len(), s.state.as_str()), (mode, 6, "ok"));
        assert!(s.slots.iter().all(|v| v.server_version == 1 && v.card_version.is_none()));
        // The card's keyring works: the first sync authenticates with the bottom pair, opens
        // the session and reads the same versions.
        card.reset();
        let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
        while !step.done {
            let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
            step = store.exchange(&step.session_id, &req).await.unwrap();
        }
        assert_eq!(step.outcome.unwrap().result, "synced");
        let s = store.keyring_status(&root(), "acme", "NEW-1").await.unwrap();
        assert!(s.slots.iter().all(|v| v.card_version == Some(1)), "{s:?}");
        // Renewal works on it too (4 internal, 2 external: level 1 renews internal 3-4 and
        // external 2 from internal 2 and external 1).
        let r = ReportCompromise { kind: "internal".into(), slot: 3 };
        store.keyring_compromised(&root(), "acme", "NEW-1", &r).await.unwrap();
        card.reset();
        let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
        while !step.done {
            let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
            step = store.exchange(&step.session_id, &req).await.unwrap();
        }
        assert_eq!(step.outcome.unwrap().result, "synced");
        let s = store.keyring_status(&root(), "acme", "NEW-1").await.unwrap();
        assert_agree(&s);
        assert_eq!(version(&s, "internal", 3).0, 2);
        assert!(audit_actions(&store).await.contains(&"keyring.issue".to_owned()));
    }
}
both!(issuance_installs_the_keyring_of_the_issuer_policy);

async fn the_admin_api_serves_status_policy_compromise_and_resync(db: TestDb) {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    let store = db.store().await;
    let root_token = store.bootstrap_superuser().await.unwrap().unwrap().token;
    let (_card, _) = card_with_keyring(&store, SYM_3X3).await;
    store.create_issuer(&root(), "globex", "Globex").await.unwrap();
    let globex = store.create_token(&root(), Some("globex"), "ops", 3600).await.unwrap().token;
    let app = tessera_server::http::router(store.clone(), Default::default());
    let call = |method: &str, path: String, token: &str, body: Option<serde_json::Value>| {
        let app = app.clone();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default())
        }
    };
    let card = card_id();
    let status_path = format!("/v1/admin/issuers/acme/cards/{card}/keyring");
    let (code, v) = call("GET", status_path.clone(), &root_token, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!((v["mode"].as_str(), v["state"].as_str()), (Some("symmetric"), Some("ok")));
    assert_eq!(v["slots"].as_array().unwrap().len(), 6);
    // Another issuer's token sees nothing; no token is refused.
    assert_eq!(call("GET", status_path.clone(), &globex, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call("GET", status_path.clone(), "nope", None).await.0, StatusCode::UNAUTHORIZED);
    // Compromise: a bad body is 400 and changes nothing; a good one forces the level.
    let compromised = format!("{status_path}/compromised");
    let bad = serde_json::json!({"kind": "internal", "slot": 9});
    assert_eq!(
        call("POST", compromised.clone(), &root_token, Some(bad)).await.0,
        StatusCode::BAD_REQUEST
    );
    // Unknown fields are refused by the JSON extractor (422, as everywhere in the API).
    let extra = serde_json::json!({"kind": "internal", "slot": 3, "x": 1});
    assert_eq!(
        call("POST", compromised.clone(), &root_token, Some(extra)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let good = serde_json::json!({"kind": "internal", "slot": 3});
    let (code, v) = call("POST", compromised, &root_token, Some(good)).await;
    assert_eq!((code, v["forced_level"].as_u64()), (StatusCode::OK, Some(0)));
    // Resync of a card that is not suspended: 409.
    let (code, _) = call("POST", format!("{status_path}/resync"), &root_token, None).await;
    assert_eq!(code, StatusCode::CONFLICT);
    // Policy: read the default, replace it, refuse a bad one.
    let policy = "/v1/admin/issuers/acme/keyring-policy".to_owned();
    let (code, v) = call("GET", policy.clone(), &root_token, None).await;
    assert_eq!((code, v["intervals"].as_array().unwrap().len()), (StatusCode::OK, 2));
    let new = serde_json::json!({"intervals": [86400], "layout": {"mode": "asymmetric", "internal_slots": 2, "external_slots": 2}});
    let (code, v) = call("PUT", policy.clone(), &root_token, Some(new)).await;
    assert_eq!((code, v["layout"]["mode"].as_str()), (StatusCode::OK, Some("asymmetric")));
    let bad = serde_json::json!({"intervals": [5]});
    assert_eq!(
        call("PUT", policy.clone(), &root_token, Some(bad)).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call("GET", policy, &root_token, None).await.1["intervals"],
        serde_json::json!([86400])
    );
}
both!(the_admin_api_serves_status_policy_compromise_and_resync);

async fn an_administrators_change_during_a_sync_is_not_overwritten(db: TestDb) {
    let store = db.store().await;
    let (mut card, _) = card_with_keyring(&store, SYM_3X3).await;
    compromise(&store, "internal", 3).await;
    card.reset();
    let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
    // Run until the RENEW is out (phase one stored), then report the root compromised.
    while !step.apdus.iter().any(|a| a.starts_with("80C4")) {
        let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
        step = store.exchange(&step.session_id, &req).await.unwrap();
    }
    compromise(&store, "internal", 1).await;
    let req = Exchange { step: step.step, responses: relay(&mut card, &step.apdus) };
    let end = store.exchange(&step.session_id, &req).await.unwrap();
    assert!(end.done);
    let outcome = end.outcome.unwrap();
    assert_eq!(outcome.result, "keyring-error", "{outcome:?}");
    assert!(outcome.message.contains("changed during the sync"), "{outcome:?}");
    // The re-issue flag survived, and the renewal in flight is still pending.
    let s = status(&store).await;
    assert_eq!(s.state, "needs-reissue");
    let v = s.slots.iter().find(|v| v.kind == "internal" && v.slot == 3).unwrap();
    assert_eq!(v.pending_version, Some(2));
    assert_eq!(sync(&store, &mut card).await.result, "needs-reissue");
}
both!(an_administrators_change_during_a_sync_is_not_overwritten);

/// A card on a tearing disk whose image is `platter` (empty: a new card).
fn torn_card(platter: Vec<u8>) -> (Card, tessera_card::storage::TearingDisk) {
    use tessera_card::storage::{TearMode, TearingDisk};
    let fresh = platter.is_empty();
    let disk = TearingDisk::new(platter, None, TearMode::ReorderUnflushed { seed: 5 });
    let card = if fresh {
        Card::create_on(Box::new(disk.storage()), CardOptions::default()).unwrap()
    } else {
        Card::open_on(Box::new(disk.storage()), tessera_card::OpenOptions::default()).unwrap()
    };
    (card, disk)
}

async fn a_power_cut_at_every_write_of_a_tunnelled_renewal_is_repaired_by_the_next_sync(
    db: TestDb,
) {
    for mode in [KeyringMode::Symmetric, KeyringMode::Asymmetric] {
        let other;
        let db = match mode {
            KeyringMode::Symmetric => &db,
            KeyringMode::Asymmetric => {
                other = fresh(&db).await;
                &other
            }
        };
        let store = db.store().await;
        store.create_issuer(&root(), "acme", "Acme").await.unwrap();
        store.register_card(&root(), "acme", card_id()).await.unwrap();
        let layout = KeyringLayout { mode, ..SYM_3X3 };
        let groups = store.issue_keyring(&root(), "acme", card_id(), &layout).await.unwrap();
        let (mut card, mut disk) = torn_card(Vec::new());
        card.power_on();
        {
            let mut d = Direct(&mut card);
            let mut s = Script::new(&mut d);
            isd::personalize(&mut s).unwrap();
            personalize_keyring(&mut s, &groups).unwrap();
        }
        let mut cuts = 0;
        for k in 1.. {
            // The bottom pair is due; the card loses power at its k-th write of the RENEW.
            compromise(&store, "internal", 3).await;
            card.reset();
            let mut step = store.create_session("acme", &CreateSession::default()).await.unwrap();
            let mut cut = false;
            while !step.done {
                let renew = step.apdus.iter().any(|a| a.starts_with("80C4"));
                if renew {
                    disk.arm(Some(k));
                }
                let responses = relay(&mut card, &step.apdus);
                if disk.is_cut() {
                    cut = true;
                    expire(&store, &step.session_id).await;
                    break;
                }
                let req = Exchange { step: step.step, responses };
                step = store.exchange(&step.session_id, &req).await.unwrap();
            }
            if !cut {
                assert_eq!(step.outcome.unwrap().result, "synced");
                break;
            }
            cuts += 1;
            assert_eq!(status(&store).await.state, "renewal-pending");
            // Power comes back on what the disk kept; the next sync repairs.
            let (c, d) = torn_card(disk.platter());
            (card, disk) = (c, d);
            card.power_on();
            let o = sync(&store, &mut card).await;
            assert_eq!(o.result, "synced", "{mode:?} cut at {k}: {o:?}");
            assert!(o.message.contains("resynchronised"), "{o:?}");
            assert_agree(&status(&store).await);
        }
        assert!(cuts >= 2, "{mode:?}: only {cuts} writes");
        eprintln!("{mode:?}: {cuts} power cuts during tunnelled renewals, each repaired");
    }
}
both!(a_power_cut_at_every_write_of_a_tunnelled_renewal_is_repaired_by_the_next_sync);
