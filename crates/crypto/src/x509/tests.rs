//! Certificate and CRL tests, including `openssl verify` over the chains we make.

use super::*;
use crate::rng::SeededRng;

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const YEAR: i64 = 365 * 86400;

fn validity() -> Validity {
    Validity { not_before: T0, not_after: T0 + 10 * YEAR }
}

struct Pki {
    ca_key: SigningKey,
    ca: Certificate,
    leaf_key: SigningKey,
    leaf: Certificate,
}

fn pki(seed: u64, roles: &[Role]) -> Pki {
    let mut rng = SeededRng::from_u64(seed);
    let ca_key = SigningKey::generate(&mut rng);
    let ca =
        self_signed_ca(&ca_key, "tessera test CA", &random_serial(&mut rng), validity()).unwrap();
    let leaf_key = SigningKey::generate(&mut rng);
    let leaf = issue(
        &ca_key,
        &ca,
        &IssueRequest {
            subject_cn: "card 0001",
            public_key: &leaf_key.public_key(),
            roles,
            serial: &[0x42, 0x01],
            validity: Validity { not_before: T0, not_after: T0 + YEAR },
            ca_path_len: None,
        },
    )
    .unwrap();
    Pki { ca_key, ca, leaf_key, leaf }
}

#[test]
fn issue_and_parse() {
    let p = pki(1, &[Role::Card, Role::Terminal]);
    let i = p.leaf.info().unwrap();
    assert_eq!(i.subject_cn, "card 0001");
    assert_eq!(i.issuer_cn, "tessera test CA");
    assert_eq!(i.serial, vec![0x42, 0x01]);
    assert_eq!(i.validity, Validity { not_before: T0, not_after: T0 + YEAR });
    assert!(!i.is_ca);
    assert_eq!(i.roles, vec![Role::Card, Role::Terminal]);
    assert_eq!(i.public_key, p.leaf_key.public_key());
    let c = p.ca.info().unwrap();
    assert!(c.is_ca);
    assert_eq!(c.public_key, p.ca_key.public_key());
    assert_eq!(Certificate::from_pem(&p.leaf.to_pem()).unwrap(), p.leaf);
    assert_eq!(Role::Card.oid(), "2.25.1603563542103970129069162204869298736.1.1");
}

#[test]
fn chain_verification() {
    let p = pki(2, &[Role::Card]);
    let at = T0 + 100;
    let info = verify_chain(&p.leaf, &[], &p.ca, at, Some(Role::Card)).unwrap();
    assert_eq!(info.public_key, p.leaf_key.public_key());
    // Wrong role, wrong time, wrong anchor.
    assert!(verify_chain(&p.leaf, &[], &p.ca, at, Some(Role::Terminal)).is_err());
    assert!(verify_chain(&p.leaf, &[], &p.ca, T0 - 1, None).is_err());
    assert!(verify_chain(&p.leaf, &[], &p.ca, T0 + YEAR + 1, None).is_err());
    let other = pki(3, &[Role::Card]);
    assert!(verify_chain(&p.leaf, &[], &other.ca, at, None).is_err());
    // A leaf is not a trust anchor for another leaf, and cannot issue.
    assert!(verify_chain(&other.leaf, &[], &p.leaf, at, None).is_err());
    let req = IssueRequest {
        subject_cn: "x",
        public_key: &p.leaf_key.public_key(),
        roles: &[],
        serial: &[1],
        validity: validity(),
        ca_path_len: None,
    };
    assert!(issue(&p.leaf_key, &p.leaf, &req).is_err());
    assert!(issue(&other.ca_key, &p.ca, &req).is_err(), "key must match the CA certificate");
    // Any flipped byte in the signed part breaks the chain.
    let der = p.leaf.der().to_vec();
    for pos in [20usize, 60, der.len() / 2, der.len() - 80] {
        let mut t = der.clone();
        t[pos] ^= 0x01;
        if let Ok(c) = Certificate::from_der(t) {
            assert!(verify_chain(&c, &[], &p.ca, at, None).is_err(), "flip at {pos}");
        }
    }
}

