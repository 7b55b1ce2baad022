//! `tessera enroll …`: certification (seed 002, Fig. 9) by a local CA directory
//! (`--ca-dir`) or by an issuer's CA on a tessera server (`--server URL --issuer ID`).
//!
//! - `enroll ca init --ca-dir DIR` makes the CA; `enroll ca revoke` lists a serial in its CRL.
//! - `enroll card` has the card's pairing applet generate its key, prove possession and
//!   receive its certificate (role card), the CA certificate and the CRL.
//! - `enroll terminal --key FILE` makes a terminal key, certifies it (role terminal) and seals
//!   key, certificate, CA certificate and CRL into FILE under a passphrase; `enroll crl`
//!   refreshes that CRL.
//!
//! With `--pkcs11-module PATH --pkcs11-token LABEL --key-label L` the terminal key is
//! generated in a PKCS#11 token and never leaves it; FILE then holds the key's label with the
//! certificates, and every command that loads FILE takes the same module and token options.
//! The token's user PIN comes from `--pkcs11-pin-file`, `TESSERA_PKCS11_PIN` or a prompt.
//!
//! Both CAs implement `CertificationAuthority`. With `--server` the enrolment station
//! authenticates with a bearer token of the issuer (`--token`, `--token-file` or
//! `TESSERA_TOKEN`) and pins the server certificate (`--fingerprint` or
//! `TESSERA_FINGERPRINT`), as `tessera admin` does; the HTTP transport is
//! `tessera_server::client::IssuerCa`. PINs and passphrases never come from argv: a prompt,
//! stdin or a file descriptor (PIN), a prompt or a file (passphrase).

use std::cell::Cell;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use clap::{Args, Subcommand};
use serde_json::json;
use tessera_card::pin::PinBlock;
use tessera_crypto::passphrase::KdfCost;
use tessera_crypto::x509::{Certificate, Crl, Role, verify_chain};
use tessera_host::pairing::PairingError;
use tessera_host::pairing::ca::{self, CertificationAuthority, CertificationRequest, LocalCa};
use tessera_host::pairing::enrol::{
    enrol_card, enrol_terminal, enrol_terminal_key, load_crl, select,
};
use tessera_host::pairing::files::TerminalIdentity;
use tessera_host::pairing::pkcs11::{Token, TokenConfig};
use tessera_proto::pairing::{AID as PAIRING_AID, CHALLENGE_LEN};
use tessera_server::client::{ApiClient, ApiError, ClientError, IssuerCa};
use tessera_server::store::enrolment::{EnrolmentRequest, ROLE_CARD, ROLE_TERMINAL};
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
        #[command(flatten)]
        ca: CaSource,
        /// The card certificate's subject name.
        #[arg(long, value_name = "NAME", default_value = "tessera card")]
        subject: String,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Enrol a terminal: a new key, certified (role terminal), sealed into FILE (or generated
    /// in a PKCS#11 token, FILE then naming it).
    Terminal {
        /// The terminal key file to create.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[command(flatten)]
        token: TokenArgs,
        /// The label of the key to generate in the PKCS#11 token (required with the token).
        #[arg(long, value_name = "L", requires = "pkcs11_module")]
        key_label: Option<String>,
        #[command(flatten)]
        ca: CaSource,
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
        #[command(flatten)]
        token: TokenArgs,
        #[command(flatten)]
        ca: CaSource,
        #[command(flatten)]
        key_passphrase: KeyPassphraseArg,
    },
    /// Load the CA's current CRL on a card (the card drops its pairings with terminals the
    /// list revokes and refuses them at setup). No PIN needed; a card of another CA refuses
    /// the list.
    CardCrl {
        #[command(flatten)]
        source: CardSource,
        #[command(flatten)]
        passphrase: PassphraseArg,
        #[command(flatten)]
        ca: CaSource,
    },
}

/// A PKCS#11 token holding the terminal key in place of the key file.
#[derive(Debug, Args, Clone)]
pub struct TokenArgs {
    /// The PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so) of the token holding the
    /// terminal key.
    #[arg(long, value_name = "PATH", requires = "pkcs11_token")]
    pub pkcs11_module: Option<PathBuf>,
    /// The token's label.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
    pub pkcs11_token: Option<String>,
    /// File whose first line is the token's user PIN (default: env TESSERA_PKCS11_PIN, else a
    /// prompt).
    #[arg(long, value_name = "FILE", requires = "pkcs11_module")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

impl TokenArgs {
    /// Opens and logs in to the token these options name, if any.
    pub fn open(&self) -> Result<Option<Token>, CliError> {
        let (Some(module), Some(label)) = (&self.pkcs11_module, &self.pkcs11_token) else {
            return Ok(None);
        };
        let pin = match (&self.pkcs11_pin_file, std::env::var("TESSERA_PKCS11_PIN")) {
            (Some(path), _) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
                first_line(std::io::BufReader::new(file), "token PIN")?
            }
            (None, Ok(pin)) if !pin.is_empty() => Zeroizing::new(pin),
            (None, _) => prompt("PKCS#11 token PIN")?,
        };
        let config = TokenConfig { module: module.clone(), token_label: label.clone(), pin };
        Token::open(&config).map(Some).map_err(|e| pairing_error(e.into()))
    }
}

