//! `tessera vault`: the card-duplication system (seed 003): issue a main/backup pair, back up
//! the key onto the backup card, lock export, and recover files onto a new card.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use tessera_crypto::keys::AesKey;
use tessera_crypto::rng::OsRng;
use tessera_crypto::scp03::StaticKeys;
use tessera_host::CardChannel;
use tessera_host::vault::files::{self, FileOutcome};
use tessera_host::vault::issuance::{self, Plan};
use tessera_host::vault::{VaultCard, VaultError, backup};
use zeroize::Zeroizing;

use crate::Output;
use crate::error::{CliError, Exit};
use crate::source::{CardSource, PassphraseArg};

pub mod bench;

/// `tessera vault …`
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Show a card's vault: role, components and who set them, key, backup state.
    Status {
        #[command(flatten)]
        source: CardSource,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Print the card's age recipient (`age1tag1…`).
    Recipient {
        #[command(flatten)]
        source: CardSource,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Issue a main card and its backup card together (Fig. 11).
    Issue(IssueArgs),
    /// Back up the main card's key onto the backup card (Figs. 13-15); re-runnable.
    Backup(BackupArgs),
    /// Lock export on a main card for good.
    LockExport {
        #[command(flatten)]
        source: CardSource,
        #[command(flatten)]
        passphrase: PassphraseArg,
        #[command(flatten)]
        pin: PinArg,
    },
    /// After the main card is lost: re-wrap each file's key from the backup card to the new
    /// card (headers only, crash-safe, re-runnable) (Figs. 18-19).
    Recover(RecoverArgs),
    /// Receive the key pair the issuer's key service provisioned for this card (`tessera admin
    /// vault provision`; Figs. 28-31): runs the card's sync with the server, whose last step
    /// delivers the key sealed to the card's attested transport key (the PIN is needed).
    Provision(ProvisionArgs),
}

/// `tessera vault provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    server: tessera_server::cli::SyncArgs,
    #[command(flatten)]
    source: CardSource,
    #[command(flatten)]
    passphrase: PassphraseArg,
}

/// The card holder's PIN.
#[derive(Debug, Args)]
pub struct PinArg {
    /// File holding the PIN (else the TESSERA_PIN environment variable).
    #[arg(long, value_name = "F")]
    pub pin_file: Option<PathBuf>,
}

impl PinArg {
    /// Reads the PIN.
    pub fn read(&self) -> Result<Zeroizing<String>, CliError> {
        let pin = match &self.pin_file {
            Some(p) => Zeroizing::new(std::fs::read_to_string(p).map_err(|e| {
                CliError::new(Exit::Other, format!("cannot read PIN file {}: {e}", p.display()))
            })?),
            None => Zeroizing::new(
                std::env::var("TESSERA_PIN")
                    .map_err(|_| CliError::usage("give --pin-file F or set TESSERA_PIN"))?,
            ),
        };
        Ok(Zeroizing::new(pin.trim_end_matches(['\n', '\r']).to_owned()))
    }
}

/// Two cards: `--main`/`--main-image` and `--backup`/`--backup-image`.
#[derive(Debug, Args)]
pub struct PairArgs {
    /// Reader holding the main card.
    #[arg(long, value_name = "READER", conflicts_with = "main_image")]
    pub main: Option<String>,
    /// Card image of the main card.
    #[arg(long, value_name = "F")]
    pub main_image: Option<PathBuf>,
    /// Reader holding the backup card.
    #[arg(long, value_name = "READER", conflicts_with = "backup_image")]
    pub backup: Option<String>,
    /// Card image of the backup card.
    #[arg(long, value_name = "F")]
    pub backup_image: Option<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArg,
}

fn open(
    reader: &Option<String>,
    image: &Option<PathBuf>,
    passphrase: &PassphraseArg,
    which: &str,
) -> Result<Box<dyn CardChannel>, CliError> {
    CardSource { image: image.clone(), reader: reader.clone() }
        .open(passphrase)
        .map_err(|e| CliError::new(e.exit, format!("{which} card: {e}")))
}

