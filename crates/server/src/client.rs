//! A small client of the server's HTTP API, for the CLI (`tessera admin`, later
//! `tessera sync`): HTTPS with the server certificate pinned by fingerprint (or plain HTTP to
//! a loopback or proxied server), JSON in and out, bearer token.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::store::enrolment::{EnrolledCertificate, EnrolmentChallenge, EnrolmentRequest};
use crate::store::issuance::Issuance;
use crate::store::issuers::IssuerInfo;
use crate::store::sessions::{Exchange, SessionOptions, TunnelStep};
use crate::tls::pinned_client_config;

/// Largest response body the client reads.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Why a request failed before the server could answer it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL or fingerprint is unusable.
    #[error("{0}")]
    Usage(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Transport(String),
}

/// A server the client talks to.
#[derive(Clone)]
pub struct ApiClient {
    host: String,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    token: Option<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiClient({}:{}, tls: {})", self.host, self.port, self.tls.is_some())
    }
}

impl ApiClient {
    /// A client of `url` (`https://host:port` or `http://host:port`). HTTPS needs the
    /// server certificate's SHA-256 `fingerprint` (as the server prints it).
    pub fn new(
        url: &str,
        fingerprint: Option<&str>,
        token: Option<String>,
    ) -> Result<Self, ClientError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            let fp = fingerprint.ok_or_else(|| {
                ClientError::Usage(
                    "an https:// server needs --fingerprint (printed by `tessera server` at start)"
                        .into(),
                )
            })?;
            (Some(pinned_client_config(fp).map_err(|e| ClientError::Usage(e.to_string()))?), rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (None, rest)
        } else {
            return Err(ClientError::Usage(format!(
                "server URL must start with https:// or http://: {url}"
            )));
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(ClientError::Usage(format!("server URL must have no path: {url}")));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| ClientError::Usage(format!("bad port in {url}")))?)
            }
            _ => (authority, if tls.is_some() { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(ClientError::Usage(format!("no host in {url}")));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(ApiClient { host, port, tls, token })
    }

    /// Sends one request; returns the status and the JSON body (a JSON string for a body
    /// that is not JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let (status, bytes) = self.request_bytes(method, path, body).await?;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// Sends one request; returns the status and the raw body (a CRL, for example).
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let req = self.build_request(method, path, body)?;
        let mut conn = self.connect().await?;
        self.send_on(&mut conn, req).await
    }

    fn transport(&self, e: &dyn std::fmt::Display) -> ClientError {
        ClientError::Transport(format!("{}:{}: {e}", self.host, self.port))
    }

    fn build_request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .header(header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(payload)).map_err(|e| ClientError::Usage(e.to_string()))
    }

    /// A new HTTP/1.1 connection (TLS with the pinned certificate, or plain), kept alive for
    /// as long as the returned sender is used.
    async fn connect(&self) -> Result<Connection, ClientError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.transport(&e))?;
        let _ = tcp.set_nodelay(true);
        let sender = match &self.tls {
            Some(config) => {
                // The pinned verifier ignores the name; any valid DNS name will do.
                let name =
                    ServerName::try_from("tessera-server").map_err(|e| self.transport(&e))?;
                let tls = TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.transport(&e))?;
                handshake(TokioIo::new(tls)).await
            }
            None => handshake(TokioIo::new(tcp)).await,
        }
        .map_err(|e| self.transport(&e))?;
        Ok(Connection { sender })
    }

    async fn send_on(
        &self,
        conn: &mut Connection,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        conn.sender.ready().await.map_err(|e| self.transport(&e))?;
        let resp = conn.sender.send_request(req).await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
        let bytes = limited.collect().await.map_err(|e| self.transport(&e))?.to_bytes();
        Ok((status, bytes))
    }
}

/// One HTTP/1.1 connection to the server, kept alive between requests (a relay's exchanges
/// share one: one TLS handshake per session instead of one per exchange).
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// Why a tunnel or API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be made or delivered.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server answered with an error.
    #[error("server answered {status}: {message}")]
    Server {
        /// HTTP status.
        status: StatusCode,
        /// The error code of the body (`conflict`, `gone`…).
        code: String,
        /// The message.
        message: String,
    },
    /// The card could not be reached while relaying.
    #[error("card: {0}")]
    Card(String),
    /// The server's answer did not have the expected shape.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

