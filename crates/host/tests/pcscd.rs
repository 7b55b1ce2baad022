//! The virtual card behind a real pcscd: served through vpcd, reached by opensc-tool and by
//! the PC/SC channel, surviving a pcscd restart.
//!
//! Each test starts its own pcscd (with Debian's vpcd reader configuration) and stops it at the
//! end; [`Pcscd`] holds a machine-wide file lock, so tests that need pcscd run one at a time
//! under `cargo test` (threads) and `cargo nextest run` (processes) alike. When pcscd, the vpcd
//! driver or opensc-tool is missing the tests fail under `CI=true` and are skipped with a
//! notice otherwise.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command as Process;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tessera_apdu::{Command, StatusWord};
use tessera_card::{Card, CardOptions, OpenOptions};
use tessera_host::pcscd::{self, MachineLock, Pcscd, card_present};
use tessera_host::vpcd::{BridgeConfig, SECOND_SLOT_PORT, VpcdBridge};
use tessera_host::{CardChannel, ChannelError, EchoCard, PcscChannel, VirtualCard};

const SLOT_0: &str = "Virtual PCD 00 00";
const SLOT_1: &str = "Virtual PCD 00 01";
const ISD_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Fails under CI, otherwise prints a notice; the caller returns.
fn unavailable(what: &str) {
    if in_ci() {
        panic!("CI=true and {what}: install pcscd, vsmartcard-vpcd and opensc (scripts/test does)");
    }
    eprintln!("NOTICE: skipping pcscd test: {what}");
}

/// Starts a private pcscd, or reports why it cannot (see the module docs).
fn start_pcscd() -> Option<Pcscd> {
    start_pcscd_with(&[])
}

/// Like [`start_pcscd`], with extra vpcd readers `(name, port)`.
fn start_pcscd_with(extra_readers: &[(&str, u16)]) -> Option<Pcscd> {
    if pcscd::find_program("opensc-tool").is_none() {
        unavailable("opensc-tool is not installed");
        return None;
    }
    Pcscd::start_for_test(extra_readers)
}

/// A card served to vpcd from a thread, stopped when dropped.
struct Served {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Served {
    fn start<C: VirtualCard + 'static>(
        port: u16,
        make: impl FnOnce() -> C + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let config = BridgeConfig { port, ..BridgeConfig::default() };
        let thread = std::thread::spawn(move || {
            let mut bridge = VpcdBridge::new(make(), config);
            bridge.run(&flag).unwrap();
            bridge.apdus_served()
        });
        Self { stop, thread: Some(thread) }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
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

#[track_caller]
fn wait_until(what: &str, timeout: Duration, ok: impl FnMut() -> bool) {
    assert!(pcscd::wait_until(timeout, ok), "timed out after {timeout:?} waiting for {what}");
}

fn opensc_tool(args: &[&str]) -> String {
    let out = Process::new("opensc-tool").args(args).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "opensc-tool {args:?} failed: {text}");
    text
}

fn make_image(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("card.img");
    drop(Card::create(&path, CardOptions::default()).unwrap());
    path
}

fn select_isd() -> Command {
    Command::new(0x00, 0xA4, 0x04, 0x00).with_data(ISD_AID).with_le(256)
}

#[test]
fn card_image_served_through_vpcd_is_a_card_in_a_reader() {
    let Some(mut daemon) = start_pcscd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path());
    let served = Served::start(tessera_host::vpcd::DEFAULT_PORT, move || {
        Card::open(&image, OpenOptions::default()).unwrap()
    });
    wait_until("the card in slot 0", Duration::from_secs(10), || card_present(SLOT_0));

    // Any PC/SC program sees it: opensc-tool lists the reader with a card...
    let listing = opensc_tool(&["-l"]);
    let line = listing.lines().find(|l| l.contains(SLOT_0)).expect("reader listed");
    assert!(line.contains("Yes"), "no card shown in: {listing}");
    // ...and reaches the card-management applet.
    let answer = opensc_tool(&["-r", SLOT_0, "-s", "00A4040008A000000151000000"]);
    assert!(answer.contains("SW1=0x90, SW2=0x00"), "SELECT failed: {answer}");

    // The PC/SC channel drives it.
    let mut channel = PcscChannel::connect(Some(SLOT_0)).unwrap();
    assert_eq!(channel.atr().unwrap(), tessera_card::ATR);
    assert_eq!(channel.transmit(&select_isd()).unwrap().sw, StatusWord::SUCCESS);
    let challenge = Command::new(0x00, 0x84, 0x00, 0x00).with_le(8);
    let a = channel.transmit(&challenge).unwrap();
    let b = channel.transmit(&challenge).unwrap();
    assert_eq!((a.sw, a.data.len()), (StatusWord::SUCCESS, 8));
    assert_eq!((b.sw, b.data.len()), (StatusWord::SUCCESS, 8));
    assert_ne!(a.data, b.data, "two challenges must differ");
    // A warm reset through pcscd: the ATR again, and the card still answers.
    assert_eq!(channel.reset().unwrap(), tessera_card::ATR);
    assert_eq!(channel.transmit(&select_isd()).unwrap().sw, StatusWord::SUCCESS);
    // Without a reader name, the first reader with a card is used.
    assert_eq!(PcscChannel::connect(None).unwrap().reader(), SLOT_0);

