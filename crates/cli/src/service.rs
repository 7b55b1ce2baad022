//! `tessera service <name> …`: one operation of a card service over the paired channel
//! (seed 002, Figs. 5 and 8).
//!
//! The terminal authenticates with its pairing; if that fails (new card, new terminal, lost
//! pairing) it asks for the PIN, sets up a new pairing and authenticates again; a second
//! failure stops. The operation then runs at SCP03 level 33.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use tessera_host::pairing::files::PairingStore;
use tessera_host::pairing::service::{provider, providers};
use tessera_host::pairing::terminal::{Connection, Terminal, connect};

use crate::Output;
use crate::enroll::{
    KeyPassphraseArg, PinArgs, TokenArgs, default_store, kdf_cost, load_identity, pairing_error,
};
use crate::error::{CliError, Exit};
use crate::source::{CardSource, PassphraseArg};

/// Arguments of `tessera service`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The service: ledger (balance | credit N | debit N | history) or notes (list |
    /// put SLOT TEXT | get SLOT | delete SLOT).
    #[arg(value_name = "NAME")]
    name: String,
    /// The operation and its arguments.
    #[arg(value_name = "OP", num_args = 1..)]
    op: Vec<String>,
    #[command(flatten)]
    source: CardSource,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// The terminal key file (`tessera enroll terminal`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    #[command(flatten)]
    token: TokenArgs,
    /// The pairing store (default: pairings.store next to the key file).
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    #[command(flatten)]
    key_passphrase: KeyPassphraseArg,
    #[command(flatten)]
    pin: PinArgs,
}

/// Runs `tessera service`.
pub fn run(args: ServiceArgs, out: Output) -> Result<(), CliError> {
    let service = provider(&args.name).ok_or_else(|| {
        let names: Vec<&str> = providers().iter().map(|p| p.id().name()).collect();
        CliError::usage(format!("no service {:?}; services: {}", args.name, names.join(", ")))
    })?;
    let request = service.request(&args.op).map_err(CliError::usage)?;
    let passphrase = args.key_passphrase.read()?;
    let identity = load_identity(&args.key, &passphrase, &args.token)?;
    let store_path = args.store.clone().unwrap_or_else(|| default_store(&args.key));
    let mut store = PairingStore::open(&store_path, &passphrase).map_err(pairing_error)?;
    let terminal = Terminal::new(identity);
    let channel = args.source.open(&args.passphrase)?;
    let pin = args.pin.clone();
    let (mut session, how) = connect(&terminal, channel, &mut store, &mut || {
        eprintln!("tessera: this terminal is not paired with this card; setting up a pairing");
        pin.read().map_err(|e| tessera_host::pairing::PairingError::File(e.to_string()))
    })
    .map_err(pairing_error)?;
    if how == Connection::Repaired {
        store.save(&passphrase, kdf_cost()).map_err(pairing_error)?;
    }
    let answer = session.invoke(&request).map_err(pairing_error)?;
    let text = service.render(&request, &answer).map_err(|e| CliError::new(Exit::Other, e))?;
    let repaired = how == Connection::Repaired;
    out.emit(
        || text.clone(),
        || json!({ "service": args.name, "result": text, "repaired": repaired }),
    );
    Ok(())
}

/// Arguments of `tessera bench pairing`.
#[derive(Debug, Args)]
pub struct PairingBenchArgs {
    /// Seconds per measurement (four measurements).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

/// `tessera bench pairing`: one authentication against one setup, one protected APDU against
/// the same APDU unprotected, in process, in the same run. Numbers, not tests.
pub fn bench(args: PairingBenchArgs, out: Output) -> Result<(), CliError> {
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err(CliError::usage("--seconds must be between 0 and 600"));
    }
    let r = tessera_host::pairing::bench::run(std::time::Duration::from_secs_f64(args.seconds))
        .map_err(pairing_error)?;
    out.emit(
        || {
            format!(
                "In process, in-memory card image, one core:\n  \
                 setup           {:>10.1} us\n  \
                 authentication  {:>10.1} us  ({:.4} of setup; target <= 0.05; {} image writes)\n  \
                 GET DATA plain     {:>7.2} us\n  \
                 GET DATA level 33  {:>7.2} us  ({:.2}x plain; target <= 3)",
                r.setup_us,
                r.authentication_us,
                r.authentication_over_setup(),
                r.authentication_writes,
                r.plain_apdu_us,
                r.protected_apdu_us,
                r.protected_over_plain()
            )
        },
        || {
            json!({
                "setup_us": r.setup_us,
                "authentication_us": r.authentication_us,
                "authentication_over_setup": r.authentication_over_setup(),
                "authentication_writes": r.authentication_writes,
                "plain_apdu_us": r.plain_apdu_us,
                "protected_apdu_us": r.protected_apdu_us,
                "protected_over_plain": r.protected_over_plain(),
            })
        },
    );
    Ok(())
}
