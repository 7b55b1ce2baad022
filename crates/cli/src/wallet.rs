//! `tessera wallet …`: home-card e-money from the terminal (`docs/emoney.md`).
//!
//! Every command unlocks the access card, opens the control channel to the home server and
//! sends PIN2 (as `tessera connect` does); the market and the bank are reached through market
//! sessions of the home server (handover mode by default), and the home card's wallet
//! commands through the control channel. Amounts are in minor units (cents).
//!
//! - `tessera wallet balance` / `log [--from N]`: the card's wallet and settlement log.
//! - `tessera wallet catalogue https://market:port`
//! - `tessera wallet buy https://market:port SKU [--quantity N]`: order, charge notice, PAY,
//!   token to the market, settlement.
//! - `tessera wallet refill https://bank:port --account NAME --amount N`: voucher, CREDIT,
//!   acknowledgement to the bank; `--resume` settles vouchers of an earlier refill cut short.
//! - `tessera wallet cancel https://market:port ORDER`: the market's challenge to SIGN
//!   CANCELLATION REQUEST, the signed request to the market, its confirmation to CANCEL.

use std::cell::RefCell;

use clap::{Args, Subcommand};
use serde_json::json;
use tessera_home::emoney::EmoneyError;
use tessera_home::emoney::https::{ProxyTransport, call};
use tessera_home::emoney::wallet::{self, RemoteWallet, WalletPort};
use tessera_proto::control::Mode;
use tessera_proto::home::EntryKind;

use crate::Output;
use crate::connect::{ModeArg, TerminalArgs, open_control, parse_url};
use crate::error::{CliError, Exit};

/// `tessera wallet …`.
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// The home card's balance and counters.
    Balance(Common),
    /// The home card's settlement log.
    Log(LogArgs),
    /// A market's catalogue.
    Catalogue(Target),
    /// Buy an item at a market and pay with the home card.
    Buy(BuyArgs),
    /// Refill the home card from a bank account.
    Refill(RefillArgs),
    /// Cancel a payment (within 7 days of its charge notice).
    Cancel(CancelArgs),
}

/// The terminal's way to the home server.
#[derive(Debug, Args)]
pub struct Common {
    #[command(flatten)]
    terminal: TerminalArgs,
    /// How the home server serves the market and bank sessions.
    #[arg(long, value_enum, default_value = "handover")]
    mode: ModeArg,
}

/// `tessera wallet log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    common: Common,
    /// First counter to show.
    #[arg(long, default_value_t = 0)]
    from: u64,
}

/// A market or bank URL.
#[derive(Debug, Args)]
pub struct Target {
    /// `https://host:port` of the market or bank.
    url: String,
    #[command(flatten)]
    common: Common,
}

/// `tessera wallet buy`.
#[derive(Debug, Args)]
pub struct BuyArgs {
    #[command(flatten)]
    target: Target,
    /// The item (see `catalogue`).
    sku: String,
    /// How many.
    #[arg(long, default_value_t = 1)]
    quantity: u64,
}

/// `tessera wallet refill`.
#[derive(Debug, Args)]
pub struct RefillArgs {
    #[command(flatten)]
    target: Target,
    /// The bank account.
    #[arg(long)]
    account: String,
    /// Amount in minor units.
    #[arg(long, required_unless_present = "resume")]
    amount: Option<u64>,
    /// Instead of a new voucher: settle the account's vouchers the bank issued to this card
    /// and never saw acknowledged (an earlier refill cut short).
    #[arg(long, conflicts_with = "amount")]
    resume: bool,
}

/// `tessera wallet cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    target: Target,
    /// The order reference.
    order: String,
}

fn failure(e: EmoneyError) -> CliError {
    let exit = match e {
        EmoneyError::Card(_) => Exit::CardSaidNo,
        EmoneyError::Transport(_) => Exit::Transport,
        EmoneyError::BadRequest(_) => Exit::Usage,
        _ => Exit::Other,
    };
    CliError::new(exit, e.to_string())
}

fn mode(m: ModeArg) -> Result<Mode, CliError> {
    match m {
        ModeArg::Handover => Ok(Mode::Handover),
        ModeArg::Relay => Ok(Mode::Relay),
        ModeArg::Partial => Err(CliError::usage("e-money runs in handover or relay mode")),
    }
}

/// A log entry's reference as people read it: the order, or the voucher's number.
fn reference(e: &tessera_proto::home::LogEntry) -> String {
    match (e.kind, <[u8; 8]>::try_from(e.reference.as_slice())) {
        (EntryKind::Refill, Ok(b)) => format!("voucher {}", u64::from_be_bytes(b)),
        _ => format!("order {}", String::from_utf8_lossy(&e.reference)),
    }
}

fn money(amount: u64) -> String {
    format!("{}.{:02}", amount / 100, amount % 100)
}