/// `tessera vault issue`
#[derive(Debug, Args)]
pub struct IssueArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// Number of key-group components (1 to 8).
    #[arg(long, default_value_t = 2)]
    components: u8,
    /// How many of them (the first slots) the issuer sets; the holder sets the rest.
    #[arg(long, default_value_t = 1)]
    issuer_slots: u8,
    /// Generate the key pair at issuance and give it to both cards (¶0109).
    #[arg(long)]
    key_at_issuance: bool,
    /// File with the cards' card-management SCP03 keys: `ENC MAC DEK KVN` in hex.
    #[arg(long, value_name = "F")]
    isd_keys: PathBuf,
}

/// `tessera vault backup`
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// File with the holder's components, one `SLOT HEX64` per line (entered by the holder,
    /// ¶0103). Keep it offline: re-running after a failure needs the same values.
    #[arg(long, value_name = "F")]
    holder_components: Option<PathBuf>,
    #[command(flatten)]
    pin: PinArg,
}

/// `tessera vault recover`
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Reader holding the backup card.
    #[arg(long, value_name = "READER", conflicts_with = "backup_image")]
    backup: Option<String>,
    /// Card image of the backup card.
    #[arg(long, value_name = "F")]
    backup_image: Option<PathBuf>,
    /// Reader holding the new card.
    #[arg(long, value_name = "READER", conflicts_with = "new_image")]
    new: Option<String>,
    /// Card image of the new card.
    #[arg(long, value_name = "F")]
    new_image: Option<PathBuf>,
    /// The new card's recipient, instead of the new card itself.
    #[arg(long, value_name = "age1tag1…", conflicts_with_all = ["new", "new_image"])]
    new_recipient: Option<String>,
    /// Peers' recipient lists to search for the old recipient (reported, not changed).
    #[arg(long, value_name = "F")]
    peers: Vec<PathBuf>,
    /// Files flushed together (fsync batch; each holds an open file until its batch ends).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[command(flatten)]
    passphrase: PassphraseArg,
    #[command(flatten)]
    pin: PinArg,
    /// The age files to recover.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

impl From<VaultError> for CliError {
    fn from(err: VaultError) -> Self {
        match err {
            VaultError::Channel(e) => e.into(),
            VaultError::Refused { .. } => CliError::new(Exit::CardSaidNo, err.to_string()),
            VaultError::File(_) => CliError::new(Exit::Other, err.to_string()),
            _ => CliError::new(Exit::CardSaidNo, err.to_string()),
        }
    }
}

/// Runs a `tessera vault` subcommand.
pub fn run(cmd: VaultCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        VaultCommand::Status { source, passphrase } => {
            let mut card = VaultCard::select(source.open(&passphrase)?)?;
            let st = card.status()?;
            let pk = if st.key.is_some() { Some(card.public_key()?) } else { None };
            let recipient = pk.as_ref().map(files::recipient_string).transpose()?;
            let slots: Vec<String> = st
                .components
                .iter()
                .enumerate()
                .map(|(i, c)| match c {
                    None => format!("  slot {}: empty", i + 1),
                    Some((s, kcv)) => {
                        format!("  slot {}: set by {s:?} (check {})", i + 1, hex::encode(kcv))
                    }
                })
                .collect();
            out.emit(
                || {
                    format!(
                        "role: {:?}\ncomponents: {}\n{}\nkey group check: {}\nkey: {}\nrecipient: {}\nexport pending: {}\nbackup created: {}\nexport locked: {}",
                        st.config.role,
                        st.config.components,
                        slots.join("\n"),
                        st.group_check.map(hex::encode).unwrap_or_else(|| "(incomplete)".into()),
                        st.key.map(|k| format!("{k:?}")).unwrap_or_else(|| "none".into()),
                        recipient.clone().unwrap_or_else(|| "none".into()),
                        st.export_pending,
                        st.backup_created,
                        st.export_locked,
                    )
                },
                || {
                    json!({
                        "role": format!("{:?}", st.config.role),
                        "components": st.components.iter().map(|c| c.map(|(s, k)| json!({"setter": format!("{s:?}"), "check": hex::encode(k)}))).collect::<Vec<_>>(),
                        "group_check": st.group_check.map(hex::encode),
                        "key": st.key.map(|k| format!("{k:?}")),
                        "recipient": recipient,
                        "export_pending": st.export_pending,
                        "backup_created": st.backup_created,
                        "export_locked": st.export_locked,
                    })
                },
            );
            Ok(())
        }
        VaultCommand::Recipient { source, passphrase } => {
            let mut card = VaultCard::select(source.open(&passphrase)?)?;
            let r = files::recipient_string(&card.public_key()?)?;
            out.emit(|| r.clone(), || json!({ "recipient": r }));
            Ok(())
        }
        VaultCommand::Issue(args) => issue(args, out),
        VaultCommand::Backup(args) => run_backup(args, out),
        VaultCommand::LockExport { source, passphrase, pin } => {
            let mut card = VaultCard::select(source.open(&passphrase)?)?;
            card.verify_pin(pin.read()?.as_bytes())?;
            card.lock_export()?;
            out.emit(|| "export locked for good".into(), || json!({ "export_locked": true }));
            Ok(())
        }
        VaultCommand::Recover(args) => recover(args, out),
        VaultCommand::Provision(args) => provision(args, out),
    }
}

