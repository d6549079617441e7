//! Choosing how runs execute (`AUTOPILOT_EXECUTOR`): a local child process or a Docker container.
//! Shared by the embedded worker of `autopilot serve` and by `autopilot worker`.

use std::sync::Arc;

use autopilot_proto::WorkerId;
use autopilot_worker::model_proxy::Upstream;
use autopilot_worker::{CommandEnv, DockerConfig, DockerExecutor, Executor, LocalExecutor};

use crate::config::{Config, ExecutorKind};

/// The model API when `ANTHROPIC_BASE_URL` is not set.
const DEFAULT_MODEL_API: &str = "https://api.anthropic.com";

/// Builds the configured executor. Asking for `docker` without a reachable engine or without
/// the run image is an error that says what to start or build.
pub async fn build(
    config: &Config,
    worker_id: &WorkerId,
    command_env: &CommandEnv,
) -> anyhow::Result<Arc<dyn Executor>> {
    match config.executor {
        ExecutorKind::Local => Ok(Arc::new(LocalExecutor)),
        ExecutorKind::Docker => {
            let var = |name: &str| {
                command_env
                    .model_api
                    .iter()
                    .find(|(n, v)| n == name && !v.is_empty())
                    .map(|(_, v)| v.clone())
            };
            let mut docker = DockerConfig::new(worker_id.as_str());
            docker.image = config.docker.image.clone();
            docker.upstream = Some(Upstream {
                base_url: var("ANTHROPIC_BASE_URL").unwrap_or_else(|| DEFAULT_MODEL_API.into()),
                api_key: var("ANTHROPIC_API_KEY"),
                bearer: var("ANTHROPIC_AUTH_TOKEN").or_else(|| var("CLAUDE_CODE_OAUTH_TOKEN")),
            });
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
