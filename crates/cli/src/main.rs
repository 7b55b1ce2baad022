//! The `tessera` command-line tool: thin over the tessera libraries.
//!
//! Exit codes are documented on [`error::Exit`] and in `tessera --help`.

mod admin;
mod apdu;
mod bank;
mod bench;
mod card;
mod connect;
mod data;
mod demo;
mod enroll;
mod error;
mod file;
mod home;
mod market;
mod reader;
mod server;
mod service;
mod source;
mod sync;
mod vault;
mod wallet;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the card answered and said no (status word other than 9000 or 61xx)
  2  usage: bad arguments or malformed input
  3  transport: pcscd not running, no reader, no card, vpcd unreachable
  4  card image: missing, corrupt, locked, wrong passphrase
  5  other local failure (I/O, a benchmark helper)";

/// tessera: an open IC-card security platform.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// The options every command takes.
#[derive(Debug, clap::Args)]
struct GlobalArgs {
    /// Log every APDU exchanged to stderr (PINs and key material redacted).
    #[arg(long, global = true)]
    trace: bool,
    /// Print results as JSON on stdout (commands that report data).
    #[arg(long, global = true)]
    json: bool,
}

// `tessera file …` parsed on its own, with the same arguments and help: file commands run
// once per file in scripts, and building the whole command tree (every subcommand of every
// service) cost a small file's encryption more than the encryption itself
// (docs/performance.md, "Files and recovery").
#[derive(Debug, Parser)]
#[command(
    name = "tessera file",
    version,
    about = "Files in the age format, encrypted to a vault card and decrypted through it.",
    after_help = EXIT_CODES
)]
struct FileCli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: file::FileCommand,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make, serve and inspect cards.
    #[command(subcommand)]
    Card(card::CardCommand),
    /// Send raw APDUs to a card (debugging).
    #[command(subcommand)]
    Apdu(apdu::ApduCommand),
    /// PC/SC readers.
    #[command(subcommand)]
    Reader(reader::ReaderCommand),
    /// Run the card-management server.
    Server(server::ServerArgs),
    /// Administer a running server: issuers, cards, tokens, audit log.
    Admin(admin::AdminArgs),
    /// Personalise a blank card through the server (the terminal only relays APDUs).
    Issue(sync::IssueCommand),
    /// Run whatever the server has for this card (updates, key renewals…).
    Sync(sync::SyncCommand),
    /// Card duplication: issue a main/backup pair, back up, recover files (seed 003).
    #[command(subcommand)]
    Vault(vault::VaultCommand),
    /// The card's updatable data objects (remote card data update).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Files in the age format, encrypted to a vault card and decrypted through it.
    #[command(subcommand)]
    File(file::FileCommand),
    /// Walk through the platform at work, on an in-memory card (no service needed).
    Demo(demo::DemoArgs),
    /// Certify cards and terminals with a local CA (secure terminal, seed 002).
    #[command(subcommand)]
    Enroll(enroll::EnrollCommand),
    /// Use a card service over the paired, protected channel (pairs first when needed).
    Service(service::ServiceArgs),
    /// The home server of the authentication proxy: serve, and admit or revoke access cards.
    #[command(subcommand)]
    Home(home::HomeCommand),
    /// An HTTPS request through the home server, with the access card (like curl).
    Connect(connect::ConnectArgs),
    /// The reference market of home-card e-money (HTTPS, client certificates).
    #[command(subcommand)]
    Market(market::MarketCommand),
    /// The reference bank of home-card e-money: accounts and refill vouchers.
    #[command(subcommand)]
    Bank(bank::BankCommand),
    /// Home-card e-money from the terminal: balance, log, buy, refill, cancel.
    #[command(subcommand)]
    Wallet(wallet::WalletCommand),
    /// Benchmarks (numbers for docs/performance.md; not tests).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Global output settings.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Print JSON instead of text.
    pub json: bool,
}

impl Output {
    /// Prints `value` as pretty JSON when `--json` is on, else the text `human`.
    pub fn emit(&self, human: impl FnOnce() -> String, value: impl FnOnce() -> serde_json::Value) {
        if self.json {
            println!("{:#}", value());
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }
}

fn init_tracing(trace: bool, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    // TESSERA_LOG takes tracing's filter syntax; --trace adds the APDU log on top. Quiet
    // commands (the demo, whose in-process servers would log every session) default to
    // warnings only.
    let default = if quiet { "warn" } else { "info" };
    let mut spec = std::env::var("TESSERA_LOG").unwrap_or_else(|_| default.to_owned());
    if trace {
        spec.push_str(&format!(",{}=trace", tessera_host::trace::TARGET));
    }
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "file") {
        let cli = FileCli::parse_from(
            std::iter::once("tessera file".into()).chain(std::env::args_os().skip(2)),
        );
        init_tracing(cli.global.trace, false);
        return finish(file::run(cli.command, Output { json: cli.global.json }));
    }
    let cli = Cli::parse();
    init_tracing(cli.global.trace, matches!(cli.command, Command::Demo(_)));
    let out = Output { json: cli.global.json };
    let result: Result<(), CliError> = match cli.command {
        Command::Card(cmd) => card::run(cmd, out),
        Command::Apdu(cmd) => apdu::run(cmd, out),
        Command::Reader(cmd) => reader::run(cmd, out),
        Command::Server(args) => server::run(args),
        Command::Admin(args) => admin::run(args, out),
        Command::Issue(args) => sync::run_issue(args, out),
        Command::Sync(args) => sync::run_sync(args, out),
        Command::Vault(cmd) => vault::run(cmd, out),
        Command::Data(cmd) => data::run(cmd, out),
        Command::File(cmd) => file::run(cmd, out),
        Command::Demo(args) => demo::run(args, out),
        Command::Enroll(cmd) => enroll::run(cmd, out),
        Command::Service(args) => service::run(args, out),
        Command::Home(cmd) => home::run(cmd, out),
        Command::Connect(args) => connect::run(args, out),
        Command::Market(cmd) => market::run(cmd),
        Command::Bank(cmd) => bank::run(cmd),
        Command::Wallet(cmd) => wallet::run(cmd, out),
        Command::Bench(cmd) => bench::run(cmd, out),
    };
    finish(result)
}

/// The exit code of a command's result, its error printed.
fn finish(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tessera: {err}");
            err.code()
        }
    }
}
