//! `tessera sync` and `tessera issue`: relay the server's tunnel session to a card in a PC/SC
//! reader or a card image (`tessera_server::cli` does the talking to the server). `tessera
//! issue --count N --image-dir DIR` issues N new virtual cards (`tessera_server::batch`).

use std::path::{Path, PathBuf};

use clap::Args;
use tessera_apdu::Command;
use tessera_card::{Card, CardOptions};
use tessera_host::{CardChannel, InProcessChannel};

use crate::Output;
use crate::error::CliError;
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

/// Runs `tessera sync`.
pub fn run_sync(args: SyncCommand, out: Output) -> Result<(), CliError> {
    let mut channel = args.card.open(&args.passphrase)?;
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
