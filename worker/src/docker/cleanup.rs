//! Removing the executor's containers, so that none outlives its run. While a run executes, a
//! [`Cleanup`] guard holds its container: the executor removes the container when the run
//! ends, and the guard removes it in the background if the run's task is dropped first. A
//! worker that was killed leaves its containers behind; the sweep at the start of the next
//! worker on the same host, or of the same worker on another host, finds them by the labels
//! `spec/` gives every container, and removes them.

use std::collections::HashMap;

use bollard::errors::Error as DockerError;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;

use super::host::process_alive;
use super::spec::{LABEL_HOST, LABEL_MANAGED, LABEL_PID, LABEL_RUN, LABEL_WORKER};
use super::DockerExecutor;

impl DockerExecutor {
    /// How many containers labelled with this worker's id exist (running or not).
    pub async fn containers(&self) -> Result<usize, DockerError> {
        let label = format!("{LABEL_WORKER}={}", self.config.worker_id);
        Ok(labelled(&self.api, &label).await?.len())
    }

    /// Removes containers left behind: those of workers on this host whose process is gone (a
    /// worker killed with a random id never comes back to sweep its own), and this worker's from
    /// another host. Returns how many were removed.
    pub async fn sweep(&self) -> usize {
        let containers = match labelled(&self.api, &format!("{LABEL_MANAGED}=true")).await {
            Ok(containers) => containers,
            Err(err) => {
                tracing::warn!(error = %err, "could not list containers to sweep");
                return 0;
            }
        };
        let mut removed = 0;
        for container in containers {
            let labels = container.labels.unwrap_or_default();
            // On this host, a container is left behind when the worker process that made it is
            // gone (whatever its id: two fleets may both have a `worker0`). From another host
            // (a worker that came back on a new machine or pod), only this worker's id counts.
            let left_behind = if labels.get(LABEL_HOST) == Some(&self.host) {
                labels
                    .get(LABEL_PID)
                    .and_then(|pid| pid.parse::<i32>().ok())
                    .is_some_and(|pid| !process_alive(pid))
            } else {
                labels.get(LABEL_WORKER) == Some(&self.config.worker_id)
            };
            if !left_behind {
                continue;
            }
            if let Some(id) = container.id {
                if remove(&self.api, &id).await {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// Removes a container when dropped (in the background), unless [`Cleanup::now`] did already.
pub(super) struct Cleanup {
    docker: Option<Docker>,
    id: String,
}

impl Cleanup {
    /// A guard for container `id`, removed through `docker`.
    pub(super) fn new(docker: Docker, id: String) -> Self {
        Cleanup {
            docker: Some(docker),
            id,
        }
    }

    /// Removes the container now, and waits until it is gone.
    pub(super) async fn now(&mut self) {
        if let Some(docker) = self.docker.take() {
            remove(&docker, &self.id).await;
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(docker) = self.docker.take() {
            let id = std::mem::take(&mut self.id);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    remove(&docker, &id).await;
                });
            }
        }
    }
}

/// The containers, running or not, carrying `label` (`name=value`).
async fn labelled(docker: &Docker, label: &str) -> Result<Vec<ContainerSummary>, DockerError> {
    let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
}

/// How many containers of run `run_id` exist, running or not.
pub async fn containers_of_run(docker: &Docker, run_id: &str) -> Result<usize, DockerError> {
    Ok(labelled(docker, &format!("{LABEL_RUN}={run_id}"))
        .await?
        .len())
}

/// Force-removes a container and its anonymous volumes; true when it was removed.
pub(super) async fn remove(docker: &Docker, id: &str) -> bool {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => true,
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(err) => {
            tracing::warn!(container = id, error = %err, "could not remove a run's container");
            false
        }
    }
}
