//! `tessera home serve`: the home server (seed 004, Figs. 2, 6, 13, 14).
//!
//! It listens for control connections ([`crate::control`]), admits only registered access
//! cards, relays PIN2 to the home card (claim 3), and serves market sessions: for each
//! [`Frame::OpenMarket`] it asks its [`Markets`] to connect and shake hands with the market,
//! answers with the traffic keys ([`Frame::HandedOver`]) or [`Frame::Opened`], and then relays
//! bytes between the session's [`Frame::Data`] and the market connection until either side
//! ends it.
//!
//! The home card is unlocked (PIN2 accepted, Fig. 6 "encryption enabled") for one control
//! connection at a time: the one that sent PIN2. It goes back to the remote-access wait state
//! on the user's "end" (`End` with session 0), when that connection closes, and after
//! [`IDLE_LIMIT`] without a card operation, measured on an injectable [`Clock`].
//!
//! Timeouts everywhere: the control handshake ([`HANDSHAKE_TIMEOUT`]), a silent control
//! connection ([`CONTROL_IDLE_TIMEOUT`]), the market's TCP connect and handshake
//! ([`MARKET_TIMEOUT`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::control::{ErrorCode, Frame, MAX_DATA_LEN, Mode};
use tessera_proto::proxy::TrafficKeys;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::control::{read_frame, write_frame};
use crate::registry::Registry;
use crate::{ClientKey, KeyError, fingerprint};

/// How long the home card stays unlocked without a card operation (Fig. 6, ¶0057).
pub const IDLE_LIMIT: Duration = Duration::from_secs(10 * 60);
/// Longest a terminal may take to complete the control channel's TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A control connection silent this long is closed.
pub const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest the market may take to accept the TCP connection, and again to finish the
/// handshake.
pub const MARKET_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the home server waits for a session the terminal ended to finish.
pub const SESSION_END_TIMEOUT: Duration = Duration::from_secs(5);
/// Most market sessions open at once on one control connection.
pub const MAX_SESSIONS: usize = 32;

pub use crate::handover::{Clock, SystemClock};

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock { start: Instant::now(), offset: Mutex::new(Duration::ZERO) }
    }
}

impl ManualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.offset.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What PIN2 verification on the home card answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Wrong PIN; this many tries left.
    #[error("wrong PIN2 ({0} tries left)")]
    Wrong(u8),
    /// Blocked after three wrong PINs (needs the PUK).
    #[error("the home card is blocked (PIN2 wrong three times); unblock it with the PUK")]
    Blocked,
    /// The card failed.
    #[error("home card: {0}")]
    Card(String),
}

/// The home card as the home server drives it: its TLS client key (for market handshakes)
/// and the remote-access states of Fig. 6.
pub trait HomeCard: crate::handover::MarketKey {
    /// Verifies PIN2; on success the card is in the encryption-enabled state.
    fn verify_pin2(&self, pin: &[u8]) -> Result<(), PinError>;
    /// The user's "end" or the idle fallback: back to the remote-access wait state.
    fn end(&self) -> Result<(), KeyError>;
}

/// A home card in software (tests and demos): a [`crate::SoftwareKey`], PIN2 with three
/// tries, and the Fig. 6 states (it signs only when PIN2 has been accepted since the last
/// "end").
pub struct SoftwareHomeCard {
    key: crate::SoftwareKey,
    pin: zeroize::Zeroizing<Vec<u8>>,
    state: Mutex<(u8, bool)>,
}

impl SoftwareHomeCard {
    /// PIN2 tries before the card blocks.
    pub const TRIES: u8 = 3;

    /// A card with `key` whose PIN2 is `pin`.
    pub fn new(key: crate::SoftwareKey, pin: &[u8]) -> Self {
        SoftwareHomeCard {
            key,
            pin: zeroize::Zeroizing::new(pin.to_vec()),
            state: Mutex::new((Self::TRIES, false)),
        }
    }

    /// Whether the card is in the encryption-enabled state.
    pub fn enabled(&self) -> bool {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1
    }

    /// How many signatures it has made.
    pub fn signatures(&self) -> usize {
        self.key.signatures()
    }
}

impl ClientKey for SoftwareHomeCard {
    fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.key.certificate_chain()
    }

    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        if !self.enabled() {
            return Err(KeyError::Locked);
        }
        self.key.sign_tls13(transcript_hash)
    }
}

