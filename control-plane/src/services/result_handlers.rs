//! Result handlers: after a run of a job ends, its outcome is POSTed to each URL the job's
//! `on_end` names, signed with HMAC-SHA256 when a vault credential is named, and retried with
//! backoff. Started by the chainer, which reads every end once per replica; a `fire_keys` row per
//! (run, handler), taken before the first attempt, makes one replica send it. What happened is
//! recorded as a `result_handler` event of the run. A job's budget alert goes out the same way.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::app::App;
use crate::domain::handlers::{EndHandler, ResultHandler};
use crate::domain::{Job, Run};
use crate::services::{channels, rules, tools};
use autopilot_proto::address::{checked_addresses, Unreachable};

/// Attempts per handler: the first, then after 1, 2, 4, 8 and 16 s.
const ATTEMPTS: u32 = 6;
/// Each request's own time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a run's result and error a body carries.
const MAX_TEXT_BYTES: usize = 64 * 1024;
/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-autopilot-signature";

/// Sends `run`'s outcome to each of `job`'s handlers that takes its end, each on a task of its
/// own.
pub fn started(app: &Arc<App>, job: &Job, run: &Run) {
    for (index, handler) in job.rules.on_end.iter().enumerate() {
        // A file in the workspace is written by the run's worker, before the workspace is saved.
        if !handler.handles(run.status) || handler.write.is_some() {
            continue;
        }
        let (app, handler, run) = (Arc::clone(app), handler.clone(), run.clone());
        let job_id = job.id;
        tokio::spawn(async move {
            let key = format!("handler:{index}:{}", run.id);
            match app.store.record_keyed_fire(job_id, &key, None).await {
                Ok(true) => deliver(&app, index, &handler, &run).await,
                Ok(false) => {} // another replica (or an earlier look) took it
                Err(err) => {
                    tracing::warn!(run.id = %run.id, error = %err, "could not claim a result handler");
                }
            }
        });
    }
}

