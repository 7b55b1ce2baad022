//! The HTTPS of the reference market and bank: a rustls server that requires a client
//! certificate from the issuer CA (TLS 1.3 and 1.2, so it also works behind the proxy's
//! handover), axum behind it with the peer's certificate as connect info, JSON answers and
//! errors; and the clients: [`Transport`] (one request per connection), over a direct mutual
//! TLS connection ([`DirectTransport`]) or through the home server ([`ProxyTransport`]).

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
/// The routers the market and bank serve (axum's, re-exported for their callers).
pub use axum::Router;
use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::serve::{IncomingStream, Listener};
use serde_json::{Value, json};
use tessera_crypto::x509::Certificate;
use tessera_proto::control::Mode;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use super::{EmoneyError, Party, Result};
use crate::ClientKey;
use crate::terminal::http::{self, Request, Response};
use crate::terminal::{ControlConnection, OpenedSession};

/// Longest a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client waits for the TCP connection and each read.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The peer of a connection: its address and its client certificate (verified against the
/// issuer CA by the TLS layer).
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its leaf certificate (DER).
    pub certificate: Option<Vec<u8>>,
}

impl Peer {
    /// SHA-256 of the client certificate.
    pub fn fingerprint(&self) -> Result<[u8; 32]> {
        self.certificate
            .as_deref()
            .map(crate::fingerprint)
            .ok_or_else(|| EmoneyError::Refused("no client certificate".into()))
    }

    /// The client certificate's subject common name.
    pub fn subject(&self) -> Result<String> {
        let der = self
            .certificate
            .clone()
            .ok_or_else(|| EmoneyError::Refused("no client certificate".into()))?;
        Certificate::from_der(der)
            .and_then(|c| c.info())
            .map(|i| i.subject_cn)
            .map_err(|e| EmoneyError::Refused(format!("client certificate: {e}")))
    }
}

