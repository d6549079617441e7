//! Choosing how runs execute (`AUTOPILOT_EXECUTOR`): a local child process or a Docker container.
//! Shared by the embedded worker of `autopilot serve` and by `autopilot worker`.

use std::sync::Arc;

use autopilot_proto::WorkerId;
use autopilot_worker::{DockerConfig, DockerExecutor, Executor, LocalExecutor};

use crate::config::{Config, ExecutorKind};

/// Builds the configured executor. Asking for `docker` without a reachable engine or without
/// the run image is an error that says what to start or build.
pub async fn build(config: &Config, worker_id: &WorkerId) -> anyhow::Result<Arc<dyn Executor>> {
    match config.executor {
        ExecutorKind::Local => Ok(Arc::new(LocalExecutor::default())),
        ExecutorKind::Docker => {
            let mut docker = DockerConfig::new(worker_id.as_str());
            docker.image = config.docker.image.clone();
            let executor = DockerExecutor::connect(docker)
                .await
                .map_err(|err| anyhow::anyhow!("AUTOPILOT_EXECUTOR=docker: {err}"))?;
            tracing::info!(
                engine = executor.engine_version(),
                image = executor.image(),
                "runs execute in Docker containers"
            );
            Ok(Arc::new(executor))
        }
    }
}
