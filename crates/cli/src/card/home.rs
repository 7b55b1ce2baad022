//! `tessera card init-home` and `tessera card init-access`: make a home card or an access card
//! image (seed 004) and enrol it with a local CA (`tessera enroll ca init --ca-dir DIR`).
//!
//! Both create a new image, give it a card id, set its PINs (from files or the environment,
//! never the command line), verify them and enrol the card's key(s) with the CA in
//! `--ca-dir` (its `ca.key` and `ca.crt`). A home card also opens its wallet in `--currency`
//! and trusts the market and bank certificates given (role server, from the same CA). An
//! access card also pins the home server (`--home-server host:port --home-cert FILE`) and
//! stores terminal profiles (`--profile name:screen:input`). `docs/home-card.md` explains
//! the cards.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;
use tessera_card::applets::isd;
use tessera_card::pin::PinBlock;
use tessera_card::{Card, CardOptions};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::{OsRng, Rng};
use tessera_crypto::scp03::StaticKeys;
use tessera_crypto::x509::Certificate;
use tessera_host::InProcessChannel;
use tessera_host::access::{AccessCard, spki_sha256};
use tessera_host::home::{CardError as HomeCardError, HomeCard, personalize_card_id};
use tessera_proto::access::{HomeServer, Profiles, TerminalProfile};
use zeroize::Zeroizing;

use crate::Output;
use crate::error::{CliError, Exit};
use crate::source::PassphraseArg;

/// Options both cards share.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Image file to create (mode 0600; fails if it exists).
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    /// The local CA's directory (`tessera enroll ca init --ca-dir DIR`).
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// The card id (1 to 32 ASCII bytes); default a random `HOME-…`/`ACCESS-…`.
    #[arg(long, value_name = "ID")]
    card_id: Option<String>,
    /// The common name of the card's TLS certificate (the user or the terminal).
    #[arg(long, value_name = "NAME")]
    subject: String,
    /// File holding the PUK (8 characters; else the TESSERA_PUK environment variable).
    #[arg(long, value_name = "F")]
    puk_file: Option<PathBuf>,
    #[command(flatten)]
    passphrase: PassphraseArg,
}

/// `tessera card init-home`.
#[derive(Debug, Args)]
pub struct HomeInitArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// File holding PIN1, the local PIN (else TESSERA_PIN1).
    #[arg(long, value_name = "F")]
    pin1_file: Option<PathBuf>,
    /// File holding PIN2, the remote PIN sent over the control channel (else TESSERA_PIN2).
    #[arg(long, value_name = "F")]
    pin2_file: Option<PathBuf>,
    /// The wallet's currency (ISO 4217 letters).
    #[arg(long, value_name = "CODE", default_value = "EUR")]
    currency: String,
    /// A market certificate (PEM, role server, from the CA) the wallet accepts charges from.
    #[arg(long, value_name = "FILE")]
    trust_market: Vec<PathBuf>,
    /// A bank certificate (PEM, role server, from the CA) the wallet accepts vouchers from.
    #[arg(long, value_name = "FILE")]
    trust_bank: Vec<PathBuf>,
}

/// `tessera card init-access`.
#[derive(Debug, Args)]
pub struct AccessInitArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// File holding the PIN (else TESSERA_PIN).
    #[arg(long, value_name = "F")]
    pin_file: Option<PathBuf>,
    /// The home server's address, `host:port`.
    #[arg(long, value_name = "ADDR", requires = "home_cert")]
    home_server: Option<String>,
    /// The home server's certificate (PEM): its public key is pinned.
    #[arg(long, value_name = "FILE", requires = "home_server")]
    home_cert: Option<PathBuf>,
    /// A terminal profile `name:screen:input` (repeatable, at most 8).
    #[arg(long, value_name = "P")]
    profile: Vec<String>,
}

fn secret(file: &Option<PathBuf>, var: &str, what: &str) -> Result<PinBlock, CliError> {
    let text = match file {
        Some(path) => Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CliError::new(Exit::Other, format!("cannot read {what} file {}: {e}", path.display()))
        })?),
        None => Zeroizing::new(
            std::env::var(var)
                .map_err(|_| CliError::usage(format!("give the {what} in a file or in {var}")))?,
        ),
    };
    let value = text.trim_end_matches(['\n', '\r']);
    PinBlock::from_value(value.as_bytes())
        .map_err(|_| CliError::usage(format!("the {what} must be 4 to 8 characters")))
}

