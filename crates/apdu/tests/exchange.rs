//! Host-side exchange logic against scripted cards and against the card-side layer.

use std::collections::VecDeque;

use proptest::prelude::*;
use tessera_apdu::{CardApduLayer, Command, Exchange, ExchangeError, Response, StatusWord};

/// A fake card for the I/O only: checks each APDU the host sends against the script and answers
/// the scripted bytes.
struct Script {
    steps: VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl Script {
    fn new(steps: &[(&[u8], &[u8])]) -> Self {
        Self { steps: steps.iter().map(|(c, r)| (c.to_vec(), r.to_vec())).collect() }
    }

    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, String> {
        let (expected, answer) = self.steps.pop_front().ok_or("unexpected APDU")?;
        assert_eq!(apdu, expected.as_slice(), "host sent an unexpected APDU");
        Ok(answer)
    }

    fn done(&self) -> bool {
        self.steps.is_empty()
    }
}

#[test]
fn follows_61xx_and_concatenates() {
    let mut card = Script::new(&[
        (&[0x00, 0xCA, 0x00, 0x66, 0x00], &[1, 2, 0x61, 0x03]),
        (&[0x00, 0xC0, 0x00, 0x00, 0x03], &[3, 4, 5, 0x61, 0x00]),
        (&[0x00, 0xC0, 0x00, 0x00, 0x00], &[6, 0x90, 0x00]),
    ]);
    let cmd = Command::new(0x00, 0xCA, 0x00, 0x66).with_le(256);
    let r = Exchange::new().run(&cmd, |a| card.transmit(a)).unwrap();
    assert_eq!(r, Response::ok(vec![1, 2, 3, 4, 5, 6]));
    assert!(card.done());
}

#[test]
fn resends_with_exact_le_on_6cxx() {
    let mut card = Script::new(&[
        (&[0x00, 0x84, 0x00, 0x00, 0x04], &[0x6C, 0x08]),
        (&[0x00, 0x84, 0x00, 0x00, 0x08], &[1, 2, 3, 4, 5, 6, 7, 8, 0x90, 0x00]),
    ]);
    let cmd = Command::new(0x00, 0x84, 0x00, 0x00).with_le(4);
    let r = Exchange::new().run(&cmd, |a| card.transmit(a)).unwrap();
    assert_eq!(r, Response::ok(vec![1, 2, 3, 4, 5, 6, 7, 8]));
    assert!(card.done());
}

#[test]
fn get_response_uses_logical_channel_of_command() {
    for (cla, gr_cla) in [(0x81u8, 0x01u8), (0x03, 0x03), (0x4A, 0x4A), (0x84, 0x00), (0xC5, 0x45)]
    {
        let mut card = Script::new(&[
            (&[cla, 0xCA, 0x00, 0x66], &[0x61, 0x01]),
            (&[gr_cla, 0xC0, 0x00, 0x00, 0x01], &[9, 0x90, 0x00]),
        ]);
        let r = Exchange::new().run(&Command::new(cla, 0xCA, 0, 0x66), |a| card.transmit(a));
        assert_eq!(r.unwrap(), Response::ok(vec![9]));
    }
}

#[test]
fn short_only_splits_into_chain() {
    let data: Vec<u8> = (0..600u16).map(|i| i as u8).collect();
    let mut first = vec![0x10, 0xDB, 0x3F, 0xFF, 0xFF];
    first.extend_from_slice(&data[..255]);
    let mut second = vec![0x10, 0xDB, 0x3F, 0xFF, 0xFF];
    second.extend_from_slice(&data[255..510]);
    let mut last = vec![0x00, 0xDB, 0x3F, 0xFF, 90];
    last.extend_from_slice(&data[510..]);
    last.push(0x00); // Ne 1000 capped at 256
    let mut card = Script::new(&[
        (&first, &[0x90, 0x00]),
        (&second, &[0x90, 0x00]),
        (&last, &[0xAB, 0x90, 0x00]),
    ]);
    let cmd = Command::new(0x00, 0xDB, 0x3F, 0xFF).with_data(data).with_le(1000);
    let r = Exchange::short_only().run(&cmd, |a| card.transmit(a)).unwrap();
    assert_eq!(r, Response::ok(vec![0xAB]));
    assert!(card.done());
}

#[test]
fn extended_allowed_sends_one_apdu() {
    let cmd = Command::new(0x00, 0xDB, 0x3F, 0xFF).with_data(vec![1; 300]);
    let mut sent = Vec::new();
    let r = Exchange::new().run(&cmd, |a| {
        sent.push(a.to_vec());
        Ok::<_, String>(vec![0x90, 0x00])
    });
    assert_eq!(r.unwrap(), Response::ok(vec![]));
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0][..7], &[0x00, 0xDB, 0x3F, 0xFF, 0x00, 0x01, 0x2C]);
}

#[test]
fn chain_refused_midway_returns_card_answer() {
    let mut first = vec![0x10, 0xDB, 0x00, 0x00, 0xFF];
    first.extend_from_slice(&[0; 255]);
    let mut card = Script::new(&[(&first, &[0x68, 0x84])]);
    let cmd = Command::new(0x00, 0xDB, 0, 0).with_data(vec![0; 256]);
    let r = Exchange::short_only().run(&cmd, |a| card.transmit(a)).unwrap();
    assert_eq!(r.sw, StatusWord::COMMAND_CHAINING_NOT_SUPPORTED);
    assert!(card.done());
}

