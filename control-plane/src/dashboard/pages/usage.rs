//! Usage: cost and tokens by day, job and model, the prompt cache's hit rate, and the costliest
//! runs, over a chosen period.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{Duration, Utc};

use super::runs::RunRow;
use super::{render, Chrome, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator};
use crate::dashboard::format::{count, usd};
use crate::dashboard::svg::{bar_chart, Bar};
use crate::dashboard::Dashboard;
use crate::domain::dashboard::UsageTotals;
use crate::domain::ServiceError;
use crate::services::usage;

struct TotalsRow {
    label: String,
    runs: u64,
    cost: String,
    input: String,
    output: String,
    cache_hit: String,
}

impl From<&UsageTotals> for TotalsRow {
    fn from(totals: &UsageTotals) -> Self {
        TotalsRow {
            label: totals.label.clone(),
            runs: totals.runs,
            cost: usd(totals.cost_usd),
            input: count(
                totals.input_tokens + totals.cache_read_tokens + totals.cache_write_tokens,
            ),
            output: count(totals.output_tokens),
            cache_hit: format!("{:.0} %", totals.cache_hit_rate() * 100.0),
        }
    }
}

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage {
    chrome: Chrome,
    days: i64,
    periods: [i64; 4],
    total: TotalsRow,
    cost_chart: String,
    tokens_chart: String,
    by_day: Vec<TotalsRow>,
    by_job: Vec<TotalsRow>,
    by_model: Vec<TotalsRow>,
    by_billing: Vec<TotalsRow>,
    costliest: Vec<RunRow>,
}

/// The model list of a run as a label: `["a","b"]` → `a, b`.
fn models_label(label: &str) -> String {
    match serde_json::from_str::<Vec<String>>(label) {
        Ok(models) if models.is_empty() => "(no model: shell runs, runs that never started)".into(),
        Ok(models) => models.join(", "),
        Err(_) => label.to_owned(),
    }
}

pub async fn show(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let days = match query.get("days").map(String::as_str) {
        None | Some("") => 30,
        Some(days) => match days.parse::<i64>() {
            Ok(days @ 1..=366) => days,
            _ => {
                return Err(ServiceError::invalid(
                    "days",
                    format!("`{days}` is not a number of days from 1 to 366"),
                )
                .into())
            }
        },
    };
    let since = Utc::now() - Duration::days(days);
    let report = usage::report(&dashboard.app, since).await?;
    // One bar for each day of the period, days without runs included.
    let every_day: Vec<UsageTotals> = (0..=days)
        .map(|offset| {
            let label = (since + Duration::days(offset))
                .format("%Y-%m-%d")
                .to_string();
            report
                .by_day
                .iter()
                .find(|day| day.label == label)
                .cloned()
                .unwrap_or(UsageTotals {
                    label,
                    ..Default::default()
                })
        })
        .collect();
    let cost_chart = bar_chart(
        &format!("Cost by day, last {days} days"),
        &every_day
            .iter()
            .map(|day| Bar {
                label: day.label.clone(),
                value: day.cost_usd,
                shown: usd(day.cost_usd),
            })
            .collect::<Vec<_>>(),
    );
    let tokens_chart = bar_chart(
        &format!("Tokens by day, last {days} days"),
        &every_day
            .iter()
            .map(|day| {
                let tokens = day.input_tokens
                    + day.output_tokens
                    + day.cache_read_tokens
                    + day.cache_write_tokens;
                Bar {
                    label: day.label.clone(),
                    value: tokens as f64,
                    shown: count(tokens),
                }
            })
            .collect::<Vec<_>>(),
    );
    Ok(render(&UsagePage {
        chrome: Chrome::new(&operator, "usage", "Usage"),
        days,
        periods: [1, 7, 30, 90],
        total: TotalsRow::from(&report.total),
        cost_chart,
        tokens_chart,
        by_day: report.by_day.iter().rev().map(TotalsRow::from).collect(),
        by_job: report
            .by_job
            .iter()
            .map(|job| {
                let mut row = TotalsRow::from(job);
                if row.label.is_empty() {
                    row.label = "(no job: quick and webhook runs)".into();
                }
                row
            })
            .collect(),
        by_model: report
            .by_model
            .iter()
            .map(|model| {
                let mut row = TotalsRow::from(model);
                row.label = models_label(&model.label);
                row
            })
            .collect(),
        by_billing: report
            .by_billing
            .iter()
            .map(|pool| {
                let mut row = TotalsRow::from(pool);
                row.label = match pool.label.as_str() {
                    "api" => "API key (billed)".to_owned(),
                    "subscription" => "Subscription (the CLI's estimate, not billed)".to_owned(),
                    "none" => "No model (shell and http runs)".to_owned(),
                    other => other.to_owned(),
                };
                row
            })
            .collect(),
        costliest: report.costliest.iter().map(RunRow::from).collect(),
    }))
}
