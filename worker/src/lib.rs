//! The Autopilot worker: pulls run requests from the bus, claims each one through the control
//! plane, executes it through an [`Executor`] and streams its events, heartbeats and outcome back.

pub mod batch;
pub mod command;
pub mod docker;
pub mod executor;
pub mod file_watch;
pub mod guard;
pub mod local;
pub mod mcp;
pub mod memory_relay;
pub mod model_proxy;
pub mod outcome_files;
pub mod pricing;
pub mod stream_json;
pub mod trace;
pub mod worker;
pub mod workspaces;

pub use command::{CommandEnv, CommandSpec};
pub use docker::{DockerConfig, DockerExecutor, DockerSetupError};
pub use executor::{ExecError, Executor, ExitInfo, OutputLine, OutputStream};
pub use local::LocalExecutor;
pub use worker::{Slots, Worker, WorkerConfig};