fn read_isd_keys(path: &PathBuf) -> Result<StaticKeys, CliError> {
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CliError::new(Exit::Other, format!("cannot read {}: {e}", path.display()))
        })?);
    let words: Vec<&str> = text.split_whitespace().collect();
    let bad = || CliError::usage(format!("{}: expected `ENC MAC DEK KVN` in hex", path.display()));
    let [enc, mac, dek, kvn] = words.as_slice() else { return Err(bad()) };
    let key = |h: &str| {
        let bytes = Zeroizing::new(hex::decode(h).map_err(|_| bad())?);
        AesKey::from_slice(&bytes).map_err(|_| bad())
    };
    let kvn = u8::from_str_radix(kvn, 16).map_err(|_| bad())?;
    StaticKeys::new(key(enc)?, key(mac)?, key(dek)?, kvn).map_err(|_| bad())
}

fn issue(args: IssueArgs, out: Output) -> Result<(), CliError> {
    let keys = read_isd_keys(&args.isd_keys)?;
    let mut plan = Plan::shared(args.components, args.issuer_slots)
        .map_err(|e| CliError::usage(e.to_string()))?;
    if args.key_at_issuance {
        plan = plan.with_key_at_issuance();
    }
    let p = &args.pair;
    let mut main = open(&p.main, &p.main_image, &p.passphrase, "main")?;
    let mut backup = open(&p.backup, &p.backup_image, &p.passphrase, "backup")?;
    let secrets = issuance::issue_pair(&mut main, &keys, &mut backup, &keys, &plan, &mut OsRng)?;
    // The issuer's components exist only in this process; they are dropped (zeroised) here.
    let issued = secrets.components.len();
    drop(secrets);
    let holder = plan.holder_slots();
    out.emit(
        || {
            format!(
                "issued a main and a backup card: {} components, {issued} set by the issuer \
                 (never stored), holder slots {holder:?}{}",
                plan.components,
                if plan.key_at_issuance { "; key pair given to both at issuance" } else { "" }
            )
        },
        || json!({ "components": plan.components, "issuer_slots": plan.issuer_slots, "holder_slots": holder, "key_at_issuance": plan.key_at_issuance }),
    );
    Ok(())
}

fn read_holder(path: &Option<PathBuf>) -> Result<Vec<(u8, [u8; 32])>, CliError> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CliError::new(Exit::Other, format!("cannot read {}: {e}", path.display()))
        })?);
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad =
            || CliError::usage(format!("{}:{}: expected `SLOT HEX64`", path.display(), n + 1));
        let mut words = line.split_whitespace();
        let slot: u8 = words.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let value = Zeroizing::new(words.next().and_then(|h| hex::decode(h).ok()).ok_or_else(bad)?);
        out.push((slot, value.as_slice().try_into().map_err(|_| bad())?));
    }
    Ok(out)
}

