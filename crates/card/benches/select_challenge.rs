//! SELECT + GET CHALLENGE pairs per second on one core, in process, beside a baseline that
//! only parses the APDUs and builds responses (the APDU layer without a card behind it),
//! measured in the same run. `cargo bench -p tessera-card --bench select_challenge`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tessera_apdu::{Command, Response};
use tessera_card::{Card, CardOptions};

const SELECT: [u8; 14] =
    [0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00, 0x00];
const GET_CHALLENGE: [u8; 5] = [0x00, 0x84, 0x00, 0x00, 0x08];

fn rate(mut pair: impl FnMut()) -> f64 {
    // Warm up, then run for about two seconds.
    for _ in 0..10_000 {
        pair();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..1_000 {
            pair();
        }
        n += 1_000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    assert!(card.transmit(&SELECT).ends_with(&[0x90, 0x00]));
    let echo = rate(|| {
        for apdu in [&SELECT[..], &GET_CHALLENGE[..]] {
            let cmd = Command::parse(black_box(apdu)).map(|c| Response::ok(c.data));
            black_box(cmd.map(|r| r.to_bytes()).ok());
        }
    });
    let tessera = rate(|| {
        black_box(card.transmit(black_box(&SELECT)));
        black_box(card.transmit(black_box(&GET_CHALLENGE)));
    });
    println!("baseline (parse + echo, no card): {echo:>12.0} pairs/s");
    println!(
        "tessera card SELECT + GET CHALLENGE: {tessera:>9.0} pairs/s  ({:.1}% of baseline)",
        100.0 * tessera / echo
    );
    println!("generation after the run: {} (nothing was written)", card.generation());
}