/// Reads a terminal key file, with the token its key is in when the options name one.
pub fn load_identity(
    key: &Path,
    passphrase: &str,
    token: &TokenArgs,
) -> Result<TerminalIdentity, CliError> {
    let token = token.open()?;
    TerminalIdentity::load_with_token(key, passphrase, token.as_ref()).map_err(pairing_error)
}

/// The certification authority: a local CA directory, or an issuer's CA on a server.
#[derive(Debug, Args, Clone)]
pub struct CaSource {
    /// CA directory (`tessera enroll ca init`).
    #[arg(long, value_name = "DIR", required_unless_present = "server", conflicts_with = "server")]
    pub ca_dir: Option<PathBuf>,
    /// A tessera server whose issuer CA certifies (`https://host:port`).
    #[arg(long, value_name = "URL", requires = "issuer")]
    pub server: Option<String>,
    /// The issuer id on the server.
    #[arg(long, value_name = "ID", requires = "server")]
    pub issuer: Option<String>,
    /// SHA-256 fingerprint of the server certificate, as `tessera server` prints it (env
    /// TESSERA_FINGERPRINT).
    #[arg(long, value_name = "HEX", requires = "server")]
    pub fingerprint: Option<String>,
    /// Bearer token of the issuer: the enrolment station's credential (env TESSERA_TOKEN).
    #[arg(long, requires = "server")]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "token", requires = "server")]
    pub token_file: Option<PathBuf>,
}

impl CaSource {
    /// Opens the CA these options name, with the exit class of its last server failure
    /// (see [`OpenedCa::error`]).
    pub fn open(&self) -> Result<OpenedCa, CliError> {
        let (Some(server), Some(issuer)) = (&self.server, &self.issuer) else {
            let dir =
                self.ca_dir.as_ref().ok_or_else(|| CliError::usage("give --ca-dir or --server"))?;
            let ca = LocalCa::open(dir).map_err(pairing_error)?;
            return Ok(OpenedCa { ca: Box::new(ca), failure: Rc::default() });
        };
        let env = |v: &Option<String>, name: &str| v.clone().or_else(|| std::env::var(name).ok());
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => env(&self.token, "TESSERA_TOKEN"),
        };
        let fingerprint = env(&self.fingerprint, "TESSERA_FINGERPRINT");
        let client = ApiClient::new(server, fingerprint.as_deref(), token)
            .map_err(|e| CliError::usage(e.to_string()))?;
        let ca =
            IssuerCa::new(client, issuer).map_err(|e| CliError::new(Exit::Other, e.to_string()))?;
        let failure = Rc::<Cell<Option<Exit>>>::default();
        let ca = ServerCa { ca, anchor: std::cell::OnceCell::new(), failure: failure.clone() };
        Ok(OpenedCa { ca: Box::new(ca), failure })
    }
}

/// An opened CA and how its last server failure should end the command: a refusal by the
/// server like a card's refusal (exit 1), an unreachable server like a reader (3), as
/// `tessera admin` does.
pub struct OpenedCa {
    /// The CA.
    pub ca: Box<dyn CertificationAuthority>,
    failure: Rc<Cell<Option<Exit>>>,
}

impl OpenedCa {
    /// Maps a failure of a flow that used this CA to the tool's exit codes.
    pub fn error(&self, err: PairingError) -> CliError {
        match (&err, self.failure.get()) {
            (PairingError::Ca(_), Some(exit)) => CliError::new(exit, err.to_string()),
            _ => pairing_error(err),
        }
    }
}

/// An issuer's CA on a server as a [`CertificationAuthority`]. Every certificate it hands
/// back is checked here: it must chain to the issuer CA, carry the role asked for and
/// certify the key that proved possession.
struct ServerCa {
    ca: IssuerCa,
    anchor: std::cell::OnceCell<Certificate>,
    failure: Rc<Cell<Option<Exit>>>,
}

impl ServerCa {
    fn server_err(&self, e: ApiError) -> PairingError {
        self.failure.set(Some(match e {
            ApiError::Client(ClientError::Transport(_)) => Exit::Transport,
            ApiError::Client(ClientError::Usage(_)) => Exit::Usage,
            ApiError::Server { .. } => Exit::CardSaidNo,
            ApiError::Card(_) | ApiError::Protocol(_) => Exit::Other,
        }));
        PairingError::Ca(format!("server: {e}"))
    }
}

