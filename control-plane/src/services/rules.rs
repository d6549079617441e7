//! The checks a job's conditions and budget make before one of its runs starts, and the record
//! of the fires they skip.

use autopilot_proto::Trigger;
use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::app::App;
use crate::domain::rules::SkippedFire;
use crate::domain::{Job, RunFilter, ServiceResult};

/// Most skipped-fire records a listing returns.
pub const MAX_SKIPS_PAGE: u32 = 200;

/// Why a fire of `job` at `now` may not start a run (a time window, a run limit, a budget), if
/// it may not.
pub async fn refusal(app: &App, job: &Job, now: DateTime<Utc>) -> ServiceResult<Option<String>> {
    if !job.rules.gates_runs() && app.config.fleet_monthly_budget_usd.is_none() {
        return Ok(None);
    }
    if let Some(until) = job.rules.paused_until.filter(|until| *until > now) {
        return Ok(Some(format!(
            "paused until {}: the credential its runs use reached its usage limit, which resets then",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    let tz: Tz = job.timezone.parse().unwrap_or(Tz::UTC);
    let conditions = &job.rules.conditions;
    if let Some(reason) = conditions.outside_windows(now, tz) {
        return Ok(Some(reason));
    }
    for (limit, since, period) in [
        (conditions.max_runs_per_day, start_of_day(now, tz), "today"),
        (
            conditions.max_runs_per_week,
            start_of_week(now, tz),
            "this week",
        ),
    ] {
        let Some(limit) = limit else { continue };
        let filter = RunFilter {
            job_id: Some(job.id),
            since: Some(since),
            ..RunFilter::default()
        };
        let started: u64 = app
            .store
            .count_runs_by_status(&filter)
            .await?
            .iter()
            .map(|(_, count)| count)
            .sum();
        if started >= u64::from(limit) {
            return Ok(Some(format!(
                "the job has started {started} run(s) {period}, its limit (conditions.max_runs_per_{})",
                if period == "today" { "day" } else { "week" }
            )));
        }
    }
    over_budget(app, job, now).await
}

/// Why `job` may spend nothing more at `now`, if its budget or the fleet's is used up.
pub async fn over_budget(
    app: &App,
    job: &Job,
    now: DateTime<Utc>,
) -> ServiceResult<Option<String>> {
    let tz: Tz = job.timezone.parse().unwrap_or(Tz::UTC);
    let budget = &job.rules.budget;
    for (ceiling, since, period) in [
        (budget.daily_usd, start_of_day(now, tz), "daily"),
        (budget.monthly_usd, start_of_month(now, tz), "monthly"),
    ] {
        let Some(ceiling) = ceiling else { continue };
        let spent = app.store.job_spend_since(Some(job.id), since).await?;
        if spent >= ceiling {
            return Ok(Some(format!(
                "over its {period} budget: ${spent:.2} spent of ${ceiling:.2} (budget.{period}_usd)"
            )));
        }
    }
    if let Some(ceiling) = app.config.fleet_monthly_budget_usd {
        let spent = app
            .store
            .job_spend_since(None, start_of_month(now, Tz::UTC))
            .await?;
        if spent >= ceiling {
            return Ok(Some(format!(
                "over the fleet's monthly budget: ${spent:.2} spent of ${ceiling:.2} this month (UTC) \
                 (AUTOPILOT_FLEET_MONTHLY_BUDGET_USD)"
            )));
        }
    }
    Ok(None)
}

/// A run of job `job_id` ended on its credential's usage limit, which resets at `until`: the
/// job starts no run before then (its fires are recorded as skipped).
pub async fn pause_for_usage_limit(
    app: &App,
    job_id: autopilot_proto::JobId,
    until: DateTime<Utc>,
) {
    let paused = async {
        let Some(mut job) = app.store.get_job(job_id).await? else {
            return Ok(());
        };
        if job
            .rules
            .paused_until
            .is_some_and(|earlier| earlier >= until)
        {
            return Ok(());
        }
        job.rules.paused_until = Some(until);
        app.store.update_job_rules(job_id, &job.rules).await?;
        tracing::warn!(job.id = %job_id, until = %until, "usage limit reached; the job's runs wait for its reset");
        app.notify_jobs_changed();
        Ok::<_, crate::store::StoreError>(())
    };
    if let Err(err) = paused.await {
        tracing::warn!(job.id = %job_id, error = %err, "could not pause a job for its usage limit");
    }
}

/// Records that a fire of `job` started no run, and why.
pub async fn skipped(app: &App, job: &Job, trigger: Trigger, reason: &str, at: DateTime<Utc>) {
    tracing::info!(job.id = %job.id, trigger = trigger.as_str(), reason, "fire skipped");
    app.metrics.fires_missed(&job.name, 1);
    if let Err(err) = app
        .store
        .record_skipped_fire(job.id, trigger, reason, at)
        .await
    {
        tracing::warn!(job.id = %job.id, error = %err, "could not record a skipped fire");
    }
}

/// A job's skipped fires, newest first.
pub async fn list_skipped(app: &App, job: &Job, limit: u32) -> ServiceResult<Vec<SkippedFire>> {
    Ok(app
        .store
        .skipped_fires(job.id, limit.clamp(1, MAX_SKIPS_PAGE))
        .await?)
}

fn local_midnight(date: chrono::NaiveDate, tz: Tz) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN);
    // A midnight that a daylight-saving change skips starts the day at the change.
    tz.from_local_datetime(&midnight)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(midnight + Duration::hours(1)))
                .earliest()
        })
        .map_or_else(|| midnight.and_utc(), |local| local.with_timezone(&Utc))
}

pub(crate) fn start_of_day(now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    local_midnight(now.with_timezone(&tz).date_naive(), tz)
}

fn start_of_week(now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let today = now.with_timezone(&tz).date_naive();
    let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
    local_midnight(monday, tz)
}

pub(crate) fn start_of_month(now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let today = now.with_timezone(&tz).date_naive();
    local_midnight(today.with_day(1).unwrap_or(today), tz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_local_midnight() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // Wednesday 2026-12-09 10:00 UTC.
        let now = Utc.with_ymd_and_hms(2026, 12, 9, 10, 0, 0).unwrap();
        assert_eq!(
            start_of_day(now, paris),
            Utc.with_ymd_and_hms(2026, 12, 8, 23, 0, 0).unwrap()
        );
        assert_eq!(
            start_of_week(now, paris),
            Utc.with_ymd_and_hms(2026, 12, 6, 23, 0, 0).unwrap()
        );
        assert_eq!(
            start_of_month(now, paris),
            Utc.with_ymd_and_hms(2026, 11, 30, 23, 0, 0).unwrap()
        );
        // Sao Paulo skipped midnight on 2018-11-04: the day began at 01:00 local.
        let sao_paulo: Tz = "America/Sao_Paulo".parse().unwrap();
        let then = Utc.with_ymd_and_hms(2018, 11, 4, 12, 0, 0).unwrap();
        assert_eq!(
            start_of_day(then, sao_paulo),
            Utc.with_ymd_and_hms(2018, 11, 4, 3, 0, 0).unwrap()
        );
    }
}
