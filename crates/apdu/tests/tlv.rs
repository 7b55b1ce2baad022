//! BER-TLV parsing and encoding.

use proptest::prelude::*;
use tessera_apdu::tlv::{Tlvs, encode, encode_length};
use tessera_apdu::{Tag, TagClass, Tlv, TlvError};

/// A PPSE SELECT response laid out as in EMV Contactless Book B (FCI template 6F, DF name 84,
/// proprietary template A5, issuer discretionary data BF0C, directory entry 61 with AID 4F and
/// priority 87).
const PPSE_FCI: [u8; 37] = [
    0x6F, 0x23, 0x84, 0x0E, b'2', b'P', b'A', b'Y', b'.', b'S', b'Y', b'S', b'.', b'D', b'D', b'F',
    b'0', b'1', 0xA5, 0x11, 0xBF, 0x0C, 0x0E, 0x61, 0x0C, 0x4F, 0x07, 0xA0, 0x00, 0x00, 0x00, 0x03,
    0x10, 0x10, 0x87, 0x01, 0x01,
];

#[test]
fn nested_parse_of_an_fci() {
    let fci = Tlv::parse_exact(&PPSE_FCI).unwrap();
    assert_eq!(fci.tag, Tag::new(0x6F));
    assert!(fci.tag.is_constructed());
    assert_eq!(fci.tag.class(), TagClass::Application);
    let df_name = fci.find(Tag::new(0x84)).unwrap().unwrap();
    assert_eq!(df_name.value, b"2PAY.SYS.DDF01");
    assert_eq!(df_name.children().unwrap_err(), TlvError::NotConstructed);
    let a5 = fci.find(Tag::new(0xA5)).unwrap().unwrap();
    let bf0c = a5.find(Tag::new(0xBF0C)).unwrap().unwrap();
    assert_eq!(bf0c.tag.encoded_len(), 2);
    assert_eq!(bf0c.tag.class(), TagClass::ContextSpecific);
    let entry = bf0c.find(Tag::new(0x61)).unwrap().unwrap();
    let children: Vec<_> = entry.children().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(children.len(), 2);
    assert_eq!((children[0].tag, children[0].value), (Tag::new(0x4F), &PPSE_FCI[27..34]));
    assert_eq!((children[1].tag, children[1].value), (Tag::new(0x87), &[0x01][..]));
    assert_eq!(fci.to_bytes().unwrap(), PPSE_FCI);
}

#[test]
fn length_forms() {
    // X.690 8.1.3.5, NOTE 2: L = 201 may be encoded as 81 C9.
    let mut out = Vec::new();
    encode_length(201, &mut out).unwrap();
    assert_eq!(out, [0x81, 0xC9]);
    for (len, expected) in [
        (0usize, &[0x00][..]),
        (0x7F, &[0x7F]),
        (0x80, &[0x81, 0x80]),
        (0x100, &[0x82, 0x01, 0x00]),
        (0x1_0000, &[0x83, 0x01, 0x00, 0x00]),
        (0x100_0000, &[0x84, 0x01, 0x00, 0x00, 0x00]),
    ] {
        let mut out = Vec::new();
        encode_length(len, &mut out).unwrap();
        assert_eq!(out, expected, "{len}");
    }
    // Non-minimal long form is valid BER and accepted.
    assert_eq!(Tlv::parse_exact(&[0x80, 0x82, 0x00, 0x01, 0xAA]).unwrap().value, [0xAA]);
    // Four length bytes.
    assert_eq!(Tlv::parse(&[0x80, 0x84, 0, 0, 0, 1, 0xAA]).unwrap().0.value, [0xAA]);
}

#[test]
fn malformed_tlv_is_rejected() {
    let cases: &[(&[u8], TlvError)] = &[
        (&[], TlvError::Truncated),
        (&[0x5F], TlvError::Truncated),
        (&[0x5F, 0x81], TlvError::Truncated),
        (&[0x80], TlvError::Truncated),
        (&[0x80, 0x02, 0xAA], TlvError::Truncated),
        (&[0x80, 0x82, 0x01], TlvError::Truncated),
        (&[0x80, 0x81, 0x05, 1, 2], TlvError::Truncated),
        (&[0x80, 0x84, 0xFF, 0xFF, 0xFF, 0xFF, 1], TlvError::Truncated),
        (&[0x80, 0x80, 0x01, 0x00, 0x00], TlvError::IndefiniteLength),
        (&[0x80, 0x85, 0, 0, 0, 0, 1], TlvError::LengthTooLong),
        (&[0x80, 0xFF], TlvError::LengthTooLong),
        (&[0x00, 0x01, 0xAA], TlvError::InvalidTag),
        (&[0xFF, 0x01, 0xAA], TlvError::InvalidTag),
        (&[0x5F, 0x80, 0x01, 0x00], TlvError::InvalidTag),
        (&[0x5F, 0x81, 0x81, 0x81, 0x01, 0x00], TlvError::TagTooLong),
    ];
    for (bytes, err) in cases {
        assert_eq!(Tlv::parse(bytes).map(|_| ()), Err(*err), "{bytes:02X?}");
    }
    assert_eq!(Tlv::parse_exact(&[0x80, 0x00, 0x00]), Err(TlvError::TrailingData));
    // A child running past its parent is an error when the child is parsed.
    let bad_child = [0x70, 0x03, 0x80, 0x05, 0x01];
    let parent = Tlv::parse_exact(&bad_child).unwrap();
    assert_eq!(parent.find(Tag::new(0x80)), Err(TlvError::Truncated));
    // The iterator yields one error, then stops.
    let mut it = Tlvs::new(&[0x80, 0x00, 0x80]);
    assert!(it.next().unwrap().is_ok());
    assert_eq!(it.next(), Some(Err(TlvError::Truncated)));
    assert_eq!(it.next(), None);
}