impl crate::handover::MarketKey for SoftwareHomeCard {
    fn sign_tls12(&self, handshake_messages: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !self.enabled() {
            return Err(KeyError::Locked);
        }
        self.key.sign_tls12(handshake_messages)
    }
}

impl HomeCard for SoftwareHomeCard {
    fn verify_pin2(&self, pin: &[u8]) -> Result<(), PinError> {
        use subtle::ConstantTimeEq;
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.0 == 0 {
            return Err(PinError::Blocked);
        }
        st.0 -= 1;
        if bool::from(pin.ct_eq(&self.pin)) {
            *st = (Self::TRIES, true);
            Ok(())
        } else {
            st.1 = false;
            match st.0 {
                0 => Err(PinError::Blocked),
                n => Err(PinError::Wrong(n)),
            }
        }
    }

    fn end(&self) -> Result<(), KeyError> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1 = false;
        Ok(())
    }
}

/// The real home card (`home` applet) behind any card channel, through
/// [`tessera_host::home::HomeCard`]. Its certificate is read once; PIN2 arrives as typed
/// (4 to 8 characters) and is padded into the card's PIN block here.
pub struct CardHome {
    card: Mutex<tessera_host::home::HomeCard<Box<dyn tessera_host::CardChannel + Send>>>,
    chain: Vec<CertificateDer<'static>>,
}

impl CardHome {
    /// Takes a home card whose applet is selected and in the remote-access wait state (PIN1
    /// verified); reads its TLS certificate.
    pub fn new(
        mut card: tessera_host::home::HomeCard<Box<dyn tessera_host::CardChannel + Send>>,
    ) -> Result<Self, tessera_host::home::CardError> {
        let cert = card.certificate()?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        Ok(CardHome { card: Mutex::new(card), chain })
    }

    pub(crate) fn card(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        tessera_host::home::HomeCard<Box<dyn tessera_host::CardChannel + Send>>,
    > {
        self.card.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn key_error(e: tessera_host::home::CardError) -> KeyError {
    match e {
        tessera_host::home::CardError::Locked | tessera_host::home::CardError::IdleFallback(_) => {
            KeyError::Locked
        }
        other => KeyError::Card(other.to_string()),
    }
}

impl ClientKey for CardHome {
    fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        self.card().sign_tls13(transcript_hash).map_err(key_error)
    }
}

impl crate::handover::MarketKey for CardHome {
    fn sign_tls12(&self, handshake_messages: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.card().sign_tls12(handshake_messages).map_err(key_error)
    }
}

impl HomeCard for CardHome {
    fn verify_pin2(&self, pin: &[u8]) -> Result<(), PinError> {
        let block = tessera_card::pin::PinBlock::from_value(pin)
            .map_err(|_| PinError::Card("PIN2 must be 4 to 8 characters".into()))?;
        match self.card().verify_pin2(&block) {
            Ok(()) => Ok(()),
            Err(tessera_host::home::CardError::WrongPin { tries_left: 0 })
            | Err(tessera_host::home::CardError::Blocked) => Err(PinError::Blocked),
            Err(tessera_host::home::CardError::WrongPin { tries_left }) => {
                Err(PinError::Wrong(tries_left))
            }
            Err(e) => Err(PinError::Card(e.to_string())),
        }
    }

    fn end(&self) -> Result<(), KeyError> {
        self.card().end().map_err(key_error)
    }
}

/// A market connection after its handshake, as the home server relays it.
pub trait MarketStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> MarketStream for T {}

/// A handed-over connection's post-handshake processing on the home server: the terminal
/// forwards the handshake messages it received after the handshake (session tickets, key
/// updates); the home server keeps tickets and computes the keys after a key update.
pub trait PostHandshake: Send + 'static {
    /// Takes decrypted post-handshake message bytes; returns each change of the traffic keys,
    /// with whether the terminal must answer the market's KeyUpdate with its own.
    fn receive(&mut self, messages: &[u8]) -> Result<Vec<(TrafficKeys, bool)>, String>;
}

/// What the terminal asked for in [`Frame::OpenMarket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    /// The market's host name (also its TLS server name).
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// How to serve the session.
    pub mode: Mode,
    /// Whether a cached TLS session may be resumed instead of a full handshake.
    pub cache_allowed: bool,
}