#[test]
fn wrong_le_on_last_part_of_chain_resends_whole_chain() {
    let mut first = vec![0x10, 0x2A, 0x9E, 0x9A, 0xFF];
    first.extend_from_slice(&[7; 255]);
    let last = [0x00, 0x2A, 0x9E, 0x9A, 0x01, 7, 0x10];
    let last_fixed = [0x00, 0x2A, 0x9E, 0x9A, 0x01, 7, 0x20];
    let mut card = Script::new(&[
        (&first, &[0x90, 0x00]),
        (&last, &[0x6C, 0x20]),
        (&first, &[0x90, 0x00]),
        (&last_fixed, &[5; 34]),
    ]);
    let cmd = Command::new(0x00, 0x2A, 0x9E, 0x9A).with_data(vec![7; 256]).with_le(16);
    let r = Exchange::short_only().run(&cmd, |a| card.transmit(a)).unwrap();
    assert_eq!((r.data.len(), r.sw), (32, StatusWord(0x0505)));
    assert!(card.done());
}

#[test]
fn endless_61xx_is_bounded_by_size() {
    let mut count = 0usize;
    let ex = Exchange { max_response_len: 4096, ..Exchange::new() };
    let r = ex.run(&Command::new(0, 0xCA, 0, 0).with_le(256), |_| {
        count += 1;
        let mut answer = vec![0xEE; 256];
        answer.extend_from_slice(&[0x61, 0x00]);
        Ok::<_, String>(answer)
    });
    assert_eq!(r, Err(ExchangeError::ResponseTooLong { limit: 4096 }));
    assert_eq!(count, 17);
}

#[test]
fn endless_61xx_is_bounded_by_round_trips() {
    let ex = Exchange { max_round_trips: 50, ..Exchange::new() };
    let mut count = 0usize;
    let r = ex.run(&Command::new(0, 0xCA, 0, 0).with_le(256), |_| {
        count += 1;
        Ok::<_, String>(vec![0xEE, 0x61, 0x01])
    });
    assert_eq!(r, Err(ExchangeError::TooManyRoundTrips { limit: 50 }));
    assert_eq!(count, 50);
}

#[test]
fn empty_61xx_after_get_response_is_no_progress() {
    let r =
        Exchange::new().run(&Command::new(0, 0xCA, 0, 0), |_| Ok::<_, String>(vec![0x61, 0x10]));
    assert_eq!(r, Err(ExchangeError::NoProgress));
}

#[test]
fn repeated_6cxx_is_an_error() {
    let r = Exchange::new()
        .run(&Command::new(0, 0xCA, 0, 0).with_le(1), |_| Ok::<_, String>(vec![0x6C, 0x10]));
    assert_eq!(r, Err(ExchangeError::RepeatedWrongLe));
}

#[test]
fn malformed_answer_and_transport_errors() {
    let cmd = Command::new(0, 0xCA, 0, 0);
    assert_eq!(
        Exchange::new().run(&cmd, |_| Ok::<_, String>(vec![0x90])),
        Err(ExchangeError::MalformedResponse)
    );
    assert_eq!(
        Exchange::new().run(&cmd, |_| Err::<Vec<u8>, _>("reader gone".to_string())),
        Err(ExchangeError::Transport("reader gone".to_string()))
    );
    let bad = Command::new(0xFF, 0xCA, 0, 0);
    assert!(matches!(
        Exchange::new().run(&bad, |_| Ok::<_, String>(vec![0x90, 0])),
        Err(ExchangeError::Command(_))
    ));
}

/// Applet echoing its data `repeat` (P1) times, so any response length can be produced.
fn echo_applet(cmd: &Command) -> Response {
    let repeat = usize::from(cmd.p1);
    Response::ok(cmd.data.repeat(repeat))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Host and card layers together carry any command and response, short-only or not.
    #[test]
    fn host_and_card_layers_agree(
        data in proptest::collection::vec(any::<u8>(), 1..1500),
        repeat in 0u8..4,
        ne in prop_oneof![Just(None), (1usize..=65536).prop_map(Some)],
        short_only in any::<bool>(),
    ) {
        let mut card = CardApduLayer::new(4096);
        let mut cmd = Command::new(0x00, 0x02, repeat, 0).with_data(data.clone());
        cmd.le = ne;
        let ex = Exchange { short_only, ..Exchange::new() };
        let r = ex.run(&cmd, |apdu| {
            if short_only {
                prop_assert!(apdu.len() <= 4 + 1 + 255 + 1);
            }
            Ok(card.process(apdu, echo_applet).to_bytes())
        });
        let r = match r {
            Ok(r) => r,
            Err(ExchangeError::Transport(e)) => return Err(e),
            Err(e) => panic!("{e}"),
        };
        prop_assert_eq!(r, Response::ok(data.repeat(usize::from(repeat))));
        prop_assert_eq!(card.response_pending(), 0);
        prop_assert!(!card.chain_pending());
    }
}
