//! The home server's session cache (Fig. 16): TLS sessions with each market, resumed without
//! the home card.
//!
//! A cached session lets the home server act for the user without the card, so entries expire
//! after a configurable lifetime (one hour by default, [`DEFAULT_LIFETIME`]) counted from when
//! the session was stored, whatever lifetime the market granted (rustls also enforces the
//! market's ticket lifetime). The clock is injectable ([`Clock`]) so tests do not sleep.
//!
//! The cache is rustls' [`ClientSessionStore`]: TLS 1.2 sessions (session id or ticket) are
//! stored at the end of the handshake, TLS 1.3 tickets when the terminal forwards the
//! market's NewSessionTicket to the home server ([`super::MarketSession`]). A TLS 1.3 ticket is
//! used at most once; a market usually sends two.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use tessera_host::home::{Clock, SystemClock};

/// The default lifetime of a cached session.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Most TLS 1.3 tickets kept per market.
const MAX_TICKETS: usize = 8;
/// Most markets kept.
const MAX_MARKETS: usize = 1024;

#[derive(Default)]
struct Entry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<(Instant, Tls12ClientSessionValue)>,
    tls13: VecDeque<(Instant, Tls13ClientSessionValue)>,
}

/// The session cache: per market (TLS server name), its sessions and when they were stored.
pub struct SessionCache {
    lifetime: Duration,
    clock: Arc<dyn Clock>,
    markets: Mutex<HashMap<ServerName<'static>, Entry>>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("lifetime", &self.lifetime)
            .field("sessions", &self.len())
            .finish()
    }
}

impl Default for SessionCache {
    fn default() -> Self {
        Self::new(DEFAULT_LIFETIME, Arc::new(SystemClock))
    }
}

impl SessionCache {
    /// A cache whose sessions expire `lifetime` after they were stored, by `clock`.
    pub fn new(lifetime: Duration, clock: Arc<dyn Clock>) -> Self {
        SessionCache { lifetime, clock, markets: Mutex::new(HashMap::new()) }
    }

    /// The configured lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn fresh(&self, stored: Instant, now: Instant) -> bool {
        now.saturating_duration_since(stored) < self.lifetime
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServerName<'static>, Entry>> {
        // A panic while holding the lock leaves a consistent map (every operation is a single
        // insert or remove), so a poisoned lock is still usable.
        self.markets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many sessions (TLS 1.2 sessions plus TLS 1.3 tickets) are cached and unexpired.
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        self.lock()
            .values()
            .map(|e| {
                usize::from(e.tls12.as_ref().is_some_and(|(t, _)| self.fresh(*t, now)))
                    + e.tls13.iter().filter(|(t, _)| self.fresh(*t, now)).count()
            })
            .sum()
    }

    /// Whether no unexpired session is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired session.
    pub fn purge_expired(&self) {
        let now = self.clock.now();
        let mut markets = self.lock();
        for e in markets.values_mut() {
            if e.tls12.as_ref().is_some_and(|(t, _)| !self.fresh(*t, now)) {
                e.tls12 = None;
            }
            e.tls13.retain(|(t, _)| self.fresh(*t, now));
        }
        markets.retain(|_, e| e.tls12.is_some() || !e.tls13.is_empty() || e.kx_hint.is_some());
    }

    /// Forgets every session with `market` (the user logged out, or the card was revoked).
    pub fn forget(&self, market: &ServerName<'_>) {
        let market = market.to_owned();
        self.lock().retain(|k, _| *k != market);
    }

    fn with_entry(&self, name: ServerName<'static>, f: impl FnOnce(&mut Entry)) {
        let mut markets = self.lock();
        if !markets.contains_key(&name) && markets.len() >= MAX_MARKETS {
            drop(markets);
            self.purge_expired();
            markets = self.lock();
            if markets.len() >= MAX_MARKETS {
                return;
            }
        }
        f(markets.entry(name).or_default());
    }
}

impl ClientSessionStore for SessionCache {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with_entry(server_name, |e| e.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.lock().get(&server_name.to_owned()).and_then(|e| e.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        let now = self.clock.now();
        self.with_entry(server_name, |e| e.tls12 = Some((now, value)));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let now = self.clock.now();
        let key = server_name.to_owned();
        let mut markets = self.lock();
        let e = markets.get_mut(&key)?;
        match &e.tls12 {
            Some((t, v)) if self.fresh(*t, now) => Some(v.clone()),
            Some(_) => {
                e.tls12 = None;
                None
            }
            None => None,
        }
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Some(e) = self.lock().get_mut(server_name) {
            e.tls12 = None;
        }
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let now = self.clock.now();
        self.with_entry(server_name, |e| {
            if e.tls13.len() >= MAX_TICKETS {
                e.tls13.pop_front();
            }
            e.tls13.push_back((now, value));
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let now = self.clock.now();
        let mut markets = self.lock();
        let e = markets.get_mut(server_name)?;
        while let Some((t, v)) = e.tls13.pop_back() {
            if self.fresh(t, now) {
                return Some(v);
            }
        }
        None
    }
}