    // pcscd restarts: the old handle is dead, the card comes back by itself.
    daemon.restart().unwrap();
    assert!(channel.transmit(&challenge).is_err(), "a handle from the old pcscd still works");
    wait_until("the card after the restart", Duration::from_secs(15), || card_present(SLOT_0));
    channel.reconnect().unwrap();
    assert_eq!(channel.transmit(&select_isd()).unwrap().sw, StatusWord::SUCCESS);
    let c = channel.transmit(&challenge).unwrap();
    assert_eq!((c.sw, c.data.len()), (StatusWord::SUCCESS, 8));

    drop(channel);
    assert!(served.stop() >= 7, "the bridge counted fewer APDUs than were sent");
    wait_until("the card to leave", Duration::from_secs(10), || !card_present(SLOT_0));
}

#[test]
fn second_slot_serves_a_second_card() {
    let Some(_daemon) = start_pcscd() else { return };
    let served = Served::start(SECOND_SLOT_PORT, EchoCard::new);
    wait_until("the card in slot 1", Duration::from_secs(10), || card_present(SLOT_1));
    assert!(!card_present(SLOT_0), "slot 0 must stay empty");
    let mut channel = PcscChannel::connect(Some(SLOT_1)).unwrap();
    let echo =
        channel.transmit(&Command::new(0x00, 0x01, 0x00, 0x00).with_data([1, 2, 3])).unwrap();
    assert_eq!((echo.sw, echo.data), (StatusWord::SUCCESS, vec![1, 2, 3]));
    // An extended-length command and response pass through pcscd and vpcd whole.
    let big: Vec<u8> = (0..1000u16).map(|i| i as u8).collect();
    let echo = channel
        .transmit(&Command::new(0x00, 0x01, 0x00, 0x00).with_data(big.clone()).with_le(65536))
        .unwrap();
    assert_eq!((echo.sw, echo.data), (StatusWord::SUCCESS, big));
    // Naming an empty or unknown reader is a clear error.
    assert!(matches!(PcscChannel::connect(Some(SLOT_0)), Err(ChannelError::NoCardInReader(_))));
    assert!(matches!(
        PcscChannel::connect(Some("No Such Reader")),
        Err(ChannelError::UnknownReader(_))
    ));
    drop(channel);
    served.stop();
}

#[test]
fn an_extra_reader_adds_two_independent_slots() {
    let Some(daemon) = start_pcscd_with(&[("Virtual PCD 2", 35965)]) else { return };
    assert_eq!(daemon.extra_readers(), [("Virtual PCD 2".to_owned(), 35965)]);
    let names: Vec<String> =
        tessera_host::list_readers().unwrap().into_iter().map(|r| r.name).collect();
    for slot in [SLOT_0, SLOT_1, "Virtual PCD 2 00 00", "Virtual PCD 2 00 01"] {
        assert!(names.iter().any(|n| n == slot), "{slot} missing from {names:?}");
    }
    // The second slot of the extra reader is port 35966, and only that slot holds the card
    // (with a shared driver instance it would show in "Virtual PCD 00 01" too).
    let served = Served::start(35966, EchoCard::new);
    wait_until("the card in the extra reader", Duration::from_secs(10), || {
        card_present("Virtual PCD 2 00 01")
    });
    for _ in 0..10 {
        assert!(!card_present(SLOT_1), "the extra reader's card shows in {SLOT_1}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut channel = PcscChannel::connect(Some("Virtual PCD 2 00 01")).unwrap();
    for i in 0..50u8 {
        let rsp = channel.transmit(&Command::new(0x00, 0x01, 0x00, 0x00).with_data([i])).unwrap();
        assert_eq!((rsp.sw, rsp.data), (StatusWord::SUCCESS, vec![i]));
    }
    drop(channel);
    served.stop();
}

#[test]
fn missing_pcscd_is_reported_with_what_to_do() {
    let _lock = MachineLock::acquire().unwrap();
    if pcscd::is_running() {
        unavailable("a system pcscd is running, so its absence cannot be tested");
        return;
    }
    let err = PcscChannel::connect(None).unwrap_err();
    assert!(matches!(err, ChannelError::NoService), "{err:?}");
    assert!(err.to_string().contains("pcscd is not running: start it with"), "{err}");
    assert!(matches!(tessera_host::list_readers(), Err(ChannelError::NoService)));
}
