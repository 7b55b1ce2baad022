//! Property tests: no byte string makes opening an image or processing an APDU panic, and
//! a damaged image never opens as a different state.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tessera_card::storage::MemoryStorage;
use tessera_card::{Card, CardOptions, OpenOptions};
use tessera_crypto::rng::SeededRng;

fn fresh_image() -> (Vec<u8>, Vec<u8>) {
    let disk = tessera_card::storage::TearingDisk::new(
        Vec::new(),
        None,
        tessera_card::storage::TearMode::DropUnflushed,
    );
    let card = Card::create_on(Box::new(disk.storage()), CardOptions::default()).unwrap();
    (disk.platter(), card.persistent_state())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_open_as_a_card_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        let r = Card::open_on(Box::new(MemoryStorage::from_bytes(bytes)), OpenOptions::default());
        prop_assert!(r.is_err());
    }

    #[test]
    fn a_damaged_image_opens_unchanged_or_not_at_all(
        flips in proptest::collection::vec((0usize..5000, 1u8..=255), 1..4),
    ) {
        let (image, state) = fresh_image();
        let mut bytes = image.clone();
        for (at, x) in flips {
            let at = at % bytes.len();
            bytes[at] ^= x;
        }
        if let Ok(card) = Card::open_on(Box::new(MemoryStorage::from_bytes(bytes)), OpenOptions::default()) {
            prop_assert_eq!(card.persistent_state(), state);
        }
    }

    #[test]
    fn arbitrary_apdus_never_panic(apdus in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
        let mut card = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(1))));
        card.power_on();
        let select = [0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00, 0x00];
        card.transmit(&select);
        for apdu in apdus {
            let out = card.transmit(&apdu);
            prop_assert!(out.len() >= 2);
        }
    }
}
