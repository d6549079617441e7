//! The scheduler lease of the embedded mode: a row in the store, taken and renewed by
//! compare-and-set (see `Store::acquire_lease`). The fleet's lease is in NATS KV
//! (`autopilot_proto::KvLease`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use autopilot_proto::{Lease, LeaseError};
use chrono::Utc;

use crate::store::Store;

pub struct StoreLease {
    store: Arc<dyn Store>,
    name: String,
    ttl: Duration,
}

impl StoreLease {
    pub fn new(store: Arc<dyn Store>, name: &str, ttl: Duration) -> Self {
        Self {
            store,
            name: name.to_owned(),
            ttl,
        }
    }
}

#[async_trait]
impl Lease for StoreLease {
    async fn acquire(&self, holder: &str) -> Result<Option<u64>, LeaseError> {
        let token = self
            .store
            .acquire_lease(&self.name, holder, self.ttl, Utc::now())
            .await
            .map_err(|err| LeaseError::Unavailable(format!("the store: {err}")))?;
        token
            .map(|token| {
                u64::try_from(token).map_err(|_| {
                    LeaseError::Unavailable(format!(
                        "the store holds a negative fencing token ({token}) for lease `{}`",
                        self.name
                    ))
                })
            })
            .transpose()
    }

    async fn release(&self, holder: &str) -> Result<(), LeaseError> {
        self.store
            .release_lease(&self.name, holder)
            .await
            .map_err(|err| LeaseError::Unavailable(format!("the store: {err}")))
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn backend(&self) -> &'static str {
        "store"
    }
}
