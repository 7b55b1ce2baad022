//! `tessera apdu send`: raw APDUs for debugging.

use clap::Subcommand;
use serde_json::json;
use tessera_apdu::{Command, Response};

use crate::Output;
use crate::error::{CliError, sw_meaning};
use crate::source::{CardSource, PassphraseArg};

/// `tessera apdu` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApduCommand {
    /// Send command APDUs, given in hex, one argument each, in one session; print the answers.
    ///
    /// `61xx` and `6Cxx` are handled (GET RESPONSE, re-issue with the right Le) unless --raw.
    /// Exits with 1 when the last answer is neither 9000 nor 61xx.
    Send {
        #[command(flatten)]
        source: CardSource,
        #[command(flatten)]
        passphrase: PassphraseArg,
        /// Send each APDU as given and show the card's answer as is (no 61xx/6Cxx handling).
        #[arg(long)]
        raw: bool,
        /// Command APDUs in hex (spaces and colons allowed inside an argument), e.g.
        /// 00A4040008A000000151000000.
        #[arg(value_name = "HEX", required = true)]
        apdus: Vec<String>,
    },
}

/// Runs a `tessera apdu` subcommand.
pub fn run(cmd: ApduCommand, out: Output) -> Result<(), CliError> {
    let ApduCommand::Send { source, passphrase, raw, apdus } = cmd;
    let commands = apdus.iter().map(|text| parse_apdu(text)).collect::<Result<Vec<_>, _>>()?;
    let mut channel = source.open(&passphrase)?;
    let mut results = Vec::new();
    let mut last = None;
    for (bytes, command) in &commands {
        let response = if raw {
            let answer = tessera_host::trace::traced(bytes, |b| channel.transmit_raw(b))?;
            Response::parse(&answer).ok_or_else(|| {
                CliError::new(
                    crate::error::Exit::Transport,
                    format!("the card answered {} bytes, less than a status word", answer.len()),
                )
            })?
        } else {
            channel.transmit(command)?
        };
        if !out.json {
            println!("> {}", hex::encode_upper(bytes));
            if response.data.is_empty() {
                println!("< {} ({})", response.sw, sw_meaning(response.sw));
            } else {
                println!(
                    "< {} {} ({})",
                    hex::encode_upper(&response.data),
                    response.sw,
                    sw_meaning(response.sw)
                );
            }
        }
        results.push(json!({
            "command": hex::encode_upper(bytes),
            "data": hex::encode_upper(&response.data),
            "sw": response.sw.to_string(),
        }));
        last = Some(response.sw);
    }
    out.emit(String::new, || json!(results));
    match last {
        Some(sw) if !sw.is_success() => Err(CliError::card_said_no("last APDU", sw)),
        _ => Ok(()),
    }
}

/// Parses one hex APDU argument, checking it is a well-formed command.
fn parse_apdu(text: &str) -> Result<(Vec<u8>, Command), CliError> {
    let cleaned: String = text.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
    let bytes =
        hex::decode(&cleaned).map_err(|e| CliError::usage(format!("{text:?} is not hex: {e}")))?;
    let command = Command::parse(&bytes)
        .map_err(|e| CliError::usage(format!("{text:?} is not a command APDU: {e}")))?;
    Ok((bytes, command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_arguments_accept_spaces_and_colons() {
        let (bytes, cmd) = parse_apdu("00 A4:04 00").unwrap();
        assert_eq!(bytes, [0x00, 0xA4, 0x04, 0x00]);
        assert_eq!(cmd.ins, 0xA4);
        assert!(parse_apdu("00A4040").is_err());
        assert!(parse_apdu("00A4").is_err());
        assert!(parse_apdu("00A4040005AA").is_err());
    }
}