/// After a run of `job` ended: when the spend of its day or month reached 80 % or 100 % of the
/// budget's ceiling for the first time in that period, the budget's alert is sent (once per
/// period and threshold, whichever replica sees it first).
pub fn check_budget(app: &Arc<App>, job: &Job, run: &Run) {
    let Some(alert) = job.rules.budget.alert.clone() else {
        return;
    };
    let (app, job, run) = (Arc::clone(app), job.clone(), run.clone());
    tokio::spawn(async move {
        let now = Utc::now();
        let tz: chrono_tz::Tz = job.timezone.parse().unwrap_or(chrono_tz::Tz::UTC);
        let budget = &job.rules.budget;
        for (period, ceiling, since) in [
            ("daily", budget.daily_usd, rules::start_of_day(now, tz)),
            (
                "monthly",
                budget.monthly_usd,
                rules::start_of_month(now, tz),
            ),
        ] {
            let Some(ceiling) = ceiling else { continue };
            let about = json!({ "job": job.name, "job_id": job.id, "run_id": run.id });
            let threshold = Threshold {
                job: Some(job.id),
                period,
                ceiling,
                since,
            };
            if alert_thresholds(&app, &alert, threshold, about)
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

/// After runs ended: when all runs' spend this month (UTC) reached 80 % or 100 % of
/// `AUTOPILOT_FLEET_MONTHLY_BUDGET_USD` for the first time, `AUTOPILOT_FLEET_BUDGET_ALERT` is
/// sent (once per month and threshold, by one replica).
pub fn check_fleet_budget(app: &Arc<App>, run: &Run) {
    let (Some(alert), Some(ceiling)) = (
        app.config.fleet_budget_alert.clone(),
        app.config.fleet_monthly_budget_usd,
    ) else {
        return;
    };
    let (app, run_id) = (Arc::clone(app), run.id);
    tokio::spawn(async move {
        let threshold = Threshold {
            job: None,
            period: "monthly",
            ceiling,
            since: rules::start_of_month(Utc::now(), chrono_tz::Tz::UTC),
        };
        let about = json!({ "scope": "fleet", "run_id": run_id });
        let _ = alert_thresholds(&app, &alert, threshold, about).await;
    });
}

/// A budget's period: whose (a job's, or the fleet's), which, its ceiling and start.
struct Threshold {
    job: Option<autopilot_proto::JobId>,
    period: &'static str,
    ceiling: f64,
    since: chrono::DateTime<Utc>,
}

/// Sends `alert` for each threshold (80 %, 100 %) the period's spend reached that was not sent
/// yet this period; `about` says whose budget it is. `Err` when the spend cannot be read.
async fn alert_thresholds(
    app: &App,
    alert: &ResultHandler,
    threshold: Threshold,
    about: Value,
) -> Result<(), ()> {
    let Threshold {
        job,
        period,
        ceiling,
        since,
    } = threshold;
    // The fleet's alerts are kept once each under no job: the nil id.
    let scope = job.unwrap_or_else(|| autopilot_proto::JobId::from(uuid::Uuid::nil()));
    let spent = match app.store.job_spend_since(job, since).await {
        Ok(spent) => spent,
        Err(err) => {
            tracing::warn!(scope = %scope, error = %err, "could not read the spend for a budget alert");
            return Err(());
        }
    };
    for percent in [80u32, 100] {
        if spent < ceiling * f64::from(percent) / 100.0 {
            continue;
        }
        let key = format!("budget:{period}:{}:{percent}", since.timestamp_millis());
        if !matches!(
            app.store.record_keyed_fire(scope, &key, None).await,
            Ok(true)
        ) {
            continue; // sent already this period (or the store cannot say: not now)
        }
        let mut body = json!({
            "alert": "budget",
            "period": period,
            "period_start": since,
            "threshold_percent": percent,
            "ceiling_usd": ceiling,
            "spent_usd": spent,
        });
        if let (Value::Object(body), Value::Object(about)) = (&mut body, about.clone()) {
            body.extend(about);
        }
        tracing::warn!(scope = %scope, period, percent, spent_usd = spent, ceiling_usd = ceiling, "budget threshold reached");
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let delivery = body["run_id"].as_str().unwrap_or_default().to_owned();
        let sent = match Post::of(app, alert).await {
            Ok(request) => send_with_retries(&request, &bytes, &delivery).await,
            Err(why) => Err((0, why)),
        };
        if let Err((attempts, why)) = sent {
            tracing::warn!(scope = %scope, attempts, error = %why, "the budget alert could not be sent");
            app.metrics.error("budget_alert");
        }
    }
    Ok(())
}

/// What a handler is sent: the run's outcome.
pub fn body(run: &Run) -> Value {
    let cap = |text: &Option<String>| {
        text.as_deref().map(|text| {
            let mut end = text.len().min(MAX_TEXT_BYTES);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        })
    };
    json!({
        "run_id": run.id,
        "job_id": run.job_id,
        "job": run.job_name,
        "trigger": run.trigger.as_str(),
        "status": run.status.as_str(),
        "attempt": run.attempt,
        "result": cap(&run.result),
        "error": cap(&run.error),
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "tokens": {
            "input": run.usage.input_tokens,
            "output": run.usage.output_tokens,
            "cache_read": run.usage.cache_read_tokens,
            "cache_write": run.usage.cache_write_tokens,
        },
        "cost_usd": run.cost_usd,
    })
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(key: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Delivers `run`'s outcome through handler `index` (a POST or a channel message) and records
/// how that went as the run's `result_handler` event.
async fn deliver(app: &App, index: usize, handler: &EndHandler, run: &Run) {
    let mut data = json!({ "step": "result_handler", "handler": index });
    let outcome = match (handler.as_post(), &handler.notify) {
        (Some(post), _) => {
            let body = serde_json::to_vec(&body(run)).unwrap_or_default();
            data["host"] = json!(reqwest::Url::parse(&post.post)
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned)));
            match Post::of(app, &post).await {
                Ok(request) => send_with_retries(&request, &body, &run.id.to_string()).await,
                Err(why) => Err((0, why)),
            }
        }
        (None, Some(target)) => {
            data["channel"] = json!(format!("{}/{}", target.server, target.channel));
            let (title, text) = channels::run_ended(app, run);
            channels::post(app, target, &title, &text, &run.id.to_string()).await
        }
        (None, None) => match &handler.trigger {
            Some(job) => {
                data["trigger"] = json!(job);
                trigger(app, job, run)
                    .await
                    .map(|()| 1)
                    .map_err(|why| (1, why))
            }
            None => return,
        },
    };
    match &outcome {
        Ok(attempts) => {
            data["delivered"] = json!(true);
            data["attempts"] = json!(attempts);
            tracing::info!(run.id = %run.id, handler = index, attempts, "result handler delivered");
        }
        Err((attempts, why)) => {
            data["delivered"] = json!(false);
            data["attempts"] = json!(attempts);
            data["error"] = json!(why);
            tracing::warn!(run.id = %run.id, handler = index, attempts, error = %why, "result handler failed");
            app.metrics.error("result_handler");
        }
    }
    if let Err(err) = app.store.append_events(&[run.control_event(data)]).await {
        tracing::warn!(run.id = %run.id, error = %err, "could not record a result handler's outcome");
    }
    app.notify_run(run.id);
}

/// Starts a run of job `job` (an id) after `run`, its parent, once per parent run.
async fn trigger(app: &App, job: &str, run: &Run) -> Result<(), String> {
    let child = crate::services::jobs::find(app, job)
        .await
        .map_err(|err| err.to_string())?;
    let key = format!("triggered-by:{}", run.id);
    crate::services::chains::start_after(app, &child, run, &key, &[run.id])
        .await
        .map_err(|err| err.to_string())
}

/// One POST as the handlers send it: where, with which headers and signing key, and whether it
/// may reach private addresses.
pub(crate) struct Post {
    pub url: reqwest::Url,
    pub headers: Vec<(String, String)>,
    pub allow_private: bool,
    pub signing_key: Option<String>,
}

impl Post {
    /// A result handler's or a budget alert's POST, its signing key opened from the vault.
    async fn of(app: &App, handler: &ResultHandler) -> Result<Post, String> {
        let signing_key = match &handler.sign_with {
            Some(name) => Some(
                tools::credential_value(app, name)
                    .await
                    .map_err(|err| err.to_string())?,
            ),
            None => None,
        };
        Ok(Post {
            url: reqwest::Url::parse(handler.post.trim()).map_err(|err| err.to_string())?,
            headers: Vec::new(),
            allow_private: handler.allow_private,
            signing_key,
        })
    }
}

/// Sends until the endpoint answers 2xx (then how many attempts it took) or the attempts run
/// out; an answer that cannot change (a refused address, a missing key, a 4xx other than 408 and
/// 429) ends it at once.
pub(crate) async fn send_with_retries(
    request: &Post,
    body: &[u8],
    run_id: &str,
) -> Result<u32, (u32, String)> {
    let url = &request.url;
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 2))).await;
        }
        let client = match pinned_client(url, request.allow_private).await {
            Ok(client) => client,
            Err(PinError::Refused(why)) => return Err((attempt, why)),
            Err(PinError::Unresolved(why)) => {
                last_error = why;
                continue;
            }
        };
        let mut sending = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-autopilot-run", run_id)
            .body(body.to_vec());
        for (name, value) in &request.headers {
            sending = sending.header(name.as_str(), value.as_str());
        }
        if let Some(key) = &request.signing_key {
            sending = sending.header(
                SIGNATURE_HEADER,
                signature(key.as_bytes(), Utc::now().timestamp(), body),
            );
        }
        match sending.send().await {
            Ok(answer) if answer.status().is_success() => return Ok(attempt),
            Ok(answer) => {
                let status = answer.status().as_u16();
                last_error = format!("the endpoint answered {status}");
                if (400..500).contains(&status) && status != 408 && status != 429 {
                    return Err((attempt, last_error));
                }
            }
            Err(err) => last_error = format!("the request failed: {err}"),
        }
    }
    Err((ATTEMPTS, last_error))
}

