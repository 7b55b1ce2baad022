//! The content of a TLS client CertificateVerify (RFC 8446 section 4.4.3; RFC 5246 section 7.4.8).
//!
//! The party holding a TLS client key (a home card, an access card) signs only what a
//! CertificateVerify message covers, built or checked here, never a digest it is handed:
//!
//! - **TLS 1.3**: the content is 64 bytes `0x20`, the context string
//!   `"TLS 1.3, client CertificateVerify"`, one `0x00`, then the transcript hash (SHA-256 for
//!   the cipher suites of the profile, so 32 bytes). The key holder receives only the
//!   transcript hash and builds the rest itself ([`tls13_client_content`]), so the signature
//!   can never pass as a server's CertificateVerify or as any other protocol's message.
//! - **TLS 1.2**: the signature covers the concatenated handshake messages sent and received
//!   so far (ClientHello up to and including ClientKeyExchange), hashed with SHA-256 by the
//!   signer. The key holder receives those messages and checks they are a sequence of
//!   well-formed handshake messages of the types a full handshake with client
//!   authentication has, starting with a ClientHello and a ServerHello and ending with the
//!   ClientKeyExchange ([`check_tls12_handshake_messages`]).
//!
//! Both use `ecdsa_secp256r1_sha256` (signature scheme `0x0403`); the signature is the DER
//! `ECDSA-Sig-Value` TLS carries.

use crate::ecdsa::{PublicKey, Signature, SigningKey};
use crate::{CryptoError, Result};

/// The TLS `SignatureScheme` code of ECDSA P-256 with SHA-256 (`ecdsa_secp256r1_sha256`).
pub const ECDSA_SECP256R1_SHA256: u16 = 0x0403;
/// The context string of a client's CertificateVerify in TLS 1.3.
pub const TLS13_CLIENT_CONTEXT: &[u8] = b"TLS 1.3, client CertificateVerify";
/// Length of a SHA-256 transcript hash.
pub const TRANSCRIPT_HASH_LEN: usize = 32;
/// Length of the TLS 1.3 client CertificateVerify content: 64 + 33 + 1 + 32.
pub const TLS13_CONTENT_LEN: usize = 64 + TLS13_CLIENT_CONTEXT.len() + 1 + TRANSCRIPT_HASH_LEN;
/// Most handshake bytes a TLS 1.2 CertificateVerify may cover here (certificate chains
/// included); the APDU limit is 65535 anyway.
pub const TLS12_MAX_MESSAGES_LEN: usize = 65_535;

/// The bytes a TLS 1.3 client signs in its CertificateVerify for `transcript_hash`
/// (RFC 8446 section 4.4.3).
pub fn tls13_client_content(
    transcript_hash: &[u8; TRANSCRIPT_HASH_LEN],
) -> [u8; TLS13_CONTENT_LEN] {
    let mut out = [0x20u8; TLS13_CONTENT_LEN];
    let context_end = 64 + TLS13_CLIENT_CONTEXT.len();
    out[64..context_end].copy_from_slice(TLS13_CLIENT_CONTEXT);
    out[context_end] = 0;
    out[context_end + 1..].copy_from_slice(transcript_hash);
    out
}

/// Signs the TLS 1.3 client CertificateVerify content for `transcript_hash` with
/// `ecdsa_secp256r1_sha256`; returns the DER signature that goes into the message.
pub fn sign_tls13_client(key: &SigningKey, transcript_hash: &[u8; TRANSCRIPT_HASH_LEN]) -> Vec<u8> {
    key.sign(&tls13_client_content(transcript_hash)).to_der()
}

/// Verifies a DER signature made by [`sign_tls13_client`] (what a TLS server does).
pub fn verify_tls13_client(
    key: &PublicKey,
    transcript_hash: &[u8; TRANSCRIPT_HASH_LEN],
    der_signature: &[u8],
) -> Result<()> {
    let signature = Signature::from_der(der_signature)?;
    key.verify(&tls13_client_content(transcript_hash), &signature)
}

/// TLS 1.2 handshake message types (RFC 5246 section 7.4, RFC 6066 section 8).
mod handshake {
    pub const CLIENT_HELLO: u8 = 1;
    pub const SERVER_HELLO: u8 = 2;
    pub const CERTIFICATE: u8 = 11;
    pub const SERVER_KEY_EXCHANGE: u8 = 12;
    pub const CERTIFICATE_REQUEST: u8 = 13;
    pub const SERVER_HELLO_DONE: u8 = 14;
    pub const CLIENT_KEY_EXCHANGE: u8 = 16;
    pub const CERTIFICATE_STATUS: u8 = 22;
}

