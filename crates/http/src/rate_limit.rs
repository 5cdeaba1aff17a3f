//! Token-bucket rate limits, kept per process: each worker limits the traffic it serves. A
//! refused action answers 429 `M_LIMIT_EXCEEDED` with `retry_after_ms` (and `Retry-After`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;

use crate::MatrixError;

/// Buckets beyond this many are pruned (oldest-refilled first), so a flood of distinct keys
/// cannot grow memory without bound.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// One limit: `burst` actions at once, refilled at `per_minute`.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    enabled: bool,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    /// A limiter; `enabled: false` lets everything through.
    pub fn new(per_minute: u32, burst: u32, enabled: bool) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            enabled,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    ///
    /// # Errors
    /// `M_LIMIT_EXCEEDED` when the bucket is empty.
    pub fn check(&self, key: &str) -> Result<(), MatrixError> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        // A std mutex: held for a few arithmetic operations, never across an await.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let full = Duration::from_secs_f64(self.burst / self.per_second.max(f64::MIN_POSITIVE));
            buckets.retain(|_, b| now.duration_since(b.updated) < full);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = if self.per_second > 0.0 {
            ((1.0 - bucket.tokens) / self.per_second * 1000.0).ceil() as u64
        } else {
            60_000
        };
        Err(MatrixError::limit_exceeded(wait_ms.max(1)))
    }
}

/// The client's address: the first `X-Forwarded-For` entry when a proxy set one, else the peer.
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        Ok(Self(forwarded.or(peer).unwrap_or_else(|| "unknown".to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_with_a_retry_time() {
        let limiter = RateLimiter::new(60, 3, true);
        for _ in 0..3 {
            limiter.check("a").unwrap();
        }
        let err = limiter.check("a").unwrap_err();
        assert_eq!(err.status.as_u16(), 429);
        assert_eq!(err.errcode, "M_LIMIT_EXCEEDED");
        let retry = err.extra["retry_after_ms"].as_u64().unwrap();
        assert!((1..=1000).contains(&retry), "{retry}");
        limiter.check("b").expect("keys are independent");
        RateLimiter::new(60, 1, false).check("a").unwrap();
        let off = RateLimiter::new(60, 1, false);
        for _ in 0..10 {
            off.check("x").expect("disabled limits let everything through");
        }
    }
}
