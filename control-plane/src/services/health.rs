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
