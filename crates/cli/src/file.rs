//! `tessera file`: files in the age format, encrypted to a vault card's recipient and
//! decrypted through the card (no external tool needed; `rage` interoperates).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use tessera_host::vault::VaultCard;
use tessera_host::vault::files::{self, CardIdentity};

use crate::Output;
use crate::error::{CliError, Exit};
use crate::source::{CardSource, PassphraseArg};
use crate::vault::PinArg;

/// `tessera file …`
#[derive(Debug, Subcommand)]
pub enum FileCommand {
    /// Encrypt a file to a card's recipient (the card is read for its public key only).
    Encrypt(EncryptArgs),
    /// Decrypt a file through the card (the card unwraps the file key).
    Decrypt(DecryptArgs),
    /// Benchmark: encrypt/decrypt against rage, recovery against rage decrypt + re-encrypt.
    Bench(crate::vault::bench::FilesBenchArgs),
}

/// `tessera file encrypt`
#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// Card image whose recipient to encrypt to.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["reader", "recipient"])]
    image: Option<PathBuf>,
    /// Reader holding the card whose recipient to encrypt to.
    #[arg(long, value_name = "NAME", conflicts_with = "recipient")]
    reader: Option<String>,
    /// Recipients (`age1tag1…`), instead of a card.
    #[arg(long, short = 'r', value_name = "age1tag1…")]
    recipient: Vec<String>,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// Output file.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Input file.
    input: PathBuf,
}

/// `tessera file decrypt`
#[derive(Debug, Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    source: CardSource,
    #[command(flatten)]
    passphrase: PassphraseArg,
    #[command(flatten)]
    pin: PinArg,
    /// Output file.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Input file.
    input: PathBuf,
}

fn io_err(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Other, format!("{what} {}: {e}", path.display()))
}

/// Runs a `tessera file` subcommand.
pub fn run(cmd: FileCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        FileCommand::Bench(args) => crate::vault::bench::run(args, out),
        FileCommand::Encrypt(a) => {
            let mut keys = Vec::new();
            for r in &a.recipient {
                keys.push(files::parse_recipient(r)?.to_sec1_bytes());
            }
            if a.image.is_some() || a.reader.is_some() {
                let source = CardSource { image: a.image.clone(), reader: a.reader.clone() };
                keys.push(VaultCard::select(source.open(&a.passphrase)?)?.public_key()?);
            }
            if keys.is_empty() {
                return Err(CliError::usage("give --image, --reader or --recipient"));
            }
            let input = File::open(&a.input).map_err(|e| io_err("cannot open", &a.input, e))?;
            let output =
                File::create(&a.output).map_err(|e| io_err("cannot create", &a.output, e))?;
            let mut w = BufWriter::with_capacity(files::IO_BUFFER, output);
            files::encrypt(&keys, input, &mut w)?;
            w.flush().map_err(|e| io_err("cannot write", &a.output, e))?;
            out.emit(
                || format!("encrypted {} -> {}", a.input.display(), a.output.display()),
                || json!({ "input": a.input, "output": a.output }),
            );
            Ok(())
        }
        FileCommand::Decrypt(a) => {
            let mut card = VaultCard::select(a.source.open(&a.passphrase)?)?;
            card.verify_pin(a.pin.read()?.as_bytes())?;
            let identity = CardIdentity::new(card)?;
            let input = File::open(&a.input).map_err(|e| io_err("cannot open", &a.input, e))?;
            // Decrypt into a temporary file next to the output, renamed once complete and
            // authenticated: a failure leaves no partial plaintext under the output name.
            let tmp = a.output.with_extension("tessera-partial");
            let result = (|| {
                let output = File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
                let mut w = BufWriter::with_capacity(files::IO_BUFFER, output);
                let n = files::decrypt(&identity, input, &mut w)?;
                w.flush().map_err(|e| io_err("cannot write", &tmp, e))?;
                std::fs::rename(&tmp, &a.output)
                    .map_err(|e| io_err("cannot write", &a.output, e))?;
                Ok::<u64, CliError>(n)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            let n = result?;
            out.emit(
                || format!("decrypted {} -> {} ({n} bytes)", a.input.display(), a.output.display()),
                || json!({ "input": a.input, "output": a.output, "bytes": n }),
            );
            Ok(())
        }
    }
}
