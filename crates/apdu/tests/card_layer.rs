//! Card-side chaining and GET RESPONSE, through `ChainAssembler`, `ResponseBuffer` and
//! `CardApduLayer`.

use tessera_apdu::{
    CardApduLayer, ChainAssembler, ChainError, Chained, Command, Response, ResponseBuffer,
    StatusWord,
};

fn sw(r: &Response) -> u16 {
    r.sw.0
}

#[test]
fn unchained_command_passes_through() {
    let mut chain = ChainAssembler::new(100);
    let cmd = Command::new(0x00, 0xA4, 0x04, 0x00).with_data([1, 2, 3]).with_le(256);
    assert_eq!(chain.feed(cmd.clone()), Ok(Chained::Complete(cmd)));
    assert!(!chain.is_pending());
}

#[test]
fn chain_assembles_data_in_order_with_last_le() {
    let mut chain = ChainAssembler::new(100);
    let part = |cla, data: &[u8]| Command::new(cla, 0xDB, 0x3F, 0xFF).with_data(data.to_vec());
    assert_eq!(chain.feed(part(0x10, &[1, 2]).with_le(5)), Ok(Chained::Incomplete));
    assert!(chain.is_pending());
    assert_eq!(chain.feed(part(0x10, &[3])), Ok(Chained::Incomplete));
    let done = chain.feed(part(0x00, &[4, 5]).with_le(7)).unwrap();
    assert_eq!(
        done,
        Chained::Complete(
            Command::new(0x00, 0xDB, 0x3F, 0xFF).with_data([1, 2, 3, 4, 5]).with_le(7)
        )
    );
    assert!(!chain.is_pending());
}

#[test]
fn chain_keeps_proprietary_class_and_channel() {
    let mut chain = ChainAssembler::new(100);
    let part = |cla| Command::new(cla, 0xE2, 0x80, 0x00).with_data([9]);
    assert_eq!(chain.feed(part(0x95)), Ok(Chained::Incomplete));
    let Ok(Chained::Complete(cmd)) = chain.feed(part(0x85)) else { panic!("not complete") };
    assert_eq!((cmd.cla, cmd.data), (0x85, vec![9, 9]));
}

#[test]
fn chain_interrupted_by_other_header_is_dropped() {
    for other in [
        Command::new(0x00, 0xDA, 0x3F, 0xFF),              // other INS
        Command::new(0x00, 0xDB, 0x3F, 0xFE),              // other P2
        Command::new(0x00, 0xDB, 0x3E, 0xFF),              // other P1
        Command::new(0x01, 0xDB, 0x3F, 0xFF),              // other logical channel
        Command::new(0x00, 0xC0, 0x00, 0x00).with_le(256), // GET RESPONSE
        Command::new(0x00, 0xA4, 0x04, 0x00).with_data([0xA0]), // SELECT
    ] {
        let mut chain = ChainAssembler::new(100);
        chain.feed(Command::new(0x10, 0xDB, 0x3F, 0xFF).with_data([1])).unwrap();
        let err = chain.feed(other.clone()).unwrap_err();
        assert_eq!(err, ChainError::Interrupted, "{other:?}");
        assert_eq!(err.status(), StatusWord::LAST_COMMAND_OF_CHAIN_EXPECTED);
        assert!(!chain.is_pending());
        // The host may now send the command again and it is executed.
        assert_eq!(chain.feed(other.clone()), Ok(Chained::Complete(other)));
    }
}

#[test]
fn chain_over_limit_is_refused_and_dropped() {
    let mut chain = ChainAssembler::new(10);
    chain.feed(Command::new(0x10, 0xDB, 0, 0).with_data([0; 6])).unwrap();
    let err = chain.feed(Command::new(0x10, 0xDB, 0, 0).with_data([0; 5])).unwrap_err();
    assert_eq!(err, ChainError::TooLong { limit: 10 });
    assert_eq!(err.status(), StatusWord::NOT_ENOUGH_MEMORY);
    assert!(!chain.is_pending());
    // Exactly at the limit is fine, for a chain and for a single command.
    chain.feed(Command::new(0x10, 0xDB, 0, 0).with_data([0; 6])).unwrap();
    let Ok(Chained::Complete(c)) = chain.feed(Command::new(0, 0xDB, 0, 0).with_data([0; 4])) else {
        panic!("chain at limit refused")
    };
    assert_eq!(c.data.len(), 10);
    assert!(chain.feed(Command::new(0, 0xDB, 0, 0).with_data([0; 11])).is_err());
}

#[test]
fn reset_drops_chain() {
    let mut chain = ChainAssembler::new(10);
    chain.feed(Command::new(0x10, 0xDB, 0, 0).with_data([1])).unwrap();
    chain.reset();
    let cmd = Command::new(0, 0xDB, 0, 0).with_data([2]);
    assert_eq!(chain.feed(cmd.clone()), Ok(Chained::Complete(cmd)));
}

fn get_response(le: usize) -> Command {
    Command::new(0x00, 0xC0, 0, 0).with_le(le)
}

#[test]
fn response_within_ne_is_sent_whole() {
    let mut buf = ResponseBuffer::new();
    let cmd = Command::new(0, 0xCA, 0, 0x66).with_le(10);
    let r = buf.respond(&cmd, Response::ok(vec![7; 10]));
    assert_eq!(r, Response::ok(vec![7; 10]));
    assert!(!buf.is_pending());
}