impl CertificationAuthority for ServerCa {
    fn ca_certificate(&self) -> tessera_host::pairing::Result<Certificate> {
        if let Some(c) = self.anchor.get() {
            return Ok(c.clone());
        }
        let c = self.ca.ca_certificate().map_err(|e| self.server_err(e))?;
        Ok(self.anchor.get_or_init(|| c).clone())
    }

    fn crl(&mut self) -> tessera_host::pairing::Result<Crl> {
        self.ca.crl().map_err(|e| self.server_err(e))
    }

    fn challenge(&mut self) -> tessera_host::pairing::Result<[u8; CHALLENGE_LEN]> {
        self.ca.challenge().map_err(|e| self.server_err(e))
    }

    fn certify(
        &mut self,
        request: &CertificationRequest,
    ) -> tessera_host::pairing::Result<Certificate> {
        let role = match request.role {
            Role::Card => ROLE_CARD,
            Role::Terminal => ROLE_TERMINAL,
            _ => return Err(PairingError::Ca("only card and terminal certificates".into())),
        };
        let issued = self
            .ca
            .enrol(&EnrolmentRequest {
                role: role.to_owned(),
                subject: request.subject.clone(),
                holder_id: hex::encode(&request.holder_id),
                public_key: hex::encode(request.public_key),
                challenge: hex::encode(request.challenge),
                proof: hex::encode(request.proof),
            })
            .map_err(|e| self.server_err(e))?;
        let cert = Certificate::from_pem(&issued.pem)
            .map_err(|e| PairingError::Ca(format!("server's certificate: {e}")))?;
        let anchor = self.ca_certificate()?;
        let info = verify_chain(&cert, &[], &anchor, ca::now(), Some(request.role))
            .map_err(|e| PairingError::Ca(format!("server's certificate: {e}")))?;
        if info.public_key.to_sec1_bytes() != request.public_key {
            return Err(PairingError::Ca("the server certified another key".into()));
        }
        Ok(cert)
    }
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
        EnrollCommand::Card { source, passphrase, ca, subject, pin } => {
            let mut ca = ca.open()?;
            let mut channel = source.open(&passphrase)?;
            let pin = pin.read()?;
            let cert = enrol_card(&mut channel, ca.ca.as_mut(), &pin, &subject)
                .map_err(|e| ca.error(e))?;
            report_certificate(out, "card", &cert)
        }
        EnrollCommand::Terminal { key, token, key_label, ca, name, key_passphrase } => {
            if key.exists() {
                return Err(CliError::usage(format!("{} exists", key.display())));
            }
            if token.pkcs11_module.is_some() && key_label.is_none() {
                return Err(CliError::usage("a key in a PKCS#11 token needs --key-label"));
            }
            let mut ca = ca.open()?;
            let passphrase = key_passphrase.read()?;
            let identity = match (token.open()?, key_label) {
                (Some(token), Some(label)) => {
                    let generated = token.generate(&label).map_err(|e| pairing_error(e.into()))?;
                    match enrol_terminal_key(ca.ca.as_mut(), &name, generated.clone().into()) {
                        Ok(identity) => identity,
                        Err(e) => {
                            // Best effort: a failed enrolment leaves the label free for a retry.
                            let _ = generated.destroy();
                            return Err(ca.error(e));
                        }
                    }
                }
                _ => enrol_terminal(ca.ca.as_mut(), &name).map_err(|e| ca.error(e))?,
            };
            identity.save(&key, &passphrase, kdf_cost()).map_err(pairing_error)?;
            report_certificate(
                out,
                &format!("terminal (key file {})", key.display()),
                &identity.certificate,
            )
        }
        EnrollCommand::Crl { key, token, ca, key_passphrase } => {
            let mut ca = ca.open()?;
            let passphrase = key_passphrase.read()?;
            let mut identity = load_identity(&key, &passphrase, &token)?;
            let crl = ca.ca.crl().map_err(|e| ca.error(e))?;
            // The list must be signed by the key file's CA and current (checked without
            // a token: the CRL is public).
            if crl.is_revoked(&identity.ca, &[0], ca::now()).is_err() {
                return Err(CliError::usage(
                    "this CRL is not a current list of the key file's CA (another CA?)",
                ));
            }
            identity.crl = Some(crl);
            identity.save(&key, &passphrase, kdf_cost()).map_err(pairing_error)?;
            out.emit(
                || format!("refreshed the CRL in {}", key.display()),
                || json!({ "key": key, "crl": "refreshed" }),
            );
            Ok(())
        }
        EnrollCommand::CardCrl { source, passphrase, ca } => {
            let mut ca = ca.open()?;
            let crl = ca.ca.crl().map_err(|e| ca.error(e))?;
            let mut channel = source.open(&passphrase)?;
            select(&mut channel, PAIRING_AID, "SELECT of the pairing applet")
                .and_then(|()| load_crl(&mut channel, crl.der()))
                .map_err(pairing_error)?;
            out.emit(
                || "loaded the CRL on the card (or it held this or a newer one)".to_owned(),
                || json!({ "card_crl": "loaded" }),
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
