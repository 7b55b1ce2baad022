//! `tessera enroll …`: certification (seed 002, Fig. 9) with a local CA directory.
//!
//! - `enroll ca init --ca-dir DIR` makes the CA; `enroll ca revoke` lists a serial in its CRL.
//! - `enroll card` has the card's pairing applet generate its key, prove possession and
//!   receive its certificate (role card), the CA certificate and the CRL.
//! - `enroll terminal --key FILE` makes a terminal key, certifies it (role terminal) and seals
//!   key, certificate, CA certificate and CRL into FILE under a passphrase; `enroll crl`
//!   refreshes that CRL.
//!
//! The CA is a local directory until the server's CA endpoint is wired (it will implement the
//! same `CertificationAuthority` trait). PINs and passphrases never come from argv: a prompt,
//! stdin or a file descriptor (PIN), a prompt or a file (passphrase).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;
use tessera_card::pin::PinBlock;
use tessera_crypto::passphrase::KdfCost;
use tessera_host::pairing::PairingError;
use tessera_host::pairing::ca::CertificationAuthority;
use tessera_host::pairing::ca::LocalCa;
use tessera_host::pairing::enrol::{enrol_card, enrol_terminal};
use tessera_host::pairing::files::TerminalIdentity;
use zeroize::Zeroizing;

use crate::Output;
use crate::error::{CliError, Exit};
use crate::source::{CardSource, PassphraseArg};

/// `tessera enroll` subcommands.
#[derive(Debug, Subcommand)]
pub enum EnrollCommand {
    /// The local certification authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Enrol a card: key generated on the card, certificate (role card) and CA certificate
    /// stored on it. The card must be issued (card id and PIN set) and not enrolled yet.
    Card {
        #[command(flatten)]
        source: CardSource,
        #[command(flatten)]
        passphrase: PassphraseArg,
        /// CA directory (`tessera enroll ca init`).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The card certificate's subject name.
        #[arg(long, value_name = "NAME", default_value = "tessera card")]
        subject: String,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Enrol a terminal: a new key, certified (role terminal), sealed into FILE.
    Terminal {
        /// The terminal key file to create.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// CA directory.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The terminal certificate's subject name.
        #[arg(long, value_name = "NAME", default_value = "tessera terminal")]
        name: String,
        #[command(flatten)]
        key_passphrase: KeyPassphraseArg,
    },
    /// Refresh a terminal's CRL from the CA (the terminal refuses setups once its CRL is
    /// past its next update; the local CA's lists last a week).
    Crl {
        /// The terminal key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// CA directory.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        #[command(flatten)]
        key_passphrase: KeyPassphraseArg,
    },
}

/// `tessera enroll ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a new CA in DIR.
    Init {
        /// CA directory (created; must not hold a CA).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The CA's name.
        #[arg(long, value_name = "NAME", default_value = "tessera local CA")]
        name: String,
    },
    /// Revoke a certificate: its serial goes into every CRL the CA makes from now on.
    Revoke {
        /// CA directory.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The certificate's serial number, hex.
        #[arg(long, value_name = "HEX")]
        serial: String,
    },
}

/// Where the PIN comes from (never argv). Default: a prompt on the terminal.
#[derive(Debug, Args, Clone)]
pub struct PinArgs {
    /// Read the PIN from the first line of stdin.
    #[arg(long, conflicts_with = "pin_fd")]
    pub pin_stdin: bool,
    /// Read the PIN from the first line of this open file descriptor.
    #[arg(long, value_name = "N")]
    pub pin_fd: Option<u32>,
}

/// The terminal key file's passphrase (never argv). Default: a prompt.
#[derive(Debug, Args, Clone)]
pub struct KeyPassphraseArg {
    /// File whose content (one trailing newline removed) is the key file's passphrase.
    #[arg(long, value_name = "F")]
    pub key_passphrase_file: Option<PathBuf>,
}

fn first_line(mut reader: impl BufRead, what: &str) -> Result<Zeroizing<String>, CliError> {
    let mut line = Zeroizing::new(String::new());
    reader
        .read_line(&mut line)
        .map_err(|e| CliError::new(Exit::Other, format!("cannot read the {what}: {e}")))?;
    let trimmed = line.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(CliError::usage(format!("no {what} given")));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// Reads a secret at the controlling terminal with echo off.
fn prompt(what: &str) -> Result<Zeroizing<String>, CliError> {
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(|e| {
        CliError::usage(format!("no terminal to ask for the {what} ({e}); use a file option"))
    })?;
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(
                tty.try_clone()
                    .map(std::process::Stdio::from)
                    .unwrap_or_else(|_| std::process::Stdio::null()),
            )
            .status()
    };
    let mut out = &tty;
    let _ = write!(out, "{what}: ");
    let _ = stty("-echo");
    let line = first_line(std::io::BufReader::new(&tty), what);
    let _ = stty("echo");
    let _ = writeln!(out);
    line
}

