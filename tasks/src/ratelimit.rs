//! Token buckets, pure (time is passed in): per-client submissions over HTTP and per-queue
//! dispatch on an agent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens, or says how long until they are there.
    pub fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if n <= self.tokens {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }

    /// Takes as many whole tokens as there are, up to `max`.
    pub fn take_up_to(&mut self, max: usize, now: Instant) -> usize {
        self.refill(now);
        let n = (self.tokens.floor() as usize).min(max);
        self.tokens -= n as f64;
        n
    }
}

/// A bucket per key (client), created full on first use; at most `max_keys` kept (the
/// stalest dropped first).
#[derive(Debug)]
pub struct KeyedBuckets {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl KeyedBuckets {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            max_keys: 10_000,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` tokens of `key`'s bucket at `now`.
    pub fn take(&self, key: &str, n: f64, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.max_keys {
            if let Some(stalest) = map
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone())
            {
                map.remove(&stalest);
            }
        }
        map.entry(key.to_owned())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .take(n, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        assert!(b.take(5.0, t0).is_ok());
        let wait = b.take(1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(b.take(1.0, t0 + Duration::from_millis(100)).is_ok());
        assert_eq!(
            b.take_up_to(100, t0 + Duration::from_secs(10)),
            5,
            "capped at the burst"
        );
    }

    #[test]
    fn clients_have_buckets_of_their_own() {
        let t0 = Instant::now();
        let k = KeyedBuckets::new(1.0, 2.0);
        assert!(k.take("a", 2.0, t0).is_ok());
        assert!(k.take("a", 1.0, t0).is_err());
        assert!(k.take("b", 2.0, t0).is_ok(), "b is not slowed by a");
    }
}