/// The server configuration of a market or bank: `party`'s certificate and key, client
/// certificates required from `issuer`, TLS 1.3 and 1.2, HTTP/1.1.
pub fn server_config(party: &Party, issuer: &Certificate) -> Result<Arc<ServerConfig>> {
    let setup = |e: &dyn std::fmt::Display| EmoneyError::Setup(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(issuer.der().to_vec())).map_err(|e| setup(&e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| setup(&e))?;
    let key = party.key.to_pkcs8_der().map_err(|e| setup(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| setup(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(party.certificate.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .map_err(|e| setup(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepted TLS connections for axum, with the peer as the address.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, Peer)>,
    local: SocketAddr,
}

impl Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.local, certificate: None })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A running market or bank.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops it and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Serves `router` over TLS with `config` on `listener` until stopped.
pub async fn serve(
    config: Arc<ServerConfig>,
    listener: TcpListener,
    router: Router,
) -> std::io::Result<Running> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let (stop, mut stopped) = watch::channel(false);
    let acceptor = TlsAcceptor::from(config);
    let mut accept_stop = stopped.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = accept_stop.changed() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let certificate = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.as_ref().to_vec());
                        let _ = tx.send((tls, Peer { addr, certificate })).await;
                    }
                    Ok(Err(e)) => tracing::info!(%addr, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    let app = router.into_make_service_with_connect_info::<Peer>();
    let task = tokio::spawn(async move {
        let signal = async move {
            let _ = stopped.changed().await;
        };
        let _ = axum::serve(TlsListener { rx, local }, app).with_graceful_shutdown(signal).await;
        accept.abort();
    });
    Ok(Running { addr: local, stop, task })
}

impl IntoResponse for EmoneyError {
    fn into_response(self) -> AxumResponse {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        (status, Json(json!({ "error": self.reason() }))).into_response()
    }
}

/// One HTTP exchange with a market or bank.
pub trait Transport {
    /// The `Host` header value.
    fn host(&self) -> String;
    /// Sends `request` on a new connection and reads the response.
    fn exchange(&mut self, request: &Request) -> Result<Response>;
}

/// Sends a JSON request (`GET` when `body` is `None`) and parses the JSON answer; a non-2xx
/// answer is the error it stands for ([`EmoneyError::from_status`]).
pub fn call(
    t: &mut dyn Transport,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let body = match body {
        Some(v) => serde_json::to_vec(v).map_err(|e| EmoneyError::BadRequest(e.to_string()))?,
        None => Vec::new(),
    };
    let mut headers = vec![("Accept".to_string(), "application/json".to_string())];
    if !body.is_empty() {
        headers.push(("Content-Type".into(), "application/json".into()));
    }
    let request =
        Request { method: method.into(), host: t.host(), target: path.into(), headers, body };
    let response = t.exchange(&request)?;
    let value: Value = serde_json::from_slice(&response.body).map_err(|e| {
        EmoneyError::Transport(format!("HTTP {}: the answer is not JSON: {e}", response.status))
    })?;
    if !(200..300).contains(&response.status) {
        let message = value["error"].as_str().unwrap_or("no reason given").to_string();
        return Err(EmoneyError::from_status(response.status, message));
    }
    Ok(value)
}

/// A field of a JSON answer as a string.
pub fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    v[name].as_str().ok_or_else(|| EmoneyError::Transport(format!("the answer lacks {name:?}")))
}

/// A direct mutual-TLS connection per request, the client key in a card (the home server's
/// own connections, in relay fashion).
pub struct DirectTransport {
    config: Arc<ClientConfig>,
    host: String,
    port: u16,
}

impl DirectTransport {
    /// A client of `host:port` whose certificate chains to `roots`, client key `key`.
    pub fn new(
        key: Arc<dyn ClientKey>,
        roots: RootCertStore,
        host: &str,
        port: u16,
    ) -> Result<DirectTransport> {
        let config = crate::control::tls::market_client_config(key, Arc::new(roots))
            .map_err(|e| EmoneyError::Setup(e.to_string()))?;
        Ok(DirectTransport { config, host: host.into(), port })
    }
}

impl Transport for DirectTransport {
    fn host(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn exchange(&mut self, request: &Request) -> Result<Response> {
        let transport = |e: &dyn std::fmt::Display| {
            EmoneyError::Transport(format!("{}:{}: {e}", self.host, self.port))
        };
        let name = ServerName::try_from(self.host.clone()).map_err(|e| transport(&e))?;
        let conn =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(|e| transport(&e))?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(self.host.as_str(), self.port))
            .map_err(|e| transport(&e))?
            .next()
            .ok_or_else(|| transport(&"no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).map_err(|e| transport(&e))?;
        tcp.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(|e| transport(&e))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        http::exchange(&mut EofTolerant(&mut tls), request).map_err(|e| transport(&e))
    }
}

/// A stream whose missing close_notify at the end reads as the end (the response's length is
/// checked by the HTTP parser).
struct EofTolerant<'a, S>(&'a mut S);

impl<S: Read + Write> Read for EofTolerant<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
            r => r,
        }
    }
}

impl<S: Read + Write> Write for EofTolerant<'_, S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Through the home server: one market session per request over an open control
/// connection, in handover mode (the terminal seals the records itself) or relay mode. The
/// connection is shared with the wallet's [`super::wallet::RemoteWallet`].
pub struct ProxyTransport<'a> {
    conn: &'a RefCell<ControlConnection>,
    host: String,
    port: u16,
    mode: Mode,
}

impl<'a> ProxyTransport<'a> {
    /// Sessions to `host:port` in `mode` (handover or relay) over `conn` (PIN2 already sent).
    pub fn new(conn: &'a RefCell<ControlConnection>, host: &str, port: u16, mode: Mode) -> Self {
        ProxyTransport { conn, host: host.into(), port, mode }
    }
}

impl Transport for ProxyTransport<'_> {
    fn host(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn exchange(&mut self, request: &Request) -> Result<Response> {
        let transport = |e: &dyn std::fmt::Display| EmoneyError::Transport(e.to_string());
        if self.mode == Mode::Partial {
            return Err(EmoneyError::Setup("partial mode is not offered for e-money".into()));
        }
        let mut conn = self.conn.borrow_mut();
        let (session, opened) =
            conn.open(&self.host, self.port, self.mode, true).map_err(|e| transport(&e))?;
        let result = match opened {
            OpenedSession::HandedOver(keys) => {
                let mut stream = conn.handover_stream(session, &keys).map_err(|e| transport(&e))?;
                http::exchange(&mut stream, request)
            }
            OpenedSession::Opened(_) => http::exchange(&mut conn.relay_stream(session), request),
        };
        let _ = conn.end_session(session);
        result.map_err(|e| transport(&e))
    }
}
