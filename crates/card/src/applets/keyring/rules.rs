//! Who may renew what: the access rules of claims 3 to 9, enforced by the card.
//!
//! After a mutual authentication with internal slot `i` and external slot `j`, a RENEW whose
//! targets are the internal slots `I` and the external slots `E` is allowed when
//!
//! - every renewed internal slot `m` is numbered **below** `i`'s successor: `i < m`
//!   (claims 3, 5, 6, 8: "other than m", resp. "numbered below m");
//! - every renewed external slot `n` satisfies `j < n` (claims 4, 5, 7, 8, and claim 9 for
//!   the pair at the same depth `M - m = N - n`);
//! - slot 1 of either kind is never a target (¶0059: the root is re-issued, not renewed).
//!
//! Stricter than claims 3, 4 and 5, which only ask for a slot *other than* the renewed one:
//! with "other than", a holder of the frequently used bottom keys could renew an upper key and
//! take over the whole hierarchy. Here a key is only ever renewed from above. The derivation
//! key is always the internal key `i` of the authentication (the caller's business).

use tessera_apdu::StatusWord;
use tessera_proto::keyring::KeyKind;

/// Checks the targets of a RENEW against the authenticated pair `(internal, external)`.
/// `6982` when a rule is broken.
pub fn authorize(targets: &[(KeyKind, u8)], internal: u8, external: u8) -> Result<(), StatusWord> {
    if targets.is_empty() {
        return Err(StatusWord::INCORRECT_DATA);
    }
    for &(kind, slot) in targets {
        let upper = match kind {
            KeyKind::Internal => internal,
            KeyKind::External => external,
        };
        if slot <= 1 || upper >= slot {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyKind::{External, Internal};

    const DENIED: Result<(), StatusWord> = Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);

    #[test]
    fn claim_3_internal_slot_needs_an_upper_internal_key() {
        assert_eq!(authorize(&[(Internal, 4)], 3, 4), Ok(()));
        assert_eq!(authorize(&[(Internal, 4)], 1, 4), Ok(()));
        // The slot itself, or a lower one, never renews it.
        assert_eq!(authorize(&[(Internal, 4)], 4, 1), DENIED);
        assert_eq!(authorize(&[(Internal, 3)], 4, 1), DENIED);
    }

    #[test]
    fn claim_4_external_slot_needs_an_upper_external_key() {
        assert_eq!(authorize(&[(External, 4)], 4, 3), Ok(()));
        assert_eq!(authorize(&[(External, 4)], 4, 4), DENIED);
        assert_eq!(authorize(&[(External, 2)], 1, 3), DENIED);
    }

    #[test]
    fn claims_5_and_9_pair_needs_both_upper() {
        assert_eq!(authorize(&[(Internal, 4), (External, 4)], 3, 3), Ok(()));
        assert_eq!(authorize(&[(Internal, 4), (External, 4)], 3, 4), DENIED);
        assert_eq!(authorize(&[(Internal, 4), (External, 4)], 4, 3), DENIED);
        // Claim 9 with M != N: internal 3 of 3 and external 4 of 4 (same depth 0) need an
        // external key below 4.
        assert_eq!(authorize(&[(Internal, 3), (External, 4)], 2, 3), Ok(()));
        assert_eq!(authorize(&[(Internal, 3), (External, 4)], 2, 4), DENIED);
    }

    #[test]
    fn claims_6_to_8_ranges_need_keys_below_the_range() {
        let range = [(Internal, 2), (Internal, 3), (Internal, 4)];
        assert_eq!(authorize(&range, 1, 4), Ok(()));
        assert_eq!(authorize(&range, 2, 4), DENIED);
        let both = [(Internal, 3), (Internal, 4), (External, 2), (External, 3)];
        assert_eq!(authorize(&both, 2, 1), Ok(()));
        assert_eq!(authorize(&both, 2, 2), DENIED);
        assert_eq!(authorize(&both, 3, 1), DENIED);
    }

    #[test]
    fn slot_one_is_never_renewed() {
        assert_eq!(authorize(&[(Internal, 1)], 0, 0), DENIED);
        assert_eq!(authorize(&[(External, 1)], 0, 0), DENIED);
        assert_eq!(authorize(&[], 1, 1), Err(StatusWord::INCORRECT_DATA));
    }
}
