#![allow(clippy::unwrap_used)]
//! The key service's checks, without a database: the seal opens only for the attested card,
//! and attestations are bound to the nonce, the card and every field.

use super::*;
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::hpke::HpkePrivateKey;
use tessera_crypto::rng::SeededRng;
use tessera_crypto::x509::{self, Validity};
use tessera_proto::vault::{Attestation, Role};

const T0: i64 = 1_767_225_600;

struct Pki {
    ca: Certificate,
    device_key: SigningKey,
    device: Certificate,
}

fn pki(card_id: &str) -> Pki {
    let mut rng = SeededRng::from_u64(7);
    let ca_key = SigningKey::generate(&mut rng);
    let validity = Validity { not_before: T0, not_after: T0 + 86400 * 365 };
    let ca = x509::self_signed_ca(&ca_key, "test CA", &[1], validity).unwrap();
    let device_key = SigningKey::generate(&mut rng);
    let device = x509::issue(
        &ca_key,
        &ca,
        &x509::IssueRequest {
            subject_cn: card_id,
            public_key: &device_key.public_key(),
            roles: &[CertRole::Device],
            serial: &[2],
            validity,
            ca_path_len: None,
        },
    )
    .unwrap();
    Pki { ca, device_key, device }
}

fn attest(
    p: &Pki,
    card_id: &str,
    nonce: &[u8],
    transport: [u8; 65],
    pk: Option<[u8; 65]>,
) -> Vec<u8> {
    let body = Attestation::body(nonce, Role::Main, &transport, pk.as_ref());
    let sig = device::sign(&p.device_key, Purpose::DeviceAuthentication, card_id.as_bytes(), &body)
        .unwrap();
    Attestation {
        role: Role::Main,
        transport_key: transport,
        public_key: pk,
        signature: sig.to_bytes(),
    }
    .to_bytes()
}

#[test]
fn attestation_binds_nonce_card_and_transport_key() {
    let p = pki("CARD-A");
    let transport = HpkePrivateKey::generate(&mut SeededRng::from_u64(1)).public_key().to_bytes();
    let nonce = [9u8; 32];
    let answer = attest(&p, "CARD-A", &nonce, transport, None);
    let a = verify_attestation(&p.ca, &p.device, b"CARD-A", &nonce, &answer, T0 + 10).unwrap();
    assert_eq!((a.transport_key, a.public_key), (transport, None));
    // Another nonce (a replayed answer), another card, a substituted transport key.
    assert_eq!(
        verify_attestation(&p.ca, &p.device, b"CARD-A", &[8u8; 32], &answer, T0 + 10),
        Err(VaultServiceError::Signature)
    );
    assert!(matches!(
        verify_attestation(&p.ca, &p.device, b"CARD-B", &nonce, &answer, T0 + 10),
        Err(VaultServiceError::DeviceCertificate(_))
    ));
    let mut swapped = answer.clone();
    let other = HpkePrivateKey::generate(&mut SeededRng::from_u64(2)).public_key().to_bytes();
    swapped[1..66].copy_from_slice(&other);
    assert_eq!(
        verify_attestation(&p.ca, &p.device, b"CARD-A", &nonce, &swapped, T0 + 10),
        Err(VaultServiceError::Signature)
    );
    // Hiding a key the card holds changes the signed body too.
    let with_key = attest(&p, "CARD-A", &nonce, transport, Some([4; 65]));
    let mut hidden = with_key[..66].to_vec();
    hidden.push(0);
    hidden.extend_from_slice(&with_key[with_key.len() - 64..]);
    assert_eq!(
        verify_attestation(&p.ca, &p.device, b"CARD-A", &nonce, &hidden, T0 + 10),
        Err(VaultServiceError::Signature)
    );
    assert_eq!(
        verify_attestation(&p.ca, &p.device, b"CARD-A", &nonce, &answer[..10], T0 + 10),
        Err(VaultServiceError::Malformed)
    );
    // A device certificate from another CA.
    let q = pki("CARD-A");
    let mut rng = SeededRng::from_u64(99);
    let other_ca_key = SigningKey::generate(&mut rng);
    let v = Validity { not_before: T0, not_after: T0 + 86400 };
    let other_ca = x509::self_signed_ca(&other_ca_key, "other CA", &[3], v).unwrap();
    assert!(matches!(
        verify_attestation(&other_ca, &q.device, b"CARD-A", &nonce, &answer, T0 + 10),
        Err(VaultServiceError::DeviceCertificate(_))
    ));
}

#[test]
fn sealed_key_opens_only_with_the_card_transport_key_and_id() {
    let card = HpkePrivateKey::generate(&mut SeededRng::from_u64(3));
    let other = HpkePrivateKey::generate(&mut SeededRng::from_u64(4));
    let secret = [0x5Au8; 32];
    let sealed = seal_key_for_card(
        &mut SeededRng::from_u64(5),
        &card.public_key().to_bytes(),
        b"CARD-A",
        &secret,
    )
    .unwrap();
    let opened = hpke::open(&card, &import_sealed_info(b"CARD-A"), AID, &sealed).unwrap();
    assert_eq!(opened.as_slice(), &secret);
    assert!(hpke::open(&card, &import_sealed_info(b"CARD-B"), AID, &sealed).is_err());
    assert!(hpke::open(&other, &import_sealed_info(b"CARD-A"), AID, &sealed).is_err());
    assert_eq!(
        seal_key_for_card(&mut SeededRng::from_u64(5), &[4; 10], b"CARD-A", &secret),
        Err(VaultServiceError::TransportKey)
    );
}
