//! `tessera bench apdu`: APDU round trips per second, each beside a baseline measured in the
//! same run. Numbers, not tests: nothing here asserts a speed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tessera_apdu::{Command, StatusWord};
use tessera_card::{Card, CardOptions};
use tessera_host::pcscd::{self, Pcscd};
use tessera_host::vpcd::{BridgeConfig, DEFAULT_PORT, SECOND_SLOT_PORT, VpcdBridge};
use tessera_host::{CardChannel, EchoCard, InProcessChannel, PcscChannel, VirtualCard};

use crate::Output;
use crate::card::info::ISD_AID;
use crate::error::{CliError, Exit};

/// The pyscard client, embedded so the benchmark runs from any directory.
const PYSCARD_SCRIPT: &str = include_str!("../../../scripts/bench/pyscard_roundtrips.py");

/// `tessera bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// APDU round trips per second: in process, and through pcscd + vpcd with --pcsc.
    Apdu(ApduBenchArgs),
    /// Secure terminal: authentication against setup, protected against plain APDUs.
    Pairing(crate::service::PairingBenchArgs),
}

/// Arguments of `tessera bench apdu`.
#[derive(Debug, Args)]
pub struct ApduBenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Also measure through pcscd and vpcd: the tessera card, the echo card and vsmartcard's
    /// vicc, from tessera's PC/SC client and from pyscard. Needs pcscd with the vpcd driver
    /// (see --start-pcscd) and vpcd's two slots (ports 35963 and 35964) free.
    #[arg(long)]
    pcsc: bool,
    /// Start a private pcscd for the PC/SC measurements (none may be running).
    #[arg(long, requires = "pcsc")]
    start_pcscd: bool,
    /// Python interpreter that has pyscard (Debian's python3-pyscard).
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/python3")]
    python: PathBuf,
}

/// Runs a `tessera bench` subcommand.
pub fn run(cmd: BenchCommand, out: Output) -> Result<(), CliError> {
    let args = match cmd {
        BenchCommand::Apdu(args) => args,
        BenchCommand::Pairing(args) => return crate::service::bench(args, out),
    };
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err(CliError::usage("--seconds must be between 0 and 600"));
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let mut report = Vec::new();

    say(out, "In process, one core: SELECT + GET CHALLENGE pairs per second");
    let echo = in_process_pairs(EchoCard::new(), duration)?;
    let card = in_process_pairs(Card::in_memory(CardOptions::default()), duration)?;
    say(out, &format!("  echo card     {echo:>12.0} pairs/s"));
    say(out, &format!("  tessera card  {card:>12.0} pairs/s  ({:.2} of echo)", card / echo));
    report.push(json!({
        "path": "in-process", "unit": "SELECT+GET CHALLENGE pairs/s",
        "echo": echo, "tessera": card, "tessera_over_echo": card / echo,
    }));

    if args.pcsc {
        let _daemon = if args.start_pcscd {
            Some(Pcscd::start().map_err(|e| CliError::new(Exit::Transport, e.to_string()))?)
        } else {
            None
        };
        report.extend(pcsc_section(&args, duration, out)?);
    }
    out.emit(String::new, || json!(report));
    Ok(())
}

fn say(out: Output, line: &str) {
    if !out.json {
        println!("{line}");
    }
}

/// SELECT + GET CHALLENGE pairs per second through an in-process channel.
fn in_process_pairs(card: impl VirtualCard, duration: Duration) -> Result<f64, CliError> {
    let mut channel = InProcessChannel::new(card);
    let select = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(ISD_AID).with_le(256);
    let challenge = Command::new(0x00, 0x84, 0x00, 0x00).with_le(8);
    // Measure answers, not refusals.
    for cmd in [&select, &challenge] {
        let sw = channel.transmit(cmd)?.sw;
        if sw != StatusWord::SUCCESS {
            return Err(CliError::card_said_no("bench: the card refused the benchmark's APDU", sw));
        }
    }
    let mut pairs = 0u64;
    let start = Instant::now();
    loop {
        for _ in 0..256 {
            channel.transmit(&select)?;
            channel.transmit(&challenge)?;
        }
        pairs += 256;
        if start.elapsed() >= duration {
            break;
        }
    }
    Ok(pairs as f64 / start.elapsed().as_secs_f64())
}

