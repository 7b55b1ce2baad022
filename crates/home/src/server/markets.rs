//! Market sessions: connecting to the market and the handshake each mode needs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tessera_proto::control::{ErrorCode, Mode};
use tessera_proto::proxy::TrafficKeys;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{HomeCard, MARKET_TIMEOUT};

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

/// What the terminal asked for in [`tessera_proto::control::Frame::OpenMarket`].
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
        Self::with_cache(roots, card, Arc::new(crate::handover::SessionCache::default()))
    }

    /// [`RelayMarkets::new`] with resumable sessions kept in `cache`.
    pub fn with_cache(
        roots: tokio_rustls::rustls::RootCertStore,
        card: Arc<dyn HomeCard>,
        cache: Arc<crate::handover::SessionCache>,
    ) -> Result<Self, crate::handover::HandoverError> {
        let key: Arc<dyn crate::handover::MarketKey> = card;
        let plain =
            crate::handover::MarketConfig::new(roots.clone(), key.clone()).client_config()?;
        let cached =
            crate::handover::MarketConfig::new(roots, key).with_cache(cache).client_config()?;
        Ok(RelayMarkets { plain, cached })
    }

    /// The market configuration: with the cache only when the terminal allows it (kept, so
    /// rustls resumes under the configuration that stored the session).
    fn config(&self, cache_allowed: bool) -> Arc<tokio_rustls::rustls::ClientConfig> {
        if cache_allowed { self.cached.clone() } else { self.plain.clone() }
    }
}

impl Markets for RelayMarkets {
    fn open(&self, request: OpenRequest) -> BoxFuture<'static, Result<MarketSession, MarketError>> {
        let config = self.config(request.cache_allowed);
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
    /// Relay mode, and the market configurations handover mode shares with it (one cache).
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
        let relay = RelayMarkets::with_cache(roots, card.clone(), cache)?;
        Ok(StandardMarkets { card, relay })
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
        let config = self.relay.config(request.cache_allowed);
        Box::pin(async move {
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
