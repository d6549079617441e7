//! The leadership lease of a fleet: one key of a NATS KV bucket, renewed by compare-and-swap on
//! its revision.
//!
//! Layout: bucket `P-leases` (the JetStream stream `KV_P-leases` on subjects `$KV.P-leases.>`,
//! laid out the way NATS KV lays out a bucket, so `nats kv get P-leases scheduler` shows who
//! leads). One key per lease; its value is `{"holder": …, "acquired_at": …}`; history 1; file
//! storage. The bucket's `max_age` is the lease's TTL: the server removes a value nobody renewed,
//! which frees the lease without any holder's help.
//!
//! Every write expects the key's last revision (`Nats-Expected-Last-Subject-Sequence`):
//! taking a free lease expects "no value" (0) or the delete marker a release left, renewing
//! expects the revision of the holder's own last write. A write that finds another revision
//! fails on the server, so two holders never both succeed and a takeover is never undone.
//!
//! **Fencing tokens** are revisions, i.e. stream sequences: every write to the stream gets a
//! larger one than every write before it (the stream remembers its last sequence even when
//! `max_age` has emptied it, across restarts too). A holder's token is the revision of the write
//! that took the lease, kept while it renews (as the store lease keeps its token), so it is
//! larger than every revision an earlier holder wrote, its renewals included.
//!
//! A server that loses its store loses the stream, and a new stream would count from one again.
//! So the bucket is created starting at the current time in microseconds (`first_seq`; on
//! nats-server 2.9, which ignores it, by purging the new stream up to that sequence), far above
//! any sequence the lost stream could have reached (that would take more than one write per
//! microsecond since it was created): tokens keep growing across a lost store too, as long as the
//! process that sets the bucket up again has a clock no further behind than the lost bucket
//! lived.
//!
//! The bucket is created when a lease is opened and set up again when it turns out to be gone.
//! Opening a lease with another TTL than the bucket has changes the bucket's `max_age` (the newest
//! setting wins, like the bus streams): every process of a deployment should use the same TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{self, DirectGetErrorKind, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::StatusCode;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{is_token, JetStreamBus};
use crate::bus::BusError;
use crate::lease::{Lease, LeaseError};

/// The shortest TTL a lease may have: NATS expires values on a timer, so a shorter one would
/// mostly measure the timer.
const MIN_TTL: Duration = Duration::from_secs(1);

/// The KV operation header and the values that mark a key as deleted (NATS KV, ADR-8).
const KV_OPERATION: &str = "KV-Operation";
const KV_DELETE: &str = "DEL";
const KV_PURGE: &str = "PURGE";
/// Set instead by nats-server 2.11+ on markers it writes itself (`MaxAge`, `Purge`, `Remove`).
const MARKER_REASON: &str = "Nats-Marker-Reason";

/// How often taking a free lease is tried again when its key changes between reading and writing.
const TAKE_ATTEMPTS: usize = 3;

impl JetStreamBus {
    /// Opens the lease `name` (letters, digits, `-`, `_`; at most 64) lasting `ttl` (at least
    /// 1 s) without renewal, creating the bucket `<prefix>-leases` when it is missing. Several
    /// processes may do this at once.
    pub async fn lease(&self, name: &str, ttl: Duration) -> Result<KvLease, BusError> {
        if !is_token(name, 64) {
            return Err(BusError::InvalidConfig(format!(
                "lease name must be 1 to 64 letters, digits, `-` or `_` (got {name:?})"
            )));
        }
        if ttl < MIN_TTL {
            return Err(BusError::InvalidConfig(format!(
                "lease ttl must be at least {MIN_TTL:?} (got {ttl:?})"
            )));
        }
        let bucket = format!("{}-leases", self.inner.config.prefix);
        // A renewal that has no answer within the TTL is no renewal: the lease may have expired
        // meanwhile. Same connection, shorter patience.
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(self.inner.config.request_timeout.min(ttl))
            .build(self.inner.client.clone());
        let stream_name = format!("KV_{bucket}");
        let stream = jetstream
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|err| BusError::InvalidConfig(format!("lease bucket {bucket}: {err}")))?;
        let lease = KvLease {
            bus: self.clone(),
            stream_name,
            subject: format!("$KV.{bucket}.{name}"),
            name: name.to_owned(),
            bucket,
            stream,
            jetstream,
            ttl,
            held: Mutex::new(HashMap::new()),
        };
        lease
            .ensure_bucket()
            .await
            .map_err(|LeaseError::Unavailable(message)| BusError::Unavailable(message))?;
        Ok(lease)
    }
}

