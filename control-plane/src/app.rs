//! `App`: what every handler, task and service shares.

use std::sync::Arc;

use autopilot_proto::{Bus, Lease, RunId};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::notices::{Outgoing, OutgoingSender};
use crate::seal::Sealer;
use crate::store::Store;
use crate::webhooks::intake::Deliveries;

/// Shared state: the store, the bus and the signals between services and background tasks.
pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    /// Who fires scheduled jobs (see `crate::scheduler`).
    pub lease: Arc<dyn Lease>,
    /// Told whenever a run gained events or changed state, so live followers can look.
    pub run_updates: broadcast::Sender<RunId>,
    /// Wakes the scheduler when a job changed.
    pub scheduler_wake: Arc<Notify>,
    /// Wakes the dispatcher when queued runs may have become dispatchable.
    pub dispatcher_wake: Arc<Notify>,
    /// This replica holds the scheduler lease (as of its last renewal).
    pub is_leader: std::sync::atomic::AtomicBool,
    /// Set when publishing a run request failed, so the dispatcher retries after a pause.
    pub publish_failed: std::sync::atomic::AtomicBool,
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
    /// Names this process among the control-plane replicas (notices, the scheduler lease).
    pub replica_id: String,
    /// In the fleet: changes to tell the other replicas (see `crate::notices`).
    notices: std::sync::OnceLock<OutgoingSender>,
    /// In the fleet: where workers save job workspaces (a deleted job's goes with it).
    pub saved_workspaces: std::sync::OnceLock<Arc<dyn autopilot_proto::BlobStore>>,
}

impl App {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        lease: Arc<dyn Lease>,
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
            lease,
            run_updates,
            scheduler_wake: Arc::new(Notify::new()),
            dispatcher_wake: Arc::new(Notify::new()),
            publish_failed: std::sync::atomic::AtomicBool::new(false),
            is_leader: std::sync::atomic::AtomicBool::new(false),
            admin_token_hash,
            shutdown,
            oauth_keys: std::sync::OnceLock::new(),
            sealer,
            deliveries,
            replica_id: format!("cp-{}", uuid::Uuid::now_v7().simple()),
            notices: std::sync::OnceLock::new(),
            saved_workspaces: std::sync::OnceLock::new(),
        })
    }

    /// From now on, changes are also told to the other replicas, through the relay that reads
    /// the returned receiver (`crate::notices::run_relay`).
    pub fn tell_other_replicas(&self) -> mpsc::Receiver<Outgoing> {
        let (tx, rx) = crate::notices::channel();
        if self.notices.set(tx).is_err() {
            tracing::error!("the notice relay was set up twice; the first one keeps working");
        }
        rx
    }

    fn tell(&self, change: Outgoing) {
        if let Some(notices) = self.notices.get() {
            // Full: followers elsewhere catch up at their periodic look.
            let _ = notices.try_send(change);
        }
    }

    /// A run gained events or changed state: its live followers look again.
    pub fn notify_run(&self, run_id: RunId) {
        // Nobody following is fine.
        let _ = self.run_updates.send(run_id);
        self.tell(Outgoing::Run(run_id));
    }

    /// A job was created, changed or deleted: the scheduler (wherever it leads) looks again.
    pub fn notify_jobs_changed(&self) {
        self.scheduler_wake.notify_one();
        self.tell(Outgoing::Jobs);
    }
}
