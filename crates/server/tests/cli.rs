//! `tessera server` / `tessera admin` as the binary calls them: argument parsing, and admin
//! commands over HTTPS with a pinned certificate against a running server.

#![allow(clippy::unwrap_used)]

use clap::Parser;
use tessera_server::cli::{AdminArgs, FailureKind, ServerArgs, admin};
use tessera_server::server::{ServerOptions, TlsMode, start};

#[derive(Parser)]
struct Server {
    #[command(flatten)]
    args: ServerArgs,
}

#[derive(Parser)]
struct Admin {
    #[command(flatten)]
    args: AdminArgs,
}

fn admin_args(server: &str, fp: &str, token: &str, rest: &[&str]) -> AdminArgs {
    let mut argv = vec!["admin", "--server", server, "--fingerprint", fp, "--token", token];
    argv.extend_from_slice(rest);
    Admin::try_parse_from(argv).unwrap().args
}

#[test]
fn server_arguments_map_to_options() {
    let a =
        Server::try_parse_from(["server", "--data", "/d", "--db", "postgres://u@h/db", "--no-tls"])
            .unwrap()
            .args;
    let o = a.options();
    assert!(matches!(o.tls, TlsMode::Disabled));
    assert_eq!(o.db, Some(tessera_server::db::DbLocation::Postgres("postgres://u@h/db".into())));
    let a = Server::try_parse_from(["server", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
        .unwrap()
        .args;
    assert!(matches!(a.options().tls, TlsMode::Files { .. }));
    assert!(matches!(
        Server::try_parse_from(["server"]).unwrap().args.options().tls,
        TlsMode::Generated
    ));
    assert!(
        Server::try_parse_from(["server", "--tls-cert", "c.pem"]).is_err(),
        "needs --tls-key too"
    );
    assert!(
        Server::try_parse_from(["server", "--no-tls", "--tls-cert", "c", "--tls-key", "k"])
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = start(opts, std::future::pending()).await.unwrap();
    let url = format!("https://{}", server.addr);
    let fp = server.fingerprint.clone().unwrap();
    let root = server.bootstrap_token.clone().unwrap();
    let run = |rest: &[&str]| admin_args(&url, &fp, &root, rest);

    let r = admin(&run(&["issuers", "create", "acme", "Acme Bank"])).await.unwrap();
    assert!(r.human.contains("-----BEGIN CERTIFICATE-----"));
    assert_eq!(r.json["id"], "acme");
    admin(&run(&["cards", "register", "acme", "C1"])).await.unwrap();
    let r = admin(&run(&["cards", "list", "acme"])).await.unwrap();
    assert_eq!(r.human, "C1\tactive");
    let r =
        admin(&run(&["tokens", "create", "--issuer", "acme", "--label", "ops", "--ttl", "600"]))
            .await
            .unwrap();
    let acme = r.json["token"].as_str().unwrap().to_owned();
    // The issuer token works for its issuer and is refused elsewhere.
    let as_acme = |rest: &[&str]| admin_args(&url, &fp, &acme, rest);
    assert_eq!(
        admin(&as_acme(&["cards", "show", "acme", "C1"])).await.unwrap().json["status"],
        "active"
    );
    let err = admin(&as_acme(&["issuers", "create", "evil", "Evil"])).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.message.contains("403"), "{}", err.message);
    let r = admin(&run(&["cards", "revoke", "acme", "C1"])).await.unwrap();
    assert_eq!(r.json["status"], "revoked");
    let certs = admin(&run(&["issuers", "certs", "acme"])).await.unwrap();
    assert_eq!(certs.json.as_array().unwrap().len(), 2);
    let r = admin(&run(&["audit", "verify"])).await.unwrap();
    assert!(r.human.ends_with("ok"), "{}", r.human);
    let head = format!("{}:{}", r.json["head_seq"], r.json["head_hash"].as_str().unwrap());
    assert!(admin(&run(&["audit", "verify", "--head", &head])).await.is_ok());
    let r = admin(&run(&["audit", "list"])).await.unwrap();
    assert!(r.human.contains("issuer.create"), "{}", r.human);
    assert!(admin(&run(&["audit", "checkpoint"])).await.is_ok());

    // Bad input: wrong token, wrong pin, unreachable server, bad id, bad head.
    let err = admin(&admin_args(&url, &fp, "tsr_nope", &["issuers", "list"])).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused);
    let err =
        admin(&admin_args(&url, &"00".repeat(32), &root, &["issuers", "list"])).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transport);
    let err = admin(&admin_args("https://127.0.0.1:1", &fp, &root, &["issuers", "list"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Transport);
    assert_eq!(
        admin(&run(&["cards", "show", "acme", "a/b"])).await.unwrap_err().kind,
        FailureKind::Usage
    );
    assert_eq!(
        admin(&run(&["audit", "verify", "--head", "x"])).await.unwrap_err().kind,
        FailureKind::Usage
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_master_key_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.tls = TlsMode::Disabled;
    let server = start(opts.clone(), std::future::pending()).await.unwrap();
    server
        .store
        .create_issuer(&tessera_server::store::auth::Principal::system(), "acme", "Acme")
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let new_key = dir.path().join("new.key");
    let data = dir.path().to_str().unwrap();
    let args = Admin::try_parse_from([
        "admin",
        "rotate-master-key",
        "--data",
        data,
        "--new-key-file",
        new_key.to_str().unwrap(),
    ])
    .unwrap()
    .args;
    let r = admin(&args).await.unwrap();
    assert_eq!(r.json["resealed"], 3);
    // The old key no longer opens the store; the new one does.
    assert!(start(opts.clone(), std::future::pending()).await.is_err());
    std::fs::rename(&new_key, dir.path().join("master.key")).unwrap();
    start(opts, std::future::pending()).await.unwrap().shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_and_sync_a_card_over_https() {
    use tessera_server::client::ApiClient;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = start(opts, std::future::pending()).await.unwrap();
    let url = format!("https://{}", server.addr);
    let fp = server.fingerprint.clone().unwrap();
    let admin_client = ApiClient::new(&url, Some(&fp), server.bootstrap_token.clone()).unwrap();
    admin(&admin_args(
        &url,
        &fp,
        server.bootstrap_token.as_ref().unwrap(),
        &["issuers", "create", "acme", "Acme"],
    ))
    .await
    .unwrap();

    // `tessera issue`: the admin starts it, the terminal relays to a blank card.
    let mut card = tessera_card::Card::in_memory(tessera_card::CardOptions::default());
    card.power_on();
    let issuance = admin_client.start_issuance("acme", "CARD-9").await.unwrap();
    let done = admin_client.relay(issuance.session, |apdu| Ok(card.transmit(apdu))).await.unwrap();
    assert_eq!(done.outcome.unwrap().result, "issued");

    // `tessera sync`: a terminal without any token relays the server's session.
    let terminal = ApiClient::new(&url, Some(&fp), None).unwrap();
    card.reset();
    let first = terminal.open_session("acme", None).await.unwrap();
    let done = terminal.relay(first, |apdu| Ok(card.transmit(apdu))).await.unwrap();
    let outcome = done.outcome.unwrap();
    assert_eq!(
        (outcome.result.as_str(), outcome.card_id.as_deref()),
        ("identified", Some("CARD-9"))
    );
    // Errors come back typed.
    let err = terminal.open_session("nobody", None).await.unwrap_err();
    assert!(
        matches!(err, tessera_server::client::ApiError::Server { code, .. } if code == "not_found")
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_and_sync_commands_with_a_card() {
    use tessera_server::cli::{IssueArgs, SyncArgs, issue, sync};
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = start(opts, std::future::pending()).await.unwrap();
    let (url, fp, root) = (
        format!("https://{}", server.addr),
        server.fingerprint.clone().unwrap(),
        server.bootstrap_token.clone().unwrap(),
    );
    admin(&admin_args(&url, &fp, &root, &["issuers", "create", "acme", "Acme"])).await.unwrap();

    #[derive(Parser)]
    struct Issue {
        #[command(flatten)]
        args: IssueArgs,
    }
    #[derive(Parser)]
    struct Sync {
        #[command(flatten)]
        args: SyncArgs,
    }
    let mut card = tessera_card::Card::in_memory(tessera_card::CardOptions::default());
    card.power_on();
    let a = [
        "issue",
        "--server",
        &url,
        "--fingerprint",
        &fp,
        "--issuer",
        "acme",
        "--card-id",
        "C7",
        "--token",
        &root,
    ];
    let r = issue(&Issue::try_parse_from(a).unwrap().args, |apdu| Ok(card.transmit(apdu)))
        .await
        .unwrap();
    assert!(r.human.starts_with("issued: card C7"), "{}", r.human);
    let pin = r.json["initial_pin"].as_str().unwrap().to_owned();
    assert_eq!(pin.len(), 6);

    let a = ["sync", "--server", &url, "--fingerprint", &fp, "--issuer", "acme"];
    let sync_args = Sync::try_parse_from(a).unwrap().args;
    card.reset();
    let r = sync(&sync_args, |apdu| Ok(card.transmit(apdu))).await.unwrap();
    assert!(r.human.starts_with("identified: card C7"), "{}", r.human);

    // A rolled-back image presents the initial key version again: flagged, and the command
    // fails.
    card.reset();
    let err = sync(&sync_args, |apdu| {
        let mut resp = card.transmit(apdu);
        if apdu.starts_with(&[0x80, 0xCA, 0x00, 0xE0]) {
            for i in 0..3 {
                resp[2 + 6 * i + 3] = 0x30;
            }
        }
        Ok(resp)
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.message.starts_with("flagged: card C7"), "{}", err.message);
    // An unreachable card is a transport failure.
    let err = sync(&sync_args, |_| Err("no card in the reader".into())).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transport);
    server.shutdown().await.unwrap();
}
