//! [`BlobStore`] on a JetStream object store bucket.
//!
//! Blobs are kept in the object store's own layout, so any object-store client can read them (we
//! read with async-nats'): a description of each blob, the last message on
//! `$O.<bucket>.M.<name in base64url>`, names the id of its chunks, which are the messages on
//! `$O.<bucket>.C.<id>`.
//!
//! Writes are our own, not the client's `put`. That one reads the description it is about to
//! replace, uploads, publishes its own, then purges the chunks of the one it read: two puts of
//! one name at once both read the same description, and the chunks of whichever the other then
//! replaced are never purged, left in the bucket for good (two overlapping runs of a job saving
//! their workspace together did exactly that). Here a description is replaced by
//! compare-and-set on the last sequence of its subject: each description is replaced once, by the
//! one writer whose compare-and-set succeeded, and that writer purges the chunks it described. A
//! writer that finds the description changed since it read it reads it again and tries again,
//! so the last put still wins as a whole. A put that fails purges the chunks it had sent.
//!
//! What a process that died in the middle of a put left (chunks nothing describes), and what
//! versions before this one left, is swept by [`ObjectBlobs::sweep_orphaned_chunks`].

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_nats::header::NATS_ROLLUP;
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::object_store::{self, GetErrorKind, ObjectStore};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::JetStreamBus;
use crate::blobs::BlobStore;
use crate::bus::BusError;

/// Bytes per chunk message, as the object store's clients cut them.
const CHUNK_BYTES: usize = 128 * 1024;
/// A description found changed this many times in a row gives up: writers keep racing.
const DESCRIBE_ATTEMPTS: usize = 32;
/// The rollup header's value that keeps only the newest message of the subject.
const ROLLUP_SUBJECT: &str = "sub";

/// Blobs in the object store bucket `<prefix>-<name>`.
pub struct ObjectBlobs {
    /// Reads blobs (async-nats follows a description to its chunks and checks their digest).
    store: ObjectStore,
    /// The bucket's stream: descriptions are read and chunks purged through it.
    stream: Stream,
    jetstream: Context,
    bucket: String,
}

impl JetStreamBus {
    /// Opens (creating when missing) the object store bucket `<prefix>-<name>`, holding at most
    /// `max_bytes` in all (`None`: unbounded). Several processes may do this at once.
    pub async fn blobs(&self, name: &str, max_bytes: Option<u64>) -> Result<ObjectBlobs, BusError> {
        let bucket = format!("{}-{name}", self.inner.config.prefix);
        let jetstream = &self.inner.jetstream;
        let store = match jetstream.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(_) => {
                let config = object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("Autopilot: saved job workspaces".to_owned()),
                    max_bytes: max_bytes.map_or(-1, |max| i64::try_from(max).unwrap_or(i64::MAX)),
                    ..Default::default()
                };
                match jetstream.create_object_store(config).await {
                    Ok(store) => store,
                    // Another process created it in between.
                    Err(create) => jetstream.get_object_store(&bucket).await.map_err(|_| {
                        BusError::Unavailable(format!("object store {bucket}: {create}"))
                    })?,
                }
            }
        };
        // The object store's stream, by the name every client gives it.
        let stream = jetstream
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .map_err(|err| BusError::Unavailable(format!("object store {bucket}: {err}")))?;
        Ok(ObjectBlobs {
            store,
            stream,
            jetstream: jetstream.clone(),
            bucket,
        })
    }
}

/// A blob's description, as the object store's clients write and read it.
#[derive(Serialize)]
struct Description<'a> {
    name: &'a str,
    bucket: &'a str,
    nuid: &'a str,
    size: u64,
    chunks: u64,
    mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    options: DescriptionOptions,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

#[derive(Serialize)]
struct DescriptionOptions {
    max_chunk_size: usize,
}

/// What a writer needs of the description it replaces.
#[derive(Deserialize)]
struct Described {
    #[serde(default)]
    nuid: String,
    #[serde(default)]
    deleted: bool,
}

/// The description on a subject now, and its sequence (for the compare-and-set).
struct Current {
    sequence: u64,
    described: Described,
}

/// What an upload sent.
struct Uploaded {
    size: u64,
    chunks: u64,
    digest: String,
}

impl ObjectBlobs {
    fn unavailable(&self, what: &str, err: impl std::fmt::Display) -> BusError {
        BusError::Unavailable(format!("{what} in object store {}: {err}", self.bucket))
    }

    fn description_subject(&self, name: &str) -> Result<String, BusError> {
        if name.is_empty() {
            return Err(BusError::Malformed("a blob needs a name".to_owned()));
        }
        Ok(format!("$O.{}.M.{}", self.bucket, URL_SAFE.encode(name)))
    }

