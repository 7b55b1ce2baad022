//! `tessera reader list`.

use clap::Subcommand;
use serde_json::json;

use crate::Output;
use crate::error::CliError;

/// `tessera reader` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReaderCommand {
    /// List the PC/SC readers and whether each holds a card.
    List,
}

/// Runs a `tessera reader` subcommand.
pub fn run(cmd: ReaderCommand, out: Output) -> Result<(), CliError> {
    let ReaderCommand::List = cmd;
    let readers = tessera_host::list_readers()?;
    out.emit(
        || {
            if readers.is_empty() {
                return "no readers (plug one in, or install vsmartcard-vpcd and restart pcscd)"
                    .to_owned();
            }
            readers
                .iter()
                .map(|r| match &r.atr {
                    Some(atr) => {
                        format!("{}: card present, ATR {}", r.name, hex::encode_upper(atr))
                    }
                    None => format!("{}: no card", r.name),
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
        || {
            json!(
                readers
                    .iter()
                    .map(|r| json!({
                        "name": r.name,
                        "card_present": r.card_present,
                        "atr": r.atr.as_ref().map(hex::encode_upper),
                    }))
                    .collect::<Vec<_>>()
            )
        },
    );
    Ok(())
}
