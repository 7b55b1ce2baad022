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
//! [`IDLE_LIMIT`] without a card operation: the card keeps that time ([`HomeCard::poll_idle`];
//! [`CardHome`] through `tessera_host::home::HomeCardSession`), on an injectable [`Clock`].
//!
//! Parts: `card` (the home card: PIN2, "end", its TLS key; [`CardHome`] for the real card,
//! [`SoftwareHomeCard`] for tests), `markets` (opening market sessions per mode:
//! [`StandardMarkets`]), `identity` (the certificate access cards pin).
//!
//! Timeouts everywhere: the control handshake ([`HANDSHAKE_TIMEOUT`]), a silent control
//! connection ([`CONTROL_IDLE_TIMEOUT`]), the market's TCP connect and handshake
//! ([`MARKET_TIMEOUT`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_proto::control::{ErrorCode, Frame, MAX_DATA_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::control::{read_frame, write_frame};
use crate::registry::Registry;
use crate::{KeyError, fingerprint};

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

mod card;
mod identity;
mod markets;

pub use card::{CardHome, CardSession, HomeCard, PinError, SoftwareHomeCard};
pub use identity::Identity;
pub use markets::{
    BoxFuture, MarketError, MarketSession, MarketStream, Markets, OpenRequest, Opened,
    PostHandshake, RelayMarkets, StandardMarkets, connect_market,
};
pub use tessera_host::home::{Clock, IDLE_LIMIT, ManualClock, SystemClock};

/// The home card's remote-access state, shared by all control connections.
struct CardState {
    /// The connection that unlocked it with PIN2 (the card keeps its own idle time).
    unlocked: Option<u64>,
}

/// The home server.
pub struct HomeServer {
    tls: Arc<ServerConfig>,
    registry: Arc<Registry>,
    card: Arc<dyn HomeCard>,
    markets: Arc<dyn Markets>,
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
    /// A home server with its control TLS configuration, registry, home card (which keeps
    /// its idle time on its own clock) and market connector.
    pub fn new(
        tls: Arc<ServerConfig>,
        registry: Arc<Registry>,
        card: Arc<dyn HomeCard>,
        markets: Arc<dyn Markets>,
    ) -> Arc<Self> {
        Arc::new(HomeServer {
            tls,
            registry,
            card,
            markets,
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

    /// Applies the idle fallback ([`HomeCard::poll_idle`]): if the card has been unlocked and
    /// unused for [`IDLE_LIMIT`], it goes back to the wait state. Returns whether it did.
    pub fn check_idle(&self) -> bool {
        let expired = self.card.poll_idle();
        if expired {
            self.state().unlocked = None;
            tracing::info!("home card idle for 10 minutes: back to the remote-access wait state");
        }
        expired
    }

    /// Whether the home card is unlocked for connection `conn` (after the card's idle
    /// check); marks a use when it is.
    fn use_card(&self, conn: u64) -> bool {
        if self.state().unlocked != Some(conn) {
            return false;
        }
        if self.card.touch() {
            return true;
        }
        let mut st = self.state();
        if st.unlocked == Some(conn) {
            st.unlocked = None;
        }
        false
    }

    fn lock_card(&self, conn: Option<u64>) {
        let was = {
            let mut st = self.state();
            match (st.unlocked, conn) {
                (Some(owner), Some(c)) if owner != c => false,
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
                        self.state().unlocked = Some(conn);
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
