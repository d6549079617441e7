//! Channels of a registered `notify` server, as the control plane's result handlers post to
//! them (`on_end: [{"notify": {"server", "channel"}}]`): the server's `NOTIFY_CHANNELS` setting
//! names each channel's kind, URL and headers, with `${NAME}` placeholders for the vault's
//! credentials, filled in here only when a message goes out and never shown. The body each kind
//! takes is the `notify` server's own (`autopilot_fixed_servers::notify_message`).

use std::collections::BTreeMap;

use autopilot_fixed_servers::notify_message::{self, Kind};
use autopilot_proto::placeholders;
use serde::Deserialize;

use crate::app::App;
use crate::domain::handlers::NotifyTarget;
use crate::domain::tools::Transport;
use crate::domain::{Run, ServiceError, ServiceResult};
use crate::services::tools;

/// The setting that holds the channels, and the one that lets them reach private addresses.
const CHANNELS_SETTING: &str = "NOTIFY_CHANNELS";
const ALLOW_PRIVATE_SETTING: &str = "NOTIFY_ALLOW_PRIVATE";
/// The most of a run's result a message quotes.
const RESULT_CHARS: usize = 500;

/// One channel as written in the setting (placeholders not filled in).
#[derive(Deserialize)]
struct Written {
    kind: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// A channel ready to post to: its credentials filled in.
pub struct Channel {
    pub name: String,
    pub kind: Kind,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub allow_private: bool,
}

/// The channels a registered server's settings write, and whether they may reach private
/// addresses; an error says what is wrong in words for the field `field`.
async fn written(
    app: &App,
    target: &NotifyTarget,
    field: &str,
) -> ServiceResult<(BTreeMap<String, Written>, bool)> {
    let server = match tools::find_server(app, &target.server).await {
        Err(ServiceError::NotFound { .. }) => {
            return Err(ServiceError::invalid(
                field,
                format!(
                    "no MCP server `{}` is registered; register a fixed `notify` server first",
                    target.server
                ),
            ))
        }
        found => found?,
    };
    let Transport::Fixed { server: fixed, env } = &server.transport else {
        return Err(ServiceError::invalid(
            field,
            format!("`{}` is not a `notify` server", target.server),
        ));
    };
    if fixed != "notify" {
        return Err(ServiceError::invalid(
            field,
            format!(
                "`{}` is the fixed `{fixed}` server, not `notify`",
                target.server
            ),
        ));
    }
    let channels = env
        .get(CHANNELS_SETTING)
        .map(String::as_str)
        .unwrap_or("{}");
    let channels: BTreeMap<String, Written> = serde_json::from_str(channels).map_err(|err| {
        ServiceError::invalid(
            field,
            format!(
                "the `{CHANNELS_SETTING}` of `{}` does not read: {err}",
                target.server
            ),
        )
    })?;
    let allow_private = env
        .get(ALLOW_PRIVATE_SETTING)
        .is_some_and(|value| matches!(value.trim(), "true" | "1" | "yes"));
    Ok((channels, allow_private))
}

/// Checks, when a job is saved, that `target` names a channel of a registered `notify` server.
pub async fn check(app: &App, target: &NotifyTarget, field: &str) -> ServiceResult<()> {
    let (channels, _) = written(app, target, field).await?;
    if !channels.contains_key(&target.channel) {
        let names: Vec<&str> = channels.keys().map(String::as_str).collect();
        return Err(ServiceError::invalid(
            field,
            format!(
                "`{}` has no channel `{}`; its channels are: {}",
                target.server,
                target.channel,
                names.join(", ")
            ),
        ));
    }
    Ok(())
}

/// `target`'s channel, its credentials opened from the vault.
pub async fn resolve(app: &App, target: &NotifyTarget) -> ServiceResult<Channel> {
    let (mut channels, allow_private) = written(app, target, "notify").await?;
    let written = channels.remove(&target.channel).ok_or_else(|| {
        ServiceError::Conflict(format!(
            "`{}` has no channel `{}` any more",
            target.server, target.channel
        ))
    })?;
    let kind = Kind::parse(&written.kind).ok_or_else(|| {
        ServiceError::Conflict(format!(
            "channel `{}` of `{}` has an unknown kind",
            target.channel, target.server
        ))
    })?;
    let mut names: Vec<String> = placeholders::names(&written.url).into_iter().collect();
    for value in written.headers.values() {
        names.extend(placeholders::names(value));
    }
    names.sort();
    names.dedup();
    let secrets = tools::credential_values(app, &names).await?;
    let mut used = autopilot_proto::Secrets::new();
    let mut fill = |text: &str| {
        placeholders::fill(text, &secrets, &mut used)
            .map_err(|name| ServiceError::Conflict(format!("the credential `{name}` is not set")))
    };
    let url = fill(&written.url)?;
    let headers = written
        .headers
        .iter()
        .map(|(name, value)| Ok((name.clone(), fill(value)?)))
        .collect::<ServiceResult<Vec<_>>>()?;
    Ok(Channel {
        name: target.channel.clone(),
        kind,
        url,
        headers,
        allow_private,
    })
}

/// The title and text of the message about `run`'s end: the status, cost, the result's start
/// or the error, and the run's page.
pub fn run_ended(app: &App, run: &Run) -> (String, String) {
    let job = run.job_name.as_deref().unwrap_or("a quick run");
    let title = format!("{job}: run {}", run.status.as_str());
    let mut text = format!("Run {} ({} trigger)", run.id, run.trigger.as_str());
    if let Some(cost) = run.cost_usd {
        text.push_str(&format!(", ${cost:.4}"));
    }
    text.push('.');
    if let Some(error) = run.error.as_deref().filter(|e| !e.is_empty()) {
        text.push_str(&format!("\nError: {}", excerpt(error)));
    } else if let Some(result) = run.result.as_deref().filter(|r| !r.is_empty()) {
        text.push_str(&format!("\nResult: {}", excerpt(result)));
    }
    text.push_str(&format!("\n{}/runs/{}", app.config.public_url, run.id));
    (title, text)
}

/// The first [`RESULT_CHARS`] characters of `text`, `…` when cut.
pub fn excerpt(text: &str) -> String {
    let shown: String = text.chars().take(RESULT_CHARS).collect();
    let cut = if shown.len() < text.len() { "…" } else { "" };
    format!("{shown}{cut}")
}

/// Posts `title` and `text` to `target`'s channel (the body its kind takes, cut to what it
/// accepts), retried like a result handler; how many attempts it took, or why it failed.
pub async fn post(
    app: &App,
    target: &NotifyTarget,
    title: &str,
    text: &str,
    run_id: &str,
) -> Result<u32, (u32, String)> {
    let channel = resolve(app, target)
        .await
        .map_err(|err| (0, err.to_string()))?;
    let room = channel
        .kind
        .max_chars()
        .saturating_sub(title.chars().count() + 8);
    let text: String = text.chars().take(room).collect();
    let body = notify_message::body(channel.kind, &channel.name, Some(title), &text)
        .map_err(|why| (0, format!("the message could not be made: {why}")))?;
    let url = reqwest::Url::parse(&channel.url)
        .map_err(|_| (0, format!("channel `{}` has no valid URL", channel.name)))?;
    let request = super::result_handlers::Post {
        url,
        headers: channel.headers,
        allow_private: channel.allow_private,
        signing_key: None,
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    super::result_handlers::send_with_retries(&request, &body, run_id).await
}
