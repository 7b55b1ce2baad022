//! `tessera file bench`: `tessera file encrypt|decrypt` against rage on the same files, and
//! `tessera vault recover` against decrypting and re-encrypting with rage, in the same run.
//! Numbers, not tests: nothing here asserts a speed. Large files are made here and removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tessera_card::applets::isd;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::rng::{OsRng, Rng};
use tessera_host::InProcessChannel;
use tessera_host::vault::files;
use tessera_host::vault::issuance::{self, Plan};
use tessera_host::vault::{VaultCard, backup};

use crate::Output;
use crate::error::{CliError, Exit};

const MIB: u64 = 1 << 20;

/// Arguments of `tessera file bench`.
#[derive(Debug, Args)]
pub struct FilesBenchArgs {
    /// Sizes (MiB) of the single-file encrypt/decrypt runs.
    #[arg(long, value_delimiter = ',', default_value = "1,1024")]
    sizes: Vec<u64>,
    /// Number of 1 MiB files in the recovery run (0 skips it).
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Rounds of the recovery run, each on fresh files (the best of each side is reported,
    /// with every round's times).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Work directory (default: a new directory under the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The rage binary.
    #[arg(long, default_value = "rage")]
    rage: PathBuf,
}

/// A path as a command-line argument.
fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Other, e.to_string())
}

struct Direct<'a>(&'a mut Card);
impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// A card image with an issued card-management applet (the scenario keys and PIN 1234).
fn issued_image(path: &Path) -> Result<InProcessChannel<Card>, CliError> {
    let _ = std::fs::remove_file(path);
    let mut card = Card::create(path, CardOptions::default())?;
    card.power_on();
    isd::scenarios::personalize(&mut Script::new(&mut Direct(&mut card)))
        .map_err(|e| other(format!("{e:?}")))?;
    Ok(InProcessChannel::new(card))
}

/// Main and backup card images (backed up) and a new card image; their recipients.
fn make_cards(dir: &Path) -> Result<(String, String), CliError> {
    let keys = isd::scenarios::issued_keys();
    let pin = isd::scenarios::PIN;
    let (mut m, mut b) =
        (issued_image(&dir.join("main.img"))?, issued_image(&dir.join("backup.img"))?);
    issuance::issue_pair(
        &mut m,
        &keys,
        &mut b,
        &keys,
        &Plan::issuer_sets_all(1).map_err(other)?,
        &mut OsRng,
    )?;
    let (mut main, mut bk) = (VaultCard::select(m)?, VaultCard::select(b)?);
    main.verify_pin(pin)?;
    bk.verify_pin(pin)?;
    let report = backup::run(&mut main, &mut bk, &[])?;
    let old = files::recipient_string(&report.public_key.ok_or_else(|| other("no key"))?)?;
    drop((main, bk));
    let (mut n, mut nb) =
        (issued_image(&dir.join("new.img"))?, issued_image(&dir.join("new-b.img"))?);
    issuance::issue_pair(
        &mut n,
        &keys,
        &mut nb,
        &keys,
        &Plan::issuer_sets_all(1).map_err(other)?,
        &mut OsRng,
    )?;
    let mut new = VaultCard::select(n)?;
    new.verify_pin(pin)?;
    let new_recipient = files::recipient_string(&new.generate()?)?;
    Ok((old, new_recipient))
}

fn run_timed(cmd: &mut Command) -> Result<Duration, CliError> {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| other(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        return Err(other(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(elapsed)
}

/// The best of `n` timings of `f`; before each, the files in `settle` that exist are flushed,
/// so no run pays for the write-back of what an earlier one (or the setup) wrote.
fn best_of(
    n: usize,
    settle: &[&Path],
    mut f: impl FnMut() -> Result<Duration, CliError>,
) -> Result<Duration, CliError> {
    let mut best = Duration::MAX;
    for _ in 0..n {
        for p in settle {
            if let Ok(file) = std::fs::File::open(p) {
                file.sync_all().map_err(other)?;
            }
        }
        best = best.min(f()?);
    }
    Ok(best)
}

fn write_random(path: &Path, size: u64) -> Result<(), CliError> {
    use std::io::Write;
    let mut block = vec![0u8; MIB as usize];
    OsRng.fill_random(&mut block);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(other)?);
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&block[..n]).map_err(other)?;
        block.rotate_left(1);
        left -= n as u64;
    }
    f.flush().map_err(other)
}

