//! `App`: what every handler, task and service shares.

use std::sync::Arc;

use autopilot_proto::{Bus, RunId};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::seal::Sealer;
use crate::store::Store;
use crate::webhooks::intake::Deliveries;

/// Shared state: the store, the bus and the signals between services and background tasks.
pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    /// Told whenever a run gained events or changed state, so live followers can look.
    pub run_updates: broadcast::Sender<RunId>,
    /// Wakes the scheduler when a job changed.
    pub scheduler_wake: Arc<Notify>,
    /// Wakes the dispatcher when queued runs may have become dispatchable.
    pub dispatcher_wake: Arc<Notify>,
    /// SHA-256 of the admin token.
    pub admin_token_hash: [u8; 32],
    /// Fired when the process shuts down; long-lived responses (live event streams) end on it.
    pub shutdown: CancellationToken,
    /// The OAuth server's keys, loaded at start.
    pub oauth_keys: std::sync::OnceLock<crate::oauth::Keys>,
    /// Seals and opens secrets kept in the store.
    pub sealer: Sealer,
    /// Webhook lookups, rate limits and the delivery writer's queue.
    pub deliveries: Deliveries,
}

impl App {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        admin_token_hash: [u8; 32],
        sealer: Sealer,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (run_updates, _) = broadcast::channel(4096);
        let deliveries = Deliveries::new(config.max_queued_runs);
        Arc::new(App {
            config,
            store,
            bus,
            run_updates,
            scheduler_wake: Arc::new(Notify::new()),
            dispatcher_wake: Arc::new(Notify::new()),
            admin_token_hash,
            shutdown,
            oauth_keys: std::sync::OnceLock::new(),
            sealer,
            deliveries,
        })
    }

    pub fn notify_run(&self, run_id: RunId) {
        // Nobody following is fine.
        let _ = self.run_updates.send(run_id);
    }
}