/// A market session ready to relay.
pub struct MarketSession {
    /// The connection: the raw TCP connection (handover, partial), or the home server's own
    /// TLS connection (relay).
    pub stream: Box<dyn MarketStream>,
    /// What the terminal gets: the traffic keys (handover), or nothing / the home card's
    /// certificate (relay / partial).
    pub opened: Opened,
    /// Bytes already read from the market that belong to the terminal (read past the end of
    /// the handshake): relayed before anything else.
    pub pending: Vec<u8>,
}

/// The answer to an open request.
pub enum Opened {
    /// Handover mode: the keys, and the post-handshake processor.
    HandedOver(TrafficKeys, Box<dyn PostHandshake>),
    /// Relay or partial mode: the home card's certificate for partial mode, else empty.
    Relaying(Vec<u8>),
}

/// Why a market session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MarketError {
    /// The code the terminal gets.
    pub code: ErrorCode,
    /// Text for people.
    pub message: String,
}

/// A boxed future (the [`Markets`] trait is object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens market sessions: connects to the market and runs the handshake the mode needs, the
/// home card signing. [`StandardMarkets`] serves handover mode (with the session cache when
/// the terminal allows it) through [`crate::handover`], and relay mode.
pub trait Markets: Send + Sync + 'static {
    /// Opens a session for `request`.
    fn open(&self, request: OpenRequest) -> BoxFuture<'static, Result<MarketSession, MarketError>>;
}

/// Connects to `host:port` within [`MARKET_TIMEOUT`].
pub async fn connect_market(host: &str, port: u16) -> Result<TcpStream, MarketError> {
    let unreachable = |m: String| MarketError { code: ErrorCode::MarketUnreachable, message: m };
    match tokio::time::timeout(MARKET_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(unreachable(format!("market {host}:{port}: {e}"))),
        Err(_) => Err(unreachable(format!("market {host}:{port}: connection timed out"))),
    }
}

/// Relay mode (¶0048): the home server keeps its own TLS connection to the market (TLS 1.3 or
/// 1.2, the market's certificate validated, the home card signing the client CertificateVerify
/// through the handover module's market configuration, the session cache when the terminal
/// allows it) and re-encrypts between it and the control channel.
pub struct RelayMarkets {
    plain: Arc<tokio_rustls::rustls::ClientConfig>,
    cached: Arc<tokio_rustls::rustls::ClientConfig>,
}

impl RelayMarkets {
    /// Relay mode trusting the market CAs in `roots`, client key in `card`, its own session
    /// cache.
    pub fn new(
        roots: tokio_rustls::rustls::RootCertStore,
        card: Arc<dyn HomeCard>,
    ) -> Result<Self, crate::handover::HandoverError> {
        let key: Arc<dyn crate::handover::MarketKey> = Arc::new(CardAsMarketKey(card));
        let cache = Arc::new(crate::handover::SessionCache::default());
        let plain =
            crate::handover::MarketConfig::new(roots.clone(), key.clone()).client_config()?;
        let cached =
            crate::handover::MarketConfig::new(roots, key).with_cache(cache).client_config()?;
        Ok(RelayMarkets { plain, cached })
    }
}

impl Markets for RelayMarkets {
    fn open(&self, request: OpenRequest) -> BoxFuture<'static, Result<MarketSession, MarketError>> {
        let config = if request.cache_allowed { self.cached.clone() } else { self.plain.clone() };
        Box::pin(async move {
            if request.mode != Mode::Relay {
                return Err(MarketError {
                    code: ErrorCode::Unsupported,
                    message: format!(
                        "{} mode is not offered by this home server",
                        request.mode.name()
                    ),
                });
            }
            let handshake =
                |m: String| MarketError { code: ErrorCode::MarketHandshake, message: m };
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(request.host.clone())
                .map_err(|_| handshake(format!("{}: not a valid server name", request.host)))?;
            let tcp = connect_market(&request.host, request.port).await?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = match tokio::time::timeout(MARKET_TIMEOUT, connector.connect(name, tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return Err(handshake(format!("market handshake: {e}"))),
                Err(_) => return Err(handshake("market handshake timed out".into())),
            };
            Ok(MarketSession {
                stream: Box::new(tls),
                opened: Opened::Relaying(Vec::new()),
                pending: Vec::new(),
            })
        })
    }
}