/// Runs the benchmark.
pub fn run(args: FilesBenchArgs, out: Output) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(other)?;
    let bin_dir = exe.parent().ok_or_else(|| other("no executable directory"))?.to_path_buf();
    let plugin = bin_dir.join("age-plugin-tessera");
    if !plugin.is_file() {
        return Err(other(format!(
            "{} not found: build it next to tessera (cargo build -p age-plugin-tessera)",
            plugin.display()
        )));
    }
    let path_env = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tessera-file-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).map_err(other)?;
    let result = bench(&args, &exe, &plugin, &path_env, &dir, out);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn bench(
    args: &FilesBenchArgs,
    exe: &Path,
    plugin: &Path,
    path_env: &str,
    dir: &Path,
    out: Output,
) -> Result<(), CliError> {
    let (recipient, new_recipient) = make_cards(dir)?;
    let identity = |image: &str| -> Result<PathBuf, CliError> {
        let o = Command::new(plugin)
            .args(["--identity", "--image"])
            .arg(dir.join(image))
            .output()
            .map_err(other)?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("AGE-PLUGIN-TESSERA-1"))
            .ok_or_else(|| other("no identity"))?;
        let p = dir.join(format!("{image}.identity"));
        std::fs::write(&p, format!("{line}\n")).map_err(other)?;
        Ok(p)
    };
    let main_id = identity("main.img")?;
    let backup_id = identity("backup.img")?;
    let tools = Tools { exe, rage: &args.rage, path_env };
    let main_img = arg(&dir.join("main.img"));
    let mut rows: Vec<Value> = Vec::new();
    let mut lines = Vec::new();
    for &mib in &args.sizes {
        let input = dir.join(format!("in-{mib}"));
        write_random(&input, mib * MIB)?;
        let (te, re, td, rd) =
            (dir.join("t.age"), dir.join("r.age"), dir.join("t.out"), dir.join("r.out"));
        let reps = if mib <= 16 { 5 } else { 3 };
        let settle: [&Path; 5] = [&input, &te, &re, &td, &rd];
        let t_enc = best_of(reps, &settle, || {
            run_timed(&mut tools.tessera(&[
                "file",
                "encrypt",
                "-r",
                &recipient,
                "-o",
                &arg(&te),
                &arg(&input),
            ]))
        })?;
        let r_enc = best_of(reps, &settle, || {
            run_timed(&mut tools.rage(&["-e", "-r", &recipient, "-o", &arg(&re), &arg(&input)]))
        })?;
        let t_dec = best_of(reps, &settle, || {
            run_timed(&mut tools.tessera(&[
                "file",
                "decrypt",
                "--image",
                &main_img,
                "-o",
                &arg(&td),
                &arg(&te),
            ]))
        })?;
        let r_dec = best_of(reps, &settle, || {
            run_timed(&mut tools.rage(&["-d", "-i", &arg(&main_id), "-o", &arg(&rd), &arg(&re)]))
        })?;
        for p in [&input, &te, &re, &td, &rd] {
            let _ = std::fs::remove_file(p);
        }
        let mbps = |d: Duration| mib as f64 / d.as_secs_f64();
        lines.push(format!(
            "{mib:>5} MiB  encrypt: tessera {:>8.1} MiB/s, rage {:>8.1} MiB/s, ratio {:.2}x   decrypt (through the card): tessera {:>8.1} MiB/s, rage+plugin {:>8.1} MiB/s, ratio {:.2}x",
            mbps(t_enc), mbps(r_enc), r_enc.as_secs_f64() / t_enc.as_secs_f64(),
            mbps(t_dec), mbps(r_dec), r_dec.as_secs_f64() / t_dec.as_secs_f64(),
        ));
        rows.push(json!({
            "mib": mib,
            "encrypt_s": {"tessera": t_enc.as_secs_f64(), "rage": r_enc.as_secs_f64()},
            "decrypt_s": {"tessera": t_dec.as_secs_f64(), "rage": r_dec.as_secs_f64()},
        }));
    }
    let mut recovery = Value::Null;
    if args.files > 0 {
        let mut rounds = Vec::new();
        for round in 0..args.rounds.max(1) {
            let round_dir = dir.join(format!("rec-{round}"));
            let round = recovery_round(
                &tools,
                args.files,
                round_dir,
                &recipient,
                &new_recipient,
                &backup_id,
            );
            rounds.push(round?);
        }
        let best =
            |f: fn(&RecoveryRound) -> f64| rounds.iter().map(f).fold(f64::INFINITY, f64::min);
        let (t, r, rf) = (best(|x| x.tessera), best(|x| x.rage), best(|x| x.rage_flushed));
        let each = rounds
            .iter()
            .map(|x| format!("{:.2}/{:.2}/{:.2}", x.tessera, x.rage, x.rage_flushed))
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(format!(
            "recovery of {} files of 1 MiB, best of {}: tessera vault recover {t:.2} s, rage decrypt + re-encrypt {r:.2} s, ratio {:.1}x; with rage's files flushed too {rf:.2} s, ratio {:.1}x (each round, tessera/rage/rage flushed: {each})",
            args.files,
            rounds.len(),
            r / t,
            rf / t,
        ));
        recovery = json!({
            "files": args.files,
            "tessera_s": t,
            "rage_s": r,
            "rage_flushed_s": rf,
            "rounds": rounds.iter().map(|x| json!({"tessera_s": x.tessera, "rage_s": x.rage, "rage_flushed_s": x.rage_flushed})).collect::<Vec<_>>(),
        });
    }
    out.emit(|| lines.join("\n"), || json!({ "files": rows, "recovery": recovery }));
    Ok(())
}

