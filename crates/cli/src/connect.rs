//! `tessera connect https://market/path`: an HTTPS request through the home server (seed
//! 004, `docs/proxy.md`), like curl: `-X`, `-H`, `-d`/`--data-binary @file`, `-o FILE`, `-i`.
//!
//! The access card (`--image` or `--reader`, unlocked with its PIN) holds the control
//! channel's client key and pins the home server (key hash and address; `--home` overrides
//! the address). PIN2 goes through the control channel to the home card. In handover mode
//! (the default) the terminal then speaks TLS records itself with the handed-over keys; in
//! relay mode the home server re-encrypts; in partial mode the terminal shakes hands and only
//! the CertificateVerify is signed by the home card. The terminal never holds the user's key.
//! PINs come from files, the environment or stdin, never from the command line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};
use serde_json::json;
use tessera_card::pin::PinBlock;
use tessera_home::terminal::http::{self, Request};
use tessera_home::terminal::{
    CardAccess, ControlConnection, OpenedSession, PartialStream, Terminal, TerminalError,
};
use tessera_host::CardChannel;
use tessera_proto::control::{ErrorCode, Mode};
use tokio_rustls::rustls::RootCertStore;
use zeroize::Zeroizing;

use crate::Output;
use crate::error::{CliError, Exit};
use crate::source::{CardSource, PassphraseArg};

/// How the home server serves the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The home server shakes hands and hands the keys over (default).
    Handover,
    /// The home server keeps the connection and re-encrypts.
    Relay,
    /// The terminal shakes hands; the home card signs the CertificateVerify.
    Partial,
}

/// `tessera connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The URL (`https://host[:port]/path`).
    url: String,
    #[command(flatten)]
    terminal: TerminalArgs,
    /// Request method (default GET, or POST with a body).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    method: Option<String>,
    /// Extra header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// Request body; `@FILE` reads it from a file.
    #[arg(short = 'd', long = "data", value_name = "DATA", conflicts_with = "data_binary")]
    data: Option<String>,
    /// Request body, bytes as they are; `@FILE` reads it from a file.
    #[arg(long = "data-binary", value_name = "DATA")]
    data_binary: Option<String>,
    /// Write the body to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Include the status line and headers in the output.
    #[arg(short = 'i', long = "include")]
    include: bool,
    /// How the home server serves the request.
    #[arg(long, value_enum, default_value = "handover")]
    mode: ModeArg,
    /// Do not let the home server resume a cached session with the market (handover).
    #[arg(long)]
    no_cache: bool,
    /// CA certificate (PEM) the market must chain to, for partial mode (the terminal
    /// validates the market itself there).
    #[arg(long, value_name = "FILE")]
    market_ca: Vec<PathBuf>,
}

/// How a terminal command reaches the home server: the access card and the PINs.
#[derive(Debug, Args)]
pub struct TerminalArgs {
    /// The home server (`host:port`); default: the address the access card pins.
    #[arg(long, value_name = "HOST:PORT")]
    home: Option<String>,
    #[command(flatten)]
    card: CardSource,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// File holding the access card's PIN (else TESSERA_PIN, else a line on stdin).
    #[arg(long, value_name = "F")]
    pin_file: Option<PathBuf>,
    /// File holding PIN2, for the home card (else TESSERA_PIN2, else a line on stdin).
    #[arg(long, value_name = "F")]
    pin2_file: Option<PathBuf>,
}

/// Unlocks the access card, opens the control connection to the home server it pins and
/// sends PIN2 to the home card.
pub fn open_control(args: &TerminalArgs) -> Result<ControlConnection, CliError> {
    // The access card: unlock it, read its certificate and the pinned home server.
    let channel: Box<dyn CardChannel + Send> = match (&args.card.image, &args.card.reader) {
        (Some(path), _) => Box::new(tessera_host::InProcessChannel::new(
            crate::source::open_image(path, &args.passphrase)?,
        )),
        (None, Some(reader)) => Box::new(tessera_host::PcscChannel::connect(Some(reader))?),
        (None, None) => return Err(CliError::usage("give --image FILE or --reader NAME")),
    };
    let pin = secret(&args.pin_file, "TESSERA_PIN", "access card PIN")?;
    let pin = PinBlock::from_value(pin.as_bytes())
        .map_err(|_| CliError::usage("the access card PIN must be 4 to 8 characters"))?;
    let mut card = tessera_host::access::AccessCard::new(channel);
    let card_failure = |e: tessera_host::home::CardError| match e {
        tessera_host::home::CardError::Channel(e) => CliError::new(Exit::Transport, e.to_string()),
        other => CliError::new(Exit::CardSaidNo, format!("access card: {other}")),
    };
    card.select().map_err(card_failure)?;
    card.verify_pin(&pin).map_err(card_failure)?;
    let access = Arc::new(CardAccess::new(card).map_err(card_failure)?);
    let pinned = access.home_server().cloned().ok_or_else(|| {
        CliError::usage(
            "the access card pins no home server (tessera card init-access --home-server)",
        )
    })?;
    let home = args.home.clone().unwrap_or(pinned.address);
    let terminal = Terminal::new(access, pinned.spki_sha256, home).map_err(terminal_failure)?;
    let mut control = terminal.connect().map_err(terminal_failure)?;
    let pin2 = secret(&args.pin2_file, "TESSERA_PIN2", "PIN2")?;
    control.pin2(pin2.as_bytes()).map_err(terminal_failure)?;
    Ok(control)
}

