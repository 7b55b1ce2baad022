//! Dispatch, SELECT, GET CHALLENGE, chaining, volatile state, and malformed APDUs.
#![allow(clippy::unwrap_used)]

mod common;

use common::{SELECT_ISD, card, sw, tx};
use tessera_apdu::StatusWord;
use tessera_card::{ATR, Card, CardOptions};
use tessera_crypto::rng::SeededRng;

const OK: StatusWord = StatusWord::SUCCESS;

#[test]
fn malformed_apdus_get_iso_status_words_and_change_nothing() {
    let mut c = card();
    let state = c.persistent_state();
    let generation = c.generation();
    for (apdu, want) in [
        ("", 0x6700),
        ("00", 0x6700),
        ("00A404", 0x6700),
        ("00A4040005A0000001", 0x6700), // Lc larger than the data
        ("00A4040002A0000001", 0x6700), // Lc smaller than the data (and not Le)
        ("00A404000000", 0x6700),       // extended Lc of zero
        ("FFA4040000", 0x6E00),         // CLA FF
        ("20A4040000", 0x6E00),         // reserved class
        ("01A4040008A000000151000000", 0x6881), // logical channel 1
        ("41A4040008A000000151000000", 0x6881), // further interindustry channel 5
        ("0070000001", 0x6881),         // MANAGE CHANNEL
        ("00CA004500", 0x6985),         // no applet selected
        ("0084000100", 0x6A86),         // GET CHALLENGE P1-P2
        ("00840000", 0x6700),           // GET CHALLENGE without Le
        ("00840000020102", 0x6700),     // GET CHALLENGE with data
        ("0084000000000400", 0x6700),   // GET CHALLENGE asking for 1024 bytes
        ("00A4040009A0000001510000000011", 0x6A82), // unknown AID
        ("00A4040408A000000151000000", 0x6A86), // P2 04 (FCP) unsupported
        ("00A4040108A000000151000000", 0x6A86), // P2 01 (last occurrence) unsupported
        ("00A4040011A000000151000000112233445566778899", 0x6A80), // 17-byte name
        ("00C0000000", 0x6985),         // GET RESPONSE with nothing waiting
    ] {
        assert_eq!(sw(&mut c, apdu), StatusWord(want), "{apdu}");
    }
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    for (apdu, want) in [
        ("00FF000000", 0x6D00),                                   // unknown INS
        ("80FF000000", 0x6D00),                                   // unknown proprietary INS
        ("00CA999900", 0x6A88),                                   // unknown GET DATA tag
        ("00CA00450100", 0x6700),                                 // GET DATA with data
        ("805000000401020304", 0x6700), // INITIALIZE UPDATE with a 4-byte challenge
        ("84820300100000000000000000000000000000000000", 0x6985), // EXTERNAL AUTHENTICATE first
        ("80D8008100", 0x6A80),         // PUT KEY with no data at all
        ("80E2880000", 0x6982),         // STORE DATA without a session
        ("80F0800F00", 0x6982),         // SET STATUS without a session
        ("80F0800700", 0x6A86),         // SET STATUS to a state tessera does not use
        ("002000810831323334FFFFFFFF", 0x6985), // VERIFY on a blank card (OP_READY)
        ("00200081043132333400", 0x6700), // VERIFY with a 4-byte block
        ("802000810831323334FFFFFFFF", 0x6E00), // VERIFY with a GP class
    ] {
        assert_eq!(sw(&mut c, apdu), StatusWord(want), "{apdu}");
    }
    assert_eq!(c.persistent_state(), state);
    assert_eq!(c.generation(), generation, "nothing was written");
}

#[test]
fn select_by_full_and_partial_aid_returns_fci() {
    let mut c = card();
    let r = tx(&mut c, "00A4040008A00000015100000000");
    assert_eq!(r.sw, OK);
    assert_eq!(&r.data[..12], hex::decode("6F10 8408A000000151000000".replace(' ', "")).unwrap());
    assert_eq!(sw(&mut c, "00A4040005A00000015100"), OK, "partial AID");
    assert_eq!(tx(&mut c, "00A4040C05A000000151").data, Vec::<u8>::new(), "P2 0C: no FCI");
    assert_eq!(sw(&mut c, "00A4040205A000000151"), StatusWord::NOT_FOUND, "no next occurrence");
    assert_eq!(sw(&mut c, "00A4040000"), OK, "empty name selects the ISD");
    assert_eq!(sw(&mut c, "00CA9F7000"), OK);
}