/// Runs `tessera wallet …`.
pub fn run(cmd: WalletCommand, out: Output) -> Result<(), CliError> {
    let common = match &cmd {
        WalletCommand::Balance(c) => c,
        WalletCommand::Log(a) => &a.common,
        WalletCommand::Catalogue(t) => &t.common,
        WalletCommand::Buy(a) => &a.target.common,
        WalletCommand::Refill(a) => &a.target.common,
        WalletCommand::Cancel(a) => &a.target.common,
    };
    let session_mode = mode(common.mode)?;
    let target = match &cmd {
        WalletCommand::Catalogue(t) => Some(t),
        WalletCommand::Buy(a) => Some(&a.target),
        WalletCommand::Refill(a) => Some(&a.target),
        WalletCommand::Cancel(a) => Some(&a.target),
        _ => None,
    };
    let url = target.map(|t| parse_url(&t.url)).transpose()?;
    let conn = RefCell::new(open_control(&common.terminal)?);
    let mut card = RemoteWallet::new(&conn);
    let mut peer = url.as_ref().map(|u| ProxyTransport::new(&conn, &u.host, u.port, session_mode));
    let result = match (&cmd, peer.as_mut()) {
        (WalletCommand::Balance(_), _) => {
            let info = card.info().map_err(failure)?;
            let currency = String::from_utf8_lossy(&info.currency).into_owned();
            out.emit(
                || format!("balance {} {currency}; next counter {}", money(info.balance), info.next_counter),
                || json!({ "balance": info.balance, "currency": currency, "next_counter": info.next_counter, "entries": info.entries }),
            );
            Ok(())
        }
        (WalletCommand::Log(a), _) => {
            let entries = card.read_log(a.from).map_err(failure)?;
            let rows: Vec<_> = entries
                .iter()
                .map(|e| {
                    let kind = match e.kind {
                        EntryKind::Payment => "payment",
                        EntryKind::Refill => "refill",
                        EntryKind::Cancellation => "cancellation",
                    };
                    (e, kind)
                })
                .collect();
            out.emit(
                || {
                    rows.iter()
                        .map(|(e, kind)| {
                            format!(
                                "#{} {kind} {} {} {}{}",
                                e.counter,
                                String::from_utf8_lossy(&e.party),
                                money(e.amount),
                                reference(e),
                                if e.cancelled { " (cancelled)" } else { "" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                || {
                    json!(rows.iter().map(|(e, kind)| json!({
                        "counter": e.counter, "kind": kind, "party": String::from_utf8_lossy(&e.party),
                        "amount": e.amount, "time": e.time, "cancelled": e.cancelled,
                        "reference": reference(e),
                    })).collect::<Vec<_>>())
                },
            );
            Ok(())
        }
        (WalletCommand::Catalogue(_), Some(market)) => {
            let c = call(market, "GET", "/catalogue", None).map_err(failure)?;
            out.emit(
                || {
                    c["items"]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|i| {
                                    format!(
                                        "{:<8} {:>8}  {}",
                                        i["sku"].as_str().unwrap_or(""),
                                        money(i["price"].as_u64().unwrap_or(0)),
                                        i["name"].as_str().unwrap_or("")
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_default()
                },
                || c.clone(),
            );
            Ok(())
        }
        (WalletCommand::Buy(a), Some(market)) => {
            let p = wallet::purchase(&mut card, market, &a.sku, a.quantity).map_err(failure)?;
            out.emit(
                || format!("paid {} for order {} (card counter {})", money(p.order.amount), p.order.order, p.token.message.counter),
                || json!({ "order": p.order.order, "amount": p.order.amount, "counter": p.token.message.counter }),
            );
            Ok(())
        }
        (WalletCommand::Refill(a), Some(bank)) if a.resume => {
            let done = wallet::resume_refills(&mut card, bank, &a.account).map_err(failure)?;
            out.emit(
                || format!("settled {} pending voucher(s)", done.len()),
                || json!({ "settled": done.iter().map(|r| r.voucher.message.sequence).collect::<Vec<_>>() }),
            );
            Ok(())
        }
        (WalletCommand::Refill(a), Some(bank)) => {
            let amount = a.amount.unwrap_or_default();
            let r = wallet::refill(&mut card, bank, &a.account, amount).map_err(failure)?;
            out.emit(
                || format!("credited {} (voucher {}); account balance {}", money(amount), r.voucher.message.sequence, money(r.account_balance)),
                || json!({ "credited": amount, "voucher": r.voucher.message.sequence, "account_balance": r.account_balance }),
            );
            Ok(())
        }
        (WalletCommand::Cancel(a), Some(market)) => {
            let receipt = wallet::cancel(&mut card, market, &a.order).map_err(failure)?;
            out.emit(
                || {
                    format!(
                        "cancelled order {}: {} credited back",
                        a.order,
                        money(receipt.message.amount)
                    )
                },
                || json!({ "cancelled": a.order, "amount": receipt.message.amount }),
            );
            Ok(())
        }
        _ => Err(CliError::usage("a market or bank URL is needed")),
    };
    drop(peer);
    let _ = conn.borrow_mut().end();
    result
}
