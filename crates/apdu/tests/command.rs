//! Command and response APDU encodings: known answers, every malformed form, round trips.

use proptest::prelude::*;
use tessera_apdu::{ApduError, Command, Response, StatusWord};

fn parse(hex: &[u8]) -> Result<Command, ApduError> {
    Command::parse(hex)
}

#[test]
fn the_seven_encodings() {
    // Case 1.
    assert_eq!(parse(&[0x00, 0x70, 0x00, 0x00]), Ok(Command::new(0x00, 0x70, 0, 0)));
    // Case 2S, Le 00 = 256.
    assert_eq!(parse(&[0x00, 0x84, 0, 0, 0x08]).unwrap().le, Some(8));
    assert_eq!(parse(&[0x00, 0x84, 0, 0, 0x00]).unwrap().le, Some(256));
    // Case 3S: SELECT by AID A0000000031010.
    let select = [0x00, 0xA4, 0x04, 0x00, 0x07, 0xA0, 0, 0, 0, 0x03, 0x10, 0x10];
    let cmd = parse(&select).unwrap();
    assert_eq!((cmd.data.len(), cmd.le, cmd.case()), (7, None, 3));
    // Case 4S.
    let mut select4 = select.to_vec();
    select4.push(0x00);
    assert_eq!(parse(&select4).unwrap().le, Some(256));
    // Case 2E, Le 0000 = 65536.
    assert_eq!(parse(&[0x00, 0xB0, 0, 0, 0x00, 0x00, 0x00]).unwrap().le, Some(65536));
    assert_eq!(parse(&[0x00, 0xB0, 0, 0, 0x00, 0x01, 0x2C]).unwrap().le, Some(300));
    // Case 3E.
    let mut e3 = vec![0x00, 0xDB, 0x3F, 0xFF, 0x00, 0x01, 0x00];
    e3.extend_from_slice(&[0xAB; 256]);
    let cmd = parse(&e3).unwrap();
    assert_eq!((cmd.data, cmd.le), (vec![0xAB; 256], None));
    // Case 4E, with small values in extended form (valid ISO).
    let cmd = parse(&[0x00, 0x2A, 0x9E, 0x9A, 0x00, 0x00, 0x02, 0x01, 0x02, 0x00, 0x05]).unwrap();
    assert_eq!((cmd.data, cmd.le), (vec![1, 2], Some(5)));
}

#[test]
fn every_malformed_encoding_is_rejected() {
    let cases: &[(&[u8], ApduError)] = &[
        (&[], ApduError::TooShort),
        (&[0x00, 0xA4, 0x04], ApduError::TooShort),
        (&[0xFF, 0xA4, 0x04, 0x00], ApduError::InvalidClass),
        (&[0xFF, 0x00, 0x00, 0x00, 0x01, 0xAA], ApduError::InvalidClass),
        // B1 = 00 with L = 2: neither short nor extended.
        (&[0x00, 0xA4, 0x04, 0x00, 0x00, 0x05], ApduError::WrongLength),
        // Extended Lc = 0 (case 3E / 4E shapes).
        (&[0x00, 0xA4, 0x04, 0x00, 0x00, 0x00, 0x00, 0xAA], ApduError::WrongLength),
        (&[0x00, 0xA4, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00], ApduError::WrongLength),
        // Short Lc larger than the data (truncated body).
        (&[0x00, 0xD6, 0x00, 0x00, 0x05, 1, 2, 3], ApduError::WrongLength),
        // Short Lc smaller than the data by two or more bytes.
        (&[0x00, 0xD6, 0x00, 0x00, 0x01, 1, 2, 3], ApduError::WrongLength),
        // Extended Lc followed by a short Le (mixed forms).
        (&[0x00, 0xD6, 0x00, 0x00, 0x00, 0x00, 0x02, 1, 2, 0x05], ApduError::WrongLength),
        // Extended Lc with a truncated body.
        (&[0x00, 0xD6, 0x00, 0x00, 0x00, 0x01, 0x00, 1, 2, 3], ApduError::WrongLength),
        // Extended Lc with three extra bytes.
        (&[0x00, 0xD6, 0x00, 0x00, 0x00, 0x00, 0x01, 1, 2, 3, 4], ApduError::WrongLength),
        // Extended header cut inside Lc.
        (&[0x00, 0xD6, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00], ApduError::WrongLength),
    ];
    for (bytes, err) in cases {
        assert_eq!(Command::parse(bytes).as_ref(), Err(err), "{bytes:02X?}");
    }
    assert_eq!(ApduError::InvalidClass.status(), StatusWord::CLA_NOT_SUPPORTED);
    assert_eq!(ApduError::WrongLength.status(), StatusWord::WRONG_LENGTH);
}

#[test]
fn unencodable_commands_are_refused() {
    assert_eq!(Command::new(0xFF, 0, 0, 0).to_bytes(), Err(ApduError::InvalidClass));
    assert_eq!(Command::new(0, 0, 0, 0).with_le(0).to_bytes(), Err(ApduError::InvalidLe));
    assert_eq!(Command::new(0, 0, 0, 0).with_le(65537).to_bytes(), Err(ApduError::InvalidLe));
    let big = Command::new(0, 0, 0, 0).with_data(vec![0; 65536]);
    assert_eq!(big.to_bytes(), Err(ApduError::DataTooLong));
}