    fn chunk_subject(&self, nuid: &str) -> String {
        format!("$O.{}.C.{nuid}", self.bucket)
    }

    /// The description on `subject` now, if any.
    async fn current(&self, subject: &str) -> Result<Option<Current>, BusError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => {
                let described = serde_json::from_slice(&message.payload).map_err(|err| {
                    BusError::Malformed(format!("a blob description on {subject}: {err}"))
                })?;
                Ok(Some(Current {
                    sequence: message.sequence,
                    described,
                }))
            }
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(self.unavailable("reading a blob description", err)),
        }
    }

    /// Sends the file as chunks on `chunk_subject`, each acknowledged before the next.
    async fn upload(
        &self,
        file: &mut tokio::fs::File,
        chunk_subject: &str,
    ) -> Result<Uploaded, BusError> {
        let mut digest = Sha256::new();
        let (mut size, mut chunks) = (0u64, 0u64);
        let mut buffer = BytesMut::with_capacity(CHUNK_BYTES);
        loop {
            // A whole chunk, however the file hands its bytes over.
            while buffer.len() < CHUNK_BYTES {
                let read = file
                    .read_buf(&mut buffer)
                    .await
                    .map_err(|err| BusError::Unavailable(format!("blob file: {err}")))?;
                if read == 0 {
                    break;
                }
            }
            if buffer.is_empty() {
                break;
            }
            let chunk = buffer.split().freeze();
            digest.update(&chunk);
            size += chunk.len() as u64;
            chunks += 1;
            self.jetstream
                .publish(chunk_subject.to_owned(), chunk)
                .await
                .map_err(|err| self.unavailable("sending a chunk", err))?
                .await
                .map_err(|err| self.unavailable("storing a chunk", err))?;
        }
        Ok(Uploaded {
            size,
            chunks,
            digest: format!("SHA-256={}", URL_SAFE.encode(digest.finalize())),
        })
    }

    /// Makes `description` the one on `subject` by compare-and-set, whatever was there, then
    /// purges the chunks of the description it replaced.
    async fn describe(&self, subject: &str, description: &Description<'_>) -> Result<(), BusError> {
        let payload = Bytes::from(
            serde_json::to_vec(description).expect("a blob description always serializes"),
        );
        for _ in 0..DESCRIBE_ATTEMPTS {
            let current = self.current(subject).await?;
            // No description yet: sequence 0, which the server takes as "none may exist".
            let expected = current.as_ref().map_or(0, |current| current.sequence);
            let message = PublishMessage::build()
                .payload(payload.clone())
                .header(NATS_ROLLUP, ROLLUP_SUBJECT)
                .expected_last_subject_sequence(expected);
            let acked = self
                .jetstream
                .send_publish(subject.to_owned(), message)
                .await
                .map_err(|err| self.unavailable("sending a blob description", err))?
                .await;
            match acked {
                Ok(_) => {
                    if let Some(replaced) = current {
                        self.purge_replaced(&replaced.described, description.nuid)
                            .await;
                    }
                    return Ok(());
                }
                // Another writer replaced it since it was read: read it again.
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(err) => return Err(self.unavailable("storing a blob description", err)),
            }
        }
        Err(self.unavailable(
            "replacing a blob description",
            format!("it changed {DESCRIBE_ATTEMPTS} times in a row while being replaced"),
        ))
    }

    /// Purges the chunks of a description that was just replaced. The replacement stands
    /// whatever happens here, so a failure is logged, not returned: the put or delete did what
    /// it was asked.
    async fn purge_replaced(&self, replaced: &Described, replacement_nuid: &str) {
        if replaced.nuid.is_empty() || replaced.nuid == replacement_nuid {
            return;
        }
        let subject = self.chunk_subject(&replaced.nuid);
        if let Err(err) = self.stream.purge().filter(&subject).await {
            tracing::warn!(
                bucket = %self.bucket,
                chunks = %subject,
                error = %err,
                "the chunks of a replaced blob could not be purged; they stay in the bucket"
            );
        }
    }
}

