//! `tessera data`: the card's updatable data objects (seed 000, `docs/update.md`).
//!
//! `data list` shows the objects and their read rules; `data read OBJECT` prints an object's
//! value (decrypted on the card for sealed objects). The PIN is asked for only when the object's
//! rule needs it, and comes from `--pin-file F` (`/dev/fd/N` for an inherited descriptor),
//! `--pin-stdin`, or `TESSERA_PIN`: never from the command line.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use tessera_apdu::StatusWord;
use tessera_host::update::{UpdateError, UpdateTerminal};
use tessera_proto::update as proto;
use zeroize::Zeroizing;

use crate::Output;
use crate::error::{CliError, Exit};
use crate::source::{CardSource, PassphraseArg};

/// Commands on the card's data objects.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// List the card's data objects and who may read them.
    List {
        #[command(flatten)]
        source: CardSource,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Print a data object's value (raw bytes on stdout, or into --output).
    Read {
        /// The object's name.
        object: String,
        #[command(flatten)]
        source: CardSource,
        #[command(flatten)]
        passphrase: PassphraseArg,
        #[command(flatten)]
        pin: PinSource,
        /// Write the value to this file instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Where the PIN comes from (never the command line itself).
#[derive(Debug, Args)]
pub struct PinSource {
    /// File holding the PIN; `/dev/fd/N` reads an inherited descriptor (login hooks).
    #[arg(long, value_name = "F", conflicts_with = "pin_stdin")]
    pub pin_file: Option<PathBuf>,
    /// Read the PIN from standard input (one line).
    #[arg(long)]
    pub pin_stdin: bool,
}

impl PinSource {
    fn read(&self) -> Result<Zeroizing<String>, CliError> {
        let text = if let Some(p) = &self.pin_file {
            Zeroizing::new(std::fs::read_to_string(p).map_err(|e| {
                CliError::new(Exit::Other, format!("cannot read PIN file {}: {e}", p.display()))
            })?)
        } else if self.pin_stdin {
            let mut s = Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::new(Exit::Other, format!("cannot read the PIN: {e}")))?;
            s
        } else {
            Zeroizing::new(std::env::var("TESSERA_PIN").map_err(|_| {
                CliError::usage(
                    "this object needs the PIN: give --pin-file F, --pin-stdin or TESSERA_PIN",
                )
            })?)
        };
        let line = text.lines().next().unwrap_or_default();
        Ok(Zeroizing::new(line.to_owned()))
    }
}

fn update_err(e: UpdateError) -> CliError {
    match e {
        UpdateError::Channel(c) => c.into(),
        UpdateError::Refused { what, sw } => CliError::card_said_no(what, sw),
        UpdateError::PinFormat => CliError::usage(e.to_string()),
        e => CliError::new(Exit::CardSaidNo, e.to_string()),
    }
}

/// Runs a `tessera data` command.
pub fn run(cmd: DataCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        DataCommand::List { source, passphrase } => {
            let mut terminal = UpdateTerminal::new(source.open(&passphrase)?);
            terminal.select_applet().map_err(update_err)?;
            let dir = terminal.get_data(proto::TAG_DIRECTORY).map_err(update_err)?;
            let mut rest = dir.as_slice();
            let mut objects = Vec::new();
            while let [rule, len, tail @ ..] = rest {
                let len = usize::from(*len);
                let Some(name) = tail.get(..len) else {
                    return Err(CliError::new(Exit::CardSaidNo, "malformed object directory"));
                };
                let rule = if *rule == 1 { "pin" } else { "free" };
                objects.push((String::from_utf8_lossy(name).into_owned(), rule));
                rest = &tail[len..];
            }
            out.emit(
                || objects.iter().map(|(n, r)| format!("{n}\t{r}")).collect::<Vec<_>>().join("\n"),
                || {
                    serde_json::Value::Array(
                        objects
                            .iter()
                            .map(|(n, r)| serde_json::json!({ "name": n, "read": r }))
                            .collect(),
                    )
                },
            );
            Ok(())
        }
        DataCommand::Read { object, source, passphrase, pin, output } => {
            let mut terminal = UpdateTerminal::new(source.open(&passphrase)?);
            terminal.select_applet().map_err(update_err)?;
            let value = match terminal.read(object.as_bytes()) {
                Ok(v) => v,
                Err(UpdateError::Refused {
                    sw: StatusWord::SECURITY_STATUS_NOT_SATISFIED, ..
                }) => {
                    terminal.verify_pin(pin.read()?.as_bytes()).map_err(update_err)?;
                    terminal.read(object.as_bytes()).map_err(update_err)?
                }
                Err(UpdateError::Refused { sw: StatusWord::REFERENCED_DATA_NOT_FOUND, .. }) => {
                    return Err(CliError::new(
                        Exit::CardSaidNo,
                        format!("the card has no data object {object:?} (`tessera data list`)"),
                    ));
                }
                Err(e) => return Err(update_err(e)),
            };
            let value = Zeroizing::new(value);
            match output {
                Some(path) => std::fs::write(&path, &*value).map_err(|e| {
                    CliError::new(Exit::Other, format!("cannot write {}: {e}", path.display()))
                }),
                None if out.json => {
                    out.emit(String::new, || {
                        serde_json::json!({ "object": object, "value_hex": hex::encode(&*value) })
                    });
                    Ok(())
                }
                None => std::io::stdout()
                    .write_all(&value)
                    .map_err(|e| CliError::new(Exit::Other, e.to_string())),
            }
        }
    }
}
