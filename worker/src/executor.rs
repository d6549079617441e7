//! The `Executor` trait: run one prepared command, stream its output lines, obey a stop signal.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::command::CommandSpec;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One line of a process's output, without its line ending.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OutputLine {
    pub stream: OutputStream,
    pub text: String,
}

/// How the process ended.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ExitInfo {
    pub code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    /// The executor had to stop it (the stop token fired).
    pub stopped: bool,
    /// It needed SIGKILL after the grace period.
    pub killed: bool,
    pub out_of_memory: bool,
    /// What the run's model requests used, as the model proxy metered them (runs that reach
    /// the model API through it: the Docker executor's).
    pub metered: Option<crate::model_proxy::Metered>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program to run does not exist; the message says what to install or set.
    #[error("{0}")]
    ProgramNotFound(String),
    #[error("could not prepare the run: {0}")]
    Setup(String),
    #[error("could not start the process: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Runs prepared commands: [`LocalExecutor`](crate::LocalExecutor) as a child process of the
/// worker, [`DockerExecutor`](crate::DockerExecutor) in a container of its own.
#[async_trait]
pub trait Executor: Send + Sync {
    /// A short name for logs and startup messages (`local`, `docker`).
    fn name(&self) -> &'static str;

    /// Runs `command` to completion, sending every output line to `output` in order. When `stop`
    /// fires, the process gets SIGTERM and, after `grace`, SIGKILL; the call still returns the
    /// exit information and every line printed before the end.
    async fn execute(
        &self,
        command: CommandSpec,
        output: mpsc::Sender<OutputLine>,
        stop: CancellationToken,
        grace: Duration,
    ) -> Result<ExitInfo, ExecError>;
}
