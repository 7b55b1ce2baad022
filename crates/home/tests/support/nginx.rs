//! An nginx market server for tests: started per test on an ephemeral loopback port with its
//! own configuration and temporary directory, `ssl_verify_client on` trusting the issuer CA,
//! one TLS version per instance, and a location that echoes the client certificate's subject
//! and serial. With `CI=true`, a missing nginx fails the test instead of skipping it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Pki;

/// The nginx binary (Debian `nginx-light`, installed by scripts/install-test-deps).
pub const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx; stopped (and its directory removed) on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Whether nginx is there; `None` means skip (not on CI), and on CI it panics.
pub fn available() -> bool {
    if Path::new(NGINX).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{NGINX} is missing (CI=true): run scripts/install-test-deps");
    }
    eprintln!("skipping: {NGINX} is missing (run scripts/install-test-deps)");
    false
}

impl Nginx {
    /// Starts nginx for `pki`'s market certificate, TLS 1.3 (`tls13`) or TLS 1.2 only.
    pub fn start(pki: &Pki, tls13: bool) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| -> PathBuf { dir.path().join(name) };
        std::fs::write(p("market.pem"), pki.market_cert.to_pem()).unwrap();
        std::fs::write(p("market.key"), Pki::key_pem(&pki.market_key)).unwrap();
        std::fs::write(p("ca.pem"), pki.ca.to_pem()).unwrap();
        // An ephemeral port: bind port 0, read the number, release it for nginx. Another
        // process could take it in between; then nginx fails to start and we try again.
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let conf = config(dir.path(), port, tls13);
            std::fs::write(p("nginx.conf"), conf).unwrap();
            let mut child = Command::new(NGINX)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(p("nginx.conf"))
                .arg("-e")
                .arg(p("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Nginx { child, addr, dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(p("error.log")).unwrap_or_default();
        panic!("nginx did not start: {log}");
    }

    /// The path of a file in the instance's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, port: u16, tls13: bool) -> String {
    let d = dir.display();
    let protocols = if tls13 { "TLSv1.3" } else { "TLSv1.2" };
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {d}/market.pem;
        ssl_certificate_key {d}/market.key;
        ssl_client_certificate {d}/ca.pem;
        ssl_verify_client on;
        ssl_protocols {protocols};
        ssl_session_cache shared:market:1m;
        ssl_session_tickets on;
        keepalive_timeout 10s;
        location / {{
            default_type text/plain;
            return 200 "subject=$ssl_client_s_dn serial=$ssl_client_serial verify=$ssl_client_verify protocol=$ssl_protocol reused=$ssl_session_reused\n";
        }}
    }}
}}
"#
    )
}
