//! The contract between the Autopilot control plane and its workers.
//!
//! Everything that crosses the bus lives here: typed ids, the [`RunSpec`] a worker executes, the
//! [`RunEvent`]s it streams back, the [`RunOutcome`] it reports, the run status state machine and
//! the [`Bus`] trait with its in-memory implementation and, behind the `jetstream` feature, its NATS
//! JetStream implementation. No HTTP and no database types.

pub mod address;
pub mod approval;
pub mod blobs;
pub mod bus;
pub mod event;
pub mod files;
pub mod ids;
#[cfg(feature = "jetstream")]
pub mod jetstream_bus;
pub mod lease;
pub mod memory_bus;
pub mod placeholders;
pub mod run;
pub mod sealed;
pub mod task;

pub use approval::{ApprovalAnswer, ApprovalAsk, ApprovalGate};
pub use blobs::{BlobStore, InMemoryBlobs};
pub use bus::{
    Acker, AttemptEnd, Bus, BusError, ControlMessage, Delivery, EventBatch, FileChange, FileWatch,
    Incoming, IncomingRequest, IncomingTask, Notice, NoticeKind, RunAttempt, RunDelivery,
    RunRequest, WorkerReply, WorkerRequest, WorkerStatus, TRACEPARENT_HEADER,
};
pub use event::{EventKind, EventOrigin, NewRunEvent, RunEvent};
pub use ids::{JobId, RunId, WebhookId, WorkerId};
#[cfg(feature = "jetstream")]
pub use jetstream_bus::{JetStreamBus, JetStreamConfig, KvLease, ObjectBlobs};
pub use lease::{Lease, LeaseError};
pub use memory_bus::{InMemoryBus, InMemoryBusConfig};
pub use run::{
    ApiError, Billing, ClaudeSpec, EndsOn, HttpSpec, McpServerSpec, McpTransport, NetworkMode,
    OutcomeFile, RunKind, RunOutcome, RunSpec, RunStatus, Sandbox, StopReason, TokenUsage, Trigger,
};
pub use sealed::{SealedError, SealedSecrets, Secrets, WorkerKey};
pub use task::{TaskReply, TaskServer, WorkerTask};
