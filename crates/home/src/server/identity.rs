//! The home server's own TLS identity: the certificate access cards pin.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::registry::Registry;

/// The home server's own TLS identity: a certificate the access cards pin.
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// The leaf certificate (DER): what an access card pins.
    pub fn certificate(&self) -> &[u8] {
        self.chain.first().map(|c| c.as_ref()).unwrap_or(&[])
    }

    /// SHA-256 of the certificate's SubjectPublicKeyInfo: what an access card pins.
    pub fn spki_sha256(&self) -> [u8; 32] {
        crate::spki_sha256(self.certificate()).unwrap_or([0; 32])
    }

    /// A fresh self-signed identity (P-256, the `home` role), valid five years from `now`.
    pub fn generate(now: i64) -> Result<Self, crate::control::tls::TlsSetupError> {
        use tessera_crypto::rng::OsRng;
        use tessera_crypto::x509::{self, AltName, Role, Validity};
        let invalid =
            |e: tessera_crypto::CryptoError| crate::control::tls::TlsSetupError(e.to_string());
        let validity = Validity { not_before: now - 3600, not_after: now + 5 * 365 * 24 * 3600 };
        let x509::LocalIdentity { certificate: leaf, key, .. } = x509::local_identity(
            "tessera home CA",
            "tessera home server",
            &[Role::Home],
            &[AltName::Dns("localhost".into())],
            validity,
            &mut OsRng,
        )
        .map_err(invalid)?;
        let key_der = key.to_pkcs8_der().map_err(invalid)?;
        Ok(Identity {
            chain: vec![CertificateDer::from(leaf.der().to_vec())],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())),
        })
    }

    /// Loads the identity from `dir` (`home-cert.pem`, the certificate access cards pin, and
    /// `home-key.der`, PKCS#8, mode 0600), making it first if it is not there; returns whether
    /// it was just made.
    pub fn load_or_create(
        dir: &Path,
        now: i64,
    ) -> Result<(Self, bool), crate::control::tls::TlsSetupError> {
        let fail = |m: String| crate::control::tls::TlsSetupError(m);
        let err = |p: &Path, e: &dyn std::fmt::Display| fail(format!("{}: {e}", p.display()));
        let cert_path = dir.join("home-cert.pem");
        let key_path = dir.join("home-key.der");
        if cert_path.exists() && key_path.exists() {
            let pem = std::fs::read_to_string(&cert_path).map_err(|e| err(&cert_path, &e))?;
            let cert = tessera_crypto::x509::Certificate::from_pem(&pem)
                .map_err(|e| err(&cert_path, &e))?;
            let key = std::fs::read(&key_path).map_err(|e| err(&key_path, &e))?;
            return Ok((
                Identity {
                    chain: vec![CertificateDer::from(cert.der().to_vec())],
                    key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                },
                false,
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
        let id = Self::generate(now)?;
        let PrivateKeyDer::Pkcs8(k) = &id.key else {
            return Err(fail("unexpected key format".into()));
        };
        write_private(&key_path, k.secret_pkcs8_der()).map_err(|e| err(&key_path, &e))?;
        let cert = tessera_crypto::x509::Certificate::from_der(id.certificate().to_vec())
            .map_err(|e| err(&cert_path, &e))?;
        std::fs::write(&cert_path, cert.to_pem()).map_err(|e| err(&cert_path, &e))?;
        Ok((id, true))
    }

    /// The control channel's server configuration for this identity.
    pub fn server_config(
        &self,
        registry: Arc<Registry>,
    ) -> Result<Arc<ServerConfig>, crate::control::tls::TlsSetupError> {
        crate::control::tls::server_config(self.chain.clone(), self.key.clone_key(), registry)
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
