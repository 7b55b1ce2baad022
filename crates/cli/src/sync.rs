//! `tessera sync` and `tessera issue`: relay the server's tunnel session to a card in a PC/SC
//! reader or a card image (`tessera_server::cli` does the talking to the server). `tessera
//! issue --count N --image-dir DIR` issues N new virtual cards (`tessera_server::batch`).

use std::path::{Path, PathBuf};

use clap::Args;
use tessera_apdu::Command;
use tessera_card::{Card, CardOptions};
use tessera_host::update::{TrustedIssuers, UpdateError, UpdateTerminal};
use tessera_host::{CardChannel, InProcessChannel};

use crate::Output;
use crate::error::{CliError, Exit};
use crate::server::cli_error;
use crate::source::{CardSource, PassphraseArg};

/// `tessera sync`: run whatever the server has for the card.
#[derive(Debug, Args)]
pub struct SyncCommand {
    #[command(flatten)]
    server: tessera_server::cli::SyncArgs,
    #[command(flatten)]
    card: CardSource,
    #[command(flatten)]
    passphrase: PassphraseArg,
}

/// `tessera issue`: personalise a blank card through the server.
#[derive(Debug, Args)]
pub struct IssueCommand {
    #[command(flatten)]
    server: tessera_server::cli::IssueArgs,
    #[command(flatten)]
    card: IssueSource,
    /// Issue this many new virtual cards into --image-dir, with card ids
    /// <card-id>-0001, <card-id>-0002, ... (--card-id is then the prefix).
    #[arg(long, value_name = "N")]
    count: Option<u32>,
    #[command(flatten)]
    passphrase: PassphraseArg,
}

/// Where `tessera issue` finds its blank card(s).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct IssueSource {
    /// A blank card image file.
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// A PC/SC reader holding a blank card.
    #[arg(long, value_name = "NAME")]
    reader: Option<String>,
    /// A directory to create new blank card images in, one per card (`<card id>.card`); with
    /// --count for several. Images are encrypted with --passphrase-file when given.
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
}

/// One APDU from the server to the card, through the channel (which handles `61xx`/`6Cxx`).
fn relay(channel: &mut dyn CardChannel, apdu: &[u8]) -> Result<Vec<u8>, String> {
    let command = Command::parse(apdu).map_err(|e| format!("server sent a malformed APDU: {e}"))?;
    channel.transmit(&command).map(|r| r.to_bytes()).map_err(|e| e.to_string())
}

/// The publisher's key, from its certificate (PEM).
fn publisher_key(path: &Path) -> Result<tessera_crypto::ecdsa::PublicKey, CliError> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
    tessera_crypto::x509::Certificate::from_pem(&pem)
        .and_then(|c| c.info())
        .map(|i| i.public_key)
        .map_err(|e| {
            CliError::usage(format!("{}: not a publisher certificate (PEM): {e}", path.display()))
        })
}

/// The terminal's issuer error as the CLI shows it: each check its own message (and the
/// refusals exit 1).
fn update_error(e: UpdateError) -> CliError {
    let exit = match &e {
        UpdateError::Channel(_) => Exit::Transport,
        _ => Exit::CardSaidNo,
    };
    let what = match &e {
        UpdateError::IssuerListSignature => "issuer list refused",
        UpdateError::IssuerListOlder { .. } => "issuer list refused",
        UpdateError::IssuerNotTrusted => "issuer not trusted",
        UpdateError::Malformed(_) => "issuer list malformed",
        _ => "issuer check failed",
    };
    CliError::new(exit, format!("{what}: {e}"))
}