/// The parts of an `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or address (without brackets).
    pub host: String,
    /// Port (443 by default).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

/// Parses `https://host[:port][/path]`.
pub fn parse_url(url: &str) -> Result<Url, CliError> {
    let bad = |m: &str| CliError::usage(format!("{url}: {m}"));
    let rest = url.strip_prefix("https://").ok_or_else(|| bad("only https:// URLs"))?;
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("bad authority")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("bad port"))?,
        None => 443,
    };
    if host.is_empty() || target.contains([' ', '\r', '\n']) {
        return Err(bad("bad host or path"));
    }
    Ok(Url { host, port, target })
}

fn secret(file: &Option<PathBuf>, var: &str, what: &str) -> Result<Zeroizing<String>, CliError> {
    let text = match file {
        Some(path) => Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CliError::new(Exit::Other, format!("cannot read {what} file {}: {e}", path.display()))
        })?),
        None => match std::env::var(var) {
            Ok(v) => Zeroizing::new(v),
            Err(_) => {
                eprint!("{what}: ");
                let _ = std::io::stderr().flush();
                let mut line = Zeroizing::new(String::new());
                std::io::stdin().lock().read_line(&mut line).map_err(|e| {
                    CliError::new(Exit::Other, format!("cannot read the {what} from stdin: {e}"))
                })?;
                line
            }
        },
    };
    let value = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    if value.is_empty() {
        return Err(CliError::usage(format!("the {what} is empty")));
    }
    Ok(value)
}

fn body(args: &ConnectArgs) -> Result<Option<Vec<u8>>, CliError> {
    let read = |spec: &str, binary: bool| -> Result<Vec<u8>, CliError> {
        let bytes = match spec.strip_prefix('@') {
            Some(path) => std::fs::read(path)
                .map_err(|e| CliError::new(Exit::Other, format!("cannot read {path}: {e}")))?,
            None => spec.as_bytes().to_vec(),
        };
        // Like curl: -d drops carriage returns and newlines of a file; --data-binary keeps them.
        Ok(if binary {
            bytes
        } else {
            bytes.into_iter().filter(|b| !matches!(b, b'\r' | b'\n')).collect()
        })
    };
    match (&args.data, &args.data_binary) {
        (Some(d), _) => read(d, false).map(Some),
        (None, Some(d)) => read(d, true).map(Some),
        (None, None) => Ok(None),
    }
}

fn headers(args: &ConnectArgs, has_body: bool) -> Result<Vec<(String, String)>, CliError> {
    let mut out = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| CliError::usage(format!("header {h:?}: expected `Name: value`")))?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    if has_body
        && args.data.is_some()
        && !out.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        out.push(("Content-Type".into(), "application/x-www-form-urlencoded".into()));
    }
    Ok(out)
}

/// A terminal failure as the CLI reports it.
pub fn terminal_failure(e: TerminalError) -> CliError {
    match e {
        TerminalError::Refused { code: ErrorCode::Pin2Wrong(n), .. } => {
            CliError::new(Exit::CardSaidNo, format!("wrong PIN2 ({n} tries left)"))
        }
        TerminalError::Refused { code, message } => {
            let exit = match code {
                ErrorCode::MarketUnreachable | ErrorCode::MarketClosed => Exit::Transport,
                ErrorCode::Protocol | ErrorCode::Internal => Exit::Other,
                _ => Exit::CardSaidNo,
            };
            CliError::new(exit, format!("home server: {message}"))
        }
        TerminalError::Setup(m) => CliError::usage(m),
        other => CliError::new(Exit::Transport, other.to_string()),
    }
}

fn read_roots(paths: &[PathBuf]) -> Result<RootCertStore, CliError> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::new(Exit::Other, format!("cannot read {}: {e}", path.display()))
        })?;
        let cert = tessera_crypto::x509::Certificate::from_pem(&text)
            .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
        roots.add(cert.der().to_vec().into()).map_err(|e| CliError::usage(e.to_string()))?;
    }
    Ok(roots)
}