/// One round's times (seconds) of the recovery comparison.
struct RecoveryRound {
    tessera: f64,
    rage: f64,
    rage_flushed: f64,
}

/// The commands the benchmark times.
struct Tools<'a> {
    /// This `tessera` binary.
    exe: &'a Path,
    /// The rage binary.
    rage: &'a Path,
    /// `PATH` with `age-plugin-tessera`'s directory first.
    path_env: &'a str,
}

impl Tools<'_> {
    fn tessera(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.exe);
        c.args(args).env("TESSERA_PIN", "1234");
        c
    }

    fn rage(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.rage);
        c.args(args).env("TESSERA_PIN", "1234").env("PATH", self.path_env);
        c
    }
}

/// One round of the recovery comparison on fresh files in `dir` (removed afterwards): `files`
/// files of 1 MiB encrypted to `recipient`, written twice (one copy for each side) and flushed;
/// then `tessera vault recover` with the backup card image (`backup.img` beside `dir`) on one
/// copy and, per file, rage decrypting with the backup card's plugin identity and re-encrypting
/// to `new_recipient`, then a rename, on the other.
fn recovery_round(
    tools: &Tools<'_>,
    files: usize,
    dir: PathBuf,
    recipient: &str,
    new_recipient: &str,
    backup_id: &Path,
) -> Result<RecoveryRound, CliError> {
    let (a, b) = (dir.join("tessera"), dir.join("rage"));
    std::fs::create_dir_all(&a).map_err(other)?;
    std::fs::create_dir_all(&b).map_err(other)?;
    let result = (|| {
        let pk = files::parse_recipient(recipient)?.to_sec1_bytes();
        let mut block = vec![0u8; MIB as usize];
        let mut list_a = Vec::new();
        let mut list_b = Vec::new();
        for i in 0..files {
            OsRng.fill_random(&mut block[..64]);
            let mut enc = Vec::with_capacity(block.len() + 4096);
            files::encrypt(&[pk], block.as_slice(), &mut enc)?;
            let (pa, pb) = (a.join(format!("{i}.age")), b.join(format!("{i}.age")));
            std::fs::write(&pa, &enc).map_err(other)?;
            std::fs::write(&pb, &enc).map_err(other)?;
            list_a.push(arg(&pa));
            list_b.push(pb);
        }
        // The setup's writes reach the disk before anything is timed, so neither side pays for
        // the other's (tessera runs first and would otherwise share the disk with their
        // write-back).
        for p in list_a.iter().map(PathBuf::from).chain(list_b.iter().cloned()) {
            std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(other)?;
        }
        let backup_img = arg(&dir.with_file_name("backup.img"));
        let mut cmd = tools.tessera(&[
            "vault",
            "recover",
            "--backup-image",
            &backup_img,
            "--new-recipient",
            new_recipient,
            "--json",
        ]);
        cmd.args(&list_a);
        let t_rec = run_timed(&mut cmd)?;
        let start = Instant::now();
        for p in &list_b {
            let tmp = p.with_extension("new");
            let mut dec = tools
                .rage(&["-d", "-i", &arg(backup_id), &arg(p)])
                .stdout(Stdio::piped())
                .spawn()
                .map_err(other)?;
            let stdin = dec.stdout.take().ok_or_else(|| other("rage stdout"))?;
            let enc_status = tools
                .rage(&["-e", "-r", new_recipient, "-o", &arg(&tmp)])
                .stdin(stdin)
                .status()
                .map_err(other)?;
            let dec_status = dec.wait().map_err(other)?;
            if !enc_status.success() || !dec_status.success() {
                return Err(other(format!("rage failed on {}", p.display())));
            }
            std::fs::rename(&tmp, p).map_err(other)?;
        }
        let r_rec = start.elapsed();
        // rage never flushes; recovery does (every new file and its directory before the
        // rename is trusted). The same flushes after rage's run give the durable comparison.
        for p in &list_b {
            std::fs::File::open(p).and_then(|f| f.sync_all()).map_err(other)?;
        }
        std::fs::File::open(&b).and_then(|d| d.sync_all()).map_err(other)?;
        let r_durable = start.elapsed();
        Ok(RecoveryRound {
            tessera: t_rec.as_secs_f64(),
            rage: r_rec.as_secs_f64(),
            rage_flushed: r_durable.as_secs_f64(),
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
