//! Every parser of the crate, fed arbitrary bytes: it returns an error, never panics, and never
//! "succeeds" on garbage where success needs a secret.

use proptest::prelude::*;
use tessera_crypto::ecdsa::{PublicKey, Signature, SigningKey};
use tessera_crypto::hpke::{self, HpkePrivateKey};
use tessera_crypto::keys::AesKey;
use tessera_crypto::keywrap::{self, WrapKey};
use tessera_crypto::passphrase::{KdfCost, KdfParams, PassphraseKey};
use tessera_crypto::rng::SeededRng;
use tessera_crypto::scp03::decrypt_key_component;
use tessera_crypto::x509::{self, Certificate, Crl};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_is_rejected_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut rng = SeededRng::from_u64(1);
        let params = KdfParams::generate(KdfCost::TEST_ONLY, &mut rng).unwrap();
        let pk = PassphraseKey::derive(b"pw", &params).unwrap();
        prop_assert!(pk.open(&bytes, b"").is_err());
        let _ = KdfParams::from_blob(&bytes);
        let _ = KdfParams::from_bytes(&bytes);

        let kek = WrapKey::generate(&mut rng);
        prop_assert!(keywrap::unwrap(&kek, &bytes, b"").is_err());

        let sk = HpkePrivateKey::generate(&mut rng);
        prop_assert!(hpke::open(&sk, b"", b"", &bytes).is_err());

        let _ = Signature::from_der(&bytes);
        let _ = Signature::from_bytes(&bytes);
        let _ = PublicKey::from_sec1_bytes(&bytes);
        let _ = PublicKey::from_spki_der(&bytes);
        let _ = SigningKey::from_pkcs8_der(&bytes);
        let _ = AesKey::from_slice(&bytes);
        let _ = decrypt_key_component(&AesKey::Aes128([1; 16]), &bytes);

        let _ = Certificate::from_der(bytes.clone());
        let ca_key = SigningKey::generate(&mut rng);
        let ca = x509::self_signed_ca(
            &ca_key,
            "ca",
            &[1],
            x509::Validity { not_before: 0, not_after: 1 << 32 },
        )
        .unwrap();
        prop_assert!(Crl::from_der(bytes.clone()).is_revoked(&ca, &[1], 100).is_err());
    }
}
