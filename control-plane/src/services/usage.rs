//! What runs cost: totals by day, job and model, the costliest runs, and spend so far today and
//! this month (UTC).

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::app::App;
use crate::domain::dashboard::{UsageGroup, UsageTotals};
use crate::domain::{Run, ServiceResult};

/// Usage of runs created since a time.
#[derive(Debug, Default)]
pub struct UsageReport {
    pub since: Option<DateTime<Utc>>,
    pub total: UsageTotals,
    /// Oldest day first, days without runs left out.
    pub by_day: Vec<UsageTotals>,
    /// Costliest first.
    pub by_job: Vec<UsageTotals>,
    pub by_model: Vec<UsageTotals>,
    /// By who paid (`api`, `subscription`, `none`): a subscription's cost is the CLI's
    /// estimate, not billed, and budgets leave it out.
    pub by_billing: Vec<UsageTotals>,
    pub costliest: Vec<Run>,
}

/// Spend so far today and this month (UTC days and months).
#[derive(Debug, Default, Clone, Copy)]
pub struct Spend {
    pub today_usd: f64,
    pub month_usd: f64,
}

pub async fn report(app: &App, since: DateTime<Utc>) -> ServiceResult<UsageReport> {
    let by_day = app.store.usage(UsageGroup::Day, since).await?;
    let by_job = app.store.usage(UsageGroup::Job, since).await?;
    let by_model = app.store.usage(UsageGroup::Model, since).await?;
    let by_billing = app.store.usage(UsageGroup::Billing, since).await?;
    let costliest = app.store.costliest_runs(since, 10).await?;
    let mut total = UsageTotals::default();
    for day in &by_day {
        total.add(day);
    }
    Ok(UsageReport {
        since: Some(since),
        total,
        by_day,
        by_job,
        by_model,
        by_billing,
        costliest,
    })
}

pub async fn spend(app: &App) -> ServiceResult<Spend> {
    let now = Utc::now();
    let (today, month) = day_and_month_start(now);
    Ok(Spend {
        today_usd: app.store.spend_since(today).await?,
        month_usd: app.store.spend_since(month).await?,
    })
}

/// The starts of the UTC day and month `now` is in.
fn day_and_month_start(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = Utc
        .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
        .single()
        .unwrap_or(now);
    let month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now);
    (day, month)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn today_and_this_month_start_at_utc_midnight() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 15, 4, 5).unwrap();
        let (day, month) = day_and_month_start(now);
        assert_eq!(day, Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap());
        assert_eq!(month, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
    }
}
