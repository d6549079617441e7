//! What every delivery request shares: the webhook cache (by token digest), the per-webhook rate
//! limiters, the writer's queue and the estimate of queued runs that bounds it. And the path of
//! one delivery through them: signature, rate limit, the run built from it, the queue, the
//! answer once the writer committed it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use autopilot_proto::WebhookId;
use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use super::writer::{Pending, Submitted, WRITER_QUEUE};
use crate::app::App;
use crate::domain::webhook::{NewDelivery, Webhook};
use crate::domain::ServiceError;
use crate::services::traces;
use crate::services::webhooks::delivery::{
    self, build_delivery, kept_headers, DeliveryError, LiveWebhook, Received,
};
use crate::tokens;

/// How long a looked-up webhook is trusted before it is read again (changes made through this
/// process are seen at once; this bounds how long another replica's change takes).
const CACHE_TTL: Duration = Duration::from_secs(1);
/// Entries kept before the cache is emptied (unknown tokens are cached too).
const CACHE_MAX_ENTRIES: usize = 10_000;

struct CacheEntry {
    read_at: Instant,
    /// `App::webhooks_generation` when it was read: a change here since makes it stale.
    generation: u64,
    /// `None`: unknown or disabled.
    live: Option<Arc<LiveWebhook>>,
}

/// The webhook cache, the rate limiters and the writer's queue, shared by every request.
pub struct Intake {
    cache: RwLock<HashMap<String, CacheEntry>>,
    buckets: Mutex<HashMap<WebhookId, Bucket>>,
    queue: mpsc::Sender<Pending>,
    /// Queued runs in the store, as last counted plus what the writer added since.
    pub(super) queued_runs: AtomicU64,
    max_queued_runs: u64,
    /// Whether a delivery looked at the bound since the last count (a count is taken soon).
    pub(super) bound_asked: AtomicBool,
}

impl Intake {
    /// The intake, and the receiving end of its queue for the writer
    /// ([`super::writer::run_delivery_writer`]).
    pub fn new(max_queued_runs: u64) -> (Arc<Self>, mpsc::Receiver<Pending>) {
        let (queue, queue_rx) = mpsc::channel(WRITER_QUEUE);
        let intake = Intake {
            cache: RwLock::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            queue,
            queued_runs: AtomicU64::new(0),
            max_queued_runs,
            bound_asked: AtomicBool::new(false),
        };
        (Arc::new(intake), queue_rx)
    }

    /// The webhook behind a URL token, if there is one and it is enabled.
    pub async fn webhook(
        &self,
        app: &App,
        token: &str,
    ) -> Result<Option<Arc<LiveWebhook>>, ServiceError> {
        if !token.starts_with(tokens::WEBHOOK_URL_PREFIX) || token.len() > 100 {
            return Ok(None);
        }
        let token_hash = tokens::digest_hex(token);
        let generation = app.webhooks_generation();
        if let Some(cached) = self.cached(&token_hash, generation) {
            return Ok(cached);
        }
        let live = delivery::live_by_token_digest(app, &token_hash)
            .await?
            .map(Arc::new);
        self.remember(token_hash, generation, live.clone());
        Ok(live)
    }

    fn cached(&self, token_hash: &str, generation: u64) -> Option<Option<Arc<LiveWebhook>>> {
        let cache = self
            .cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .get(token_hash)
            .filter(|entry| entry.generation == generation && entry.read_at.elapsed() < CACHE_TTL)
            .map(|entry| entry.live.clone())
    }

    fn remember(&self, token_hash: String, generation: u64, live: Option<Arc<LiveWebhook>>) {
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= CACHE_MAX_ENTRIES {
            cache.clear();
        }
        let entry = CacheEntry {
            read_at: Instant::now(),
            generation,
            live,
        };
        cache.insert(token_hash, entry);
    }

    /// Checks a delivery to `live` and stores the run it starts. Returns once the run is
    /// durable.
    pub async fn accept(
        &self,
        live: &LiveWebhook,
        headers: &http::HeaderMap,
        query: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<Submitted, DeliveryError> {
        let webhook = &live.webhook;
        live.verify_signature(headers, &body, Utc::now())?;
        self.take_token(webhook)?;
        let received = Received {
            content_type: headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            headers: kept_headers(headers),
            query,
            delivery_id: delivery::delivery_id(webhook, headers)?,
            body,
        };
        let delivery = build_delivery(live, received, None, Utc::now())?;
        self.submit(delivery).await
    }

    /// Hands a delivery to the writer and waits until it is stored.
    async fn submit(&self, delivery: NewDelivery) -> Result<Submitted, DeliveryError> {
        if self.queue_is_full() {
            return Err(DeliveryError::QueueFull {
                retry_after_secs: 5,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Pending { delivery, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => DeliveryError::QueueFull {
                    retry_after_secs: 1,
                },
                mpsc::error::TrySendError::Closed(_) => DeliveryError::Service(
                    ServiceError::Unavailable("Autopilot is shutting down".to_owned()),
                ),
            })?;
        let storing = std::time::SystemTime::now();
        match answer.await {
            Ok(result) => {
                let submitted = result?;
                if let Submitted::Created(run) = &submitted {
                    traces::stored([&**run], storing);
                }
                Ok(submitted)
            }
            Err(_) => Err(DeliveryError::Service(ServiceError::Unavailable(
                "the delivery writer stopped before storing the delivery".to_owned(),
            ))),
        }
    }

    /// Takes one delivery from the webhook's token bucket.
    fn take_token(&self, webhook: &Webhook) -> Result<(), DeliveryError> {
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

    fn queue_is_full(&self) -> bool {
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
