//! Leadership: a lease that one holder at a time keeps by renewing it before it expires.
//!
//! The lease only decides who *tries* to do a leader's work; uniqueness in the store is what makes
//! a stale leader harmless. A holder that fails one renewal must step down at once.

use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The backing service could not be asked (down, timed out). The caller is not the holder
    /// until a later call says so.
    #[error("lease unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Lease: Send + Sync {
    /// Takes the lease for `holder` when it is free or expired, or renews it when `holder` has
    /// it. Returns the fencing token when `holder` holds the lease afterwards (a holder that takes
    /// the lease over always gets a larger one than any earlier holder had; renewals keep it),
    /// `None` when someone else does.
    async fn acquire(&self, holder: &str) -> Result<Option<u64>, LeaseError>;
    /// Gives the lease up if `holder` has it, so the next holder need not wait for it to expire.
    async fn release(&self, holder: &str) -> Result<(), LeaseError>;
    /// How long the lease lasts without renewal.
    fn ttl(&self) -> Duration;
    /// What backs it, for logs: `store` or `nats-kv`.
    fn backend(&self) -> &'static str;
}