/// Checks that `messages` is what a TLS 1.2 client's CertificateVerify covers: one or more
/// complete handshake messages (`type (1) || length (3) || body`), nothing left over, the
/// first a ClientHello, the second a ServerHello, the last a ClientKeyExchange, a
/// CertificateRequest among them, and every type one a full handshake has before the
/// CertificateVerify (Certificate, ServerKeyExchange, CertificateRequest, ServerHelloDone,
/// CertificateStatus).
pub fn check_tls12_handshake_messages(messages: &[u8]) -> Result<()> {
    use handshake::*;
    if messages.len() > TLS12_MAX_MESSAGES_LEN {
        return Err(CryptoError::InvalidLength("TLS 1.2 handshake messages above 65535 bytes"));
    }
    let mut types = Vec::new();
    let mut rest = messages;
    while !rest.is_empty() {
        let [kind, a, b, c, body @ ..] = rest else {
            return Err(CryptoError::Malformed("TLS handshake message header"));
        };
        let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
        if body.len() < len {
            return Err(CryptoError::Malformed("TLS handshake message length"));
        }
        types.push(*kind);
        rest = &body[len..];
    }
    let allowed = [
        CLIENT_HELLO,
        SERVER_HELLO,
        CERTIFICATE,
        SERVER_KEY_EXCHANGE,
        CERTIFICATE_REQUEST,
        SERVER_HELLO_DONE,
        CLIENT_KEY_EXCHANGE,
        CERTIFICATE_STATUS,
    ];
    let shaped = types.first() == Some(&CLIENT_HELLO)
        && types.get(1) == Some(&SERVER_HELLO)
        && types.last() == Some(&CLIENT_KEY_EXCHANGE)
        && types.contains(&CERTIFICATE_REQUEST)
        && types.iter().all(|t| allowed.contains(t))
        && types.iter().filter(|&&t| t == CLIENT_HELLO).count() == 1;
    if !shaped {
        return Err(CryptoError::Malformed("TLS 1.2 handshake messages before CertificateVerify"));
    }
    Ok(())
}

