//! Keys in a PKCS#11 token (tested with SoftHSM2): ECDSA P-256 key pairs generated in the token
//! (private half sensitive and never extractable), signing with CKM_ECDSA over a SHA-256 digest
//! computed here, and a [`CaSigner`], so certificates and CRLs are made without the private key
//! leaving the token. The server keeps issuer keys here, the terminal its pairing key.
//!
//! [`Token::open`] loads the module, finds the token by its label and logs in as the user with
//! the PIN given; one session serves every operation.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::ecdsa::{PublicKey, Signature};
use crate::x509::CaSigner;
use crate::{CryptoError, hash};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

/// DER of the named curve prime256v1 (1.2.840.10045.3.1.7), the key pairs' CKA_EC_PARAMS.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

/// Where the token is and how to log in.
#[derive(Clone)]
pub struct TokenConfig {
    /// The PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

/// A failure talking to the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The module, the token or the login failed.
    #[error("PKCS#11 token: {0}")]
    Token(String),
    /// No key with that label in the token.
    #[error("PKCS#11 token has no key {0:?}")]
    NoKey(String),
    /// A key with that label is already in the token.
    #[error("PKCS#11 token already has a key {0:?}")]
    Exists(String),
}

fn token_err(what: &str) -> impl Fn(cryptoki::error::Error) -> TokenError + '_ {
    move |e| TokenError::Token(format!("{what}: {e}"))
}

struct Inner {
    // Field order: the session closes before the library is finalised.
    session: Mutex<Session>,
    _ctx: Pkcs11,
}

/// An open, logged-in token. Cheap to clone.
#[derive(Clone)]
pub struct Token {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Loads the module, finds the token by label and logs in as the user.
    pub fn open(config: &TokenConfig) -> Result<Token, TokenError> {
        let ctx = Pkcs11::new(&config.module).map_err(token_err("cannot load the module"))?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(token_err("C_Initialize"))?;
        let slot = find_slot(&ctx, &config.token_label)?;
        let session = ctx.open_rw_session(slot).map_err(token_err("C_OpenSession"))?;
        let pin = AuthPin::new(config.pin.as_str().into());
        session.login(UserType::User, Some(&pin)).map_err(token_err("C_Login"))?;
        Ok(Token { inner: Arc::new(Inner { session: Mutex::new(session), _ctx: ctx }) })
    }

    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let session = self
            .inner
            .session
            .lock()
            .map_err(|_| TokenError::Token("session lock poisoned".into()))?;
        f(&session)
    }

    /// Generates a P-256 key pair labelled `label` in the token (refusing a label in use).
    pub fn generate(&self, label: &str) -> Result<TokenKey, TokenError> {
        self.with_session(|s| {
            if !find(s, label, ObjectClass::PRIVATE_KEY)?.is_empty() {
                return Err(TokenError::Exists(label.into()));
            }
            let common = [
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(label.as_bytes().to_vec()),
            ];
            let mut public = common.to_vec();
            public.extend([Attribute::EcParams(P256_PARAMS.to_vec()), Attribute::Verify(true)]);
            let mut private = common.to_vec();
            private.extend([
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
            ]);
            s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(token_err("C_GenerateKeyPair"))?;
            Ok(())
        })?;
        self.key(label)
    }

    /// The key pair labelled `label`.
    pub fn key(&self, label: &str) -> Result<TokenKey, TokenError> {
        let public = self.with_session(|s| {
            let handle = *find(s, label, ObjectClass::PUBLIC_KEY)?
                .first()
                .ok_or_else(|| TokenError::NoKey(label.into()))?;
            let attrs = s
                .get_attributes(handle, &[AttributeType::EcPoint])
                .map_err(token_err("C_GetAttributeValue"))?;
            let point = attrs.iter().find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p.clone()),
                _ => None,
            });
            point.and_then(|p| parse_point(&p)).ok_or_else(|| {
                TokenError::Token(format!("key {label:?} is not a P-256 public key"))
            })
        })?;
        Ok(TokenKey { token: self.clone(), label: label.into(), public })
    }
}

fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, TokenError> {
    let slots = ctx.get_slots_with_initialized_token().map_err(token_err("C_GetSlotList"))?;
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(token_err("C_GetTokenInfo"))?;
        if info.label().trim_end() == label {
            return Ok(slot);
        }
    }
    Err(TokenError::Token(format!("no initialised token labelled {label:?}")))
}

