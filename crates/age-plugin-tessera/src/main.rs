//! `age-plugin-tessera`: an age plugin (identity-v1) that decrypts through a tessera vault
//! card, so `rage`/`age` open files encrypted to the card's `age1tag1…` recipient.
//!
//! Encryption needs no plugin: the card's recipient is age's native tagged P-256 recipient.
//! For decryption, the identity `AGE-PLUGIN-TESSERA-1…` names where the card is (a PC/SC
//! reader, or a card image run in process) and the card's public key; for each file the
//! plugin finds the `p256tag` stanza addressed to that key, asks for the PIN (the
//! `TESSERA_PIN` environment variable, else age's secret prompt), and sends one DECRYPT to
//! the card. The 16-byte file key goes back to age, which checks the header MAC and decrypts
//! the payload. The card's private key never leaves the card.
//!
//! Usage:
//! - `age-plugin-tessera --identity --reader NAME` (or `--image FILE`) prints the identity and
//!   the recipient of the card;
//! - age runs `age-plugin-tessera --age-plugin=identity-v1` itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use age_core::format::{FileKey, Stanza};
use age_core::secrecy::ExposeSecret;
use age_plugin::identity::{self, IdentityPluginV1};
use age_plugin::{Callbacks, PluginHandler, run_state_machine};
use clap::Parser;
use tessera_crypto::ecdsa::PublicKey;
use tessera_host::vault::VaultCard;
use tessera_host::vault::files::{CardIdentity, recipient_string};
use tessera_host::{CardChannel, InProcessChannel, PcscChannel};
use zeroize::Zeroizing;

/// The plugin name (binary `age-plugin-tessera`).
const PLUGIN_NAME: &str = "tessera";
/// Version byte of the identity encoding.
const IDENTITY_VERSION: u8 = 1;

/// Where the card is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A PC/SC reader.
    Reader(String),
    /// A card image file, run in this process.
    Image(PathBuf),
}

/// A decoded `AGE-PLUGIN-TESSERA-1…` identity: `version || kind || compressed key (33) ||
/// location (UTF-8)`, kind 1 = reader, 2 = image.
#[derive(Debug, Clone)]
struct TesseraIdentity {
    location: Location,
    public: PublicKey,
}

impl TesseraIdentity {
    fn to_bytes(&self) -> Vec<u8> {
        let (kind, text) = match &self.location {
            Location::Reader(r) => (1u8, r.clone()),
            Location::Image(p) => (2u8, p.to_string_lossy().into_owned()),
        };
        let mut out = vec![IDENTITY_VERSION, kind];
        out.extend_from_slice(&self.public.to_sec1_compressed());
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn parse(bytes: &[u8]) -> Result<TesseraIdentity, String> {
        let [version, kind, rest @ ..] = bytes else { return Err("identity too short".into()) };
        if *version != IDENTITY_VERSION {
            return Err(format!("identity version {version} unknown"));
        }
        if rest.len() < 33 {
            return Err("identity too short".into());
        }
        let (key, text) = rest.split_at(33);
        let public = PublicKey::from_sec1_bytes(key).map_err(|_| "identity key".to_owned())?;
        let text = String::from_utf8(text.to_vec()).map_err(|_| "identity location".to_owned())?;
        let location = match kind {
            1 => Location::Reader(text),
            2 => Location::Image(PathBuf::from(text)),
            _ => return Err(format!("identity kind {kind} unknown")),
        };
        Ok(TesseraIdentity { location, public })
    }
}

impl Location {
    /// Opens a channel to the card at this location.
    fn connect(&self) -> Result<Box<dyn CardChannel>, String> {
        match self {
            Location::Reader(r) => PcscChannel::connect(Some(r))
                .map(|c| Box::new(c) as Box<dyn CardChannel>)
                .map_err(|e| e.to_string()),
            Location::Image(p) => {
                let mut options = tessera_card::OpenOptions::default();
                if let Ok(pass) = std::env::var("TESSERA_IMAGE_PASSPHRASE") {
                    options = options.passphrase(pass.as_str());
                }
                tessera_card::Card::open(p, options)
                    .map(|c| Box::new(InProcessChannel::new(c)) as Box<dyn CardChannel>)
                    .map_err(|e| format!("card image {}: {e}", p.display()))
            }
        }
    }
}

struct Handler;

impl PluginHandler for Handler {
    type RecipientV1 = Infallible;
    type IdentityV1 = Plugin;

    fn identity_v1(self) -> io::Result<Self::IdentityV1> {
        Ok(Plugin { identities: Vec::new() })
    }
}

struct Plugin {
    identities: Vec<(usize, TesseraIdentity)>,
}

impl IdentityPluginV1 for Plugin {
    fn add_identity(
        &mut self,
        index: usize,
        plugin_name: &str,
        bytes: &[u8],
    ) -> Result<(), identity::Error> {
        if plugin_name != PLUGIN_NAME {
            return Err(identity::Error::Identity {
                index,
                message: "not a tessera identity".into(),
            });
        }
        let id = TesseraIdentity::parse(bytes)
            .map_err(|message| identity::Error::Identity { index, message })?;
        self.identities.push((index, id));
        Ok(())
    }

