//! When a CRL was issued, for parties without a clock.
//!
//! [`crate::x509::Crl::is_revoked`] needs the time at which the list must be current. A card
//! has no clock: it judges time by the latest CA-signed time it has seen, and a CRL's
//! `thisUpdate` is such a time. [`crl_times`] reads it (the signature is checked by
//! `is_revoked`, which the caller runs at the returned `this_update`).

use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::x509::Crl;
use crate::{CryptoError, Result};

/// A CRL's `thisUpdate` and `nextUpdate` (Unix seconds), as written in it (not yet verified).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrlTimes {
    /// When the CRL was issued.
    pub this_update: i64,
    /// When the next CRL is due, if the CRL says.
    pub next_update: Option<i64>,
}

/// Reads a CRL's issue times. Fails on anything that is not one DER CRL.
pub fn crl_times(crl: &Crl) -> Result<CrlTimes> {
    let (rest, parsed) = CertificateRevocationList::from_der(crl.der())
        .map_err(|e| CryptoError::Certificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CryptoError::Certificate("trailing bytes after CRL".into()));
    }
    Ok(CrlTimes {
        this_update: parsed.last_update().timestamp(),
        next_update: parsed.next_update().map(|t| t.timestamp()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecdsa::SigningKey;
    use crate::rng::SeededRng;
    use crate::x509::{Revoked, Validity, make_crl, self_signed_ca};

    #[test]
    fn reads_the_times_it_was_made_with_and_refuses_garbage() {
        let mut rng = SeededRng::from_u64(7);
        let key = SigningKey::generate(&mut rng);
        let validity = Validity { not_before: 1_700_000_000, not_after: 1_900_000_000 };
        let ca = self_signed_ca(&key, "CA", &[1], validity).unwrap();
        let crl = make_crl(
            &key,
            &ca,
            &[Revoked { serial: vec![5], revoked_at: 1_750_000_000 }],
            1_760_000_000,
            1_770_000_000,
            1,
        )
        .unwrap();
        assert_eq!(
            crl_times(&crl).unwrap(),
            CrlTimes { this_update: 1_760_000_000, next_update: Some(1_770_000_000) }
        );
        assert!(crl_times(&Crl::from_der(vec![0x30, 0x03, 1, 2, 3])).is_err());
        let mut long = crl.der().to_vec();
        long.push(0);
        assert!(crl_times(&Crl::from_der(long)).is_err());
    }
}