fn read_certificate(path: &Path) -> Result<Certificate, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::new(Exit::Other, format!("cannot read {}: {e}", path.display())))?;
    Certificate::from_pem(&text)
        .map_err(|e| CliError::usage(format!("{}: not a PEM certificate: {e}", path.display())))
}

/// The local CA of `tessera enroll ca init` in `dir` (`ca.key`, `ca.crt`), checked to match.
pub(crate) fn open_ca(dir: &Path) -> Result<(SigningKey, Certificate), CliError> {
    let key_path = dir.join("ca.key");
    let der = Zeroizing::new(std::fs::read(&key_path).map_err(|e| {
        CliError::new(Exit::Other, format!("cannot read {}: {e}", key_path.display()))
    })?);
    let key = SigningKey::from_pkcs8_der(&der)
        .map_err(|e| CliError::new(Exit::Other, format!("{}: {e}", key_path.display())))?;
    let certificate = read_certificate(&dir.join("ca.crt"))?;
    let matches = certificate.info().map(|i| i.public_key == key.public_key()).unwrap_or(false);
    if !matches {
        return Err(CliError::new(
            Exit::Other,
            format!("{}: ca.crt does not match ca.key", dir.display()),
        ));
    }
    Ok((key, certificate))
}

fn card_error(e: HomeCardError) -> CliError {
    match e {
        HomeCardError::Channel(c) => c.into(),
        HomeCardError::Card { step, sw } => CliError::card_said_no(step, sw),
        other => CliError::new(Exit::CardSaidNo, other.to_string()),
    }
}

/// Creates the image and gives it its card id; the channel to it.
fn new_card(
    common: &CommonArgs,
    prefix: &str,
) -> Result<(InProcessChannel<Card>, Vec<u8>), CliError> {
    let id = match &common.card_id {
        Some(id) if !id.is_empty() && id.len() <= 32 && id.is_ascii() => id.as_bytes().to_vec(),
        Some(_) => return Err(CliError::usage("a card id has 1 to 32 ASCII characters")),
        None => {
            let mut r = [0u8; 6];
            OsRng.fill_random(&mut r);
            format!("{prefix}-{}", hex::encode_upper(r)).into_bytes()
        }
    };
    let mut options = CardOptions::default();
    if let Some(p) = common.passphrase.read()? {
        options = options.passphrase(p.as_str());
    }
    let card = Card::create(&common.image, options)?;
    let mut channel = InProcessChannel::new(card);
    personalize_card_id(&mut channel, &StaticKeys::gp_test_keys(isd::INITIAL_KVN), &id)
        .map_err(card_error)?;
    Ok((channel, id))
}