enum PinError {
    /// The address may not be reached: nothing will change that.
    Refused(String),
    /// The name did not resolve: worth another try.
    Unresolved(String),
}

/// A client that connects to exactly the addresses `url`'s host resolved to now, each checked
/// to be public unless `allow_private`: a second DNS answer cannot swap in another.
async fn pinned_client(
    url: &reqwest::Url,
    allow_private: bool,
) -> Result<reqwest::Client, PinError> {
    let host = url
        .host_str()
        .ok_or_else(|| PinError::Refused("the URL has no host".to_owned()))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses = checked_addresses(host, port, allow_private)
        .await
        .map_err(|unreachable| match unreachable {
            Unreachable::Unresolved(why) => PinError::Unresolved(why),
            Unreachable::NotPublic(why) => PinError::Refused(format!(
                "{why}; set `allow_private` for an internal endpoint"
            )),
        })?;
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(host, &addresses)
        .build()
        .map_err(|err| PinError::Refused(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_time_and_the_body() {
        let one = signature(b"key", 1_700_000_000, b"{}");
        assert!(one.starts_with("t=1700000000,v1="), "{one}");
        assert_ne!(one, signature(b"key", 1_700_000_001, b"{}"));
        assert_ne!(one, signature(b"key", 1_700_000_000, b"{ }"));
        assert_ne!(one, signature(b"other", 1_700_000_000, b"{}"));
    }
}