#[test]
fn intermediates_and_path_length() {
    let mut rng = SeededRng::from_u64(4);
    let root_key = SigningKey::generate(&mut rng);
    let root = self_signed_ca(&root_key, "root", &[1], validity()).unwrap();
    let mk = |issuer_key: &SigningKey, issuer: &Certificate, key: &SigningKey, cn, path, serial| {
        issue(
            issuer_key,
            issuer,
            &IssueRequest {
                subject_cn: cn,
                public_key: &key.public_key(),
                roles: &[Role::Device],
                serial,
                validity: validity(),
                ca_path_len: path,
            },
        )
        .unwrap()
    };
    let k1 = SigningKey::generate(&mut rng);
    let inter = mk(&root_key, &root, &k1, "issuer", Some(0), &[2]);
    let k2 = SigningKey::generate(&mut rng);
    let leaf = mk(&k1, &inter, &k2, "device", None, &[3]);
    verify_chain(&leaf, std::slice::from_ref(&inter), &root, T0 + 5, Some(Role::Device)).unwrap();
    // Missing intermediate.
    assert!(verify_chain(&leaf, &[], &root, T0 + 5, None).is_err());
    // pathLen 0 forbids a further CA below the intermediate.
    let k3 = SigningKey::generate(&mut rng);
    let sub = mk(&k1, &inter, &k3, "sub-issuer", Some(0), &[4]);
    let k4 = SigningKey::generate(&mut rng);
    let leaf2 = mk(&k3, &sub, &k4, "device 2", None, &[5]);
    assert!(verify_chain(&leaf2, &[sub.clone(), inter.clone()], &root, T0 + 5, None).is_err());
    openssl_verify(&root, &[inter], &leaf, None, true);
}

#[test]
fn crl_revocation() {
    let p = pki(5, &[Role::Card]);
    let crl = make_crl(
        &p.ca_key,
        &p.ca,
        &[Revoked { serial: vec![0x42, 0x01], revoked_at: T0 + 50 }],
        T0 + 60,
        T0 + 86400,
        7,
    )
    .unwrap();
    assert!(crl.is_revoked(&p.ca, &[0x42, 0x01], T0 + 100).unwrap());
    assert!(crl.is_revoked(&p.ca, &[0x00, 0x42, 0x01], T0 + 100).unwrap());
    assert!(!crl.is_revoked(&p.ca, &[0x42, 0x02], T0 + 100).unwrap());
    // Stale, not yet issued, or checked against another CA: refused, not "not revoked".
    assert!(crl.is_revoked(&p.ca, &[0x42, 0x01], T0 + 2 * 86400).is_err());
    assert!(crl.is_revoked(&p.ca, &[0x42, 0x01], T0).is_err());
    let other = pki(6, &[]);
    assert!(crl.is_revoked(&other.ca, &[0x42, 0x01], T0 + 100).is_err());
    let mut t = crl.der().to_vec();
    let n = t.len();
    t[n / 2] ^= 1;
    assert!(Crl::from_der(t).is_revoked(&p.ca, &[0x42, 0x01], T0 + 100).is_err());
    assert!(make_crl(&other.ca_key, &p.ca, &[], T0, T0 + 1, 1).is_err());
    // openssl agrees: the revoked leaf fails with -crl_check.
    openssl_verify(&p.ca, &[], &p.leaf, Some(&crl), false);
}

#[test]
fn openssl_accepts_our_chains() {
    for roles in
        [&[Role::Card][..], &[Role::Terminal, Role::Access], &[Role::Home], &[Role::Server]]
    {
        let p = pki(7, roles);
        openssl_verify(&p.ca, &[], &p.leaf, None, true);
    }
}

