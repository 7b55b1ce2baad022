//! Request limits: body size (tower-http and axum layers), time and a per-client token-bucket
//! rate limit (checked by the router's one middleware, `super::guard`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};

use crate::error::ServerError;

/// Limits applied to every request.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take before the server answers `503`.
    pub request_timeout_secs: u64,
    /// Sustained requests per second per client address.
    pub rate_per_sec: f64,
    /// Requests a client may burst above the sustained rate.
    pub burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 256 * 1024,
            request_timeout_secs: 30,
            rate_per_sec: 100.0,
            burst: 200.0,
        }
    }
}

/// Most client addresses tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

/// A token bucket per client address.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` saved up.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter { rate, burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `ip`; on refusal, the seconds until one is available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(()); // A poisoned lock only means a panic elsewhere; do not lock everyone out.
        };
        if buckets.len() >= MAX_TRACKED {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// The client address a connection came from (set by the server's listeners).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The `429`, with `Retry-After`, for a request whose client is over its rate (a token taken
/// otherwise, at `now`).
pub fn over_rate(limiter: &RateLimiter, req: &Request, now: Instant) -> Option<Response> {
    let ip = req
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let wait = limiter.check(ip, now).err()?;
    let mut resp = ServerError::TooManyRequests(format!("rate limit exceeded; retry in {wait} s"))
        .into_response();
    resp.headers_mut().insert(axum::http::header::RETRY_AFTER, wait.into());
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refuses_over_burst_and_refills() {
        let l = RateLimiter::new(2.0, 3.0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(a, t0).is_ok());
        }
        assert_eq!(l.check(a, t0), Err(1));
        assert!(l.check(b, t0).is_ok(), "other clients are not affected");
        assert!(l.check(a, t0 + Duration::from_millis(600)).is_ok(), "refilled at 2/s");
        assert!(l.check(a, t0 + Duration::from_millis(600)).is_err());
    }
}