    fn unwrap_file_keys(
        &mut self,
        files: Vec<Vec<Stanza>>,
        mut callbacks: impl Callbacks<identity::Error>,
    ) -> io::Result<HashMap<usize, Result<FileKey, Vec<identity::Error>>>> {
        let mut out = HashMap::new();
        for (index, id) in &self.identities {
            // Only files with a stanza for this card need it.
            let wanted: Vec<usize> = (0..files.len())
                .filter(|f| !out.contains_key(f))
                .filter(|&f| {
                    files[f].iter().any(|s| {
                        tessera_host::vault::files::stanza_for(&s.tag, &s.args, &s.body, &id.public)
                            .is_some()
                    })
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let fail = |message: String| identity::Error::Identity { index: *index, message };
            let card = match open_card(id, &mut callbacks) {
                Ok(card) => card,
                Err(message) => {
                    for f in wanted {
                        out.insert(f, Err(vec![fail(message.clone())]));
                    }
                    continue;
                }
            };
            for f in wanted {
                let result = files[f].iter().find_map(|s| card.unwrap(&s.tag, &s.args, &s.body));
                let entry = match result {
                    Some(Ok(key)) => {
                        Ok(FileKey::init_with_mut(|k| k.copy_from_slice(key.as_slice())))
                    }
                    Some(Err(e)) => Err(vec![fail(e.to_string())]),
                    None => continue,
                };
                out.insert(f, entry);
            }
        }
        Ok(out)
    }
}

/// Connects, selects the vault, checks it holds the identity's key, verifies the PIN.
fn open_card(
    id: &TesseraIdentity,
    callbacks: &mut impl Callbacks<identity::Error>,
) -> Result<CardIdentity<Box<dyn CardChannel>>, String> {
    let channel = id.location.connect()?;
    let mut card = VaultCard::select(channel).map_err(|e| e.to_string())?;
    let pk = card.public_key().map_err(|e| e.to_string())?;
    if PublicKey::from_sec1_bytes(&pk).ok().as_ref() != Some(&id.public) {
        return Err("the card in that place does not hold this identity's key".into());
    }
    let pin: Zeroizing<String> = match std::env::var("TESSERA_PIN") {
        Ok(p) => Zeroizing::new(p),
        Err(_) => match callbacks.request_secret("PIN of the tessera card") {
            Ok(Ok(secret)) => Zeroizing::new(secret.expose_secret().to_owned()),
            Ok(Err(_)) => return Err("no PIN given".into()),
            Err(e) => return Err(format!("asking for the PIN: {e}")),
        },
    };
    card.verify_pin(pin.as_bytes()).map_err(|e| e.to_string())?;
    CardIdentity::new(card).map_err(|e| e.to_string())
}

/// age-plugin-tessera: decrypt age files through a tessera vault card.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run the given age plugin state machine (age calls this).
    #[arg(long, value_name = "STATE_MACHINE")]
    age_plugin: Option<String>,
    /// Print the identity (for `rage -i`) and recipient of the card.
    #[arg(long)]
    identity: bool,
    /// PC/SC reader holding the card.
    #[arg(long, value_name = "NAME", conflicts_with = "image")]
    reader: Option<String>,
    /// Card image file (run in process).
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
}

fn print_identity(args: &Args) -> Result<(), String> {
    let location = match (&args.reader, &args.image) {
        (Some(r), None) => Location::Reader(r.clone()),
        (None, Some(p)) => Location::Image(std::path::absolute(p).map_err(|e| e.to_string())?),
        _ => return Err("give --reader NAME or --image FILE".into()),
    };
    let mut card = VaultCard::select(location.connect()?).map_err(|e| e.to_string())?;
    let pk = card.public_key().map_err(|e| e.to_string())?;
    let public = PublicKey::from_sec1_bytes(&pk).map_err(|_| "card public key".to_owned())?;
    let id = TesseraIdentity { location, public };
    let hrp =
        bech32::Hrp::parse(&format!("age-plugin-{PLUGIN_NAME}-")).map_err(|e| e.to_string())?;
    let encoded = age_core::primitives::bech32_encode(hrp, &id.to_bytes()).to_uppercase();
    println!("# recipient: {}", recipient_string(&pk).map_err(|e| e.to_string())?);
    println!("{encoded}");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(machine) = &args.age_plugin {
        return match run_state_machine(machine, Handler) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("age-plugin-tessera: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.identity {
        return match print_identity(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("age-plugin-tessera: {e}");
                ExitCode::from(2)
            }
        };
    }
    eprintln!(
        "age-plugin-tessera: give --identity (--reader NAME | --image FILE); age runs --age-plugin itself"
    );
    ExitCode::from(2)
}
