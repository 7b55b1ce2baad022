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
        let transport = |e: &dyn std::fmt::Display| {
            ClientError::Transport(format!("{}:{}: {e}", self.host, self.port))
        };
        let tcp =
            TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| transport(&e))?;
        let _ = tcp.set_nodelay(true);
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
        let req =
            builder.body(Full::new(payload)).map_err(|e| ClientError::Usage(e.to_string()))?;
        let resp = match &self.tls {
            Some(config) => {
                // The pinned verifier ignores the name; any valid DNS name will do.
                let name = ServerName::try_from("tessera-server").map_err(|e| transport(&e))?;
                let tls = TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| transport(&e))?;
                send(TokioIo::new(tls), req).await
            }
            None => send(TokioIo::new(tcp), req).await,
        }
        .map_err(|e| transport(&e))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
        let bytes = limited.collect().await.map_err(|e| transport(&e))?.to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }
}

async fn send<I>(
    io: I,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await
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
}
