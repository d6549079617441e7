//! What the health checks and server info report.

use autopilot_proto::RunStatus;

use crate::app::App;
use crate::domain::ServiceResult;
use crate::keys::ADMIN_TOKEN_SETTING;

/// Whether this replica can serve: its store answers (a read of one small setting).
pub async fn ready(app: &App) -> ServiceResult<()> {
    app.store.get_setting(ADMIN_TOKEN_SETTING).await?;
    Ok(())
}

/// Reads what the metrics show at each read-out (the queue by pool) and returns them as text.
/// A store that does not answer leaves the last values in place.
pub async fn metrics(app: &App) -> String {
    match app.store.queue_by_pool().await {
        Ok(pools) => app.metrics.queue(&pools, chrono::Utc::now()),
        Err(err) => tracing::warn!(error = %err, "reading the queue for the metrics failed"),
    }
    app.metrics.render()
}

/// How many jobs there are, and runs queued, running or being cancelled (at most 500 counted).
pub async fn counts(app: &App) -> ServiceResult<(usize, usize)> {
    let jobs = app.store.list_jobs().await?.len();
    let active = app
        .store
        .list_runs(&crate::domain::RunFilter {
            statuses: RunStatus::ACTIVE.to_vec(),
            limit: super::runs::MAX_PAGE,
            ..Default::default()
        })
        .await?
        .len();
    Ok((jobs, active))
}
