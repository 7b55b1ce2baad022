//! The server as a process would run it: data directory set-up on first start (master key,
//! bootstrap token, TLS certificate), HTTPS with a pinned certificate, restart, graceful
//! shutdown.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tessera_crypto::x509::AltName;
use tessera_server::server::{ServerOptions, TlsMode, start};
use tessera_server::tls::pinned_client_config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

async fn https_get(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("tessera-server").unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    Ok(out)
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_https_restart_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut opts = ServerOptions::new(&data);
    opts.listen = "127.0.0.1:0".parse().unwrap();
    assert!(matches!(opts.tls, TlsMode::Generated), "TLS is on by default");

    let server = start(opts.clone(), std::future::pending()).await.unwrap();
    let token = server.bootstrap_token.clone().expect("first start prints a superuser token");
    let fingerprint = server.fingerprint.clone().unwrap();
    #[cfg(unix)]
    {
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("master.key")), 0o600);
        assert_eq!(mode(&data.join("bootstrap-token")), 0o600);
        assert_eq!(mode(&data.join("tls/server.key.der")), 0o600);
    }
    assert_eq!(std::fs::read_to_string(data.join("bootstrap-token")).unwrap().trim(), token);

    let pinned = pinned_client_config(&fingerprint).unwrap();
    let health = https_get(server.addr, pinned.clone(), "/healthz", None).await.unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let issuers =
        https_get(server.addr, pinned.clone(), "/v1/admin/issuers", Some(&token)).await.unwrap();
    assert!(issuers.starts_with("HTTP/1.1 200") && issuers.ends_with("[]"), "{issuers}");
    // A client pinning another certificate refuses the connection.
    let wrong = pinned_client_config(&"00".repeat(32)).unwrap();
    assert!(https_get(server.addr, wrong, "/healthz", None).await.is_err());
    server.shutdown().await.unwrap();

    // Restart: same certificate, same key, no new bootstrap token, the token still works.
    let server = start(opts, std::future::pending()).await.unwrap();
    assert_eq!(server.fingerprint.as_deref(), Some(fingerprint.as_str()));
    assert!(server.bootstrap_token.is_none());
    let issuers = https_get(server.addr, pinned, "/v1/admin/issuers", Some(&token)).await.unwrap();
    assert!(issuers.starts_with("HTTP/1.1 200"), "{issuers}");
    server.shutdown().await.unwrap();
}

/// The generated certificate names the listening address and `localhost`, so a client that
/// trusts `server-chain.pem` (rather than pinning) connects by either name: checked with the
/// real `curl` (required when CI=true).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_certificate_names_the_server_for_curl() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut opts = ServerOptions::new(&data);
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = start(opts, std::future::pending()).await.unwrap();
    let chain = data.join("tls/server-chain.pem");
    let leaf =
        tessera_crypto::x509::Certificate::from_pem(&std::fs::read_to_string(&chain).unwrap())
            .unwrap();
    let names = leaf.info().unwrap().alt_names;
    assert!(names.contains(&AltName::Dns("localhost".into())), "{names:?}");
    assert!(names.contains(&AltName::Ip("127.0.0.1".parse().unwrap())), "{names:?}");

    if std::process::Command::new("curl").arg("--version").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "curl is required when CI=true");
        eprintln!("NOTICE: curl not found; skipping the curl check");
    } else {
        let port = server.addr.port();
        for host in ["127.0.0.1", "localhost"] {
            let out = curl(vec![
                "--cacert".into(),
                chain.display().to_string(),
                format!("https://{host}:{port}/healthz"),
            ])
            .await;
            assert!(
                out.status.success(),
                "curl https://{host}:{port}/healthz: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Without the CA, curl refuses the self-made certificate.
        let out = curl(vec![
            "--cacert".into(),
            "/dev/null".into(),
            format!("https://127.0.0.1:{port}/healthz"),
        ])
        .await;
        assert!(!out.status.success());
    }
    server.shutdown().await.unwrap();
}

/// Runs curl off the async workers (the server answers on them).
async fn curl(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(["-sS", "--noproxy", "*"]).args(args).output()
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_master_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.tls = TlsMode::Disabled;
    start(opts.clone(), std::future::pending()).await.unwrap().shutdown().await.unwrap();
    std::fs::remove_file(dir.path().join("master.key")).unwrap();
    let err = start(opts, std::future::pending()).await.err().unwrap();
    assert!(err.to_string().contains("sealed under master key"), "{err}");
}
