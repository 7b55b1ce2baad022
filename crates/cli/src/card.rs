//! `tessera card …`: make a card image, serve it to pcscd, inspect a card.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Subcommand};
use serde_json::json;
use tessera_card::{Card, CardOptions};
use tessera_host::vpcd::{BridgeConfig, DEFAULT_PORT, VpcdBridge};
use tessera_host::{EchoCard, VirtualCard};

use crate::Output;
use crate::error::{CliError, Exit};
use crate::source::{CardSource, PassphraseArg, open_image};

pub mod home;
pub mod info;

/// `tessera card` subcommands.
#[derive(Debug, Subcommand)]
pub enum CardCommand {
    /// Make a blank card image (mode 0600; fails if the file exists).
    New {
        /// Image file to create.
        #[arg(long, value_name = "FILE")]
        image: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Put a card into pcscd's virtual reader (vsmartcard vpcd) until Ctrl-C.
    ///
    /// The card connects to vpcd as a TCP client: port 35963 is the first virtual slot
    /// ("Virtual PCD 00 00"), 35964 the second. It reconnects by itself whenever pcscd
    /// restarts. More slots come from extra reader.conf entries (docs/virtual-reader.md).
    Serve(ServeArgs),
    /// Show a card's id, life cycle and applets, as far as the card answers.
    Info {
        #[command(flatten)]
        source: CardSource,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Make a home card image (authentication proxy and wallet, seed 004): card id, PIN1,
    /// PIN2, PUK, TLS key and payment key enrolled with a local CA, trusted markets and banks.
    InitHome(home::HomeInitArgs),
    /// Make an access card image (the terminal's control-channel key, pinned home server,
    /// terminal profiles), enrolled with a local CA.
    InitAccess(home::AccessInitArgs),
}

/// Arguments of `tessera card serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Card image to serve.
    #[arg(long, value_name = "FILE", required_unless_present = "echo", conflicts_with = "echo")]
    image: Option<PathBuf>,
    /// Serve a card that answers every APDU with its data and 9000 and does no work (the
    /// baseline of `tessera bench apdu`).
    #[arg(long)]
    echo: bool,
    /// vpcd's port: 35963 for the first virtual slot, 35964 for the second.
    #[arg(long, value_name = "P", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// vpcd's host.
    #[arg(long, value_name = "H", default_value = "127.0.0.1")]
    host: String,
    #[command(flatten)]
    passphrase: PassphraseArg,
}

/// Runs a `tessera card` subcommand.
pub fn run(cmd: CardCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        CardCommand::New { image, passphrase } => new(image, &passphrase, out),
        CardCommand::Serve(args) => serve(args),
        CardCommand::Info { source, passphrase } => info::run(&source, &passphrase, out),
        CardCommand::InitHome(args) => home::init_home(args, out),
        CardCommand::InitAccess(args) => home::init_access(args, out),
    }
}

fn new(image: PathBuf, passphrase: &PassphraseArg, out: Output) -> Result<(), CliError> {
    let mut options = CardOptions::default();
    let encrypted = match passphrase.read()? {
        Some(p) => {
            options = options.passphrase(p.as_str());
            true
        }
        None => false,
    };
    let card = Card::create(&image, options)?;
    drop(card);
    out.emit(
        || {
            format!(
                "created blank card image {}{}\nserve it with: tessera card serve --image {}",
                image.display(),
                if encrypted { " (encrypted at rest)" } else { "" },
                image.display()
            )
        },
        || json!({ "image": image, "encrypted": encrypted }),
    );
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).map_err(|e| {
        CliError::new(Exit::Other, format!("cannot install the Ctrl-C handler: {e}"))
    })?;
    let (card, what): (Box<dyn VirtualCard>, String) = match &args.image {
        Some(path) => (
            Box::new(open_image(path, &args.passphrase)?),
            format!("card image {}", path.display()),
        ),
        None => (Box::new(EchoCard::new()), "echo card".to_owned()),
    };
    let config =
        BridgeConfig { host: args.host.clone(), port: args.port, ..BridgeConfig::default() };
    eprintln!("serving {what} to vpcd at {}:{} (Ctrl-C to stop)", args.host, args.port);
    let mut bridge = VpcdBridge::new(card, config);
    bridge.run(&stop).map_err(|e| CliError::new(Exit::Transport, e.to_string()))?;
    eprintln!("stopped after {} APDUs", bridge.apdus_served());
    Ok(())
}
