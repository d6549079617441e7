//! Blob storage beside the bus: named files that any worker can read back, such as a job's saved
//! workspace. The fleet keeps them in a JetStream object store; tests and single processes can
//! use the in-memory store.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::bus::BusError;

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Writes blob `name` into the file `into` (replacing it); `false` when there is no such
    /// blob.
    async fn get(&self, name: &str, into: &Path) -> Result<bool, BusError>;
    /// Stores the file `from` as blob `name`, replacing any earlier one as a whole: a reader
    /// sees the old blob or the new one, never a mix.
    async fn put(&self, name: &str, from: &Path) -> Result<(), BusError>;
    /// Forgets blob `name` (absent is fine).
    async fn delete(&self, name: &str) -> Result<(), BusError>;
    /// What backs it, for logs.
    fn backend(&self) -> &'static str;
}

/// Blobs in this process's memory.
#[derive(Default)]
pub struct InMemoryBlobs {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
}

fn io(err: std::io::Error) -> BusError {
    BusError::Unavailable(format!("blob file: {err}"))
}

#[async_trait]
impl BlobStore for InMemoryBlobs {
    async fn get(&self, name: &str, into: &Path) -> Result<bool, BusError> {
        let blob = self
            .blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        match blob {
            Some(bytes) => {
                tokio::fs::write(into, bytes).await.map_err(io)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn put(&self, name: &str, from: &Path) -> Result<(), BusError> {
        let bytes = tokio::fs::read(from).await.map_err(io)?;
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), bytes);
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), BusError> {
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