/// Runs `tessera card init-home`.
pub fn init_home(args: HomeInitArgs, out: Output) -> Result<(), CliError> {
    let pin1 = secret(&args.pin1_file, "TESSERA_PIN1", "PIN1")?;
    let pin2 = secret(&args.pin2_file, "TESSERA_PIN2", "PIN2")?;
    let puk = secret(&args.common.puk_file, "TESSERA_PUK", "PUK")?;
    let currency: [u8; 3] = args
        .currency
        .as_bytes()
        .try_into()
        .ok()
        .filter(|c: &[u8; 3]| c.iter().all(u8::is_ascii_uppercase))
        .ok_or_else(|| CliError::usage("--currency takes three capital letters (ISO 4217)"))?;
    let (ca_key, ca_cert) = open_ca(&args.common.ca_dir)?;
    let markets =
        args.trust_market.iter().map(|p| read_certificate(p)).collect::<Result<Vec<_>, _>>()?;
    let banks =
        args.trust_bank.iter().map(|p| read_certificate(p)).collect::<Result<Vec<_>, _>>()?;
    let (channel, id) = new_card(&args.common, "HOME")?;
    let result = (|| {
        let mut card = HomeCard::new(channel);
        card.select()?;
        card.set_pins(&pin1, &pin2, &puk)?;
        card.verify_pin1(&pin1)?;
        card.verify_pin2(&pin2)?;
        let e = card.enrol(&ca_key, &ca_cert, &id, &args.common.subject, currency)?;
        for m in &markets {
            card.trust_market(m)?;
        }
        for b in &banks {
            card.trust_bank(b)?;
        }
        card.end()?;
        Ok::<_, HomeCardError>(e)
    })();
    let enrolment = match result {
        Ok(e) => e,
        Err(e) => {
            // A half-made card is useless: do not leave it behind.
            let _ = std::fs::remove_file(&args.common.image);
            return Err(card_error(e));
        }
    };
    let serial =
        |c: &Certificate| c.info().map(|i| hex::encode_upper(i.serial)).unwrap_or_default();
    let card_id = String::from_utf8_lossy(&id).into_owned();
    out.emit(
        || {
            format!(
                "made home card {card_id} in {}\n  TLS certificate (role home) serial {}\n  wallet in {} (payment certificate serial {}), {} market(s), {} bank(s) trusted\nserve it with: tessera card serve --image {}",
                args.common.image.display(),
                serial(&enrolment.tls_certificate),
                args.currency,
                serial(&enrolment.payment_certificate),
                markets.len(),
                banks.len(),
                args.common.image.display()
            )
        },
        || {
            json!({
                "image": args.common.image,
                "card_id": card_id,
                "tls_certificate_serial": serial(&enrolment.tls_certificate),
                "payment_certificate_serial": serial(&enrolment.payment_certificate),
                "currency": args.currency,
                "markets": markets.len(),
                "banks": banks.len(),
            })
        },
    );
    Ok(())
}