fn find(s: &Session, label: &str, class: ObjectClass) -> Result<Vec<ObjectHandle>, TokenError> {
    s.find_objects(&[
        Attribute::Class(class),
        Attribute::KeyType(KeyType::EC),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .map_err(token_err("C_FindObjects"))
}

/// CKA_EC_POINT: the DER OCTET STRING of the SEC1 point (PKCS#11 2.40), or the bare point.
fn parse_point(p: &[u8]) -> Option<PublicKey> {
    let raw = match p {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        _ => p,
    };
    PublicKey::from_sec1_bytes(raw).ok()
}

/// A key pair in the token, usable as a CA key.
#[derive(Clone, Debug)]
pub struct TokenKey {
    token: Token,
    label: String,
    public: PublicKey,
}

impl TokenKey {
    /// The key's label in the token.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    fn private_handle(&self, s: &Session) -> Result<ObjectHandle, TokenError> {
        find(s, &self.label, ObjectClass::PRIVATE_KEY)?
            .first()
            .copied()
            .ok_or_else(|| TokenError::NoKey(self.label.clone()))
    }

    /// The private key's CKA_EXTRACTABLE and CKA_SENSITIVE, as the token reports them.
    pub fn extractable_and_sensitive(&self) -> Result<(bool, bool), TokenError> {
        self.token.with_session(|s| {
            let key = self.private_handle(s)?;
            let attrs = s
                .get_attributes(key, &[AttributeType::Extractable, AttributeType::Sensitive])
                .map_err(token_err("C_GetAttributeValue"))?;
            let (mut extractable, mut sensitive) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Extractable(v) => extractable = Some(v),
                    Attribute::Sensitive(v) => sensitive = Some(v),
                    _ => {}
                }
            }
            extractable.zip(sensitive).ok_or_else(|| {
                TokenError::Token("the token does not report CKA_EXTRACTABLE".into())
            })
        })
    }

    /// Deletes the key pair from the token (an enrolment that failed leaves no key behind).
    pub fn destroy(self) -> Result<(), TokenError> {
        self.token.with_session(|s| {
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                for handle in find(s, &self.label, class)? {
                    s.destroy_object(handle).map_err(token_err("C_DestroyObject"))?;
                }
            }
            Ok(())
        })
    }

    /// CKM_ECDSA over the SHA-256 digest of `message` (hashed here), answered as `r || s` and
    /// checked against the public key: a token that signs with another key than it reports is
    /// caught here, not by a relying party later.
    pub fn sign(&self, message: &[u8]) -> Result<Signature, TokenError> {
        let digest = hash::sha256(message);
        let raw = self.token.with_session(|s| {
            let key = self.private_handle(s)?;
            s.sign(&Mechanism::Ecdsa, key, &digest).map_err(token_err("C_Sign"))
        })?;
        let bad = |e: CryptoError| TokenError::Token(format!("the token's signature: {e}"));
        let signature = Signature::from_bytes(&raw).map_err(bad)?;
        self.public.verify(message, &signature).map_err(bad)?;
        Ok(signature)
    }
}

impl CaSigner for TokenKey {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn sign_message(&self, message: &[u8]) -> Result<Signature, CryptoError> {
        self.sign(message).map_err(|_| CryptoError::BadSignature)
    }
}

/// A private SoftHSM2 token store: a configuration file and a token directory of its own, so
/// tests and demos use PKCS#11 without touching the machine's tokens. A process uses it by
/// setting `SOFTHSM2_CONF` to [`softhsm::init_token`]'s answer (the module reads the variable
/// once, when it is loaded, so it must be set before the process opens a token).
pub mod softhsm {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Where Debian's `softhsm2` package installs the PKCS#11 module.
    pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

    /// Whether SoftHSM2 (its module and `softhsm2-util`) is installed.
    pub fn available() -> bool {
        Command::new("softhsm2-util").arg("--version").output().is_ok()
            && Path::new(MODULE).exists()
    }

    /// For tests: [`available`], or false after a notice on standard error naming `what` is
    /// skipped; with `CI=true` a missing SoftHSM2 panics instead, so CI never skips in silence.
    pub fn available_for_test(what: &str) -> bool {
        let ok = available();
        if !ok {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "SoftHSM2 is required when CI=true (scripts/install-test-deps installs softhsm2)"
            );
            eprintln!("NOTICE: softhsm2 not installed; skipping {what}");
        }
        ok
    }

    /// Initialises a token labelled `label` with the user PIN `pin` and the security officer's
    /// PIN `so_pin` in a token store under `dir`; returns the configuration file to put in
    /// `SOFTHSM2_CONF`. The error says what failed (`softhsm2-util`'s own message).
    pub fn init_token(dir: &Path, label: &str, pin: &str, so_pin: &str) -> Result<PathBuf, String> {
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(|e| format!("{}: {e}", tokens.display()))?;
        let conf = dir.join("softhsm2.conf");
        let text =
            format!("directories.tokendir = {}\nobjectstore.backend = file\n", tokens.display());
        std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
        let init = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .map_err(|e| format!("softhsm2-util: {e}"))?;
        if !init.status.success() {
            return Err(format!(
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            ));
        }
        Ok(conf)
    }
}