impl PinArgs {
    /// Reads the PIN as a PIN block.
    pub fn read(&self) -> Result<PinBlock, CliError> {
        let text = if self.pin_stdin {
            first_line(std::io::stdin().lock(), "PIN")?
        } else if let Some(fd) = self.pin_fd {
            let path = format!("/proc/self/fd/{fd}");
            let file = std::fs::File::open(&path).map_err(|e| {
                CliError::usage(format!("cannot read the PIN from descriptor {fd}: {e}"))
            })?;
            first_line(std::io::BufReader::new(file), "PIN")?
        } else {
            prompt("PIN")?
        };
        PinBlock::from_value(text.as_bytes())
            .map_err(|_| CliError::usage("a PIN is 4 to 8 characters"))
    }
}

impl KeyPassphraseArg {
    /// Reads the passphrase.
    pub fn read(&self) -> Result<Zeroizing<String>, CliError> {
        match &self.key_passphrase_file {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| CliError::new(Exit::Other, format!("{}: {e}", path.display())))?;
                first_line(std::io::BufReader::new(file), "key passphrase")
            }
            None => prompt("terminal key passphrase"),
        }
    }
}

/// Maps a pairing-flow error to the tool's exit codes.
pub fn pairing_error(err: PairingError) -> CliError {
    match err {
        PairingError::Channel(e) => e.into(),
        PairingError::Card { step, sw } => CliError::card_said_no(step, sw),
        PairingError::WrongPin { .. } => CliError::new(Exit::CardSaidNo, err.to_string()),
        PairingError::File(_) => CliError::new(Exit::Other, err.to_string()),
        PairingError::SecondFailure(_) => CliError::new(Exit::CardSaidNo, err.to_string()),
        _ => CliError::new(Exit::Other, err.to_string()),
    }
}

/// Runs a `tessera enroll` subcommand.
pub fn run(cmd: EnrollCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        EnrollCommand::Ca(CaCommand::Init { ca_dir, name }) => {
            LocalCa::init(&ca_dir, &name).map_err(pairing_error)?;
            out.emit(
                || format!("made CA {name:?} in {}", ca_dir.display()),
                || json!({ "ca_dir": ca_dir, "name": name }),
            );
            Ok(())
        }
        EnrollCommand::Ca(CaCommand::Revoke { ca_dir, serial }) => {
            let serial = hex::decode(serial.trim())
                .map_err(|e| CliError::usage(format!("serial is not hex: {e}")))?;
            LocalCa::open(&ca_dir).and_then(|mut ca| ca.revoke(&serial)).map_err(pairing_error)?;
            let hex = hex::encode_upper(&serial);
            out.emit(|| format!("revoked {hex}"), || json!({ "revoked": hex }));
            Ok(())
        }
        EnrollCommand::Card { source, passphrase, ca_dir, subject, pin } => {
            let mut ca = LocalCa::open(&ca_dir).map_err(pairing_error)?;
            let mut channel = source.open(&passphrase)?;
            let pin = pin.read()?;
            let cert = enrol_card(&mut channel, &mut ca, &pin, &subject).map_err(pairing_error)?;
            report_certificate(out, "card", &cert)
        }
        EnrollCommand::Terminal { key, ca_dir, name, key_passphrase } => {
            if key.exists() {
                return Err(CliError::usage(format!("{} exists", key.display())));
            }
            let mut ca = LocalCa::open(&ca_dir).map_err(pairing_error)?;
            let passphrase = key_passphrase.read()?;
            let identity = enrol_terminal(&mut ca, &name).map_err(pairing_error)?;
            identity.save(&key, &passphrase, kdf_cost()).map_err(pairing_error)?;
            report_certificate(
                out,
                &format!("terminal (key file {})", key.display()),
                &identity.certificate,
            )
        }
        EnrollCommand::Crl { key, ca_dir, key_passphrase } => {
            let mut ca = LocalCa::open(&ca_dir).map_err(pairing_error)?;
            let passphrase = key_passphrase.read()?;
            let mut identity = TerminalIdentity::load(&key, &passphrase).map_err(pairing_error)?;
            if identity.ca != ca.ca_certificate().map_err(pairing_error)? {
                return Err(CliError::usage("this key file was certified by another CA"));
            }
            identity.crl = Some(ca.crl().map_err(pairing_error)?);
            identity.save(&key, &passphrase, kdf_cost()).map_err(pairing_error)?;
            out.emit(
                || format!("refreshed the CRL in {}", key.display()),
                || json!({ "key": key, "crl": "refreshed" }),
            );
            Ok(())
        }
    }
}

/// The passphrase KDF cost of the terminal's files.
pub fn kdf_cost() -> KdfCost {
    KdfCost::RECOMMENDED
}

fn report_certificate(
    out: Output,
    what: &str,
    cert: &tessera_crypto::x509::Certificate,
) -> Result<(), CliError> {
    let info = cert.info().map_err(|e| CliError::new(Exit::Other, e.to_string()))?;
    let serial = hex::encode_upper(&info.serial);
    out.emit(
        || format!("enrolled {what}: certificate {:?}, serial {serial}", info.subject_cn),
        || json!({ "enrolled": what, "subject": info.subject_cn, "serial": serial }),
    );
    Ok(())
}

/// The pairing store next to a key file: `pairings.store` in the same directory.
pub fn default_store(key: &Path) -> PathBuf {
    key.parent().unwrap_or(Path::new(".")).join("pairings.store")
}