/// How often an exchange is retried after a transport failure (exchanges are idempotent).
const EXCHANGE_RETRIES: u32 = 3;

/// How often a relay posts an exchange again after `503` (the database was busy and the
/// server changed nothing), 50 ms apart.
const BUSY_RETRIES: u32 = 20;

impl ApiClient {
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<T, ApiError> {
        self.call_opt(method, path, Some(body)).await
    }

    async fn call_opt<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        let (status, value) = self.request(method, path, body).await?;
        if !status.is_success() {
            return Err(server_error(status, &value));
        }
        serde_json::from_value(value).map_err(|e| ApiError::Protocol(e.to_string()))
    }

    /// An issuer's public parts (its CA certificate among them); a token of the issuer needed.
    pub async fn issuer(&self, issuer: &str) -> Result<IssuerInfo, ApiError> {
        self.call_opt(Method::GET, &format!("/v1/admin/issuers/{issuer}"), None).await
    }

    /// The issuer list `issuer` publishes for terminals (public, no token needed): the bytes
    /// of a [`tessera_proto::update::IssuerList`]; the caller verifies its signature.
    pub async fn issuer_list(&self, issuer: &str) -> Result<Vec<u8>, ApiError> {
        let body: crate::store::update::IssuerListBody = self
            .call_opt(Method::GET, &format!("/v1/issuers/{issuer}/update/issuer-list"), None)
            .await?;
        hex::decode(&body.list_hex).map_err(|_| ApiError::Protocol("issuer list: not hex".into()))
    }

    /// The issuer's current CRL (DER; public, no token needed).
    pub async fn issuer_crl(&self, issuer: &str) -> Result<Vec<u8>, ApiError> {
        let path = format!("/v1/issuers/{issuer}/crl");
        let (status, bytes) = self.request_bytes(Method::GET, &path, None).await?;
        if !status.is_success() {
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(server_error(status, &value));
        }
        Ok(bytes.to_vec())
    }

    /// A single-use enrolment challenge of `issuer`'s CA, bound to this client's token.
    pub async fn enrolment_challenge(&self, issuer: &str) -> Result<EnrolmentChallenge, ApiError> {
        let path = format!("/v1/admin/issuers/{issuer}/enrolment/challenges");
        self.call_opt(Method::POST, &path, None).await
    }

    /// Asks `issuer`'s CA for a card or terminal certificate (proof of possession in `req`).
    pub async fn enrol(
        &self,
        issuer: &str,
        req: &EnrolmentRequest,
    ) -> Result<EnrolledCertificate, ApiError> {
        let body = serde_json::to_value(req).map_err(|e| ApiError::Protocol(e.to_string()))?;
        let path = format!("/v1/admin/issuers/{issuer}/enrolment/certificates");
        self.call(Method::POST, &path, &body).await
    }

    /// Opens a tunnel session with a card of `issuer` (`card_id` optional).
    pub async fn open_session(
        &self,
        issuer: &str,
        card_id: Option<&str>,
    ) -> Result<TunnelStep, ApiError> {
        let body = serde_json::json!({ "card_id": card_id });
        self.call(Method::POST, &format!("/v1/issuers/{issuer}/sessions"), &body).await
    }

    /// Opens an update-only session of `issuer` in the privacy variant: no card named.
    pub async fn open_private_update_session(&self, issuer: &str) -> Result<TunnelStep, ApiError> {
        let body = serde_json::json!({ "mode": "private" });
        self.call(Method::POST, &format!("/v1/issuers/{issuer}/update/sessions"), &body).await
    }

    /// Opens an update-only session of `issuer` for `card_id` authenticated by its legacy
    /// static authenticator (claim 10: replayable).
    pub async fn open_legacy_update_session(
        &self,
        issuer: &str,
        card_id: &str,
    ) -> Result<TunnelStep, ApiError> {
        let body = serde_json::json!({ "mode": "legacy-static", "card_id": card_id });
        self.call(Method::POST, &format!("/v1/issuers/{issuer}/update/sessions"), &body).await
    }

    /// Starts issuing card `card_id` (admin token of the issuer needed).
    pub async fn start_issuance(&self, issuer: &str, card_id: &str) -> Result<Issuance, ApiError> {
        let body = serde_json::json!({ "card_id": card_id });
        self.call(Method::POST, &format!("/v1/admin/issuers/{issuer}/issuances"), &body).await
    }

    /// Posts one step's responses; retried on transport failures, which is safe because the
    /// server answers a repeated post with the same answer.
    pub async fn exchange(&self, session_id: &str, req: &Exchange) -> Result<TunnelStep, ApiError> {
        let body = serde_json::to_value(req).map_err(|e| ApiError::Protocol(e.to_string()))?;
        let path = format!("/v1/sessions/{session_id}/exchange");
        let mut attempt = 0;
        loop {
            match self.call(Method::POST, &path, &body).await {
                Err(ApiError::Client(ClientError::Transport(m))) if attempt < EXCHANGE_RETRIES => {
                    attempt += 1;
                    tracing::warn!(attempt, error = %m, "exchange failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Relays a session to the end: sends each step's APDUs to the card through `transmit`
    /// and posts the answers, until the server says done. Returns the last step (with the
    /// outcome). The exchanges share one kept-alive connection (a new one after a transport
    /// failure; each exchange is retried after a transport failure or a `503`, which is safe
    /// because the server answers a repeated post with the same answer and a `503` changed
    /// nothing).
    pub async fn relay(
        &self,
        first: TunnelStep,
        transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<TunnelStep, ApiError> {
        self.relay_on(&mut None, first, transmit).await
    }

    /// Opens a tunnel session for `card_id` of `issuer` and relays it to its end, all on one
    /// kept-alive connection (one TLS handshake per session), with the card's counters read
    /// in the first step (`SessionOptions::read_counters`) and, when the card has updates
    /// pending, the update step's device authentication too (`SessionOptions::device_auth`,
    /// the combined first step): a session with one batch of packages is three requests. What
    /// a sync does; the answer is the last step, with the outcome. Opening is posted again
    /// only after a busy `503` (nothing was created); a transport failure while opening is an
    /// error, since the session may exist.
    pub async fn sync(
        &self,
        issuer: &str,
        card_id: &str,
        transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<TunnelStep, ApiError> {
        let options = SessionOptions { read_counters: true, device_auth: true };
        self.sync_with(issuer, card_id, options, transmit).await
    }

    /// [`ApiClient::sync`] with the session's `options` (the benchmark compares the steps
    /// with and without the combined first step).
    pub async fn sync_with(
        &self,
        issuer: &str,
        card_id: &str,
        options: SessionOptions,
        transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<TunnelStep, ApiError> {
        let body = serde_json::json!({ "card_id": card_id });
        let path = format!(
            "/v1/issuers/{issuer}/sessions?read_counters={}&device_auth={}",
            options.read_counters, options.device_auth
        );
        let mut conn = None;
        let first = self.post_on(&mut conn, &path, &body, 0).await?;
        self.relay_on(&mut conn, first, transmit).await
    }

    async fn relay_on(
        &self,
        conn: &mut Option<Connection>,
        first: TunnelStep,
        mut transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<TunnelStep, ApiError> {
        let mut step = first;
        while !step.done {
            let mut responses = Vec::with_capacity(step.apdus.len());
            for apdu in &step.apdus {
                let bytes =
                    hex::decode(apdu).map_err(|_| ApiError::Protocol("APDU not hex".into()))?;
                responses.push(hex::encode_upper(transmit(&bytes).map_err(ApiError::Card)?));
            }
            let req = Exchange { step: step.step, responses };
            let body = serde_json::to_value(&req).map_err(|e| ApiError::Protocol(e.to_string()))?;
            let path = format!("/v1/sessions/{}/exchange", step.session_id);
            step = self.post_on(conn, &path, &body, EXCHANGE_RETRIES).await?;
        }
        Ok(step)
    }

    /// Posts `body` to `path` over `conn` (opened or reopened as needed): again after a busy
    /// `503`, and after a transport failure at most `transport_retries` times (only for
    /// idempotent requests).
    async fn post_on(
        &self,
        conn: &mut Option<Connection>,
        path: &str,
        body: &Value,
        transport_retries: u32,
    ) -> Result<TunnelStep, ApiError> {
        let (mut attempt, mut busy) = (0, 0);
        loop {
            let sent = async {
                let request = self.build_request(Method::POST, path, Some(body))?;
                if conn.is_none() {
                    *conn = Some(self.connect().await?);
                }
                match conn.as_mut() {
                    Some(c) => self.send_on(c, request).await,
                    None => Err(self.transport(&"no connection")),
                }
            }
            .await;
            match sent {
                Ok((status, bytes)) => {
                    let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    });
                    if status == StatusCode::SERVICE_UNAVAILABLE && busy < BUSY_RETRIES {
                        // The database was busy: nothing changed; post the same again.
                        busy += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                    if !status.is_success() {
                        return Err(server_error(status, &value));
                    }
                    return serde_json::from_value(value)
                        .map_err(|e| ApiError::Protocol(e.to_string()));
                }
                Err(ClientError::Transport(m)) if attempt < transport_retries => {
                    *conn = None;
                    attempt += 1;
                    tracing::warn!(attempt, error = %m, "exchange failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// One issuer's certification authority on the server, seen from an enrolment station, with
/// blocking calls (each runs on a private current-thread runtime): what a synchronous
/// `CertificationAuthority` (the CLI's `tessera enroll --server`) needs.
pub struct IssuerCa {
    runtime: tokio::runtime::Runtime,
    client: ApiClient,
    issuer: String,
}

impl std::fmt::Debug for IssuerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuerCa({:?}, {})", self.client, self.issuer)
    }
}

impl IssuerCa {
    /// The CA of `issuer` on the server `client` talks to (a token of the issuer is needed for
    /// everything but [`IssuerCa::crl`]).
    pub fn new(client: ApiClient, issuer: &str) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Transport(format!("cannot start the async runtime: {e}")))?;
        Ok(IssuerCa { runtime, client, issuer: issuer.to_owned() })
    }

    /// The issuer CA certificate.
    pub fn ca_certificate(&self) -> Result<tessera_crypto::x509::Certificate, ApiError> {
        let info = self.runtime.block_on(self.client.issuer(&self.issuer))?;
        tessera_crypto::x509::Certificate::from_pem(&info.ca_cert_pem)
            .map_err(|e| ApiError::Protocol(format!("CA certificate: {e}")))
    }

    /// The issuer's current CRL.
    pub fn crl(&self) -> Result<tessera_crypto::x509::Crl, ApiError> {
        let der = self.runtime.block_on(self.client.issuer_crl(&self.issuer))?;
        Ok(tessera_crypto::x509::Crl::from_der(der))
    }

    /// A single-use enrolment challenge.
    pub fn challenge(&self) -> Result<[u8; 16], ApiError> {
        let c = self.runtime.block_on(self.client.enrolment_challenge(&self.issuer))?;
        hex::decode(&c.challenge)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ApiError::Protocol("challenge: not 16 hex bytes".into()))
    }

    /// Sends a request with its proof of possession; returns the issued certificate.
    pub fn enrol(&self, req: &EnrolmentRequest) -> Result<EnrolledCertificate, ApiError> {
        self.runtime.block_on(self.client.enrol(&self.issuer, req))
    }
}

fn server_error(status: StatusCode, value: &Value) -> ApiError {
    ApiError::Server {
        status,
        code: value["error"].as_str().unwrap_or_default().to_owned(),
        message: value["message"].as_str().map(str::to_owned).unwrap_or_else(|| value.to_string()),
    }
}

async fn handshake<I>(
    io: I,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let fp = "AB".repeat(32);
        let c = ApiClient::new("https://example.org:9443", Some(&fp), None).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.tls.is_some()), ("example.org", 9443, true));
        let c = ApiClient::new("http://127.0.0.1:8080/", None, None).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.tls.is_some()), ("127.0.0.1", 8080, false));
        let c = ApiClient::new("http://[::1]:8080", None, None).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 8080));
        assert!(ApiClient::new("https://example.org", None, None).is_err(), "https needs a pin");
        assert!(ApiClient::new("ftp://x", None, None).is_err());
        assert!(ApiClient::new("http://x/path", None, None).is_err());
        assert!(ApiClient::new("http://x:notaport", None, None).is_err());
        assert!(ApiClient::new("https://x", Some("zz"), None).is_err());
    }

    fn transmit(card: &mut tessera_card::Card, apdu: &[u8]) -> Result<Vec<u8>, String> {
        Ok(card.transmit(apdu))
    }

    /// `sync` over HTTP against a real server: one session on one connection delivers the
    /// pending update once; a second sync finds nothing; an unknown card is refused.
    #[tokio::test]
    async fn sync_delivers_a_pending_update_over_one_connection() {
        use tessera_apdu::Command;
        let dir = tempfile::tempdir().unwrap();
        let mut opts = crate::server::ServerOptions::new(dir.path());
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.tls = crate::server::TlsMode::Disabled;
        let running = crate::server::start(opts, std::future::pending()).await.unwrap();
        let url = format!("http://{}", running.addr);
        let admin = ApiClient::new(&url, None, running.bootstrap_token.clone()).unwrap();
        let body = serde_json::json!({"id": "acme", "name": "Acme"});
        let (status, v) =
            admin.request(Method::POST, "/v1/admin/issuers", Some(&body)).await.unwrap();
        assert!(status.is_success(), "{v}");
        let issuance = admin.start_issuance("acme", "CARD-A").await.unwrap();
        let mut card = tessera_card::Card::in_memory(tessera_card::CardOptions::default());
        card.power_on();
        let last = admin.relay(issuance.session.clone(), |a| transmit(&mut card, a)).await.unwrap();
        assert_eq!(last.outcome.unwrap().result, "issued");
        let path = "/v1/admin/issuers/acme/cards/CARD-A/updates";
        let body = serde_json::json!({"object": "wifi", "value_hex": "70772d31"});
        let (status, v) = admin.request(Method::POST, path, Some(&body)).await.unwrap();
        assert!(status.is_success(), "{v}");
        // The terminal's part: VERIFY PIN at the ISD.
        card.reset();
        let isd = Command::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(crate::tunnel::ISD_AID.to_vec())
            .with_le(256);
        card.transmit(&isd.to_bytes().unwrap());
        let mut block = issuance.initial_pin.as_bytes().to_vec();
        block.resize(8, 0xFF);
        let verify = Command::new(0x00, 0x20, 0x00, 0x81).with_data(block).to_bytes().unwrap();
        assert_eq!(card.transmit(&verify), [0x90, 0x00]);

        let terminal = ApiClient::new(&url, None, None).unwrap();
        let last = terminal.sync("acme", "CARD-A", |a| transmit(&mut card, a)).await.unwrap();
        let outcome = last.outcome.unwrap();
        assert_eq!(outcome.card_id.as_deref(), Some("CARD-A"));
        assert!(outcome.message.ends_with("updates: 1 delivered"), "{outcome:?}");
        let (_, queue) = admin.request(Method::GET, path, None).await.unwrap();
        let queue = queue.as_array().unwrap();
        assert_eq!(queue.len(), 1);
        assert!(queue[0]["delivered_at"].is_i64(), "{queue:?}");
        let last = terminal.sync("acme", "CARD-A", |a| transmit(&mut card, a)).await.unwrap();
        assert!(!last.outcome.unwrap().message.contains("updates"));
        let err = terminal.sync("acme", "CARD-X", |a| transmit(&mut card, a)).await.unwrap_err();
        assert!(
            matches!(&err, ApiError::Server { status, .. } if *status == StatusCode::NOT_FOUND),
            "{err}"
        );
        running.shutdown().await.unwrap();
    }
}
