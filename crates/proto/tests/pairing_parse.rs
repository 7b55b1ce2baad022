#![allow(clippy::unwrap_used)] // tests may unwrap

//! The pairing parsers never panic on arbitrary bytes, and what they accept re-encodes to the
//! same bytes.

use proptest::prelude::*;
use tessera_proto::pairing::{
    EnrolmentProof, PairBegin, PairBeginResponse, PairConfirm, Status, ledger, notes,
};

proptest! {
    #[test]
    fn parsers_accept_only_what_they_reencode(data in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(v) = PairBegin::parse(&data) { prop_assert_eq!(v.to_bytes(), data.clone()); }
        if let Ok(v) = PairBeginResponse::parse(&data) { prop_assert_eq!(v.to_bytes(), data.clone()); }
        if let Ok(v) = PairConfirm::parse(&data) { prop_assert_eq!(v.to_bytes(), data.clone()); }
        if let Ok(v) = EnrolmentProof::parse(&data) { prop_assert_eq!(v.to_bytes(), data.clone()); }
        if let Ok(v) = Status::parse(&data) { prop_assert_eq!(v.to_bytes(), data.clone()); }
        if let Ok(entries) = ledger::Entry::parse_all(&data) {
            prop_assert_eq!(entries.len() * ledger::Entry::LEN, data.len());
        }
        let _ = ledger::parse_amount(&data);
        let _ = ledger::parse_balance(&data);
        let _ = notes::parse_put(&data);
        let _ = notes::parse_slot(&data);
    }
}