/// A lease on NATS KV (see the module docs). Remembers, per holder, the revision of that holder's
/// last write: renewing is a compare-and-swap against it. A holder whose renewal fails, for
/// whatever reason, forgets it and is not the holder until a later `acquire` says so.
pub struct KvLease {
    /// Keeps the connection (and its reconnections) alive; tells whether it is up.
    bus: JetStreamBus,
    jetstream: jetstream::Context,
    stream: stream::Stream<()>,
    /// `KV_<bucket>`.
    stream_name: String,
    bucket: String,
    name: String,
    /// `$KV.<bucket>.<name>`.
    subject: String,
    ttl: Duration,
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    /// The fencing token: the revision that took the lease.
    token: u64,
    /// The revision of the holder's last write, which the next renewal expects.
    revision: u64,
    acquired_at: DateTime<Utc>,
}

/// The value of a lease key, for the operator who looks at the bucket as much as for us.
#[derive(Serialize, Deserialize)]
struct LeaseValue {
    holder: String,
    acquired_at: DateTime<Utc>,
}

/// What the key holds now.
enum Current {
    /// No value: never taken, or expired.
    Empty,
    /// A delete marker (a release), at this revision.
    Released { revision: u64 },
    /// A holder's value (`None` when it cannot be read: not ours, then).
    Held {
        revision: u64,
        value: Option<LeaseValue>,
    },
}

/// Why a write or read did not go through.
enum Failure {
    /// The key's revision is not the one expected: someone else wrote since.
    Conflict,
    /// No stream answered: the server lost its store (or someone deleted the bucket).
    BucketMissing,
    /// The server could not be asked, or said something unexpected.
    Unavailable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict => f.write_str("the key changed meanwhile"),
            Self::BucketMissing => f.write_str("no stream answered for the bucket"),
            Self::Unavailable(err) => f.write_str(err),
        }
    }
}

impl KvLease {
    fn remembered(&self, holder: &str) -> Option<Held> {
        self.held_map().get(holder).copied()
    }

    fn remember(&self, holder: &str, held: Held) {
        self.held_map().insert(holder.to_owned(), held);
    }

    fn forget(&self, holder: &str) -> Option<Held> {
        self.held_map().remove(holder)
    }