fn parse_profiles(specs: &[String]) -> Result<Profiles, CliError> {
    let profiles = specs
        .iter()
        .map(|s| match s.split(':').collect::<Vec<_>>().as_slice() {
            [name, screen, input] => Ok(TerminalProfile {
                name: (*name).to_owned(),
                screen: (*screen).to_owned(),
                input: (*input).to_owned(),
            }),
            _ => Err(CliError::usage(format!("--profile {s:?}: give name:screen:input"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let profiles = Profiles(profiles);
    // Check the encoding's rules (lengths, count, unique names) before touching a card.
    Profiles::parse(&profiles.to_bytes())
        .ok()
        .filter(|p| *p == profiles)
        .ok_or_else(|| CliError::usage("profiles: at most 8, names 1 to 32 bytes, unique"))
}

/// Runs `tessera card init-access`.
pub fn init_access(args: AccessInitArgs, out: Output) -> Result<(), CliError> {
    let pin = secret(&args.pin_file, "TESSERA_PIN", "PIN")?;
    let puk = secret(&args.common.puk_file, "TESSERA_PUK", "PUK")?;
    let (ca_key, ca_cert) = open_ca(&args.common.ca_dir)?;
    let profiles = parse_profiles(&args.profile)?;
    let home = match (&args.home_server, &args.home_cert) {
        (Some(address), Some(cert)) => {
            let spki = spki_sha256(&read_certificate(cert)?)
                .map_err(|e| CliError::usage(format!("{}: {e}", cert.display())))?;
            let server = HomeServer { spki_sha256: spki, address: address.clone() };
            HomeServer::parse(&server.to_bytes())
                .map_err(|_| CliError::usage("--home-server: 1 to 255 printable characters"))?;
            Some(server)
        }
        _ => None,
    };
    let (channel, id) = new_card(&args.common, "ACCESS")?;
    let result = (|| {
        let mut card = AccessCard::new(channel);
        card.select()?;
        card.set_pins(&pin, &puk)?;
        card.verify_pin(&pin)?;
        let cert = card.enrol(&ca_key, &ca_cert, &id, &args.common.subject)?;
        if let Some(h) = &home {
            card.set_home_server(h)?;
        }
        if !profiles.0.is_empty() {
            card.set_profiles(&profiles)?;
        }
        card.relock()?;
        Ok::<_, HomeCardError>(cert)
    })();
    let cert = match result {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&args.common.image);
            return Err(card_error(e));
        }
    };
    let serial = cert.info().map(|i| hex::encode_upper(i.serial)).unwrap_or_default();
    let card_id = String::from_utf8_lossy(&id).into_owned();
    out.emit(
        || {
            format!(
                "made access card {card_id} in {}\n  access certificate (role access) serial {serial}\n  home server: {}\n  {} terminal profile(s)",
                args.common.image.display(),
                home.as_ref().map_or("not pinned".to_owned(), |h| h.address.clone()),
                profiles.0.len()
            )
        },
        || {
            json!({
                "image": args.common.image,
                "card_id": card_id,
                "access_certificate_serial": serial,
                "home_server": home.as_ref().map(|h| h.address.clone()),
                "home_server_spki_sha256": home.as_ref().map(|h| hex::encode(h.spki_sha256)),
                "profiles": profiles.0.len(),
            })
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_card::OpenOptions;
    use tessera_host::home::HomeCard;
    use tessera_host::pairing::ca::LocalCa;
    use tessera_proto::home::Phase;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn common(dir: &Path, image: &str) -> CommonArgs {
        CommonArgs {
            image: dir.join(image),
            ca_dir: dir.join("ca"),
            card_id: Some(format!("{image}-ID")),
            subject: "alice".into(),
            puk_file: Some(write(dir, "puk", "12345678\n")),
            passphrase: PassphraseArg { passphrase_file: None },
        }
    }

    #[test]
    fn init_home_and_access_make_enrolled_cards() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::init(&dir.path().join("ca"), "test CA").unwrap();
        let out = Output { json: true };
        init_home(
            HomeInitArgs {
                common: common(dir.path(), "home.card"),
                pin1_file: Some(write(dir.path(), "pin1", "1111\n")),
                pin2_file: Some(write(dir.path(), "pin2", "2222")),
                currency: "EUR".into(),
                trust_market: vec![],
                trust_bank: vec![],
            },
            out,
        )
        .unwrap();
        let card = Card::open(&dir.path().join("home.card"), OpenOptions::default()).unwrap();
        let mut home = HomeCard::new(InProcessChannel::new(card));
        home.select().unwrap();
        assert!(home.status().unwrap().payment_certificate);
        home.verify_pin1(&PinBlock::from_value(b"1111").unwrap()).unwrap();
        home.verify_pin2(&PinBlock::from_value(b"2222").unwrap()).unwrap();
        assert_eq!(home.status().unwrap().phase, Phase::Enabled);
        assert_eq!(home.certificate().unwrap().info().unwrap().subject_cn, "alice");
        assert_eq!(home.wallet().unwrap().currency, *b"EUR");

        let home_cert = write(
            dir.path(),
            "home.pem",
            &std::fs::read_to_string(dir.path().join("ca/ca.crt")).unwrap(),
        );
        init_access(
            AccessInitArgs {
                common: common(dir.path(), "access.card"),
                pin_file: Some(write(dir.path(), "pin", "4321")),
                home_server: Some("home.example:8443".into()),
                home_cert: Some(home_cert),
                profile: vec!["phone:compact:keypad".into()],
            },
            out,
        )
        .unwrap();
        let card = Card::open(&dir.path().join("access.card"), OpenOptions::default()).unwrap();
        let mut access = AccessCard::new(InProcessChannel::new(card));
        access.select().unwrap();
        access.verify_pin(&PinBlock::from_value(b"4321").unwrap()).unwrap();
        assert_eq!(access.home_server().unwrap().unwrap().address, "home.example:8443");
        assert_eq!(access.profiles().unwrap().0.len(), 1);

        // A bad profile is refused before any image is made; an existing image is kept.
        let bad = AccessInitArgs {
            common: common(dir.path(), "other.card"),
            pin_file: Some(write(dir.path(), "pin", "4321")),
            home_server: None,
            home_cert: None,
            profile: vec!["no-colons".into()],
        };
        assert_eq!(init_access(bad, out).unwrap_err().exit as u8, Exit::Usage as u8);
        assert!(!dir.path().join("other.card").exists());
    }
}
