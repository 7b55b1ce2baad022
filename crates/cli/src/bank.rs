//! `tessera bank serve`: the reference bank of home-card e-money (`docs/emoney.md`).
//!
//! Accounts in its own SQLite database (`--db`; `--account NAME=AMOUNT` opens one held by the
//! client certificate whose common name is NAME), single-use refill vouchers signed by the
//! bank and bound to the card, the account debited exactly once on the card's signed
//! acknowledgement.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use tessera_home::emoney::bank::Bank;
use tessera_home::emoney::{SystemUnixClock, https};

use crate::error::{CliError, Exit};
use crate::market::{PartyArgs, load, serve};

/// `tessera bank …`.
#[derive(Debug, Subcommand)]
pub enum BankCommand {
    /// Run the reference bank.
    Serve(BankArgs),
}

/// `tessera bank serve`.
#[derive(Debug, Args)]
pub struct BankArgs {
    #[command(flatten)]
    party: PartyArgs,
    /// SQLite database of accounts and vouchers.
    #[arg(long, value_name = "FILE", default_value = "bank.sqlite")]
    db: PathBuf,
    /// Open account NAME (held by the client certificate with common name NAME) with AMOUNT
    /// minor units, unless it exists (repeatable).
    #[arg(long, value_name = "NAME=AMOUNT")]
    account: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8444")]
    listen: SocketAddr,
}

/// Runs `tessera bank …`.
pub fn run(cmd: BankCommand) -> Result<(), CliError> {
    let BankCommand::Serve(args) = cmd;
    let (party, issuer, currency) = load(&args.party)?;
    let config =
        https::server_config(&party, &issuer).map_err(|e| CliError::usage(e.to_string()))?;
    let bank = Bank::open(party, issuer, currency, Some(&args.db), Arc::new(SystemUnixClock))
        .map_err(|e| CliError::new(Exit::Other, e.to_string()))?;
    for spec in &args.account {
        let (name, amount) = spec
            .split_once('=')
            .and_then(|(n, a)| Some((n, a.parse::<u64>().ok()?)))
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| CliError::usage(format!("--account {spec:?}: expected NAME=AMOUNT")))?;
        if bank
            .open_account(name, name, amount)
            .map_err(|e| CliError::new(Exit::Other, e.to_string()))?
        {
            eprintln!("tessera bank: opened account {name} with {amount}");
        }
    }
    serve("bank", config, args.listen, bank.router())
}