#[test]
fn serial_and_validity_checks() {
    let mut rng = SeededRng::from_u64(8);
    let k = SigningKey::generate(&mut rng);
    assert!(self_signed_ca(&k, "x", &[], validity()).is_err());
    assert!(self_signed_ca(&k, "x", &[0, 0], validity()).is_err());
    assert!(self_signed_ca(&k, "x", &[1; 21], validity()).is_err());
    assert!(self_signed_ca(&k, "x", &[1], Validity { not_before: 10, not_after: 9 }).is_err());
    assert!(Certificate::from_der(vec![0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    assert!(
        Certificate::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .is_err()
    );
    let s = random_serial(&mut rng);
    assert!(s[0] & 0x80 == 0 && s[0] != 0);
}

/// Runs `openssl verify` on the chain; `expect_ok` says whether it must accept.
fn openssl_verify(
    root: &Certificate,
    intermediates: &[Certificate],
    leaf: &Certificate,
    crl: Option<&Crl>,
    expect_ok: bool,
) {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is required when CI=true (apt-get install openssl)"
        );
        eprintln!("NOTICE: openssl not found; skipping the openssl verify cross-check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("ca.pem"), root.to_pem()).unwrap();
    std::fs::write(path("leaf.pem"), leaf.to_pem()).unwrap();
    let inter: String = intermediates.iter().map(Certificate::to_pem).collect();
    std::fs::write(path("inter.pem"), inter).unwrap();
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(path("ca.pem"));
    // Our test certificates start in 2026; verify at a time inside every window.
    cmd.arg("-attime").arg((T0 + 3600).to_string());
    if !intermediates.is_empty() {
        cmd.arg("-untrusted").arg(path("inter.pem"));
    }
    if let Some(crl) = crl {
        std::fs::write(path("crl.pem"), crl.to_pem()).unwrap();
        cmd.arg("-crl_check").arg("-CRLfile").arg(path("crl.pem"));
    }
    cmd.arg(path("leaf.pem"));
    let out = cmd.output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if expect_ok {
        assert!(out.status.success() && text.contains(": OK"), "openssl verify refused: {text}");
    } else {
        assert!(!out.status.success(), "openssl verify accepted: {text}");
        if crl.is_some() {
            assert!(text.contains("revoked"), "expected a revocation error: {text}");
        }
    }
}

#[test]
fn subject_alt_names_round_trip_and_openssl_matches_them() {
    let p = pki(9, &[Role::Server]);
    assert!(p.leaf.info().unwrap().alt_names.is_empty(), "no SAN extension unless asked");
    let names = [
        AltName::Dns("localhost".into()),
        AltName::Ip("127.0.0.1".parse().unwrap()),
        AltName::Ip("::1".parse().unwrap()),
    ];
    let key = SigningKey::generate(&mut SeededRng::from_u64(10));
    let req = IssueRequest {
        subject_cn: "tessera server",
        public_key: &key.public_key(),
        roles: &[Role::Server],
        serial: &[7],
        validity: validity(),
        ca_path_len: None,
    };
    let leaf = issue_with_alt_names(&p.ca_key, &p.ca, &req, &names).unwrap();
    assert_eq!(leaf.info().unwrap().alt_names, names.to_vec());
    verify_chain(&leaf, &[], &p.ca, T0 + 1, Some(Role::Server)).unwrap();
    // Names that cannot be encoded are refused, not mangled.
    for bad in [AltName::Dns(String::new()), AltName::Dns("h\u{e9}llo".into())] {
        assert!(issue_with_alt_names(&p.ca_key, &p.ca, &req, &[bad]).is_err());
    }
    // openssl matches the host and IP against the SANs (and refuses one not named).
    openssl_verify_name(&p.ca, &leaf, &["-verify_hostname", "localhost"], true);
    openssl_verify_name(&p.ca, &leaf, &["-verify_ip", "127.0.0.1"], true);
    openssl_verify_name(&p.ca, &leaf, &["-verify_ip", "::1"], true);
    openssl_verify_name(&p.ca, &leaf, &["-verify_ip", "10.0.0.1"], false);
    openssl_verify_name(&p.ca, &leaf, &["-verify_hostname", "example.com"], false);
}

fn openssl_verify_name(root: &Certificate, leaf: &Certificate, args: &[&str], expect_ok: bool) {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "openssl is required when CI=true");
        eprintln!("NOTICE: openssl not found; skipping the openssl name check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), root.to_pem()).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), leaf.to_pem()).unwrap();
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.path().join("ca.pem"))
        .arg("-attime")
        .arg((T0 + 3600).to_string())
        .args(args)
        .arg(dir.path().join("leaf.pem"))
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.success(), expect_ok, "openssl verify {args:?}: {text}");
}

/// A CA key held elsewhere (a token): signs through the trait; a failing signer fails the
/// certificate instead of producing one.
struct External {
    key: SigningKey,
    calls: core::cell::Cell<u32>,
    broken: bool,
}

impl CaSigner for External {
    fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
    fn sign_message(&self, message: &[u8]) -> Result<Signature> {
        self.calls.set(self.calls.get() + 1);
        if self.broken {
            return Err(CryptoError::BadSignature);
        }
        Ok(self.key.sign(message))
    }
}

#[test]
fn an_external_ca_signer_signs_certificates_and_crls() {
    let key = SigningKey::generate(&mut SeededRng::from_u64(11));
    let ext = External { key, calls: core::cell::Cell::new(0), broken: false };
    let ca = self_signed_ca(&ext, "external CA", &[1], validity()).unwrap();
    let leaf_key = SigningKey::generate(&mut SeededRng::from_u64(12));
    let req = IssueRequest {
        subject_cn: "leaf",
        public_key: &leaf_key.public_key(),
        roles: &[Role::Device],
        serial: &[2],
        validity: validity(),
        ca_path_len: None,
    };
    let leaf = issue(&ext, &ca, &req).unwrap();
    verify_chain(&leaf, &[], &ca, T0 + 1, Some(Role::Device)).unwrap();
    let crl = make_crl(&ext, &ca, &[Revoked { serial: vec![2], revoked_at: T0 }], T0, T0 + YEAR, 1)
        .unwrap();
    assert!(crl.is_revoked(&ca, &[2], T0 + 1).unwrap());
    assert_eq!(ext.calls.get(), 3);
    let broken = External { broken: true, ..ext };
    assert!(issue(&broken, &ca, &req).is_err());
    assert!(self_signed_ca(&broken, "x", &[1], validity()).is_err());
}