#[test]
fn encoding_boundaries() {
    let enc = |data: usize, le: Option<usize>| {
        let mut c = Command::new(0, 1, 2, 3).with_data(vec![0xEE; data]);
        c.le = le;
        c.to_bytes().unwrap()
    };
    assert_eq!(enc(0, Some(256)), [0, 1, 2, 3, 0x00]);
    assert_eq!(enc(0, Some(257)), [0, 1, 2, 3, 0x00, 0x01, 0x01]);
    assert_eq!(enc(0, Some(65536)), [0, 1, 2, 3, 0x00, 0x00, 0x00]);
    assert_eq!(&enc(255, None)[..5], [0, 1, 2, 3, 0xFF]);
    assert_eq!(&enc(256, None)[..7], [0, 1, 2, 3, 0x00, 0x01, 0x00]);
    // Short data with an extended Le switches both fields to extended form.
    let e = enc(2, Some(300));
    assert_eq!(e, [0, 1, 2, 3, 0x00, 0x00, 0x02, 0xEE, 0xEE, 0x01, 0x2C]);
    let e = enc(300, Some(256));
    assert_eq!(&e[e.len() - 2..], [0x01, 0x00]);
}

#[test]
fn response_parse_and_encode() {
    assert_eq!(Response::parse(&[0x90]), None);
    assert_eq!(Response::parse(&[]), None);
    let r = Response::parse(&[0x01, 0x02, 0x63, 0xC2]).unwrap();
    assert_eq!((r.data.as_slice(), r.sw.tries()), (&[1u8, 2][..], Some(2)));
    assert_eq!(Response::status(StatusWord(0x6A82)).to_bytes(), [0x6A, 0x82]);
}

fn command() -> impl Strategy<Value = Command> {
    let data = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..=255),
        proptest::collection::vec(any::<u8>(), 256..=1024),
        Just(vec![0x55; 65535]),
    ];
    let le = prop_oneof![
        Just(None),
        (1usize..=256).prop_map(Some),
        (257usize..=65536).prop_map(Some),
        Just(Some(65536)),
    ];
    (0u8..=0xFE, any::<u8>(), any::<u8>(), any::<u8>(), data, le)
        .prop_map(|(cla, ins, p1, p2, data, le)| Command { cla, ins, p1, p2, data, le })
}

proptest! {
    #[test]
    fn command_round_trip(cmd in command()) {
        let bytes = cmd.to_bytes().unwrap();
        // Extended form (body starting 00 and longer than one byte) exactly when needed.
        prop_assert_eq!(bytes.len() >= 7 && bytes[4] == 0, cmd.is_extended());
        let short = !cmd.is_extended();
        let again = Command::parse(&bytes).unwrap();
        prop_assert_eq!(&again, &cmd);
        // Short commands use short fields only: at most one length byte before and after data.
        if short {
            prop_assert!(bytes.len() <= 4 + 1 + cmd.data.len() + 1);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reencode(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(cmd) = Command::parse(&bytes) {
            prop_assert_eq!(Command::parse(&cmd.to_bytes().unwrap()).unwrap(), cmd);
        }
    }

    #[test]
    fn response_round_trip(data in proptest::collection::vec(any::<u8>(), 0..600), sw in any::<u16>()) {
        let r = Response { data, sw: StatusWord(sw) };
        let bytes = r.to_bytes();
        prop_assert_eq!(Response::parse(&bytes).unwrap(), r);
    }
}

#[test]
fn ambiguous_looking_bodies_decode_by_the_iso_rules() {
    // L = 2, B1 = 01: case 3S carrying one zero byte (not an Le).
    let c = parse(&[0x00, 0xA4, 0x04, 0x00, 0x01, 0x00]).unwrap();
    assert_eq!((c.data, c.le), (vec![0x00], None));
    // L = 3, B1 = 00: case 2E (Le = 1), never case 3S with Lc = 0.
    let c = parse(&[0x00, 0xA4, 0x04, 0x00, 0x00, 0x00, 0x01]).unwrap();
    assert_eq!((c.data, c.le), (vec![], Some(1)));
    // L = 3, B1 = 01: case 4S with data 00 and Le 00 = 256.
    let c = parse(&[0x00, 0xA4, 0x04, 0x00, 0x01, 0x00, 0x00]).unwrap();
    assert_eq!((c.data, c.le), (vec![0x00], Some(256)));
    // L = 3, B1 = 02: case 3S with two data bytes that look like an extended Le.
    let c = parse(&[0x00, 0xA4, 0x04, 0x00, 0x02, 0x00, 0x00]).unwrap();
    assert_eq!((c.data, c.le), (vec![0x00, 0x00], None));
    // B1 = 00, L = 4: extended Lc = 0001 with one data byte (3E), not 2E plus a byte.
    let c = parse(&[0x00, 0xA4, 0x04, 0x00, 0x00, 0x00, 0x01, 0xAA]).unwrap();
    assert_eq!((c.data, c.le), (vec![0xAA], None));
    // B1 = 00, L = 5: extended Lc = 0000 is not 2E with two extra bytes: rejected.
    assert_eq!(
        parse(&[0x00, 0xA4, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
        Err(ApduError::WrongLength)
    );
}
