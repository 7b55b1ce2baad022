//! `tessera sync` and `tessera issue`: relay the server's tunnel session to a card in a PC/SC
//! reader or a card image (`tessera_server::cli` does the talking to the server).

use clap::Args;
use tessera_apdu::Command;
use tessera_host::CardChannel;

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
    card: CardSource,
    #[command(flatten)]
    passphrase: PassphraseArg,
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
    let mut channel = args.card.open(&args.passphrase)?;
    let report = tessera_server::cli::run_issue(&args.server, |apdu| relay(&mut *channel, apdu))
        .map_err(cli_error)?;
    out.emit(|| report.human.clone(), || report.json.clone());
    Ok(())
}
