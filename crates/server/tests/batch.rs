//! Batch issuance (`tessera issue --count N`) against a running server over HTTPS: ids from a
//! prefix, one blank card image per id, every card issued with its own PIN; a batch that
//! meets a taken id stops there, keeping the cards issued before it.

#![allow(clippy::unwrap_used)]

mod common;

use clap::Parser;
use common::root;
use tessera_card::{Card, CardOptions, OpenOptions};
use tessera_server::batch::{Transmit, batch_ids, issue_batch};
use tessera_server::cli::{FailureKind, IssueArgs};
use tessera_server::server::{ServerOptions, start};

#[derive(Parser)]
struct Issue {
    #[command(flatten)]
    args: IssueArgs,
}

/// A new blank card image for `id` in `dir`, as the binary's `--image-dir` makes them.
fn image_card(dir: &std::path::Path, id: &str) -> Transmit<'static> {
    let mut card = Card::create(&dir.join(format!("{id}.card")), CardOptions::default()).unwrap();
    card.power_on();
    Box::new(move |apdu| Ok(card.transmit(apdu)))
}

fn card_id_of(path: &std::path::Path) -> (String, bool) {
    let mut card = Card::open(path, OpenOptions::default()).unwrap();
    card.power_on();
    let select = hex::decode("00A4040008A00000015100000000").unwrap();
    assert!(card.transmit(&select).ends_with(&[0x90, 0x00]));
    let id = card.transmit(&hex::decode("80CA004500").unwrap());
    let cert = card.transmit(&hex::decode("00CA7F21000000").unwrap());
    (String::from_utf8(id[2..id.len() - 2].to_vec()).unwrap(), cert.ends_with(&[0x90, 0x00]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_issues_every_card_and_stops_at_the_first_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path().join("data"));
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = start(opts, std::future::pending()).await.unwrap();
    server.store.create_issuer(&root(), "acme", "Acme").await.unwrap();
    let url = format!("https://{}", server.addr);
    let fp = server.fingerprint.clone().unwrap();
    let token = server.bootstrap_token.clone().unwrap();
    let args = |prefix: &str| {
        Issue::try_parse_from([
            "issue",
            "--server",
            &url,
            "--fingerprint",
            &fp,
            "--issuer",
            "acme",
            "--token",
            &token,
            "--card-id",
            prefix,
        ])
        .unwrap()
        .args
    };

    let images = dir.path().join("cards");
    std::fs::create_dir(&images).unwrap();
    let ids = batch_ids("ACME", 3).unwrap();
    let mut seen = Vec::new();
    let report = issue_batch(
        &args("ACME"),
        &ids,
        |id| Ok(image_card(&images, id)),
        |done, id| seen.push((done, id.to_owned())),
    )
    .await
    .unwrap();
    assert_eq!(seen, [(1, "ACME-0001".into()), (2, "ACME-0002".into()), (3, "ACME-0003".into())]);
    let cards = report.json["cards"].as_array().unwrap();
    assert_eq!(cards.len(), 3);
    for (card, id) in cards.iter().zip(&ids) {
        assert_eq!(card["card_id"], id.as_str());
        assert_eq!(card["outcome"]["result"], "issued");
        assert_eq!(card["initial_pin"].as_str().unwrap().len(), 6);
        // The image holds the personalised card: its id and a device certificate.
        assert_eq!(card_id_of(&images.join(format!("{id}.card"))), (id.clone(), true));
        let record = server.store.get_card(&root(), "acme", id).await.unwrap();
        assert_eq!(record.card_id, *id);
    }
    assert!(report.human.contains("ACME-0002\tinitial PIN"), "{}", report.human);
    // Each card has its own PUK (8 random digits; equal by chance with probability 1e-8).
    assert_ne!(cards[0]["puk"], cards[1]["puk"]);
    assert_ne!(cards[1]["puk"], cards[2]["puk"]);

    // A second batch whose second id is taken: the first is issued, the batch stops at the
    // second with the server's refusal, the third is never started.
    server.store.register_card(&root(), "acme", "B-0002").await.unwrap();
    let ids = batch_ids("B", 3).unwrap();
    let mut opened = Vec::new();
    let stopped = issue_batch(
        &args("B"),
        &ids,
        |id| {
            opened.push(id.to_owned());
            Ok(image_card(&images, id))
        },
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert_eq!(stopped.card_id, "B-0002");
    assert_eq!(stopped.failure.kind, FailureKind::Refused);
    assert_eq!(stopped.issued.json["cards"].as_array().unwrap().len(), 1);
    assert_eq!(opened, ["B-0001", "B-0002"]);
    assert!(server.store.get_card(&root(), "acme", "B-0003").await.is_err());
    server.shutdown().await.unwrap();
}