/// Issuer client authentication (claims 4, 13), before the PIN: the issuer list held in
/// `--issuer-list` and/or fetched from the server must verify under `--publisher-key` (never
/// going back to an older version; the fresh list is written back), and the card's issuer CA
/// certificate must be on it, for the sync's `--issuer`. Returns the issuer checked, or `None`
/// without `--publisher-key`.
fn check_issuer(
    args: &tessera_server::cli::SyncArgs,
    channel: &mut dyn CardChannel,
) -> Result<Option<String>, CliError> {
    let Some(key) = &args.publisher_key else { return Ok(None) };
    let mut trusted = TrustedIssuers::new(publisher_key(key)?);
    let mut held = false;
    if let Some(path) = args.issuer_list.as_deref().filter(|p| p.exists()) {
        let bytes =
            std::fs::read(path).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
        trusted.install(&bytes).map_err(|e| {
            let mut e = update_error(e);
            e.message = format!("{} (the list held in {})", e.message, path.display());
            e
        })?;
        held = true;
    }
    if !args.offline_issuer_list {
        match tessera_server::cli::run_fetch_issuer_list(args) {
            Ok(fresh) => {
                trusted.install(&fresh).map_err(update_error)?;
                if let Some(path) = &args.issuer_list {
                    let tmp = path.with_extension("new");
                    std::fs::write(&tmp, &fresh)
                        .and_then(|()| std::fs::rename(&tmp, path))
                        .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
                }
            }
            Err(f) if f.kind == tessera_server::cli::FailureKind::Transport && held => {
                tracing::warn!(error = %f, "issuer list not refreshed; using the list held");
            }
            Err(f) => return Err(cli_error(f)),
        }
    } else if !held {
        return Err(CliError::usage("--offline-issuer-list: no list held in --issuer-list yet"));
    }
    let issuer = UpdateTerminal::new(&mut *channel).check_issuer(&trusted).map_err(update_error)?;
    if issuer != args.tunnel.issuer {
        return Err(CliError::new(
            Exit::CardSaidNo,
            format!(
                "issuer not trusted: the card is of issuer {issuer}, this sync is for {}",
                args.tunnel.issuer
            ),
        ));
    }
    Ok(Some(issuer))
}

/// Runs `tessera sync`.
pub fn run_sync(args: SyncCommand, out: Output) -> Result<(), CliError> {
    let mut channel = args.card.open(&args.passphrase)?;
    check_issuer(&args.server, &mut *channel)?;
    let report = tessera_server::cli::run_sync(&args.server, |apdu| relay(&mut *channel, apdu))
        .map_err(cli_error)?;
    out.emit(|| report.human.clone(), || report.json.clone());
    Ok(())
}

/// Runs `tessera issue`.
pub fn run_issue(args: IssueCommand, out: Output) -> Result<(), CliError> {
    if let Some(dir) = &args.card.image_dir {
        return run_batch(&args, dir, out);
    }
    if args.count.is_some() {
        return Err(CliError::usage(
            "--count needs --image-dir (an image file or a reader holds one card)",
        ));
    }
    let source = CardSource { image: args.card.image.clone(), reader: args.card.reader.clone() };
    let mut channel = source.open(&args.passphrase)?;
    let report = tessera_server::cli::run_issue(&args.server, |apdu| relay(&mut *channel, apdu))
        .map_err(cli_error)?;
    out.emit(|| report.human.clone(), || report.json.clone());
    Ok(())
}

/// A new blank card image for `card_id` in `dir`; refuses to overwrite one.
fn new_image(dir: &Path, card_id: &str, passphrase: &PassphraseArg) -> Result<Card, CliError> {
    let path = dir.join(format!("{card_id}.card"));
    if path.exists() {
        return Err(CliError::usage(format!(
            "{} exists: a batch makes new images only",
            path.display()
        )));
    }
    let mut options = CardOptions::default();
    if let Some(p) = passphrase.read()? {
        options = options.passphrase(p.as_str());
    }
    Ok(Card::create(&path, options)?)
}

/// `tessera issue --image-dir DIR [--count N]`: new virtual cards, issued one after another.
fn run_batch(args: &IssueCommand, dir: &Path, out: Output) -> Result<(), CliError> {
    let ids = match args.count {
        Some(n) => tessera_server::batch::batch_ids(&args.server.card_id, n).map_err(cli_error)?,
        None => vec![args.server.card_id.clone()],
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))?;
    let bar = if out.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(ids.len() as u64)
    };
    let open_card = |id: &str| -> Result<tessera_server::batch::Transmit<'static>, _> {
        let card =
            new_image(dir, id, &args.passphrase).map_err(|e| tessera_server::cli::Failure {
                kind: tessera_server::cli::FailureKind::Local,
                message: e.to_string(),
            })?;
        let mut channel = InProcessChannel::new(card);
        Ok(Box::new(move |apdu: &[u8]| relay(&mut channel, apdu)))
    };
    let result = tessera_server::batch::run_issue_batch(&args.server, &ids, open_card, |_, id| {
        bar.set_message(id.to_owned());
        bar.inc(1);
    });
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            out.emit(|| report.human.clone(), || report.json.clone());
            Ok(())
        }
        Err(stopped) => {
            let issued = &stopped.issued;
            if !issued.human.is_empty() {
                out.emit(|| issued.human.clone(), || issued.json.clone());
            }
            let mut e = cli_error(stopped.failure);
            e.message = format!(
                "batch stopped at card {} ({} issued before it): {}",
                stopped.card_id,
                issued.json["cards"].as_array().map_or(0, Vec::len),
                e.message
            );
            Err(e)
        }
    }
}
