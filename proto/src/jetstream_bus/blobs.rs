//! [`BlobStore`] on a JetStream object store bucket.

use std::path::Path;

use async_nats::jetstream::object_store::{self, GetErrorKind, ObjectStore};
use async_trait::async_trait;

use super::JetStreamBus;
use crate::blobs::BlobStore;
use crate::bus::BusError;

/// Blobs in the object store bucket `<prefix>-<name>`.
pub struct ObjectBlobs {
    store: ObjectStore,
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
        Ok(ObjectBlobs { store, bucket })
    }
}

#[async_trait]
impl BlobStore for ObjectBlobs {
    async fn get(&self, name: &str, into: &Path) -> Result<bool, BusError> {
        let mut object = match self.store.get(name).await {
            Ok(object) => object,
            Err(err) if err.kind() == GetErrorKind::NotFound => return Ok(false),
            Err(err) => {
                return Err(BusError::Unavailable(format!(
                    "reading {name} from object store {}: {err}",
                    self.bucket
                )))
            }
        };
        let mut file = tokio::fs::File::create(into)
            .await
            .map_err(|err| BusError::Unavailable(format!("blob file: {err}")))?;
        tokio::io::copy(&mut object, &mut file)
            .await
            .map_err(|err| {
                BusError::Unavailable(format!(
                    "reading {name} from object store {}: {err}",
                    self.bucket
                ))
            })?;
        Ok(true)
    }

    async fn put(&self, name: &str, from: &Path) -> Result<(), BusError> {
        let mut file = tokio::fs::File::open(from)
            .await
            .map_err(|err| BusError::Unavailable(format!("blob file: {err}")))?;
        self.store.put(name, &mut file).await.map_err(|err| {
            BusError::Unavailable(format!(
                "writing {name} to object store {}: {err}",
                self.bucket
            ))
        })?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), BusError> {
        match self.store.delete(name).await {
            Ok(()) => Ok(()),
            Err(err) if err.to_string().contains("not found") => Ok(()),
            Err(err) => Err(BusError::Unavailable(format!(
                "deleting {name} from object store {}: {err}",
                self.bucket
            ))),
        }
    }

    fn backend(&self) -> &'static str {
        "nats-object-store"
    }
}