#[test]
fn tags() {
    assert_eq!(Tag::try_new(0x5F2D).unwrap().encoded_len(), 2);
    assert_eq!(Tag::try_new(0x9F7F).unwrap().to_bytes(), [0x9F, 0x7F]);
    assert_eq!(Tag::try_new(0x5F8101).unwrap().encoded_len(), 3);
    assert_eq!(Tag::try_new(0x1F).unwrap_err(), TlvError::InvalidTag);
    assert_eq!(Tag::try_new(0x5F81).unwrap_err(), TlvError::InvalidTag);
    assert_eq!(Tag::try_new(0x0101).unwrap_err(), TlvError::InvalidTag);
    assert_eq!(Tag::try_new(0).unwrap_err(), TlvError::InvalidTag);
    assert_eq!(Tag::new(0x7F49).to_string(), "7F49");
    assert_eq!(Tag::new(0xDE).class(), TagClass::Private);
    assert_eq!(Tag::new(0x30).class(), TagClass::Universal);
}

#[test]
fn deep_nesting_costs_no_stack() {
    // 30,000 nested constructed objects around one empty primitive, built inside out.
    let mut bytes = vec![0x80, 0x00];
    for _ in 0..30_000 {
        let mut outer = Vec::new();
        encode(Tag::new(0x70), &bytes, &mut outer).unwrap();
        bytes = outer;
    }
    let mut tlv = Tlv::parse_exact(&bytes).unwrap();
    let mut depth = 0;
    while tlv.tag.is_constructed() {
        tlv = tlv.children().unwrap().next().unwrap().unwrap();
        depth += 1;
    }
    assert_eq!(depth, 30_000);
    tessera_apdu::fuzzing::check(&bytes);
}

fn tag() -> impl Strategy<Value = Tag> {
    prop_oneof![
        (1u8..=0xFE).prop_filter("single-byte", |b| b & 0x1F != 0x1F).prop_map(u32::from),
        (0u8..7, 0x1Fu8..=0x7F).prop_map(|(c, b)| (u32::from(c << 5 | 0x1F) << 8) | u32::from(b)),
        (0u8..7, 0x81u8..=0xFF, 0u8..=0x7F).prop_map(|(c, b, d)| {
            (u32::from(c << 5 | 0x1F) << 16) | (u32::from(b) << 8) | u32::from(d)
        }),
    ]
    .prop_map(Tag::new)
}

proptest! {
    #[test]
    fn tlv_round_trip(tag in tag(), value in proptest::collection::vec(any::<u8>(), 0..700)) {
        let mut out = Vec::new();
        encode(tag, &value, &mut out).unwrap();
        let tlv = Tlv::parse_exact(&out).unwrap();
        prop_assert_eq!(tlv.tag, tag);
        prop_assert_eq!(tlv.value, value.as_slice());
        prop_assert_eq!(Tag::try_new(tag.raw()), Ok(tag));
        prop_assert_eq!(tag.to_bytes().len(), tag.encoded_len());
    }

    #[test]
    fn tlv_sequences_round_trip(items in proptest::collection::vec((tag(), proptest::collection::vec(any::<u8>(), 0..200)), 0..8)) {
        let mut out = Vec::new();
        for (tag, value) in &items {
            encode(*tag, value, &mut out).unwrap();
        }
        let parsed = Tlv::parse_all(&out).unwrap();
        prop_assert_eq!(parsed.len(), items.len());
        for (tlv, (tag, value)) in parsed.iter().zip(&items) {
            prop_assert_eq!(tlv.tag, *tag);
            prop_assert_eq!(tlv.value, value.as_slice());
        }
    }

    #[test]
    fn arbitrary_bytes_pass_the_harness(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        tessera_apdu::fuzzing::check(&bytes);
    }
}