/// Runs `tessera connect`.
pub fn run(args: ConnectArgs, out: Output) -> Result<(), CliError> {
    let url = parse_url(&args.url)?;
    let body = body(&args)?;
    let method = args
        .method
        .clone()
        .unwrap_or_else(|| if body.is_some() { "POST".into() } else { "GET".into() });
    let headers = headers(&args, body.is_some())?;
    if args.mode == ModeArg::Partial && args.market_ca.is_empty() {
        return Err(CliError::usage(
            "partial mode validates the market here: give --market-ca FILE",
        ));
    }
    let roots = read_roots(&args.market_ca)?;
    let host_header =
        if url.port == 443 { url.host.clone() } else { format!("{}:{}", url.host, url.port) };
    let request = Request {
        method,
        host: host_header,
        target: url.target.clone(),
        headers,
        body: body.unwrap_or_default(),
    };
    request.encode().map_err(|e| CliError::usage(e.to_string()))?;

    let mut control = open_control(&args.terminal)?;

    let response = match args.mode {
        ModeArg::Handover | ModeArg::Relay => {
            exchange(&mut control, &url, &request, args.mode, !args.no_cache)?
        }
        ModeArg::Partial => {
            let shared = Arc::new(Mutex::new(control));
            let mut stream = PartialStream::open(shared.clone(), &url.host, url.port, roots)
                .map_err(terminal_failure)?;
            let r = http::exchange(&mut stream, &request).map_err(io_failure)?;
            let session = stream.session();
            drop(stream);
            let mut control = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = control.end_session(session);
            let _ = control.end();
            r
        }
    };
    write_response(&response, &args, out)
}

fn io_failure(e: std::io::Error) -> CliError {
    let text = e.to_string();
    match e.into_inner().map(|b| b.downcast::<TerminalError>()) {
        Some(Ok(t)) => terminal_failure(*t),
        _ => CliError::new(Exit::Transport, format!("market: {text}")),
    }
}

fn exchange(
    control: &mut ControlConnection,
    url: &Url,
    request: &Request,
    mode: ModeArg,
    cache_allowed: bool,
) -> Result<http::Response, CliError> {
    let m = if mode == ModeArg::Relay { Mode::Relay } else { Mode::Handover };
    let (session, opened) =
        control.open(&url.host, url.port, m, cache_allowed).map_err(terminal_failure)?;
    let response = match opened {
        OpenedSession::HandedOver(keys) => {
            let mut stream = control.handover_stream(session, &keys).map_err(terminal_failure)?;
            let r = http::exchange(&mut stream, request).map_err(io_failure)?;
            let _ = stream.close();
            r
        }
        OpenedSession::Opened(_) => {
            http::exchange(&mut control.relay_stream(session), request).map_err(io_failure)?
        }
    };
    let _ = control.end_session(session);
    let _ = control.end();
    Ok(response)
}

