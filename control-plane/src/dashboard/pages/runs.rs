//! The runs list: filters kept in the URL (job, status, trigger, webhook, time), counts per
//! status, bulk kill.

use std::collections::HashMap;

use askama::Template;
use autopilot_proto::{RunId, RunStatus, Trigger};
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};

use super::{render, see_other, Chrome, PageError, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator, Submitted};
use crate::dashboard::format::{count, cut, iso, run_duration, short_id, usd, utc};
use crate::dashboard::Dashboard;
use crate::domain::{Run, RunFilter, ServiceError};
use crate::services::{jobs, runs, webhooks};

/// Runs on one page of the list.
const PAGE: u32 = 50;

/// A run as a line of a list.
pub struct RunRow {
    pub id: String,
    pub short_id: String,
    pub job_id: String,
    pub job: String,
    pub trigger: &'static str,
    pub status: &'static str,
    pub active: bool,
    pub created_iso: String,
    pub created: String,
    pub duration: String,
    pub cost: String,
    pub tokens: String,
    pub error: String,
}

impl From<&Run> for RunRow {
    fn from(run: &Run) -> Self {
        let id = run.id.to_string();
        let usage = &run.usage;
        RunRow {
            short_id: short_id(&id),
            id,
            job_id: run.job_id.map(|id| id.to_string()).unwrap_or_default(),
            job: run
                .job_name
                .clone()
                .unwrap_or_else(|| "quick run".to_owned()),
            trigger: run.trigger.as_str(),
            status: run.status.as_str(),
            active: !run.status.is_terminal(),
            created_iso: iso(run.created_at),
            created: utc(run.created_at),
            duration: run_duration(run.started_at, run.finished_at).unwrap_or_default(),
            cost: run.cost_usd.map(usd).unwrap_or_default(),
            tokens: count(
                usage.input_tokens
                    + usage.output_tokens
                    + usage.cache_read_tokens
                    + usage.cache_write_tokens,
            ),
            error: run
                .error
                .as_deref()
                .map(|error| cut(error, 160).0.to_owned())
                .unwrap_or_default(),
        }
    }
}

/// The filters as the URL names them.
#[derive(Default, Clone)]
pub struct Filters {
    pub job: String,
    pub webhook: String,
    pub statuses: Vec<String>,
    pub trigger: String,
    /// `1h`, `24h`, `7d`, `30d`, or empty for all time.
    pub since: String,
    pub before: String,
}

impl Filters {
    fn from_query(pairs: &[(String, String)]) -> Self {
        let one = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.trim().to_owned())
                .unwrap_or_default()
        };
        Filters {
            job: one("job"),
            webhook: one("webhook"),
            statuses: pairs
                .iter()
                .filter(|(key, value)| key == "status" && !value.is_empty())
                .map(|(_, value)| value.clone())
                .collect(),
            trigger: one("trigger"),
            since: one("since"),
            before: one("before"),
        }
    }

    /// The query string of these filters, with `before` replaced.
    fn query(&self, before: Option<&str>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("job", &self.job),
            ("webhook", &self.webhook),
            ("trigger", &self.trigger),
            ("since", &self.since),
        ] {
            if !value.is_empty() {
                query.append_pair(key, value);
            }
        }
        for status in &self.statuses {
            query.append_pair("status", status);
        }
        if let Some(before) = before {
            query.append_pair("before", before);
        }
        query.finish()
    }

    fn has_status(&self, status: &str) -> bool {
        self.statuses.iter().any(|s| s == status)
    }
}