/// Handover mode through [`crate::handover`] (TLS 1.3 and 1.2, the home card signing, the
/// session cache of Fig. 16 when the terminal allows it), relay mode through
/// [`RelayMarkets`], and partial mode (the home server connects and relays; the terminal
/// shakes hands and sends only the CertificateVerify transcript hash to the home card).
pub struct StandardMarkets {
    card: Arc<dyn HomeCard>,
    plain: Arc<tokio_rustls::rustls::ClientConfig>,
    cached: Arc<tokio_rustls::rustls::ClientConfig>,
    relay: RelayMarkets,
}

impl StandardMarkets {
    /// Markets validated against `roots`, client key in `card`, resumable sessions kept in
    /// `cache`.
    pub fn new(
        roots: tokio_rustls::rustls::RootCertStore,
        card: Arc<dyn HomeCard>,
        cache: Arc<crate::handover::SessionCache>,
    ) -> Result<Self, crate::handover::HandoverError> {
        let key: Arc<dyn crate::handover::MarketKey> = Arc::new(CardAsMarketKey(card.clone()));
        let plain =
            crate::handover::MarketConfig::new(roots.clone(), key.clone()).client_config()?;
        let cached = crate::handover::MarketConfig::new(roots.clone(), key)
            .with_cache(cache)
            .client_config()?;
        let relay = RelayMarkets { plain: plain.clone(), cached: cached.clone() };
        Ok(StandardMarkets { card: card.clone(), plain, cached, relay })
    }
}

/// The handover module's post-handshake processing, as the relay loop drives it.
impl PostHandshake for crate::handover::MarketSession {
    fn receive(&mut self, messages: &[u8]) -> Result<Vec<(TrafficKeys, bool)>, String> {
        let changes = self.on_handshake_data(messages).map_err(|e| e.to_string())?;
        Ok(changes
            .into_iter()
            .filter_map(|c| match c {
                crate::handover::PostHandshake::KeyUpdate { keys, respond } => {
                    Some((keys, respond))
                }
                crate::handover::PostHandshake::SessionTicket => None,
            })
            .collect())
    }
}

impl Markets for StandardMarkets {
    fn open(&self, request: OpenRequest) -> BoxFuture<'static, Result<MarketSession, MarketError>> {
        match request.mode {
            Mode::Relay => return self.relay.open(request),
            Mode::Partial => {
                // The terminal shakes hands itself; the home server only connects, relays
                // and answers SignRequests with the home card.
                let certificate = self.card.certificate_chain().first().map(|c| c.to_vec());
                return Box::pin(async move {
                    let certificate = certificate.ok_or_else(|| MarketError {
                        code: ErrorCode::Internal,
                        message: "the home card has no certificate".into(),
                    })?;
                    let tcp = connect_market(&request.host, request.port).await?;
                    Ok(MarketSession {
                        stream: Box::new(tcp),
                        opened: Opened::Relaying(certificate),
                        pending: Vec::new(),
                    })
                });
            }
            Mode::Handover => {}
        }
        let config = if request.cache_allowed { self.cached.clone() } else { self.plain.clone() };
        Box::pin(async move {
            if request.mode != Mode::Handover {
                return Err(MarketError {
                    code: ErrorCode::Unsupported,
                    message: format!(
                        "{} mode is not offered by this home server",
                        request.mode.name()
                    ),
                });
            }
            let (host, port) = (request.host.clone(), request.port);
            let unreachable =
                |m: String| MarketError { code: ErrorCode::MarketUnreachable, message: m };
            let addr = match tokio::time::timeout(
                MARKET_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            {
                Ok(Ok(mut addrs)) => {
                    addrs.next().ok_or_else(|| unreachable(format!("{host}: no address")))?
                }
                Ok(Err(e)) => return Err(unreachable(format!("{host}: {e}"))),
                Err(_) => return Err(unreachable(format!("{host}: name lookup timed out"))),
            };
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| MarketError {
                    code: ErrorCode::MarketHandshake,
                    message: format!("{host}: not a valid server name"),
                })?;
            let done = tokio::task::spawn_blocking(move || {
                let mut tcp = crate::handover::connect_market(addr, MARKET_TIMEOUT)
                    .map_err(|e| unreachable(format!("market {host}:{port}: {e}")))?;
                let handover = crate::handover::handshake(&mut tcp, config, name).map_err(|e| {
                    MarketError {
                        code: ErrorCode::MarketHandshake,
                        message: format!("market {host}:{port}: {e}"),
                    }
                })?;
                Ok::<_, MarketError>((tcp, handover))
            })
            .await
            .map_err(|e| MarketError { code: ErrorCode::Internal, message: e.to_string() })??;
            let (tcp, handover) = done;
            let internal = |e: std::io::Error| MarketError {
                code: ErrorCode::Internal,
                message: e.to_string(),
            };
            tcp.set_read_timeout(None).map_err(internal)?;
            tcp.set_write_timeout(None).map_err(internal)?;
            tcp.set_nonblocking(true).map_err(internal)?;
            let tcp = TcpStream::from_std(tcp).map_err(internal)?;
            tracing::info!(market = %request.host, resumed = handover.resumed, "market session handed over");
            Ok(MarketSession {
                stream: Box::new(tcp),
                opened: Opened::HandedOver(handover.keys, Box::new(handover.session)),
                pending: handover.pending,
            })
        })
    }
}

