//! The update service from the command line against a running server over HTTPS:
//! `tessera admin update put|list`, the value reaching the card.

#![allow(clippy::unwrap_used)]

use clap::Parser;
use tessera_apdu::{Command, Response, StatusWord};
use tessera_card::{Card, CardOptions};
use tessera_proto::update::{AuthMode, UpdateCommand, load_commands};
use tessera_server::cli::{AdminArgs, FailureKind, SyncArgs, admin, sync};
use tessera_server::server::{ServerOptions, start};
use tessera_server::store::Store;
use tessera_server::store::auth::Principal;
use tessera_server::store::issuance::StartIssuance;
use tessera_server::store::sessions::Exchange;

#[derive(Parser)]
struct Admin {
    #[command(flatten)]
    args: AdminArgs,
}

#[derive(Parser)]
struct Sync {
    #[command(flatten)]
    args: SyncArgs,
}

fn root() -> Principal {
    Principal { token_id: "test".into(), issuer: None }
}

fn send(card: &mut Card, cmd: &Command) -> Response {
    Response::parse(&card.transmit(&cmd.to_bytes().unwrap())).unwrap()
}

async fn issue(store: &Store, card_id: &str) -> (Card, String) {
    let start = StartIssuance { card_id: card_id.into(), legacy_static_auth: false };
    let issuance = store.start_issuance(&root(), "acme", &start).await.unwrap();
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    let mut step = issuance.session.clone();
    while !step.done {
        let responses = step
            .apdus
            .iter()
            .map(|a| hex::encode_upper(card.transmit(&hex::decode(a).unwrap())))
            .collect();
        step = store
            .exchange(&step.session_id, &Exchange { step: step.step, responses })
            .await
            .unwrap();
    }
    card.reset();
    (card, issuance.initial_pin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_update_put_and_list_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = start(opts, std::future::pending()).await.unwrap();
    let url = format!("https://{}", server.addr);
    let fp = server.fingerprint.clone().unwrap();
    let token = server.bootstrap_token.clone().unwrap();
    server.store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let (mut card, pin) = issue(&server.store, "CARD-A").await;
    let run = |rest: &[&str]| {
        let mut argv = vec!["admin", "--server", &url, "--fingerprint", &fp, "--token", &token];
        argv.extend_from_slice(rest);
        Admin::try_parse_from(argv).map(|a| a.args)
    };

    let r = admin(&run(&["update", "put", "acme", "CARD-A", "wifi", "--value", "pw-1"]).unwrap())
        .await
        .unwrap();
    assert_eq!(r.human, "queued wifi for card CARD-A as sequence 1 (apply)");
    let file = dir.path().join("cert.der");
    std::fs::write(&file, [0x30, 0x82, 0x00, 0xFF]).unwrap();
    let f = file.to_str().unwrap();
    let put = ["update", "put", "acme", "CARD-A", "cert", "--file", f, "--sealed", "--free-read"];
    let r = admin(&run(&put).unwrap()).await.unwrap();
    assert_eq!((r.json["sequence"].as_i64(), r.json["mode"].as_str()), (Some(2), Some("sealed")));
    // The largest value the card holds goes through the HTTP API (hex in the body).
    let big = dir.path().join("big");
    std::fs::write(&big, vec![0xA5; 65536]).unwrap();
    let put = ["update", "put", "acme", "CARD-A", "big", "--file", big.to_str().unwrap()];
    assert_eq!(admin(&run(&put).unwrap()).await.unwrap().json["sequence"], 3);
    // Exactly one of --file and --value.
    assert!(run(&["update", "put", "acme", "CARD-A", "x"]).is_err());
    assert!(run(&["update", "put", "acme", "CARD-A", "x", "--value", "v", "--file", f]).is_err());
    let err = admin(&run(&["update", "put", "acme", "NOPE", "wifi", "--value", "v"]).unwrap())
        .await
        .unwrap_err();
    assert!(err.message.contains("404"), "{}", err.message);
    let err = admin(&run(&["update", "put", "acme", "CARD-A", "", "--value", "v"]).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused, "{}", err.message);
    let r = admin(&run(&["update", "list", "acme", "CARD-A"]).unwrap()).await.unwrap();
    let lines: Vec<&str> = r.human.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.human);
    assert!(lines[1].starts_with("1\twifi\tapply\t") && lines[1].ends_with("\t-"), "{}", r.human);
    assert!(lines[2].starts_with("2\tcert\tsealed\t"), "{}", r.human);

    // The queued values reach the card.
    let select =
        |aid: &[u8]| Command::new(0x00, 0xA4, 0x04, 0x00).with_data(aid.to_vec()).with_le(256);
    assert_eq!(send(&mut card, &select(tessera_server::tunnel::ISD_AID)).sw, StatusWord::SUCCESS);
    let pin_text = pin.clone();
    let mut block = pin.into_bytes();
    block.resize(8, 0xFF);
    let verify = Command::new(0x00, 0x20, 0x00, 0x81).with_data(block);
    assert_eq!(send(&mut card, &verify).sw, StatusWord::SUCCESS);
    assert_eq!(send(&mut card, &select(tessera_proto::update::AID)).sw, StatusWord::SUCCESS);
    let c = server.store.update_challenge().await.unwrap();
    let auth = UpdateCommand::DeviceAuthenticate { mode: AuthMode::Plain, challenge: Some(c) };
    let answer = send(&mut card, &auth.to_command()).data;
    let authed = server.store.update_authenticate("acme", "CARD-A", &c, &answer).await.unwrap();
    for (_, package) in server.store.update_pending("acme", &authed).await.unwrap() {
        let mut last = Response::status(StatusWord::UNKNOWN);
        for cmd in load_commands(&package) {
            last = send(&mut card, &cmd.to_command());
        }
        server.store.update_receipt("acme", &authed, &last.data).await.unwrap();
    }
    let read = |card: &mut Card, name: &str| {
        send(card, &UpdateCommand::ReadObject(name.as_bytes().to_vec()).to_command()).data
    };
    assert_eq!(read(&mut card, "wifi"), b"pw-1");
    assert_eq!(read(&mut card, "cert"), [0x30, 0x82, 0x00, 0xFF]);
    // (The 64 KiB object was delivered too: the list below shows no pending entry.)
    let r = admin(&run(&["update", "list", "acme", "CARD-A"]).unwrap()).await.unwrap();
    assert!(!r.human.contains("\t-"), "{}", r.human);

    // tessera sync: a periodic change reaches the card at its next sync, PIN from a file.
    admin(&run(&["update", "put", "acme", "CARD-A", "wifi", "--value", "pw-2"]).unwrap())
        .await
        .unwrap();
    let sync_args = |extra: &[&str]| {
        let mut argv = vec!["sync", "--server", &url, "--fingerprint", &fp, "--issuer", "acme"];
        argv.extend_from_slice(extra);
        Sync::try_parse_from(argv).unwrap().args
    };
    // The PIN is never an argument.
    assert!(Sync::try_parse_from(["sync", "--issuer", "acme", "--pin", "1234"]).is_err());
    card.reset();
    let r = sync(&sync_args(&[]), |apdu| Ok(card.transmit(apdu))).await.unwrap();
    assert!(r.human.contains("PIN"), "{}", r.human);
    let wrong = dir.path().join("wrong-pin");
    std::fs::write(&wrong, "000000\n").unwrap();
    card.reset();
    let err =
        sync(&sync_args(&["--pin-file", wrong.to_str().unwrap()]), |apdu| Ok(card.transmit(apdu)))
            .await
            .unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.message.contains("wrong PIN"), "{}", err.message);
    let right = dir.path().join("pin");
    std::fs::write(&right, format!("{pin_text}\n")).unwrap();
    card.reset();
    let r =
        sync(&sync_args(&["--pin-file", right.to_str().unwrap()]), |apdu| Ok(card.transmit(apdu)))
            .await
            .unwrap();
    assert!(r.human.contains("updates: 1 delivered"), "{}", r.human);
    assert_eq!(read(&mut card, "wifi"), b"pw-2");

    // The bulk form: one update per CSV line; the first refusal stops it.
    let csv = dir.path().join("updates.csv");
    std::fs::write(&csv, "card,object,value\nCARD-A,a,one\nCARD-A,b,two,with comma\n").unwrap();
    let c = csv.to_str().unwrap();
    let r = admin(&run(&["update", "put-csv", "acme", c, "--sealed"]).unwrap()).await.unwrap();
    assert_eq!(r.human, "CARD-A\ta\t5\tsealed\nCARD-A\tb\t6\tsealed");
    std::fs::write(&csv, "CARD-A,c,3\nNOPE,d,4\nCARD-A,e,5\n").unwrap();
    let err = admin(&run(&["update", "put-csv", "acme", c]).unwrap()).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.message.starts_with("line 2 (card NOPE)"), "{}", err.message);
    std::fs::write(&csv, "CARD-A,f,6\nCARD-A,,7\n").unwrap();
    let err = admin(&run(&["update", "put-csv", "acme", c]).unwrap()).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Usage, "nothing sent: {}", err.message);
    let r = admin(&run(&["update", "list", "acme", "CARD-A"]).unwrap()).await.unwrap();
    let objects: Vec<&str> =
        r.human.lines().skip(1).map(|l| l.split('\t').nth(1).unwrap()).collect();
    assert_eq!(objects, ["wifi", "cert", "big", "wifi", "a", "b", "c"]);

    // A periodic password change: scheduled, listed, delivered at the next sync, removed.
    let sched = ["update", "schedule", "acme", "CARD-A", "vpn", "--every", "30d"];
    let r =
        admin(&run(&[&sched[..], &["--generate", "password:24"]].concat()).unwrap()).await.unwrap();
    assert!(r.human.starts_with("card CARD-A: vpn every 2592000s (password:24)"), "{}", r.human);
    let err = admin(&run(&[&sched[..], &["--generate", "pin:4"]].concat()).unwrap()).await;
    assert_eq!(err.unwrap_err().kind, FailureKind::Usage);
    let r = admin(&run(&["update", "schedules", "acme", "CARD-A"]).unwrap()).await.unwrap();
    assert!(
        r.human.lines().nth(1).unwrap().starts_with("vpn\t2592000s\tpassword:24\t"),
        "{}",
        r.human
    );
    card.reset();
    let r =
        sync(&sync_args(&["--pin-file", right.to_str().unwrap()]), |apdu| Ok(card.transmit(apdu)))
            .await
            .unwrap();
    assert!(r.human.contains("delivered"), "{}", r.human);
    let vpn = read(&mut card, "vpn");
    assert_eq!(vpn.len(), 24);
    let r = admin(&run(&["update", "unschedule", "acme", "CARD-A", "vpn"]).unwrap()).await.unwrap();
    assert_eq!(r.human, "card CARD-A: vpn is no longer changed periodically");
    let err = admin(&run(&["update", "unschedule", "acme", "CARD-A", "vpn"]).unwrap()).await;
    assert_eq!(err.unwrap_err().kind, FailureKind::Refused);

    // The privacy variant over HTTPS: delivered, and the report never names the card.
    admin(&run(&["update", "put", "acme", "CARD-A", "wifi", "--value", "pw-3"]).unwrap())
        .await
        .unwrap();
    card.reset();
    let private = sync_args(&["--pin-file", right.to_str().unwrap(), "--private"]);
    let r = sync(&private, |apdu| Ok(card.transmit(apdu))).await.unwrap();
    assert!(
        r.human.starts_with("private: card -: ") && r.human.ends_with("1 delivered"),
        "{}",
        r.human
    );
    assert!(!r.human.contains("CARD-A") && !r.json.to_string().contains("CARD-A"), "{}", r.json);
    assert_eq!(read(&mut card, "wifi"), b"pw-3");
    card.reset();
    let err = sync(&sync_args(&["--private"]), |apdu| Ok(card.transmit(apdu))).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Usage, "the privacy variant needs the PIN");

    // The legacy static authenticator: registered by the admin, used only behind the switch,
    // always with the warning. This card was not personalised with one: the card refuses it.
    let sa = dir.path().join("static");
    std::fs::write(&sa, "42".repeat(16)).unwrap();
    let reg = ["update", "legacy-static", "acme", "CARD-A", "--file", sa.to_str().unwrap()];
    let r = admin(&run(&reg).unwrap()).await.unwrap();
    assert!(r.human.contains("legacy static authenticator registered"), "{}", r.human);
    std::fs::write(&sa, "short").unwrap();
    assert_eq!(admin(&run(&reg).unwrap()).await.unwrap_err().kind, FailureKind::Usage);
    card.reset();
    let legacy = sync_args(&["--pin-file", right.to_str().unwrap(), "--legacy-static-auth"]);
    let err = sync(&legacy, |apdu| Ok(card.transmit(apdu))).await.unwrap_err();
    assert!(err.message.starts_with("WARNING: --legacy-static-auth"), "{}", err.message);
    assert!(err.message.contains("refused (device-authentication-refused)"), "{}", err.message);
    let r = admin(&run(&["update", "legacy-static", "acme", "CARD-A", "--clear"]).unwrap())
        .await
        .unwrap();
    assert_eq!(r.human, "card CARD-A: no legacy static authenticator");
    server.shutdown().await.unwrap();
}
