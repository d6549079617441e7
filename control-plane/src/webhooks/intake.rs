//! What every delivery request shares: the webhook cache (by token digest), the per-webhook
//! rate limiters, the writer's queue and the estimate of queued runs that bounds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use autopilot_proto::WebhookId;
use tokio::sync::mpsc;

use super::delivery::{DeliveryError, LiveWebhook};
use super::model::Webhook;
use super::writer::{Pending, WRITER_QUEUE};

/// How long a looked-up webhook is trusted before it is read again (changes made through this
/// process clear the cache at once; this bounds how long another replica's change takes).
const CACHE_TTL: Duration = Duration::from_secs(1);
/// Entries kept before the cache is emptied (unknown tokens are cached too).
const CACHE_MAX_ENTRIES: usize = 10_000;

type CacheEntry = (Instant, Option<Arc<LiveWebhook>>);

/// The webhook cache, the rate limiters and the writer's queue, shared by every request.
pub struct Deliveries {
    /// By token digest: when it was read, and the webhook (`None`: unknown or disabled).
    cache: RwLock<HashMap<String, CacheEntry>>,
    buckets: Mutex<HashMap<WebhookId, Bucket>>,
    pub(super) queue: mpsc::Sender<Pending>,
    pub(super) queue_rx: Mutex<Option<mpsc::Receiver<Pending>>>,
    /// Queued runs in the store, as last counted plus what the writer added since.
    pub(super) queued_runs: AtomicU64,
    max_queued_runs: u64,
    /// Whether a delivery looked at the bound since the last count (a count is taken soon).
    pub(super) bound_asked: AtomicBool,
}

impl Deliveries {
    pub fn new(max_queued_runs: u64) -> Self {
        let (queue, queue_rx) = mpsc::channel(WRITER_QUEUE);
        Deliveries {
            cache: RwLock::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            queue,
            queue_rx: Mutex::new(Some(queue_rx)),
            queued_runs: AtomicU64::new(0),
            max_queued_runs,
            bound_asked: AtomicBool::new(false),
        }
    }

    /// Forgets every looked-up webhook (after any change to webhooks or jobs).
    pub fn clear(&self) {
        self.cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    pub(super) fn cached(&self, token_hash: &str) -> Option<Option<Arc<LiveWebhook>>> {
        let cache = self
            .cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .get(token_hash)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, live)| live.clone())
    }

    pub(super) fn remember(&self, token_hash: String, live: Option<Arc<LiveWebhook>>) {
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= CACHE_MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(token_hash, (Instant::now(), live));
    }

    /// Takes one delivery from the webhook's token bucket.
    pub(super) fn take_token(&self, webhook: &Webhook) -> Result<(), DeliveryError> {
        let limit = webhook.config.rate_limit;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(webhook.id).or_insert_with(|| Bucket {
            tokens: f64::from(limit.burst),
            last: Instant::now(),
        });
        bucket
            .take(limit.per_second, f64::from(limit.burst))
            .map_err(|wait| DeliveryError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            })
    }

    pub(super) fn queue_is_full(&self) -> bool {
        self.bound_asked.store(true, Ordering::Relaxed);
        self.queued_runs.load(Ordering::Relaxed) >= self.max_queued_runs
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rate: f64, burst: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_and_says_how_long_to_wait() {
        let mut bucket = Bucket {
            tokens: 2.0,
            last: Instant::now(),
        };
        assert!(bucket.take(1.0, 2.0).is_ok());
        assert!(bucket.take(1.0, 2.0).is_ok());
        let wait = bucket.take(1.0, 2.0).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        bucket.last -= Duration::from_secs(10);
        assert!(
            bucket.take(1.0, 2.0).is_ok(),
            "refilled, capped at the burst"
        );
        assert!(bucket.take(1.0, 2.0).is_ok());
        assert!(bucket.take(1.0, 2.0).is_err());
    }
}