fn write_response(r: &http::Response, args: &ConnectArgs, out: Output) -> Result<(), CliError> {
    if out.json {
        out.emit(String::new, || {
            json!({
                "status": r.status,
                "headers": r.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
                "body_bytes": r.body.len(),
                "output": args.output.as_deref().map(Path::display).map(|d| d.to_string()),
            })
        });
    }
    let mut head = Vec::new();
    if args.include {
        head.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", r.status, r.reason).as_bytes());
        for (k, v) in &r.headers {
            head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
    }
    let write_err =
        |e: std::io::Error| CliError::new(Exit::Other, format!("cannot write the body: {e}"));
    match &args.output {
        Some(path) => {
            std::fs::write(path, [head.as_slice(), &r.body].concat()).map_err(write_err)?;
        }
        None if !out.json => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&head).and_then(|()| stdout.write_all(&r.body)).map_err(write_err)?;
            stdout.flush().map_err(write_err)?;
        }
        None => {}
    }
    if r.status >= 400 {
        eprintln!("tessera connect: the market answered {} {}", r.status, r.reason);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("https://market.example/shop?id=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("market.example", 443, "/shop?id=1")
        );
        let u = parse_url("https://localhost:8443").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.target.as_str()), ("localhost", 8443, "/"));
        let u = parse_url("https://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.target.as_str()), ("::1", 9, "/x"));
        let u = parse_url("https://h?q").unwrap();
        assert_eq!(u.target, "/?q");
        for bad in [
            "http://x/",
            "https://",
            "https://h:0/",
            "https://h:99999/",
            "https://u@h/",
            "https://[::1/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod flow_tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use tessera_card::applets::isd;
    use tessera_card::{Card, CardOptions};
    use tessera_crypto::ecdsa::SigningKey;
    use tessera_crypto::rng::OsRng;
    use tessera_crypto::scp03::StaticKeys;
    use tessera_crypto::x509::{self, Validity};
    use tessera_home::registry::Registry;
    use tessera_home::server::{CardHome, HomeServer, Identity, StandardMarkets};
    use tessera_host::home::personalize_card_id;

    use super::*;
    use crate::demo::proxy::{now, start_market};

    /// `tessera connect` end to end in this process: an access card image on disk, PINs from
    /// files, the pinned home server, each mode, the body written with -o.
    #[test]
    fn connect_through_a_home_server_with_an_access_card_image() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ca_key = SigningKey::generate(&mut OsRng);
        let v = Validity { not_before: now() - 60, not_after: now() + 3600 };
        let ca = x509::self_signed_ca(&ca_key, "CA", &[1], v).unwrap();
        let block = |v: &[u8]| PinBlock::from_value(v).unwrap();
        let keys = StaticKeys::gp_test_keys(isd::INITIAL_KVN);

        let mut home_channel =
            tessera_host::InProcessChannel::new(Card::in_memory(CardOptions::default()));
        personalize_card_id(&mut home_channel, &keys, b"HOME-T").unwrap();
        let mut home = tessera_host::home::HomeCard::new(
            Box::new(home_channel) as Box<dyn CardChannel + Send>
        );
        home.select().unwrap();
        home.set_pins(&block(b"1111"), &block(b"2222"), &block(b"99999999")).unwrap();
        home.verify_pin1(&block(b"1111")).unwrap();
        home.verify_pin2(&block(b"2222")).unwrap();
        home.enrol(&ca_key, &ca, b"HOME-T", "alice", *b"EUR").unwrap();
        home.end().unwrap();
        let home = Arc::new(CardHome::new(home).unwrap());

        let identity = Identity::generate(now()).unwrap();
        let registry = Arc::new(Registry::in_memory().unwrap());
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().to_vec().into()).unwrap();
        let cache = Arc::new(tessera_home::handover::SessionCache::default());
        let markets = Arc::new(StandardMarkets::new(roots, home.clone(), cache).unwrap());
        let tls = identity.server_config(registry.clone()).unwrap();
        let server = HomeServer::new(tls, registry.clone(), home, markets);
        let running = rt.block_on(server.spawn("127.0.0.1:0".parse().unwrap())).unwrap();
        let port = start_market(&rt, &ca_key, &ca).unwrap();

        let image = dir.path().join("access.img");
        {
            let mut channel = tessera_host::InProcessChannel::new(
                Card::create(&image, CardOptions::default()).unwrap(),
            );
            personalize_card_id(&mut channel, &keys, b"ACCESS-T").unwrap();
            let mut access = tessera_host::access::AccessCard::new(channel);
            access.select().unwrap();
            access.set_pins(&block(b"4321"), &block(b"87654321")).unwrap();
            access.verify_pin(&block(b"4321")).unwrap();
            let cert = access.enrol(&ca_key, &ca, b"ACCESS-T", "phone").unwrap();
            access
                .set_home_server(&tessera_proto::access::HomeServer {
                    spki_sha256: identity.spki_sha256(),
                    address: running.addr.to_string(),
                })
                .unwrap();
            registry.admit(cert.der(), "phone", now()).unwrap();
        }
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_pem = write("ca.pem", &ca.to_pem());
        let args = |mode: ModeArg, pin2: &str, out: &str| ConnectArgs {
            url: format!("https://localhost:{port}/shop?x=1"),
            terminal: TerminalArgs {
                home: None,
                card: CardSource { image: Some(image.clone()), reader: None },
                passphrase: PassphraseArg { passphrase_file: None },
                pin_file: Some(write("pin", "4321\n")),
                pin2_file: Some(write("pin2", pin2)),
            },
            method: None,
            headers: vec![],
            data: None,
            data_binary: None,
            output: Some(dir.path().join(out)),
            include: false,
            mode,
            no_cache: false,
            market_ca: vec![ca_pem.clone()],
        };
        let out = Output { json: true };
        for (mode, file) in
            [(ModeArg::Handover, "h.txt"), (ModeArg::Relay, "r.txt"), (ModeArg::Partial, "p.txt")]
        {
            run(args(mode, "2222\n", file), out).unwrap();
            let body = std::fs::read_to_string(dir.path().join(file)).unwrap();
            assert_eq!(
                body,
                format!("hello alice, you asked for GET /shop?x=1 HTTP/1.1\n"),
                "{mode:?}"
            );
        }
        let err = run(args(ModeArg::Handover, "0000\n", "x.txt"), out).unwrap_err();
        assert_eq!(err.exit, Exit::CardSaidNo);
        assert!(err.message.contains("wrong PIN2"), "{}", err.message);
        assert!(!dir.path().join("x.txt").exists());
        rt.block_on(running.stop());
        let err = run(args(ModeArg::Handover, "2222\n", "y.txt"), out).unwrap_err();
        assert_eq!(err.exit, Exit::Transport, "{}", err.message);
    }
}