/// `tessera vault provision`: the card's sync, through which the server delivers the key.
fn provision(args: ProvisionArgs, out: Output) -> Result<(), CliError> {
    let mut channel = args.source.open(&args.passphrase)?;
    let report = tessera_server::cli::run_sync(&args.server, |apdu| {
        let command = tessera_apdu::Command::parse(apdu)
            .map_err(|e| format!("server sent a malformed APDU: {e}"))?;
        channel.transmit(&command).map(|r| r.to_bytes()).map_err(|e| e.to_string())
    })
    .map_err(crate::server::cli_error)?;
    let message = report.json["outcome"]["message"].as_str().unwrap_or_default();
    let delivered = ["vault key: delivered", "vault key: already on the card"];
    if !delivered.iter().any(|d| message.contains(d)) {
        let why = if message.contains("vault key:") {
            ""
        } else {
            "\nno vault key was pending for this card"
        };
        return Err(CliError::new(Exit::Other, format!("{}{why}", report.human)));
    }
    out.emit(|| report.human.clone(), || report.json.clone());
    Ok(())
}

fn run_backup(args: BackupArgs, out: Output) -> Result<(), CliError> {
    let holder = read_holder(&args.holder_components)?;
    let pin = args.pin.read()?;
    let p = &args.pair;
    let mut main = VaultCard::select(open(&p.main, &p.main_image, &p.passphrase, "main")?)?;
    let mut backup = VaultCard::select(open(&p.backup, &p.backup_image, &p.passphrase, "backup")?)?;
    main.verify_pin(pin.as_bytes())?;
    backup.verify_pin(pin.as_bytes())?;
    let report = backup::run(&mut main, &mut backup, &holder)?;
    let recipient = report.public_key.as_ref().map(files::recipient_string).transpose()?;
    out.emit(
        || {
            format!(
                "{}\nrecipient: {}",
                report.steps.join("\n"),
                recipient.clone().unwrap_or_default()
            )
        },
        || json!({ "steps": report.steps, "recipient": recipient }),
    );
    Ok(())
}

fn recover(args: RecoverArgs, out: Output) -> Result<(), CliError> {
    let pin = args.pin.read()?;
    let mut backup =
        VaultCard::select(open(&args.backup, &args.backup_image, &args.passphrase, "backup")?)?;
    backup.verify_pin(pin.as_bytes())?;
    let new_pk = match &args.new_recipient {
        Some(r) => files::parse_recipient(r)?.to_sec1_bytes(),
        None => VaultCard::select(open(&args.new, &args.new_image, &args.passphrase, "new")?)?
            .public_key()?,
    };
    let old_recipient = files::recipient_string(&backup.public_key()?)?;
    let new_recipient = files::recipient_string(&new_pk)?;
    let bar = if out.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.files.len() as u64)
    };
    let reports =
        files::recover(&mut backup, &new_pk, &args.files, args.batch, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    let peers = files::peers_naming(&old_recipient, &args.peers);
    let failed = reports.iter().filter(|r| matches!(r.outcome, FileOutcome::Failed(_))).count();
    let line = |r: &files::FileReport| match &r.outcome {
        FileOutcome::Recovered => format!("recovered          {}", r.path.display()),
        FileOutcome::AlreadyRecovered => format!("already recovered  {}", r.path.display()),
        FileOutcome::NotForThisCard => format!("not for this card  {}", r.path.display()),
        FileOutcome::Failed(why) => format!("FAILED             {} ({why})", r.path.display()),
    };
    out.emit(
        || {
            let mut text: Vec<String> = reports.iter().map(line).collect();
            text.push(format!("old recipient: {old_recipient}\nnew recipient: {new_recipient}"));
            for (file, n) in &peers {
                text.push(format!("peer list naming the old recipient: {}:{n}", file.display()));
            }
            text.join("\n")
        },
        || {
            json!({
                "files": reports.iter().map(|r| json!({"path": r.path, "outcome": format!("{:?}", r.outcome)})).collect::<Vec<_>>(),
                "old_recipient": old_recipient,
                "new_recipient": new_recipient,
                "peers": peers.iter().map(|(f, n)| json!({"file": f, "line": n})).collect::<Vec<_>>(),
            })
        },
    );
    if failed > 0 {
        return Err(CliError::new(
            Exit::Other,
            format!("{failed} file(s) not recovered (unchanged); run again"),
        ));
    }
    Ok(())
}
