#![allow(clippy::unwrap_used)] // tests may unwrap

//! The keyring parsers never panic on arbitrary bytes, and what they accept re-encodes to the
//! same bytes.

use proptest::prelude::*;
use tessera_apdu::Command;
use tessera_proto::keyring::{
    InternalAuthResponse, KeyInfo, KeyringCommand, Layout, Mode, RenewCommand, RenewResponse,
    SecurityStatus,
};

fn mode(asym: bool) -> Mode {
    if asym { Mode::Asymmetric } else { Mode::Symmetric }
}

proptest! {
    #[test]
    fn commands_parse_without_panic(
        cla in prop::sample::select(vec![0x00u8, 0x80, 0x84, 0x04, 0x10]),
        ins in any::<u8>(),
        p1 in 0u8..10,
        p2 in 0u8..10,
        data in prop::collection::vec(any::<u8>(), 0..400),
        asym in any::<bool>(),
        m in 1u8..=8,
        n in 1u8..=8,
    ) {
        let layout = Layout::new(mode(asym), m, n).unwrap();
        let cmd = Command::new(cla, ins, p1, p2).with_data(data);
        if let Ok(KeyringCommand::Renew(renew)) = KeyringCommand::parse(&cmd, &layout) {
            let again = renew.to_command();
            prop_assert_eq!(&again.data, &cmd.data);
            prop_assert_eq!(RenewCommand::parse(&again, &layout).unwrap(), renew);
        }
    }

    #[test]
    fn responses_parse_without_panic(data in prop::collection::vec(any::<u8>(), 0..600), asym in any::<bool>()) {
        if let Ok(r) = RenewResponse::parse(&data, mode(asym)) {
            prop_assert_eq!(r.to_bytes(), data.clone());
        }
        if let Ok(r) = InternalAuthResponse::parse(&data, mode(asym)) {
            prop_assert_eq!(r.to_bytes(), data.clone());
        }
        if let Ok(r) = KeyInfo::parse(&data) {
            prop_assert_eq!(r.to_bytes(), data.clone());
        }
        if let Ok(r) = SecurityStatus::parse(&data) {
            // The pair's external byte is dropped when the internal one is 00.
            if data[4] != 0 { prop_assert_eq!(r.to_bytes(), data.clone()); }
        }
    }
}