impl ObjectBlobs {
    /// Purges the chunks that no description names and that were last written more than
    /// `older_than` ago; returns how many chunk subjects went. Chunks being uploaded have no
    /// description yet either: `older_than` must be longer than any upload takes (a worker gives
    /// one up after 30 s). For what a put cut short by the death of its process left behind.
    pub async fn sweep_orphaned_chunks(&self, older_than: Duration) -> Result<usize, BusError> {
        let described = self.described_chunk_ids().await?;
        let prefix = self.chunk_subject("");
        let chunk_subjects: Vec<String> = self
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|err| self.unavailable("listing chunks", err))?
            .map_ok(|(subject, _count)| subject)
            .try_collect()
            .await
            .map_err(|err| self.unavailable("listing chunks", err))?;
        let now = chrono::Utc::now().timestamp();
        let older_than = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
        let mut swept = 0;
        for subject in chunk_subjects {
            let id = subject.strip_prefix(&prefix).unwrap_or_default();
            if described.contains(id) {
                continue;
            }
            let last = match self.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(last) => last,
                // Purged by someone else since the listing.
                Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                Err(err) => return Err(self.unavailable("reading a chunk", err)),
            };
            if now.saturating_sub(last.time.unix_timestamp()) < older_than {
                continue;
            }
            self.stream
                .purge()
                .filter(&subject)
                .await
                .map_err(|err| self.unavailable("purging orphaned chunks", err))?;
            swept += 1;
        }
        Ok(swept)
    }

    /// The chunk ids the descriptions of stored (not deleted) blobs name.
    async fn described_chunk_ids(&self) -> Result<HashSet<String>, BusError> {
        let descriptions: Vec<String> = self
            .stream
            .info_with_subjects(format!("$O.{}.M.>", self.bucket))
            .await
            .map_err(|err| self.unavailable("listing blobs", err))?
            .map_ok(|(subject, _count)| subject)
            .try_collect()
            .await
            .map_err(|err| self.unavailable("listing blobs", err))?;
        let mut ids = HashSet::new();
        for subject in descriptions {
            if let Some(current) = self.current(&subject).await? {
                if !current.described.deleted && !current.described.nuid.is_empty() {
                    ids.insert(current.described.nuid);
                }
            }
        }
        Ok(ids)
    }
}

#[async_trait]
impl BlobStore for ObjectBlobs {
    async fn get(&self, name: &str, into: &Path) -> Result<bool, BusError> {
        let mut object = match self.store.get(name).await {
            Ok(object) => object,
            Err(err) if err.kind() == GetErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(self.unavailable(&format!("reading {name}"), err)),
        };
        let mut file = tokio::fs::File::create(into)
            .await
            .map_err(|err| BusError::Unavailable(format!("blob file: {err}")))?;
        tokio::io::copy(&mut object, &mut file)
            .await
            .map_err(|err| self.unavailable(&format!("reading {name}"), err))?;
        Ok(true)
    }

    async fn put(&self, name: &str, from: &Path) -> Result<(), BusError> {
        let subject = self.description_subject(name)?;
        let mut file = tokio::fs::File::open(from)
            .await
            .map_err(|err| BusError::Unavailable(format!("blob file: {err}")))?;
        let nuid = uuid::Uuid::now_v7().simple().to_string();
        let chunk_subject = self.chunk_subject(&nuid);
        let described = match self.upload(&mut file, &chunk_subject).await {
            Ok(uploaded) => {
                let description = Description {
                    name,
                    bucket: &self.bucket,
                    nuid: &nuid,
                    size: uploaded.size,
                    chunks: uploaded.chunks,
                    mtime: now_rfc3339(),
                    digest: Some(uploaded.digest),
                    options: DescriptionOptions {
                        max_chunk_size: CHUNK_BYTES,
                    },
                    deleted: false,
                };
                self.describe(&subject, &description).await
            }
            Err(err) => Err(err),
        };
        if described.is_err() {
            // Nothing describes these chunks: they go with the failed put.
            if let Err(err) = self.stream.purge().filter(&chunk_subject).await {
                tracing::warn!(
                    bucket = %self.bucket,
                    chunks = %chunk_subject,
                    error = %err,
                    "the chunks of a failed put could not be purged; they stay in the bucket"
                );
            }
        }
        described
    }

    async fn delete(&self, name: &str) -> Result<(), BusError> {
        let subject = self.description_subject(name)?;
        let Some(current) = self.current(&subject).await? else {
            return Ok(());
        };
        if current.described.deleted {
            return Ok(());
        }
        // A description saying "deleted", as the object store's clients write one; it replaces
        // whatever description is there by then (a put racing this delete may have replaced the
        // one just read, and loses to the delete if it came first).
        let description = Description {
            name,
            bucket: &self.bucket,
            nuid: "",
            size: 0,
            chunks: 0,
            mtime: now_rfc3339(),
            digest: None,
            options: DescriptionOptions {
                max_chunk_size: CHUNK_BYTES,
            },
            deleted: true,
        };
        self.describe(&subject, &description).await
    }

    fn backend(&self) -> &'static str {
        "nats-object-store"
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}