/// Checks `handshake_messages` ([`check_tls12_handshake_messages`]) and signs them with
/// `ecdsa_secp256r1_sha256` (SHA-256 over the messages); returns the DER signature.
pub fn sign_tls12_client(key: &SigningKey, handshake_messages: &[u8]) -> Result<Vec<u8>> {
    check_tls12_handshake_messages(handshake_messages)?;
    Ok(key.sign(handshake_messages).to_der())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn tls13_content_layout() {
        let hash = [0xAB; 32];
        let c = tls13_client_content(&hash);
        assert_eq!(c.len(), 130);
        assert!(c[..64].iter().all(|&b| b == 0x20));
        assert_eq!(&c[64..97], b"TLS 1.3, client CertificateVerify");
        assert_eq!(c[97], 0);
        assert_eq!(&c[98..], &hash);
    }

    #[test]
    fn tls13_signature_verifies_only_for_its_hash() {
        let key = SigningKey::generate(&mut SeededRng::from_u64(1));
        let sig = sign_tls13_client(&key, &[1; 32]);
        verify_tls13_client(&key.public_key(), &[1; 32], &sig).unwrap();
        assert!(verify_tls13_client(&key.public_key(), &[2; 32], &sig).is_err());
        // The server's context string is never what the client signed.
        let mut server = tls13_client_content(&[1; 32]).to_vec();
        server[64..97].copy_from_slice(b"TLS 1.3, server CertificateVerify");
        let s = Signature::from_der(&sig).unwrap();
        assert!(key.public_key().verify(&server, &s).is_err());
    }

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let n = body.len();
        let mut v = vec![kind, (n >> 16) as u8, (n >> 8) as u8, n as u8];
        v.extend_from_slice(body);
        v
    }

    fn full_handshake() -> Vec<u8> {
        [
            msg(1, b"hello"),
            msg(2, b"server"),
            msg(11, b"chain"),
            msg(12, b"kex"),
            msg(13, b"req"),
            msg(14, b""),
            msg(11, b"client chain"),
            msg(16, b"ckex"),
        ]
        .concat()
    }

    #[test]
    fn tls12_accepts_a_full_handshake_and_signs_it() {
        let key = SigningKey::generate(&mut SeededRng::from_u64(2));
        let m = full_handshake();
        let sig = sign_tls12_client(&key, &m).unwrap();
        key.public_key().verify(&m, &Signature::from_der(&sig).unwrap()).unwrap();
    }

    #[test]
    fn tls12_refuses_anything_else() {
        let good = full_handshake();
        // Truncated in a body, trailing byte, truncated header.
        assert!(check_tls12_handshake_messages(&good[..good.len() - 1]).is_err());
        assert!(check_tls12_handshake_messages(&[good.clone(), vec![16]].concat()).is_err());
        assert!(check_tls12_handshake_messages(&[]).is_err());
        // Not starting with a ClientHello.
        assert!(check_tls12_handshake_messages(&good[9..]).is_err());
        // Ending with something other than ClientKeyExchange (e.g. a Finished, 20).
        assert!(check_tls12_handshake_messages(&[good.clone(), msg(20, b"fin")].concat()).is_err());
        // No CertificateRequest.
        let no_req = [msg(1, b""), msg(2, b""), msg(14, b""), msg(16, b"")].concat();
        assert!(check_tls12_handshake_messages(&no_req).is_err());
        // An arbitrary "digest" is never accepted.
        assert!(check_tls12_handshake_messages(&[0x55; 32]).is_err());
        let key = SigningKey::generate(&mut SeededRng::from_u64(2));
        assert!(sign_tls12_client(&key, b"arbitrary").is_err());
    }

    /// A real handshake: a rustls client whose client-certificate key delegates to this
    /// module, against a rustls server that requires and verifies client certificates.
    mod rustls_handshake {
        use std::sync::Arc;

        use rustls::client::ResolvesClientCert;
        use rustls::crypto::ring::default_provider;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        use rustls::server::WebPkiClientVerifier;
        use rustls::sign::CertifiedKey;
        use rustls::{
            ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
            SignatureAlgorithm, SignatureScheme,
        };

        use super::super::*;
        use crate::rng::SeededRng;
        use crate::x509::{self, AltName, IssueRequest, Role, Validity};

        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Mode {
            /// The card's TLS 1.3 path: only the transcript hash reaches our function.
            Tls13,
            /// The card's TLS 1.2 path: the handshake messages reach our function.
            Tls12,
            /// A broken signer: signs the server's context string instead.
            WrongContext,
        }

        #[derive(Debug)]
        struct CardKey {
            key: Arc<SigningKey>,
            mode: Mode,
        }

        impl rustls::sign::SigningKey for CardKey {
            fn choose_scheme(
                &self,
                offered: &[SignatureScheme],
            ) -> Option<Box<dyn rustls::sign::Signer>> {
                offered.contains(&SignatureScheme::ECDSA_NISTP256_SHA256).then(|| {
                    Box::new(CardSigner { key: self.key.clone(), mode: self.mode })
                        as Box<dyn rustls::sign::Signer>
                })
            }
            fn algorithm(&self) -> SignatureAlgorithm {
                SignatureAlgorithm::ECDSA
            }
        }

        #[derive(Debug)]
        struct CardSigner {
            key: Arc<SigningKey>,
            mode: Mode,
        }

        impl rustls::sign::Signer for CardSigner {
            fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
                let err = |e: CryptoError| rustls::Error::General(e.to_string());
                match self.mode {
                    Mode::Tls13 | Mode::WrongContext => {
                        // What a home server sends the card: the transcript hash only (the
                        // last 32 bytes of what rustls would sign).
                        let start = message.len().checked_sub(32).ok_or_else(|| {
                            rustls::Error::General("short TLS 1.3 content".into())
                        })?;
                        let hash: [u8; 32] = message[start..]
                            .try_into()
                            .map_err(|_| rustls::Error::General("short TLS 1.3 content".into()))?;
                        if self.mode == Mode::Tls13 {
                            Ok(sign_tls13_client(&self.key, &hash))
                        } else {
                            let mut c = tls13_client_content(&hash);
                            c[64..97].copy_from_slice(b"TLS 1.3, server CertificateVerify");
                            Ok(self.key.sign(&c).to_der())
                        }
                    }
                    Mode::Tls12 => sign_tls12_client(&self.key, message).map_err(err),
                }
            }
            fn scheme(&self) -> SignatureScheme {
                SignatureScheme::ECDSA_NISTP256_SHA256
            }
        }

        #[derive(Debug)]
        struct Resolver(Arc<CertifiedKey>);

        impl ResolvesClientCert for Resolver {
            fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
                Some(self.0.clone())
            }
            fn has_certs(&self) -> bool {
                true
            }
        }

        /// Runs a handshake; `Ok` when both sides completed it.
        fn handshake(
            mode: Mode,
            version: &'static rustls::SupportedProtocolVersion,
        ) -> std::result::Result<(), String> {
            let mut rng = SeededRng::from_u64(77);
            let validity = Validity { not_before: 1_700_000_000, not_after: 4_000_000_000 };
            let ca_key = SigningKey::generate(&mut rng);
            let ca = x509::self_signed_ca(&ca_key, "test CA", &[1], validity).unwrap();
            let server_key = SigningKey::generate(&mut rng);
            let server_cert = x509::issue_with_alt_names(
                &ca_key,
                &ca,
                &IssueRequest {
                    subject_cn: "market",
                    public_key: &server_key.public_key(),
                    roles: &[Role::Server],
                    serial: &[2],
                    validity,
                    ca_path_len: None,
                },
                &[AltName::Dns("market.test".into())],
            )
            .unwrap();
            let client_key = Arc::new(SigningKey::generate(&mut rng));
            let client_cert = x509::issue(
                &ca_key,
                &ca,
                &IssueRequest {
                    subject_cn: "home card",
                    public_key: &client_key.public_key(),
                    roles: &[Role::Home],
                    serial: &[3],
                    validity,
                    ca_path_len: None,
                },
            )
            .unwrap();

            // The profile's TLS 1.3 suites hash the transcript with SHA-256 (a home server
            // offers only those); TLS 1.2 suites sign the messages themselves.
            let mut provider = default_provider();
            provider.cipher_suites.retain(|s| {
                s.version() != &rustls::version::TLS13
                    || s.tls13().is_some_and(|t| t.common.hash_provider.output_len() == 32)
            });
            let provider = Arc::new(provider);
            let mut roots = RootCertStore::empty();
            roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
            let roots = Arc::new(roots);
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .unwrap();
            let server_pkcs8 = server_key.to_pkcs8_der().unwrap().to_vec();
            let server_config = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![CertificateDer::from(server_cert.der().to_vec())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_pkcs8)),
                )
                .unwrap();
            let certified = CertifiedKey::new(
                vec![CertificateDer::from(client_cert.der().to_vec())],
                Arc::new(CardKey { key: client_key, mode }),
            );
            let client_config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_client_cert_resolver(Arc::new(Resolver(Arc::new(certified))));
            let name = ServerName::try_from("market.test").unwrap();
            let mut client = ClientConnection::new(Arc::new(client_config), name).unwrap();
            let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();

            for _ in 0..20 {
                let mut buf = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut buf).unwrap();
                }
                let mut rd = buf.as_slice();
                while !rd.is_empty() {
                    server.read_tls(&mut rd).unwrap();
                }
                server.process_new_packets().map_err(|e| format!("server: {e}"))?;
                let mut buf = Vec::new();
                while server.wants_write() {
                    server.write_tls(&mut buf).unwrap();
                }
                let mut rd = buf.as_slice();
                while !rd.is_empty() {
                    client.read_tls(&mut rd).unwrap();
                }
                client.process_new_packets().map_err(|e| format!("client: {e}"))?;
                if !client.is_handshaking() && !server.is_handshaking() {
                    let peer = server.peer_certificates().ok_or("no client certificate")?;
                    assert_eq!(peer[0].as_ref(), client_cert.der());
                    return Ok(());
                }
            }
            Err("handshake did not complete".into())
        }

        #[test]
        fn rustls_server_accepts_the_tls13_client_certificate_verify() {
            handshake(Mode::Tls13, &rustls::version::TLS13).unwrap();
        }

        #[test]
        fn rustls_server_accepts_the_tls12_client_certificate_verify() {
            handshake(Mode::Tls12, &rustls::version::TLS12).unwrap();
        }

        #[test]
        fn rustls_server_refuses_a_signature_over_other_content() {
            let e = handshake(Mode::WrongContext, &rustls::version::TLS13).unwrap_err();
            assert!(e.starts_with("server"), "{e}");
        }
    }
}