    fn held_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        // The map is never left half-updated, so a panic elsewhere cannot poison its meaning.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unavailable(&self, what: &str, err: impl std::fmt::Display) -> LeaseError {
        LeaseError::Unavailable(format!(
            "{what} the lease {} (NATS KV bucket {}) failed: {err}; is nats-server running with \
             -js at {}?",
            self.name, self.bucket, self.bus.inner.url
        ))
    }

    /// Renews `holder`'s lease written at `held.revision`.
    async fn renew(&self, holder: &str, held: Held) -> Result<Option<Held>, LeaseError> {
        let value = LeaseValue {
            holder: holder.to_owned(),
            acquired_at: held.acquired_at,
        };
        match self.write(&value, held.revision).await {
            Ok(revision) => Ok(Some(Held { revision, ..held })),
            Err(Failure::Conflict) => {
                tracing::debug!(lease.name = %self.name, lease.holder = %holder, "lease renewal refused: expired or taken over");
                Ok(None)
            }
            Err(Failure::BucketMissing) => {
                // Whatever we held went with the server's store.
                self.set_up_again().await?;
                Ok(None)
            }
            Err(Failure::Unavailable(err)) => Err(self.unavailable("renewing", err)),
        }
    }

    /// Takes the lease for `holder` if it is free, or if its value names `holder` (a holder
    /// that forgot its revision: a renewal whose answer was lost, a process restarted with the
    /// same holder id); either way a new tenure with a new token. Reads first, so a follower
    /// asking costs one read, not a refused write and a read.
    async fn take(&self, holder: &str) -> Result<Option<Held>, LeaseError> {
        for _ in 0..TAKE_ATTEMPTS {
            let current = match self.read().await {
                Ok(current) => current,
                Err(Failure::BucketMissing) => {
                    self.set_up_again().await?;
                    Current::Empty
                }
                Err(failure) => return Err(self.unavailable("reading", failure)),
            };
            let expected = match current {
                Current::Empty => 0,
                Current::Released { revision } => revision,
                Current::Held {
                    revision,
                    value: Some(value),
                } if value.holder == holder => revision,
                Current::Held { .. } => return Ok(None),
            };
            let value = LeaseValue {
                holder: holder.to_owned(),
                acquired_at: Utc::now(),
            };
            match self.write(&value, expected).await {
                Ok(revision) => {
                    return Ok(Some(Held {
                        token: revision,
                        revision,
                        acquired_at: value.acquired_at,
                    }))
                }
                // Written by someone else between our read and our write: look again.
                Err(Failure::Conflict) => continue,
                Err(Failure::BucketMissing) => self.set_up_again().await?,
                Err(Failure::Unavailable(err)) => return Err(self.unavailable("taking", err)),
            }
        }
        // Others kept writing between our reads and writes: they hold it.
        Ok(None)
    }

    /// The bucket is gone: the server lost its store (no persistent volume), or someone deleted
    /// it. What it held is lost; set it up again.
    async fn set_up_again(&self) -> Result<(), LeaseError> {
        tracing::warn!(lease.name = %self.name, bucket = %self.bucket, "the lease bucket is gone (nats-server lost its store?); setting it up again");
        self.ensure_bucket().await
    }

    /// Writes `value` if the key's last revision is `expected` (0: the key has no value);
    /// returns the new revision.
    async fn write(&self, value: &LeaseValue, expected: u64) -> Result<u64, Failure> {
        let payload = serde_json::to_vec(value)
            .map_err(|err| Failure::Unavailable(format!("encoding the lease value: {err}")))?;
        let publish = PublishMessage::build()
            .payload(payload.into())
            .expected_last_subject_sequence(expected);
        self.publish(publish).await
    }

    async fn publish(&self, publish: PublishMessage) -> Result<u64, Failure> {
        let acked = match self
            .jetstream
            .send_publish(self.subject.clone(), publish)
            .await
        {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        acked
            .map(|ack| ack.sequence)
            .map_err(|err| self.publish_failure(err))
    }

    fn publish_failure(&self, err: PublishError) -> Failure {
        match err.kind() {
            PublishErrorKind::WrongLastSequence => Failure::Conflict,
            PublishErrorKind::StreamNotFound => Failure::BucketMissing,
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe if !self.bus.connected() => {
                Failure::Unavailable("not connected to NATS (reconnecting)".into())
            }
            _ => Failure::Unavailable(err.to_string()),
        }
    }

    async fn read(&self) -> Result<Current, Failure> {
        match self
            .stream
            .direct_get_last_for_subject(self.subject.clone())
            .await
        {
            Ok(message) => Ok(self.decode(message)),
            Err(err) => match err.kind() {
                DirectGetErrorKind::NotFound => Ok(Current::Empty),
                DirectGetErrorKind::ErrorResponse(status, _)
                    if status == StatusCode::NO_RESPONDERS =>
                {
                    Err(Failure::BucketMissing)
                }
                DirectGetErrorKind::TimedOut if !self.bus.connected() => Err(Failure::Unavailable(
                    "not connected to NATS (reconnecting)".into(),
                )),
                _ => Err(Failure::Unavailable(err.to_string())),
            },
        }
    }

    fn decode(&self, message: StreamMessage) -> Current {
        let revision = message.sequence;
        let operation = message
            .headers
            .get(KV_OPERATION)
            .map(|value| value.as_str());
        if matches!(operation, Some(KV_DELETE | KV_PURGE))
            || message.headers.get(MARKER_REASON).is_some()
        {
            return Current::Released { revision };
        }
        let value = serde_json::from_slice::<LeaseValue>(&message.payload)
            .inspect_err(|err| {
                tracing::warn!(lease.name = %self.name, bucket = %self.bucket, error = %err, "unreadable lease value; treating the lease as someone else's until it expires");
            })
            .ok();
        Current::Held { revision, value }
    }

    /// Creates the bucket, or brings what we rely on (`max_age` = TTL, direct gets) to it. Two
    /// processes doing this at once both succeed: whoever loses the race to create looks again.
    async fn ensure_bucket(&self) -> Result<(), LeaseError> {
        let setting_up = "setting up the bucket of";
        for _ in 0..3 {
            match self.jetstream.get_stream(&self.stream_name).await {
                Ok(existing) => {
                    let mut config = existing.cached_info().config.clone();
                    if config.max_age == self.ttl && config.allow_direct {
                        return Ok(());
                    }
                    if config.max_age != self.ttl {
                        tracing::warn!(
                            bucket = %self.bucket,
                            bucket.max_age_ms = config.max_age.as_millis() as u64,
                            lease.ttl_ms = self.ttl.as_millis() as u64,
                            "the lease bucket expires values after another time than this lease's \
                             ttl; changing it (every process should use the same ttl)"
                        );
                    }
                    config.max_age = self.ttl;
                    config.allow_direct = true;
                    return match self.jetstream.update_stream(config).await {
                        Ok(_) => Ok(()),
                        Err(err) => Err(self.unavailable(setting_up, err)),
                    };
                }
                Err(err) if is_stream_not_found(&err.kind()) => {}
                Err(err) => return Err(self.unavailable(setting_up, err)),
            }
            let first_sequence = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |since| since.as_micros() as u64);
            match self
                .jetstream
                .create_stream(self.bucket_config(first_sequence))
                .await
            {
                Ok(created) if created.cached_info().config.first_sequence.is_some() => {
                    return Ok(())
                }
                Ok(created) => {
                    // nats-server before 2.10 ignores `first_seq`. Purging an empty stream up to
                    // a sequence moves it there just the same. A lease taken by another process
                    // in the moment between would be purged too; that holder steps down at its
                    // next renewal.
                    return match created.purge().sequence(first_sequence).await {
                        Ok(_) => Ok(()),
                        Err(err) => Err(self.unavailable(setting_up, err)),
                    };
                }
                Err(err) if is_create_conflict(&err.kind()) => continue,
                Err(err) => return Err(self.unavailable(setting_up, err)),
            }
        }
        Err(self.unavailable(setting_up, "the bucket kept appearing and disappearing"))
    }

    /// The stream NATS KV makes of a bucket with history 1, file storage and `max_age` = TTL,
    /// starting at `first_sequence` (the current time in microseconds: see the module docs on
    /// fencing tokens).
    fn bucket_config(&self, first_sequence: u64) -> stream::Config {
        stream::Config {
            name: self.stream_name.clone(),
            description: Some("Autopilot leadership leases (a NATS KV bucket)".into()),
            subjects: vec![format!("$KV.{}.>", self.bucket)],
            max_messages_per_subject: 1,
            max_age: self.ttl,
            storage: StorageType::File,
            num_replicas: 1,
            discard: DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            first_sequence: Some(first_sequence),
            ..Default::default()
        }
    }
}