#[test]
fn long_response_is_served_with_61xx_then_get_response() {
    let data: Vec<u8> = (0..700u16).map(|i| i as u8).collect();
    let mut buf = ResponseBuffer::new();
    let cmd = Command::new(0, 0xCB, 0x3F, 0xFF).with_data([0x5C, 0]).with_le(256);
    let first = buf.respond(&cmd, Response { data: data.clone(), sw: StatusWord(0x6282) });
    assert_eq!((first.data.as_slice(), sw(&first)), (&data[..256], 0x6100));
    assert_eq!(buf.remaining(), 444);
    let second = buf.intercept(&get_response(256)).unwrap();
    assert_eq!((second.data.as_slice(), sw(&second)), (&data[256..512], 0x61BC));
    // A shorter Le than announced is served partially, with 61xx (never 6Cxx).
    let third = buf.intercept(&get_response(0x10)).unwrap();
    assert_eq!((third.data.as_slice(), sw(&third)), (&data[512..528], 0x61AC));
    let last = buf.intercept(&get_response(256)).unwrap();
    // The applet's own status word comes with the last part.
    assert_eq!((last.data.as_slice(), sw(&last)), (&data[528..], 0x6282));
    assert!(!buf.is_pending());
    assert_eq!(sw(&buf.intercept(&get_response(256)).unwrap()), 0x6985);
}

#[test]
fn case_3_command_with_data_answers_61xx_without_data() {
    let mut buf = ResponseBuffer::new();
    let cmd = Command::new(0, 0x88, 0, 0).with_data([1; 8]);
    let r = buf.respond(&cmd, Response::ok(vec![3; 20]));
    assert_eq!(r, Response::status(StatusWord(0x6114)));
    assert_eq!(buf.intercept(&get_response(20)).unwrap(), Response::ok(vec![3; 20]));
}

#[test]
fn short_case_2_with_too_small_le_answers_6cxx() {
    let mut buf = ResponseBuffer::new();
    let cmd = Command::new(0, 0xCA, 0, 0x66).with_le(4);
    assert_eq!(buf.respond(&cmd, Response::ok(vec![1; 9])), Response::status(StatusWord(0x6C09)));
    assert!(!buf.is_pending());
    // 256 bytes are announced as 6C00.
    assert_eq!(buf.respond(&cmd, Response::ok(vec![1; 256])).sw, StatusWord(0x6C00));
    // More than 256 bytes cannot be announced by 6Cxx: 61xx instead.
    let r = buf.respond(&cmd, Response::ok(vec![1; 300]));
    assert_eq!((r.data.len(), sw(&r)), (4, 0x6100));
}

#[test]
fn malformed_get_response_keeps_data_and_other_commands_discard_it() {
    let mut buf = ResponseBuffer::new();
    let cmd = Command::new(0, 0xCA, 0, 0x66).with_data([1]).with_le(1);
    buf.respond(&cmd, Response::ok(vec![1; 5]));
    assert_eq!(buf.remaining(), 4);
    let bad_p1p2 = Command::new(0, 0xC0, 1, 0).with_le(4);
    assert_eq!(sw(&buf.intercept(&bad_p1p2).unwrap()), 0x6A86);
    let no_le = Command::new(0, 0xC0, 0, 0);
    assert_eq!(sw(&buf.intercept(&no_le).unwrap()), 0x6700);
    let with_data = Command::new(0, 0xC0, 0, 0).with_data([1]).with_le(4);
    assert_eq!(sw(&buf.intercept(&with_data).unwrap()), 0x6700);
    assert_eq!(buf.remaining(), 4);
    assert_eq!(buf.intercept(&Command::new(0, 0xB0, 0, 0).with_le(1)), None);
    assert!(!buf.is_pending());
}

/// An applet that answers `n` bytes of a counter for INS 01 (n = P1 P2) and echoes INS 02.
fn applet(cmd: &Command) -> Response {
    match cmd.ins {
        0x01 => {
            let n = usize::from(u16::from_be_bytes([cmd.p1, cmd.p2]));
            Response::ok((0..n).map(|i| i as u8).collect::<Vec<_>>())
        }
        0x02 => Response::ok(cmd.data.clone()),
        _ => Response::status(StatusWord::INS_NOT_SUPPORTED),
    }
}

#[test]
fn layer_runs_chain_then_response_chaining() {
    let mut card = CardApduLayer::new(1000);
    let echo = |layer: &mut CardApduLayer, apdu: &[u8]| layer.process(apdu, applet).to_bytes();
    assert_eq!(echo(&mut card, &[0x10, 0x02, 0, 0, 2, 0xAA, 0xBB]), [0x90, 0x00]);
    assert!(card.chain_pending());
    assert_eq!(echo(&mut card, &[0x00, 0x02, 0, 0, 1, 0xCC, 0x02]), [0xAA, 0xBB, 0x61, 0x01]);
    assert_eq!(card.response_pending(), 1);
    assert_eq!(echo(&mut card, &[0x00, 0xC0, 0, 0, 0x01]), [0xCC, 0x90, 0x00]);
    // Malformed input changes nothing and gets 6700 / 6E00.
    card.process(&[0x10, 0x02, 0, 0, 1, 1], applet);
    assert_eq!(echo(&mut card, &[0x00, 0x02, 0, 0, 0, 1]), [0x67, 0x00]);
    assert_eq!(echo(&mut card, &[0xFF, 0x02, 0, 0]), [0x6E, 0x00]);
    assert!(card.chain_pending());
    // GET RESPONSE mid-chain interrupts the chain.
    assert_eq!(echo(&mut card, &[0x00, 0xC0, 0, 0, 0]), [0x68, 0x83]);
    assert!(!card.chain_pending());
    card.reset();
    assert_eq!(echo(&mut card, &[0x00, 0x03, 0, 0]), [0x6D, 0x00]);
}