#[test]
fn get_challenge_is_random_reproducible_with_a_seed_and_cleared_at_reset() {
    let mut a = card();
    let mut b = card();
    let x = tx(&mut a, "0084000008");
    assert_eq!((x.sw, x.data.len()), (OK, 8));
    assert_eq!(tx(&mut b, "0084000008").data, x.data, "same seed, same challenge");
    let y = tx(&mut a, "0084000008");
    assert_ne!(x.data, y.data);
    assert_eq!(tx(&mut a, "0084000000").data.len(), 256);
    let mut other = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(8))));
    assert_ne!(tx(&mut other, "0084000008").data, x.data);
    // Works with or without an applet selected, and never writes.
    assert_eq!(sw(&mut a, SELECT_ISD), OK);
    let g = a.generation();
    for _ in 0..100 {
        assert_eq!(sw(&mut a, SELECT_ISD), OK);
        assert_eq!(sw(&mut a, "0084000010"), OK);
    }
    assert_eq!(a.generation(), g);
}

#[test]
fn reset_and_power_off_clear_volatile_state() {
    let mut c = card();
    assert_eq!(c.atr(), ATR);
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    assert_eq!(sw(&mut c, "00CA9F7000"), OK);
    assert_eq!(c.reset(), ATR);
    assert_eq!(sw(&mut c, "00CA9F7000"), StatusWord::CONDITIONS_NOT_SATISFIED);
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    c.power_off();
    assert_eq!(c.power_on(), ATR);
    assert_eq!(sw(&mut c, "00CA9F7000"), StatusWord::CONDITIONS_NOT_SATISFIED);
}

#[test]
fn long_responses_use_get_response_and_chains_assemble() {
    let mut c = card();
    assert_eq!(sw(&mut c, SELECT_ISD), OK);
    // Card recognition data without Le: everything waits for GET RESPONSE.
    let r = tx(&mut c, "00CA0066");
    assert_eq!(r.sw.sw1(), 0x61);
    let n = r.sw.sw2();
    let full = tx(&mut c, &format!("00C00000{n:02X}"));
    assert_eq!(full.sw, OK);
    assert_eq!(full.data[0], 0x66);
    assert_eq!(full.data.len(), n as usize);
    // A chained SELECT: first part answered 9000, the whole name selects.
    assert_eq!(sw(&mut c, "10A4040004A0000001"), OK);
    assert_eq!(sw(&mut c, "00A40400045100000000"), OK);
    assert_eq!(sw(&mut c, "00CA9F7000"), OK);
    // An interrupted chain is refused.
    assert_eq!(sw(&mut c, "10A4040004A0000001"), OK);
    assert_eq!(sw(&mut c, "00CA9F7000"), StatusWord::LAST_COMMAND_OF_CHAIN_EXPECTED);
}

#[test]
fn random_garbage_never_panics() {
    let mut c = card();
    let mut rng = SeededRng::from_u64(99);
    let state = c.persistent_state();
    for i in 0..20_000u32 {
        let mut len = [0u8; 1];
        tessera_crypto::rng::Rng::fill_random(&mut rng, &mut len);
        let mut apdu = vec![0u8; len[0] as usize % 40];
        tessera_crypto::rng::Rng::fill_random(&mut rng, &mut apdu);
        if i % 3 == 0 && apdu.len() > 2 {
            apdu[0] = [0x00, 0x80, 0x84][i as usize % 3]; // reach the applets often
        }
        if i % 50 == 0 {
            c.transmit(&hex::decode(SELECT_ISD).unwrap());
        }
        let out = c.transmit(&apdu);
        assert!(out.len() >= 2);
    }
    assert_eq!(c.persistent_state(), state, "garbage changed no persistent state");
}
