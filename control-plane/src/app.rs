//! `App`: the bottom context every service, edge and task shares. It holds what the process is
//! built from (configuration, store, bus, scheduler lease, keys, sealer, this replica's id) and
//! the signals between the services and the background tasks. It knows no service and no edge:
//! the services are functions over it (`crate::services`), and each edge keeps its own state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use autopilot_proto::{BlobStore, Bus, Lease, RunId};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::seal::Sealer;
use crate::store::Store;

/// Room for changes waiting to be told to the other replicas; past it they are dropped
/// (followers elsewhere catch up by looking again).
const NOTICES_CAPACITY: usize = 16_384;

/// A change this replica made, waiting to be told to the other control planes (fleet only; see
/// `crate::notices`).
#[derive(Debug)]
pub enum Change {
    Run(RunId),
    Jobs,
}

/// The sending half of the changes channel; the notice relay reads the other half.
pub fn changes_channel() -> (mpsc::Sender<Change>, mpsc::Receiver<Change>) {
    mpsc::channel(NOTICES_CAPACITY)
}

/// Everything known before the context is built.
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    /// Who fires scheduled jobs (see `crate::scheduler`).
    pub lease: Arc<dyn Lease>,
    pub keys: Keys,
    /// Seals and opens secrets kept in the store.
    pub sealer: Sealer,
    /// In the fleet: where workers save job workspaces (a deleted job's goes with it).
    pub saved_workspaces: Option<Arc<dyn BlobStore>>,
    /// In the fleet: where changes go to be told to the other replicas.
    pub changes: Option<mpsc::Sender<Change>>,
    /// Fired when the process shuts down; long-lived responses (live event streams) end on it.
    pub shutdown: CancellationToken,
    /// What this process counts and measures (`Metrics::from_env` also pushes it over OTLP).
    pub metrics: Metrics,
}

pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub lease: Arc<dyn Lease>,
    pub keys: Keys,
    pub sealer: Sealer,
    pub saved_workspaces: Option<Arc<dyn BlobStore>>,
    pub shutdown: CancellationToken,
    /// What this process counts and measures (`/metrics`).
    pub metrics: Metrics,
    /// Names this process among the control-plane replicas (notices, the scheduler lease).
    pub replica_id: String,
    /// Told whenever a run gained events or changed state, so live followers can look.
    pub run_updates: broadcast::Sender<RunId>,
    /// Wakes the scheduler when a job changed.
    pub scheduler_wake: Notify,
    /// Wakes the dispatcher when queued runs may have become dispatchable.
    pub dispatcher_wake: Notify,
    /// Wakes the chainer when a run ended here (see `services::chains`).
    pub chains_wake: Notify,
    /// This replica holds the scheduler lease (as of its last renewal).
    pub is_leader: AtomicBool,
    /// Set when publishing a run request failed, so the dispatcher retries after a pause.
    pub publish_failed: AtomicBool,
    /// Raised whenever a webhook or a job changes here, so what was read of them before (the
    /// webhook intake's cache) is read again.
    webhooks_generation: AtomicU64,
    changes: Option<mpsc::Sender<Change>>,
}

impl App {
    pub fn new(parts: Parts) -> Arc<Self> {
        let Parts {
            config,
            store,
            bus,
            lease,
            keys,
            sealer,
            saved_workspaces,
            changes,
            shutdown,
            metrics,
        } = parts;
        let (run_updates, _) = broadcast::channel(4096);
        Arc::new(App {
            config,
            store,
            bus,
            lease,
            keys,
            sealer,
            saved_workspaces,
            shutdown,
            metrics,
            replica_id: format!("cp-{}", uuid::Uuid::now_v7().simple()),
            run_updates,
            scheduler_wake: Notify::new(),
            dispatcher_wake: Notify::new(),
            chains_wake: Notify::new(),
            is_leader: AtomicBool::new(false),
            publish_failed: AtomicBool::new(false),
            webhooks_generation: AtomicU64::new(0),
            changes,
        })
    }

    fn tell(&self, change: Change) {
        if let Some(changes) = &self.changes {
            // Full: followers elsewhere catch up at their periodic look.
            let _ = changes.try_send(change);
        }
    }

    /// A run gained events or changed state: its live followers look again.
    pub fn notify_run(&self, run_id: RunId) {
        // Nobody following is fine.
        let _ = self.run_updates.send(run_id);
        self.tell(Change::Run(run_id));
    }

    /// A job was created, changed or deleted: the scheduler (wherever it leads) looks again, and
    /// webhooks pointing at jobs are read again.
    pub fn notify_jobs_changed(&self) {
        self.scheduler_wake.notify_one();
        self.tell(Change::Jobs);
        self.notify_webhooks_changed();
    }

    /// A webhook was created, changed or deleted.
    pub fn notify_webhooks_changed(&self) {
        self.webhooks_generation.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever a webhook or a job changed in this process.
    pub fn webhooks_generation(&self) -> u64 {
        self.webhooks_generation.load(Ordering::Acquire)
    }
}
