//! The fuzz harness body, shared by the `cargo fuzz` target (`fuzz/fuzz_targets/apdu.rs`) and
//! the corpus test that runs on stable Rust (`tests/corpus.rs`).

use crate::{
    CardApduLayer, Command, Exchange, ExchangeError, Response, StatusWord,
    tlv::{Tlv, encode},
};

/// Largest command data the fuzzed card accepts.
const CARD_LIMIT: usize = 2048;

/// Runs every parser of the crate over `data` and panics when an invariant breaks:
///
/// * [`Command::parse`]: a parsed command re-encodes, and the encoding parses to the same command.
/// * [`Response::parse`]: re-encoding gives back exactly `data`.
/// * BER-TLV: every object of `data`, and of its constructed objects at every depth, re-encodes
///   to bytes that parse to the same tag and value.
/// * [`CardApduLayer`]: `data` split into length-prefixed APDUs (first byte = length) is fed to a
///   card whose applet echoes its data P1 mod 4 times; every answer carries a status word and
///   never more data than the command's Ne allowed.
/// * [`Exchange`]: a host exchange against a card answering with those same chunks ends within
///   its bounds.
///
/// Never panics on any input unless the crate has a bug.
pub fn check(data: &[u8]) {
    check_command(data);
    check_response(data);
    check_tlv(data);
    check_card(data);
    check_exchange(data);
}

fn check_command(data: &[u8]) {
    let Ok(cmd) = Command::parse(data) else { return };
    let encoded = match cmd.to_bytes() {
        Ok(bytes) => bytes,
        Err(e) => panic!("parsed command does not re-encode: {e} ({cmd:?})"),
    };
    assert!(encoded.len() <= data.len(), "canonical encoding longer than the input");
    match Command::parse(&encoded) {
        Ok(again) => assert_eq!(again, cmd, "re-encoded command parses differently"),
        Err(e) => panic!("re-encoded command does not parse: {e}"),
    }
}

fn check_response(data: &[u8]) {
    if let Some(response) = Response::parse(data) {
        assert_eq!(response.to_bytes(), data, "response does not re-encode to its input");
    }
}

fn check_tlv(data: &[u8]) {
    // Explicit work list instead of recursion: nesting depth costs no stack.
    let mut work = vec![data];
    let mut budget = 10_000usize;
    while let Some(input) = work.pop() {
        for item in crate::tlv::Tlvs::new(input) {
            let Ok(tlv) = item else { break };
            let mut out = Vec::new();
            if let Err(e) = encode(tlv.tag, tlv.value, &mut out) {
                panic!("parsed TLV does not re-encode: {e}");
            }
            match Tlv::parse_exact(&out) {
                Ok(again) => assert_eq!(again, tlv, "re-encoded TLV parses differently"),
                Err(e) => panic!("re-encoded TLV does not parse: {e}"),
            }
            if tlv.tag.is_constructed() {
                work.push(tlv.value);
            }
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return;
            }
        }
    }
}

/// Splits `data` into chunks, each prefixed by its length byte.
fn chunks(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = data.split_first()?;
        let len = usize::from(len).min(rest.len());
        let (chunk, rest) = rest.split_at(len);
        data = rest;
        Some(chunk)
    })
}

fn echo(cmd: &Command) -> Response {
    Response::ok(cmd.data.repeat(usize::from(cmd.p1 % 4)))
}

fn check_card(data: &[u8]) {
    let mut card = CardApduLayer::new(CARD_LIMIT);
    for apdu in chunks(data) {
        let response = card.process(apdu, echo);
        let ne = Command::parse(apdu).ok().and_then(|c| c.le).unwrap_or(0);
        assert!(
            response.data.len() <= ne,
            "card sent {} bytes for Ne {ne} ({response:?})",
            response.data.len()
        );
        if response.sw == StatusWord::SUCCESS && !response.data.is_empty() {
            assert!(!card.chain_pending(), "data answered while a chain is pending");
        }
    }
}

fn check_exchange(data: &[u8]) {
    let ex = Exchange { short_only: data.first().is_some_and(|b| b & 1 == 1), ..Exchange::new() };
    let ex = Exchange { max_response_len: 1024, max_round_trips: 64, ..ex };
    let mut answers = chunks(data);
    let mut sent = 0usize;
    let cmd = Command::new(0x00, 0xCA, 0x00, 0x66).with_data(vec![0x5C; 300]).with_le(1000);
    let result = ex.run(&cmd, |_apdu| {
        sent += 1;
        answers.next().map(<[u8]>::to_vec).ok_or("script ended")
    });
    assert!(sent <= ex.max_round_trips, "exchange sent {sent} APDUs");
    match result {
        Ok(response) => assert!(response.data.len() <= ex.max_response_len),
        Err(ExchangeError::Command(e)) => panic!("valid command refused: {e}"),
        Err(_) => {}
    }
}