fn is_stream_not_found(kind: &GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Someone else created the stream first (with another `first_seq`, so not the same config).
fn is_create_conflict(kind: &CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NAME_EXIST)
}

#[async_trait]
impl Lease for KvLease {
    async fn acquire(&self, holder: &str) -> Result<Option<u64>, LeaseError> {
        let outcome = match self.remembered(holder) {
            Some(held) => self.renew(holder, held).await,
            None => self.take(holder).await,
        };
        match outcome {
            Ok(Some(held)) => {
                self.remember(holder, held);
                Ok(Some(held.token))
            }
            // Stepping down, whatever the reason: the next call starts from what the server has.
            Ok(None) => {
                self.forget(holder);
                Ok(None)
            }
            Err(err) => {
                self.forget(holder);
                Err(err)
            }
        }
    }

    async fn release(&self, holder: &str) -> Result<(), LeaseError> {
        let Some(held) = self.forget(holder) else {
            return Ok(());
        };
        // A delete marker that expects our revision: if someone took the lease meanwhile, it
        // stays theirs.
        let publish = PublishMessage::build()
            .header(KV_OPERATION, KV_DELETE)
            .expected_last_subject_sequence(held.revision);
        match self.publish(publish).await {
            Ok(_) | Err(Failure::Conflict | Failure::BucketMissing) => Ok(()),
            Err(Failure::Unavailable(err)) => Err(self.unavailable("releasing", err)),
        }
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn backend(&self) -> &'static str {
        "nats-kv"
    }
}