/// A virtual card served to vpcd from a thread of this process.
struct Served {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    fn start(port: u16, make: fn() -> Box<dyn VirtualCard>) -> Self {
        Self::start_with(BridgeConfig { port, ..BridgeConfig::default() }, make)
    }

    fn start_with(config: BridgeConfig, make: fn() -> Box<dyn VirtualCard>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut bridge = VpcdBridge::new(make(), config);
            if let Err(err) = bridge.run(&flag) {
                eprintln!("bench: serving the card failed: {err}");
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// vsmartcard's Python card (`vicc`), as a child process.
struct Vicc(Child);

impl Drop for Vicc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `vicc` on vpcd's first slot.
///
/// Debian 12's vsmartcard-vpicc installs its module under `site-packages`, which Debian's
/// Python does not search, and imports the Python 2 module `sha` when PyCrypto is missing; the
/// benchmark works around both (a `PYTHONPATH` entry, a four-line `sha` shim in a temporary
/// directory) rather than requiring a patched package.
fn start_vicc(shim_dir: &Path) -> Result<Vicc, String> {
    let vicc = pcscd::find_program("vicc").ok_or("vicc not installed (vsmartcard-vpicc)")?;
    std::fs::write(
        shim_dir.join("sha.py"),
        "import hashlib\n\ndef new(data=b\"\"):\n    return hashlib.sha1(data)\n\ndigest_size = 20\n",
    )
    .map_err(|e| format!("cannot write the vicc shim: {e}"))?;
    let pythonpath = format!(
        "{}:/usr/lib/python3/site-packages/virtualsmartcard:/usr/lib/python3/site-packages",
        shim_dir.display()
    );
    let child = Process::new(vicc)
        .args(["-t", "iso7816", "-P", &DEFAULT_PORT.to_string()])
        .env("PYTHONPATH", pythonpath)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start vicc: {e}"))?;
    Ok(Vicc(child))
}

/// vpcd's first slot (port 35963).
const SLOT_0: &str = "Virtual PCD 00 00";
/// vpcd's second slot (port 35964).
const SLOT_1: &str = "Virtual PCD 00 01";

/// Waits until `reader` holds a card (`present`) or is empty (`!present`).
fn wait_for(reader: &str, present: bool, timeout: Duration) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    loop {
        let readers = tessera_host::list_readers()?;
        if readers.iter().any(|r| r.name == reader && r.card_present) == present {
            return Ok(());
        }
        if Instant::now() > deadline {
            let what = if present { "no card appeared in" } else { "the card did not leave" };
            return Err(CliError::new(
                Exit::Transport,
                format!("{what} {reader:?} in {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PC/SC connection being measured.
struct Meter {
    channel: PcscChannel,
    round_trips: u64,
    elapsed: Duration,
}

impl Meter {
    fn connect(reader: &str) -> Result<Self, CliError> {
        let mut channel = PcscChannel::connect(Some(reader))?;
        channel.transmit(&Command::new(0x00, 0xA4, 0x04, 0x00).with_data(ISD_AID).with_le(256))?;
        let sw = channel.transmit(&Command::new(0x00, 0x84, 0x00, 0x00).with_le(8))?.sw;
        if sw != StatusWord::SUCCESS {
            eprintln!("bench: the card in {reader:?} answers GET CHALLENGE with {sw}");
        }
        Ok(Self { channel, round_trips: 0, elapsed: Duration::ZERO })
    }

    /// Sends `apdu` back to back for about `burst`.
    fn burst(&mut self, apdu: &Command, burst: Duration) -> Result<(), CliError> {
        let start = Instant::now();
        loop {
            for _ in 0..16 {
                self.channel.transmit(apdu)?;
            }
            self.round_trips += 16;
            if start.elapsed() >= burst {
                break;
            }
        }
        self.elapsed += start.elapsed();
        Ok(())
    }

    fn rate(&self) -> f64 {
        self.round_trips as f64 / self.elapsed.as_secs_f64()
    }
}

/// Round trips and seconds per reader from pyscard (the embedded script run by `python`),
/// alternating bursts between `readers`.
fn pyscard_round_trips(
    python: &Path,
    readers: &[&str],
    duration: Duration,
) -> Result<Vec<(u64, f64)>, String> {
    let dir = std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let script = dir.join("pyscard_roundtrips.py");
    std::fs::write(&script, PYSCARD_SCRIPT).map_err(|e| e.to_string())?;
    let output = Process::new(python)
        .arg(&script)
        .arg(duration.as_secs_f64().to_string())
        .args(readers)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    let value: Value = serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    readers
        .iter()
        .map(|r| match (value[r]["round_trips"].as_u64(), value[r]["seconds"].as_f64()) {
            (Some(n), Some(s)) => Ok((n, s)),
            _ => Err(format!("no result for {r} in the script's output")),
        })
        .collect()
}

/// Rounds of interleaved bursts: the two cards are measured alternately, so drift on the
/// machine (other processes, CPU frequency) hits both alike.
const ROUNDS: u32 = 20;

fn pcsc_section(
    args: &ApduBenchArgs,
    duration: Duration,
    out: Output,
) -> Result<Vec<Value>, CliError> {
    if !pcscd::is_running() {
        return Err(CliError::new(
            Exit::Transport,
            "pcscd is not running: start it (`sudo systemctl start pcscd.socket`, or \
             `pcscd --foreground` in another terminal) or pass --start-pcscd",
        ));
    }
    let challenge = Command::new(0x00, 0x84, 0x00, 0x00).with_le(8);
    let mut rows = Vec::new();
    say(out, "Through pcscd + vpcd: GET CHALLENGE round trips per second");
    say(out, "  (both cards served at once, measured in alternating bursts, then slots swapped)");

    // Phase 1: echo in slot 0, tessera in slot 1; phase 2 swapped, so neither slot's own
    // speed favours one card.
    let mut echo = (0u64, Duration::ZERO);
    let mut card = (0u64, Duration::ZERO);
    let mut py: Option<[(u64, f64); 2]> = Some([(0, 0.0); 2]);
    for phase in 0..2 {
        let (echo_port, card_port, echo_slot, card_slot) = if phase == 0 {
            (DEFAULT_PORT, SECOND_SLOT_PORT, SLOT_0, SLOT_1)
        } else {
            (SECOND_SLOT_PORT, DEFAULT_PORT, SLOT_1, SLOT_0)
        };
        let echo_served = Served::start(echo_port, || Box::new(EchoCard::new()));
        let card_served =
            Served::start(card_port, || Box::new(Card::in_memory(CardOptions::default())));
        wait_for(SLOT_0, true, Duration::from_secs(10))?;
        wait_for(SLOT_1, true, Duration::from_secs(10))?;
        let mut echo_meter = Meter::connect(echo_slot)?;
        let mut card_meter = Meter::connect(card_slot)?;
        let burst = duration / (2 * ROUNDS);
        for round in 0..ROUNDS {
            // Alternate which goes first, too.
            if round % 2 == 0 {
                echo_meter.burst(&challenge, burst)?;
                card_meter.burst(&challenge, burst)?;
            } else {
                card_meter.burst(&challenge, burst)?;
                echo_meter.burst(&challenge, burst)?;
            }
        }
        echo.0 += echo_meter.round_trips;
        echo.1 += echo_meter.elapsed;
        card.0 += card_meter.round_trips;
        card.1 += card_meter.elapsed;
        drop((echo_meter, card_meter));
        if let Some(acc) = py.as_mut() {
            match pyscard_round_trips(&args.python, &[echo_slot, card_slot], duration / 2) {
                Ok(r) => {
                    for (total, (n, secs)) in acc.iter_mut().zip(r) {
                        total.0 += n;
                        total.1 += secs;
                    }
                }
                Err(e) => {
                    eprintln!("bench: pyscard measurement skipped: {e}");
                    py = None;
                }
            }
        }
        drop((echo_served, card_served));
        wait_for(SLOT_0, false, Duration::from_secs(10))?;
        wait_for(SLOT_1, false, Duration::from_secs(10))?;
    }
    let echo_rate = echo.0 as f64 / echo.1.as_secs_f64();
    let card_rate = card.0 as f64 / card.1.as_secs_f64();
    say(out, &format!("  echo card     {echo_rate:>10.0} rt/s  (tessera PC/SC client)"));
    say(
        out,
        &format!(
            "  tessera card  {card_rate:>10.0} rt/s  (tessera PC/SC client), {:.3} of echo",
            card_rate / echo_rate
        ),
    );
    rows.push(json!({
        "path": "pcscd+vpcd", "unit": "GET CHALLENGE round trips/s", "client": "tessera",
        "echo": echo_rate, "tessera": card_rate, "tessera_over_echo": card_rate / echo_rate,
    }));

    if let Some([(en, es), (cn, cs)]) = py {
        let (e, c) = (en as f64 / es, cn as f64 / cs);
        say(out, &format!("  echo card     {e:>10.0} rt/s  (pyscard)"));
        say(out, &format!("  tessera card  {c:>10.0} rt/s  (pyscard), {:.3} of echo", c / e));
        rows.push(json!({
            "path": "pcscd+vpcd", "unit": "GET CHALLENGE round trips/s", "client": "pyscard",
            "echo": e, "tessera": c, "tessera_over_echo": c / e,
        }));
    }

    // The stall vicc suffers, reproduced: the echo card with delayed ACKs left on.
    let config = BridgeConfig { quick_ack: false, ..BridgeConfig::default() };
    let slow = Served::start_with(config, || Box::new(EchoCard::new()));
    wait_for(SLOT_0, true, Duration::from_secs(15))?;
    let mut meter = Meter::connect(SLOT_0)?;
    meter.burst(&challenge, duration / 2)?;
    let stalled = meter.rate();
    drop((meter, slow));
    wait_for(SLOT_0, false, Duration::from_secs(10))?;
    say(out, &format!("  echo card     {stalled:>10.1} rt/s  (TCP_QUICKACK off: delayed ACKs)"));
    rows.push(json!({
        "path": "pcscd+vpcd", "unit": "GET CHALLENGE round trips/s", "client": "tessera",
        "echo_without_quickack": stalled,
    }));

    let shim = std::env::temp_dir().join(format!("tessera-vicc-shim-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&shim);
    match start_vicc(&shim) {
        Ok(vicc) => {
            wait_for(SLOT_0, true, Duration::from_secs(15))?;
            let mut meter = Meter::connect(SLOT_0)?;
            meter.burst(&challenge, duration)?;
            let rate = meter.rate();
            drop(meter);
            drop(vicc);
            say(out, &format!("  vicc          {rate:>10.1} rt/s  (tessera PC/SC client)"));
            say(out, &format!("  echo card / vicc: {:.0}x", echo_rate / rate));
            rows.push(json!({
                "path": "pcscd+vpcd", "unit": "GET CHALLENGE round trips/s", "client": "tessera",
                "vicc": rate, "echo_over_vicc": echo_rate / rate,
            }));
        }
        Err(e) => eprintln!("bench: vicc measurement skipped: {e}"),
    }
    let _ = std::fs::remove_dir_all(&shim);
    Ok(rows)
}
