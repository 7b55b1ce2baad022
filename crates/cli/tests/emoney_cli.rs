//! E-money through the binary, each party its own process: a local CA, the market's and the
//! bank's certificates (`tessera market cert`), a home card trusting them and an access card
//! pinning the home server (`tessera card init-home|init-access`), `tessera home serve`,
//! `tessera market serve`, `tessera bank serve`; then from the terminal `tessera wallet
//! refill|buy|balance|log|cancel` through the home server (handover mode), PINs from the
//! environment.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const T: &str = env!("CARGO_BIN_EXE_tessera");

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tessera(dir: &Path, args: &[&str]) -> Output {
    Command::new(T)
        .args(args)
        .current_dir(dir)
        .envs([
            ("TESSERA_PIN1", "1111"),
            ("TESSERA_PIN2", "2222"),
            ("TESSERA_PUK", "12345678"),
            ("TESSERA_PIN", "4321"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = tessera(dir, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn daemon(dir: &Path, args: &[&str], port: u16) -> Daemon {
    let child = Command::new(T)
        .args(args)
        .current_dir(dir)
        .env("TESSERA_PIN1", "1111")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{args:?} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn refill_buy_and_cancel_with_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (home, market, bank) = (free_port(), free_port(), free_port());
    ok(d, &["enroll", "ca", "init", "--ca-dir", "ca", "--name", "Home CA"]);
    ok(d, &["market", "cert", "--ca-dir", "ca", "--name", "market.test", "--out", "market"]);
    ok(d, &["market", "cert", "--ca-dir", "ca", "--name", "bank.test", "--out", "bank"]);
    ok(
        d,
        &[
            "card",
            "init-home",
            "--image",
            "home.card",
            "--ca-dir",
            "ca",
            "--subject",
            "alice",
            "--card-id",
            "HOME-1",
            "--trust-market",
            "market.pem",
            "--trust-bank",
            "bank.pem",
        ],
    );
    ok(d, &["home", "init", "--data", "hs"]);
    let home_addr = format!("127.0.0.1:{home}");
    let out = Command::new(T)
        .args([
            "card",
            "init-access",
            "--image",
            "access.card",
            "--ca-dir",
            "ca",
            "--subject",
            "phone",
            "--home-server",
            &home_addr,
            "--home-cert",
            "hs/home-cert.pem",
        ])
        .current_dir(d)
        .envs([("TESSERA_PIN", "4321"), ("TESSERA_PUK", "87654321")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ok(d, &["home", "admit", "--data", "hs", "--image", "access.card", "--label", "phone"]);

    let _home = daemon(
        d,
        &["home", "serve", "--data", "hs", "--image", "home.card", "--listen", &home_addr],
        home,
    );
    let market_listen = format!("127.0.0.1:{market}");
    let _market = daemon(
        d,
        &[
            "market",
            "serve",
            "--cert",
            "market.pem",
            "--key",
            "market.key",
            "--issuer-ca",
            "ca/ca.crt",
            "--db",
            "market.sqlite",
            "--listen",
            &market_listen,
        ],
        market,
    );
    let bank_listen = format!("127.0.0.1:{bank}");
    let _bank = daemon(
        d,
        &[
            "bank",
            "serve",
            "--cert",
            "bank.pem",
            "--key",
            "bank.key",
            "--issuer-ca",
            "ca/ca.crt",
            "--db",
            "bank.sqlite",
            "--account",
            "alice=100000",
            "--listen",
            &bank_listen,
        ],
        bank,
    );
    let bank_url = format!("https://localhost:{bank}");
    let market_url = format!("https://localhost:{market}");
    let card = ["--image", "access.card"];

    // The market behind the proxy with plain `tessera connect` (handover mode).
    let catalogue = ok(d, &[&["connect", &format!("{market_url}/catalogue")][..], &card].concat());
    let catalogue: serde_json::Value = serde_json::from_str(&catalogue).unwrap();
    assert_eq!(catalogue["market"], "market.test");
    assert_eq!(catalogue["items"][0]["sku"], "tea");

    let refill: serde_json::Value =
        serde_json::from_str(&ok(
            d,
            &[
                &[
                    "--json",
                    "wallet",
                    "refill",
                    &bank_url,
                    "--account",
                    "alice",
                    "--amount",
                    "5000",
                ][..],
                &card,
            ]
            .concat(),
        ))
        .unwrap();
    assert_eq!(refill["account_balance"], 95_000);
    let resumed = ok(
        d,
        &[&["wallet", "refill", &bank_url, "--account", "alice", "--resume"][..], &card].concat(),
    );
    assert!(resumed.contains("settled 0 pending voucher(s)"), "{resumed}");
    let bought: serde_json::Value = serde_json::from_str(&ok(
        d,
        &[&["--json", "wallet", "buy", &market_url, "tea", "--quantity", "2"][..], &card].concat(),
    ))
    .unwrap();
    assert_eq!(bought["amount"], 900);
    let order = bought["order"].as_str().unwrap().to_string();
    let balance = ok(d, &[&["wallet", "balance"][..], &card].concat());
    assert!(balance.starts_with("balance 41.00 EUR"), "{balance}");
    let log = ok(d, &[&["wallet", "log"][..], &card].concat());
    assert!(log.contains("#1 refill bank.test 50.00 voucher 1"), "{log}");
    assert!(log.contains(&format!("#2 payment market.test 9.00 order {order}")), "{log}");

    ok(d, &[&["wallet", "cancel", &market_url, &order][..], &card].concat());
    let again = tessera(d, &[&["wallet", "cancel", &market_url, &order][..], &card].concat());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("cancelled already"));
    let balance = ok(d, &[&["wallet", "balance"][..], &card].concat());
    assert!(balance.starts_with("balance 50.00 EUR"), "{balance}");
    // A wrong PIN2 opens nothing.
    let wrong = Command::new(T)
        .args([&["wallet", "balance"][..], &card].concat())
        .current_dir(d)
        .envs([("TESSERA_PIN", "4321"), ("TESSERA_PIN2", "9999")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong PIN2"));
}