/// When a `since` filter starts.
fn since_time(since: &str, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ServiceError> {
    let span = match since {
        "" => return Ok(None),
        "1h" => Duration::hours(1),
        "24h" => Duration::hours(24),
        "7d" => Duration::days(7),
        "30d" => Duration::days(30),
        other => {
            return Err(ServiceError::invalid(
                "since",
                format!("`{other}` is not a period: use 1h, 24h, 7d or 30d"),
            ))
        }
    };
    Ok(Some(now - span))
}

/// A status and how many runs have it.
struct StatusCount {
    status: &'static str,
    count: u64,
    selected: bool,
    link: String,
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    chrome: Chrome,
    filters: Filters,
    counts: Vec<StatusCount>,
    total: u64,
    runs: Vec<RunRow>,
    next_page: Option<String>,
    statuses: Vec<&'static str>,
    triggers: Vec<&'static str>,
}

async fn filter_of(dashboard: &Dashboard, filters: &Filters) -> PageResult<RunFilter> {
    let app = &dashboard.app;
    let job_id = match filters.job.as_str() {
        "" => None,
        job => Some(jobs::find(app, job).await?.id),
    };
    let webhook_id = match filters.webhook.as_str() {
        "" => None,
        webhook => Some(webhooks::find(app, webhook).await?.id),
    };
    let statuses = filters
        .statuses
        .iter()
        .map(|status| status.parse::<RunStatus>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| ServiceError::invalid("status", message))?;
    let trigger = match filters.trigger.as_str() {
        "" => None,
        trigger => Some(
            trigger
                .parse::<Trigger>()
                .map_err(|message| ServiceError::invalid("trigger", message))?,
        ),
    };
    let before =
        match filters.before.as_str() {
            "" => None,
            before => Some(before.parse::<RunId>().map_err(|_| {
                ServiceError::invalid("before", format!("`{before}` is not a run id"))
            })?),
        };
    Ok(RunFilter {
        job_id,
        webhook_id,
        statuses,
        trigger,
        since: since_time(&filters.since, Utc::now())?,
        before,
        limit: PAGE,
    })
}

pub async fn list(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Query(pairs): Query<Vec<(String, String)>>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let filters = Filters::from_query(&pairs);
    let filter = filter_of(&dashboard, &filters).await?;
    let (found, by_status) = tokio::try_join!(
        runs::list(&dashboard.app, filter.clone()),
        runs::count_by_status(&dashboard.app, &filter),
    )?;
    let by_status: HashMap<RunStatus, u64> = by_status.into_iter().collect();
    let counts = RunStatus::ALL
        .iter()
        .map(|status| {
            let mut only = filters.clone();
            only.statuses = vec![status.as_str().to_owned()];
            StatusCount {
                status: status.as_str(),
                count: by_status.get(status).copied().unwrap_or(0),
                selected: filters.has_status(status.as_str()),
                link: format!("/runs?{}", only.query(None)),
            }
        })
        .collect();
    let next_page = (found.len() == PAGE as usize)
        .then(|| {
            found
                .last()
                .map(|run| format!("/runs?{}", filters.query(Some(&run.id.to_string()))))
        })
        .flatten();
    let page = RunsPage {
        chrome: Chrome::new(&operator, "runs", "Runs"),
        total: by_status.values().sum(),
        counts,
        runs: found.iter().map(RunRow::from).collect(),
        filters,
        next_page,
        statuses: RunStatus::ALL
            .iter()
            .map(|status| status.as_str())
            .collect(),
        triggers: vec!["schedule", "manual", "quick", "webhook"],
    };
    Ok(render(&page))
}

/// Kills every run ticked in the list (`run` fields).
pub async fn kill_many(
    State(dashboard): State<Dashboard>,
    Submitted { operator, form }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::Run)?;
    let ids = form
        .all("run")
        .map(|id| {
            id.parse::<RunId>()
                .map_err(|_| PageError::BadRequest(format!("`{id}` is not a run id")))
        })
        .collect::<PageResult<Vec<_>>>()?;
    if ids.is_empty() {
        return Err(PageError::BadRequest(
            "no run was ticked: tick the runs to kill first".into(),
        ));
    }
    for id in ids {
        match runs::kill(&dashboard.app, id).await {
            // Finished meanwhile: nothing left to kill.
            Ok(_) | Err(ServiceError::Conflict(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    let back = form
        .get("back")
        .filter(|back| back.starts_with("/runs"))
        .unwrap_or("/runs");
    Ok(see_other(back))
}