/// A home card as the handover module's market key.
struct CardAsMarketKey(Arc<dyn HomeCard>);

impl ClientKey for CardAsMarketKey {
    fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.0.certificate_chain()
    }
    fn sign_tls13(&self, transcript_hash: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        self.0.sign_tls13(transcript_hash)
    }
}

impl crate::handover::MarketKey for CardAsMarketKey {
    fn sign_tls12(&self, handshake_messages: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.0.sign_tls12(handshake_messages)
    }
}

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
        use tessera_crypto::ecdsa::SigningKey;
        use tessera_crypto::rng::OsRng;
        use tessera_crypto::x509::{self, AltName, IssueRequest, Role, Validity};
        let invalid =
            |e: tessera_crypto::CryptoError| crate::control::tls::TlsSetupError(e.to_string());
        let validity = Validity { not_before: now - 3600, not_after: now + 5 * 365 * 24 * 3600 };
        let ca_key = SigningKey::generate(&mut OsRng);
        let ca = x509::self_signed_ca(
            &ca_key,
            "tessera home CA",
            &x509::random_serial(&mut OsRng),
            validity,
        )
        .map_err(invalid)?;
        let key = SigningKey::generate(&mut OsRng);
        let leaf = x509::issue_with_alt_names(
            &ca_key,
            &ca,
            &IssueRequest {
                subject_cn: "tessera home server",
                public_key: &key.public_key(),
                roles: &[Role::Home],
                serial: &x509::random_serial(&mut OsRng),
                validity,
                ca_path_len: None,
            },
            &[AltName::Dns("localhost".into())],
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

/// The home card's remote-access state, shared by all control connections.
struct CardState {
    /// The connection that unlocked it with PIN2, and when the card was last used.
    unlocked: Option<(u64, Instant)>,
}

/// The home server.
pub struct HomeServer {
    tls: Arc<ServerConfig>,
    registry: Arc<Registry>,
    card: Arc<dyn HomeCard>,
    markets: Arc<dyn Markets>,
    clock: Arc<dyn Clock>,
    state: Mutex<CardState>,
    next_conn: AtomicU64,
    wallet: Mutex<Option<WalletFn>>,
}

/// What the home server does with a wallet request's body (e-money): returns the reply body.
pub type WalletFn = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// A running home server (tests and demos): its address, and a switch to stop it.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the server: the listener and every control connection close.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl HomeServer {
    /// A home server with its control TLS configuration, registry, home card, market
    /// connector and clock.
    pub fn new(
        tls: Arc<ServerConfig>,
        registry: Arc<Registry>,
        card: Arc<dyn HomeCard>,
        markets: Arc<dyn Markets>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(HomeServer {
            tls,
            registry,
            card,
            markets,
            clock,
            state: Mutex::new(CardState { unlocked: None }),
            next_conn: AtomicU64::new(1),
            wallet: Mutex::new(None),
        })
    }

    /// Serves [`Frame::Wallet`] requests with `wallet` (run with the home card unlocked for
    /// the requesting connection; without a wallet they are refused as unsupported).
    pub fn set_wallet(&self, wallet: WalletFn) {
        *self.wallet.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(wallet);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CardState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies the idle fallback: if the card has been unlocked and unused for
    /// [`IDLE_LIMIT`], it goes back to the wait state. Returns whether it did.
    pub fn check_idle(&self) -> bool {
        let expired = {
            let mut st = self.state();
            match st.unlocked {
                Some((_, last))
                    if self.clock.now().saturating_duration_since(last) >= IDLE_LIMIT =>
                {
                    st.unlocked = None;
                    true
                }
                _ => false,
            }
        };
        if expired {
            tracing::info!("home card idle for 10 minutes: back to the remote-access wait state");
            if let Err(e) = self.card.end() {
                tracing::warn!(error = %e, "home card: end failed");
            }
        }
        expired
    }

    /// Whether the home card is unlocked for connection `conn` (after the idle check); marks
    /// a use when it is.
    fn use_card(&self, conn: u64) -> bool {
        self.check_idle();
        let now = self.clock.now();
        let mut st = self.state();
        match &mut st.unlocked {
            Some((owner, last)) if *owner == conn => {
                *last = now;
                true
            }
            _ => false,
        }
    }

    fn lock_card(&self, conn: Option<u64>) {
        let was = {
            let mut st = self.state();
            match (st.unlocked, conn) {
                (Some((owner, _)), Some(c)) if owner != c => false,
                (Some(_), _) => {
                    st.unlocked = None;
                    true
                }
                (None, _) => false,
            }
        };
        if was && let Err(e) = self.card.end() {
            tracing::warn!(error = %e, "home card: end failed");
        }
    }

    /// Serves control connections on `listener` until `stop` turns true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => { self.check_idle(); }
                accepted = listener.accept() => {
                    let (tcp, addr) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let (server, acceptor, stop) = (self.clone(), acceptor.clone(), stop.clone());
                    conns.spawn(async move { server.connection(acceptor, tcp, addr, stop).await });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
        self.lock_card(None);
    }

    /// Binds `addr` and serves in a task; returns the running server.
    pub async fn spawn(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<Running> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(self.serve(listener, rx));
        Ok(Running { addr, stop, task })
    }

    async fn connection(
        self: Arc<Self>,
        acceptor: TlsAcceptor,
        tcp: TcpStream,
        addr: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) {
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%addr, error = %e, "control handshake refused");
                return;
            }
            Err(_) => {
                tracing::info!(%addr, "control handshake timed out");
                return;
            }
        };
        // Check the registry again: a resumed session skips the certificate verifier.
        let admitted = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| self.registry.is_admitted(&fingerprint(c)));
        if !matches!(admitted, Some(Ok(true))) {
            tracing::info!(%addr, "control connection from an access card not admitted");
            return;
        }
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%addr, conn, "control connection open");
        let (mut rd, mut wr) = tokio::io::split(tls);
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let writer = tokio::spawn(async move {
            while let Some(f) = out_rx.recv().await {
                let ended = matches!(f, Frame::Error { session: 0, code: ErrorCode::Protocol, .. });
                if write_frame(&mut wr, &f).await.is_err() || ended {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let mut sessions: HashMap<u32, SessionHandle> = HashMap::new();
        loop {
            let frame = tokio::select! {
                _ = stop.changed() => break,
                r = tokio::time::timeout(CONTROL_IDLE_TIMEOUT, read_frame(&mut rd)) => r,
            };
            let frame = match frame {
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    let _ = out_tx.send(error(0, ErrorCode::Protocol, e.to_string())).await;
                    break;
                }
                Err(_) => break,
            };
            sessions.retain(|_, h| !h.tx.is_closed());
            if !self.clone().dispatch(conn, frame, &mut sessions, &out_tx).await {
                break;
            }
        }
        drop(sessions);
        drop(out_tx);
        let _ = writer.await;
        self.lock_card(Some(conn));
        tracing::info!(%addr, conn, "control connection closed");
    }

    /// Handles one frame from the terminal; false ends the connection.
    async fn dispatch(
        self: Arc<Self>,
        conn: u64,
        frame: Frame,
        sessions: &mut HashMap<u32, SessionHandle>,
        out: &mpsc::Sender<Frame>,
    ) -> bool {
        match frame {
            Frame::Pin2 { pin } => {
                let card = self.card.clone();
                let pin = zeroize::Zeroizing::new(pin);
                let result = tokio::task::spawn_blocking(move || card.verify_pin2(&pin)).await;
                let reply = match result {
                    Ok(Ok(())) => {
                        self.state().unlocked = Some((conn, self.clock.now()));
                        Frame::Unlocked
                    }
                    Ok(Err(PinError::Wrong(n))) => {
                        error(0, ErrorCode::Pin2Wrong(n), format!("wrong PIN2 ({n} tries left)"))
                    }
                    Ok(Err(PinError::Blocked)) => {
                        error(0, ErrorCode::Blocked, PinError::Blocked.to_string())
                    }
                    Ok(Err(PinError::Card(m))) => error(0, ErrorCode::Internal, m),
                    Err(e) => error(0, ErrorCode::Internal, e.to_string()),
                };
                out.send(reply).await.is_ok()
            }
            Frame::End { session: 0 } => {
                for (_, h) in sessions.drain() {
                    let _ = h.tx.try_send(SessionInput::End);
                }
                self.lock_card(Some(conn));
                true
            }
            Frame::OpenMarket { session, host, port, mode, cache_allowed } => {
                if sessions.contains_key(&session) {
                    let msg = format!("session {session} is already open");
                    return out.send(error(session, ErrorCode::UnknownSession, msg)).await.is_ok();
                }
                if sessions.len() >= MAX_SESSIONS {
                    let msg = format!("at most {MAX_SESSIONS} market sessions at once");
                    return out.send(error(session, ErrorCode::Unsupported, msg)).await.is_ok();
                }
                if !self.use_card(conn) {
                    let msg = "the home card is locked: send PIN2 first".to_string();
                    return out.send(error(session, ErrorCode::Locked, msg)).await.is_ok();
                }
                let (tx, rx) = mpsc::channel(16);
                let request = OpenRequest { host, port, mode, cache_allowed };
                let task = tokio::spawn(self.clone().session(session, request, rx, out.clone()));
                sessions.insert(session, SessionHandle { tx, task });
                true
            }
            Frame::Data { session, bytes } => {
                self.to_session(session, SessionInput::Data(bytes), sessions, out).await
            }
            Frame::PostHandshake { session, bytes } => {
                self.to_session(session, SessionInput::PostHandshake(bytes), sessions, out).await
            }
            Frame::End { session } => {
                // Wait for the session to finish what the terminal sent before its end (a
                // session ticket stored before the next open can use it).
                if let Some(h) = sessions.remove(&session) {
                    let _ = h.tx.send(SessionInput::End).await;
                    let _ = tokio::time::timeout(SESSION_END_TIMEOUT, h.task).await;
                }
                true
            }
            Frame::SignRequest { session, transcript_hash } => {
                if !self.use_card(conn) {
                    let msg = "the home card is locked: send PIN2 first".to_string();
                    return out.send(error(session, ErrorCode::Locked, msg)).await.is_ok();
                }
                let card = self.card.clone();
                let r =
                    tokio::task::spawn_blocking(move || card.sign_tls13(&transcript_hash)).await;
                let reply = match r {
                    Ok(Ok(signature)) => Frame::SignResponse { session, signature },
                    Ok(Err(KeyError::Locked)) => {
                        error(session, ErrorCode::Locked, KeyError::Locked.to_string())
                    }
                    Ok(Err(e)) => error(session, ErrorCode::Internal, e.to_string()),
                    Err(e) => error(session, ErrorCode::Internal, e.to_string()),
                };
                out.send(reply).await.is_ok()
            }
            Frame::Error { session, code, message } => {
                tracing::info!(session, ?code, %message, "terminal reported an error");
                if let Some(h) = sessions.remove(&session) {
                    let _ = h.tx.send(SessionInput::End).await;
                }
                true
            }
            // Wallet requests (e-money) go to the wallet service, with the card unlocked.
            Frame::Wallet { body } => {
                let wallet =
                    self.wallet.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                let Some(wallet) = wallet else {
                    let msg = "this home server offers no wallet service".to_string();
                    return out.send(error(0, ErrorCode::Unsupported, msg)).await.is_ok();
                };
                if !self.use_card(conn) {
                    let msg = "the home card is locked: send PIN2 first".to_string();
                    return out.send(error(0, ErrorCode::Locked, msg)).await.is_ok();
                }
                let reply = match tokio::task::spawn_blocking(move || wallet(&body)).await {
                    Ok(body) => Frame::WalletReply { body },
                    Err(e) => error(0, ErrorCode::Internal, e.to_string()),
                };
                out.send(reply).await.is_ok()
            }
            // Frames only the home server sends.
            Frame::WalletReply { .. }
            | Frame::Opened { .. }
            | Frame::HandedOver { .. }
            | Frame::KeysUpdated { .. }
            | Frame::SignResponse { .. }
            | Frame::Unlocked => {
                let _ = out.send(error(0, ErrorCode::Protocol, "unexpected frame".into())).await;
                false
            }
        }
    }

    async fn to_session(
        &self,
        session: u32,
        input: SessionInput,
        sessions: &mut HashMap<u32, SessionHandle>,
        out: &mpsc::Sender<Frame>,
    ) -> bool {
        match sessions.get(&session) {
            Some(h) => {
                if h.tx.send(input).await.is_err() {
                    sessions.remove(&session);
                }
                true
            }
            None => {
                let msg = format!("no market session {session}");
                out.send(error(session, ErrorCode::UnknownSession, msg)).await.is_ok()
            }
        }
    }

    /// One market session: open it, answer, then relay until either side ends.
    async fn session(
        self: Arc<Self>,
        session: u32,
        request: OpenRequest,
        mut input: mpsc::Receiver<SessionInput>,
        out: mpsc::Sender<Frame>,
    ) {
        let opened = tokio::select! {
            r = self.markets.open(request) => r,
            // The terminal ended the session (or the connection) while it was opening.
            _ = wait_end(&mut input) => return,
        };
        let MarketSession { mut stream, opened, pending } = match opened {
            Ok(s) => s,
            Err(e) => {
                let _ = out.send(error(session, e.code, e.message)).await;
                return;
            }
        };
        let mut post = match opened {
            Opened::HandedOver(keys, post) => {
                if out.send(Frame::HandedOver { session, keys }).await.is_err() {
                    return;
                }
                Some(post)
            }
            Opened::Relaying(certificate) => {
                if out.send(Frame::Opened { session, certificate }).await.is_err() {
                    return;
                }
                None
            }
        };
        for piece in pending.chunks(MAX_DATA_LEN) {
            if out.send(Frame::Data { session, bytes: piece.to_vec() }).await.is_err() {
                return;
            }
        }
        let mut buf = vec![0u8; MAX_DATA_LEN];
        // After the market closes, the session stays until the terminal ends it: the
        // post-handshake messages it still forwards (session tickets) are processed.
        let mut market_open = true;
        loop {
            tokio::select! {
                n = stream.read(&mut buf), if market_open => match n {
                    Ok(0) => {
                        market_open = false;
                        if out.send(Frame::End { session }).await.is_err() {
                            break;
                        }
                    }
                    Ok(n) => {
                        let data = Frame::Data { session, bytes: buf[..n].to_vec() };
                        if out.send(data).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let msg = format!("market connection: {e}");
                        let _ = out.send(error(session, ErrorCode::MarketClosed, msg)).await;
                        break;
                    }
                },
                msg = input.recv() => match msg {
                    Some(SessionInput::Data(_)) if !market_open => {}
                    Some(SessionInput::Data(bytes)) => {
                        if let Err(e) = stream.write_all(&bytes).await {
                            let msg = format!("market connection: {e}");
                            let _ = out.send(error(session, ErrorCode::MarketClosed, msg)).await;
                            break;
                        }
                        let _ = stream.flush().await;
                    }
                    Some(SessionInput::PostHandshake(bytes)) => {
                        let replies = match post.as_mut() {
                            None => vec![error(
                                session,
                                ErrorCode::Protocol,
                                "post-handshake data in a session without handover".into(),
                            )],
                            Some(p) => match p.receive(&bytes) {
                                Ok(changes) => changes
                                    .into_iter()
                                    .map(|(keys, respond)| Frame::KeysUpdated { session, keys, respond })
                                    .collect(),
                                Err(m) => vec![error(session, ErrorCode::Protocol, m)],
                            },
                        };
                        for f in replies {
                            if out.send(f).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(SessionInput::End) | None => break,
                },
            }
        }
        let _ = stream.shutdown().await;
    }
}

/// A market session's task and its input.
struct SessionHandle {
    tx: mpsc::Sender<SessionInput>,
    task: tokio::task::JoinHandle<()>,
}

/// What a session task receives from the control connection.
enum SessionInput {
    Data(Vec<u8>),
    PostHandshake(Vec<u8>),
    End,
}

async fn wait_end(input: &mut mpsc::Receiver<SessionInput>) {
    loop {
        match input.recv().await {
            Some(SessionInput::End) | None => return,
            // Bytes before the session is open are a protocol error of the terminal; drop.
            Some(_) => {}
        }
    }
}

fn error(session: u32, code: ErrorCode, mut message: String) -> Frame {
    if message.len() > tessera_proto::control::MAX_MESSAGE_LEN {
        let mut cut = tessera_proto::control::MAX_MESSAGE_LEN;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Frame::Error { session, code, message }
}
