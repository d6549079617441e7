//! The `notify` server: posts messages to the named channels the job configures (Slack,
//! Discord and Teams incoming webhooks, or any webhook), at most a set number per run.
//!
//! A channel's URL is its credential (whoever has a Slack webhook URL can post to it), and so are
//! its headers: the worker fills them in from the store, and they never appear in an answer or
//! an error. Channels are named instead, and what a receiver answers is shown with them
//! redacted. The channels are the operator's, but a URL may still lead to a private address
//! (the cloud's metadata service, say): such addresses are refused unless allowed, as `web`
//! does, and the connection goes to exactly the addresses checked.
//!
//! The body each kind of channel takes is [`crate::notify_message`]'s (always built: the control
//! plane's result handlers post to channels too).

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use rmcp::model::{CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::catalog::{FixedServer, NOTIFY};
use crate::notify_message as message;
use crate::outbound::{
    bad_entry_name, credential_parts, excerpt, header_map, is_entry_name, json_entries,
    pinned_client, reachable_addresses, url_parts, Entry, Unreachable,
};
use crate::redact::Redactor;
use crate::serve::{arguments, failure, flag, schema, success, whole_number, Quota, Tools};
use crate::web::{error_chain, read_body};
pub use message::{Kind, MAX_MESSAGE_CHARS};

const DEFAULT_MAX_PER_RUN: u64 = 20;
/// For one post: DNS, connection, the answer.
const POST_TIMEOUT: Duration = Duration::from_secs(15);
/// Of a receiver's refusal, this much is read and the first `ERROR_EXCERPT_CHARS` shown.
const ERROR_BODY_BYTES: usize = 4096;
const ERROR_EXCERPT_CHARS: usize = 200;

/// One channel. Its URL and header values are secrets: `Debug` leaves them out.
pub struct Channel {
    pub kind: Kind,
    pub url: Url,
    pub headers: BTreeMap<String, String>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("kind", &self.kind)
            .field("url", &"[secret]")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The server's settings, as read from its settings file or environment.
#[derive(Debug)]
pub struct Settings {
    pub channels: BTreeMap<String, Channel>,
    pub max_per_run: u32,
    pub allow_private: bool,
}

impl Settings {
    /// Reads the settings through `var`; an error names the variable (and a channel, a field or
    /// a header by its name), never a value.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let allow_private = flag(&var, "NOTIFY_ALLOW_PRIVATE")?;
        let entries = json_entries(&var, "NOTIFY_CHANNELS")?.ok_or_else(|| {
            "NOTIFY_CHANNELS is required: the channels as JSON, e.g. {\"team\": {\"kind\": \
             \"slack\", \"url\": \"${SLACK_WEBHOOK_URL}\"}}"
                .to_owned()
        })?;
        if entries.is_empty() {
            return Err("NOTIFY_CHANNELS names no channel".to_owned());
        }
        let mut channels = BTreeMap::new();
        for (name, value) in &entries {
            if !is_entry_name(name) {
                return Err(bad_entry_name("NOTIFY_CHANNELS", "channel"));
            }
            let entry = Entry::new(format!("NOTIFY_CHANNELS: channel `{name}`"), value)?;
            channels.insert(name.clone(), channel(&entry, allow_private)?);
        }
        let max_per_run = whole_number(&var, "NOTIFY_MAX_PER_RUN", DEFAULT_MAX_PER_RUN, 0)?;
        Ok(Self {
            channels,
            max_per_run: u32::try_from(max_per_run).unwrap_or(u32::MAX),
            allow_private,
        })
    }
}

fn channel(entry: &Entry, allow_private: bool) -> Result<Channel, String> {
    let label = &entry.label;
    entry.only(&["kind", "url", "headers"])?;
    let kinds: Vec<&str> = Kind::ALL.iter().map(|kind| kind.name()).collect();
    // The kind as written is not shown: a URL pasted into the wrong field must not be.
    let kind = Kind::parse(entry.required_string("kind")?)
        .ok_or_else(|| format!("{label}: `kind` must be one of {}", kinds.join(", ")))?;
    let url = Url::parse(entry.required_string("url")?.trim())
        .map_err(|err| format!("{label}: `url` is not a URL ({err})"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => {
            return Err(format!(
                "{label}: `url` must be https; plain http is allowed only when \
                 NOTIFY_ALLOW_PRIVATE is true, for a receiver on a private network"
            ))
        }
        _ => return Err(format!("{label}: `url` must be an https URL")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{label}: `url` has no host"));
    }
    Ok(Channel {
        kind,
        url,
        headers: entry.headers()?,
    })
}

pub struct Notify {
    settings: Settings,
    quota: Quota,
    /// Every channel's URL and header values, and their parts.
    redactor: Redactor,
    timeout: Duration,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SendNotification {
    /// The channel's name, as list_channels gives it.
    channel: String,
    /// The message: plain text, with light markdown where the channel renders it (Slack shows
    /// `*bold*`, Discord and Teams `**bold**`). At most 2,000 characters for a Discord channel,
    /// 20,000 for others.
    text: String,
    /// A short title, shown in bold above the text.
    #[serde(default)]
    title: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

impl Notify {
    pub fn new(settings: Settings) -> Self {
        let mut secrets = BTreeMap::new();
        for (name, channel) in &settings.channels {
            for (number, part) in url_parts(&channel.url).into_iter().enumerate() {
                let label = match number {
                    0 => format!("{name} URL"),
                    _ => format!("{name} URL part {number}"),
                };
                secrets.insert(label, part);
            }
            for (header, value) in &channel.headers {
                secrets.insert(format!("{name} {header}"), value.clone());
                for (number, part) in credential_parts(value).into_iter().enumerate() {
                    secrets.insert(format!("{name} {header} part {}", number + 1), part);
                }
            }
        }
        Self {
            quota: Quota::new(settings.max_per_run),
            redactor: Redactor::new(&secrets),
            settings,
            timeout: POST_TIMEOUT,
        }
    }

    /// The server as its settings (see [`crate::serve::settings`]) describe it.
    pub fn from_settings() -> Result<Self, String> {
        Ok(Self::new(Settings::read(crate::serve::settings()?)?))
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.settings.channels.keys().map(String::as_str).collect();
        names.join(", ")
    }

    async fn send(&self, request: SendNotification) -> Result<String, String> {
        let name = request.channel.trim();
        let Some(channel) = self.settings.channels.get(name) else {
            return Err(format!(
                "no channel `{name}`; the channels are: {}",
                self.names()
            ));
        };
        let body = message::body(channel.kind, name, request.title.as_deref(), &request.text)?;
        let max = self.quota.max;
        let Some(number) = self.quota.take() else {
            return Err(format!(
                "this run has sent its {max} notifications (NOTIFY_MAX_PER_RUN); nothing was \
                 sent"
            ));
        };
        let result = tokio::time::timeout(self.timeout, self.post(name, channel, &body))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "channel `{name}` did not answer within {} s; the notification may or may \
                     not have arrived",
                    self.timeout.as_secs_f32()
                ))
            });
        match result {
            Ok(()) => Ok(format!(
                "Posted to `{name}` ({}); notification {number} of {max} this run.",
                channel.kind.name()
            )),
            Err(err) => {
                // A failed send does not count against the quota.
                self.quota.give_back();
                Err(err)
            }
        }
    }

    async fn post(&self, name: &str, channel: &Channel, body: &Value) -> Result<(), String> {
        let addresses = reachable_addresses(&channel.url, self.settings.allow_private)
            .await
            .map_err(|why| match why {
                Unreachable::Unresolved(reason) => format!(
                    "channel `{name}`: the host of its URL cannot be resolved ({reason}); \
                     nothing was posted"
                ),
                // The address is not named: it would tell where a secret URL leads.
                Unreachable::NotPublic { kind, .. } => format!(
                    "channel `{name}`: its URL leads to a {kind} address, and notify reaches \
                     only public addresses unless the job's NOTIFY_ALLOW_PRIVATE setting is \
                     true; nothing was posted"
                ),
            })?;
        let client = pinned_client(&channel.url, &addresses)
            .user_agent(concat!("autopilot-notify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("cannot make the HTTP client: {err}"))?;
        let response = client
            .post(channel.url.clone())
            .headers(header_map(&channel.headers))
            .json(body)
            .send()
            .await
            .map_err(|err| {
                let reason = error_chain(&err.without_url());
                format!(
                    "channel `{name}` cannot be reached: {}; nothing was posted",
                    self.redactor.text(&reason)
                )
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let answer = match read_body(response, ERROR_BODY_BYTES).await {
            Ok((body, _)) => String::from_utf8_lossy(&body).into_owned(),
            Err(err) => format!("(its answer could not be read: {err})"),
        };
        // Redacted whole before it is cut, so that no cut leaves part of a secret unmatched.
        let answer = excerpt(self.redactor.text(&answer).as_bytes(), ERROR_EXCERPT_CHARS);
        let answer = match answer.is_empty() {
            true => "(no answer body)".to_owned(),
            false => answer,
        };
        let redirect = match status.is_redirection() {
            true => " (a redirect, which notify does not follow: configure the final URL)",
            false => "",
        };
        Err(format!(
            "channel `{name}` answered HTTP {status}{redirect}: {answer}; the notification was \
             not posted"
        ))
    }

    fn channels_text(&self) -> String {
        let channels: Vec<String> = self
            .settings
            .channels
            .iter()
            .map(|(name, channel)| format!("{name} ({})", channel.kind.name()))
            .collect();
        format!(
            "Channels: {}. Notifications this run may still send: {} of {}.",
            channels.join(", "),
            self.quota.left(),
            self.quota.max
        )
    }
}

impl Tools for Arc<Notify> {
    fn server(&self) -> &'static FixedServer {
        &NOTIFY
    }

    fn input_schema(&self, tool: &str) -> Arc<JsonObject> {
        match tool {
            "send_notification" => schema::<SendNotification>(),
            _ => schema::<NoArguments>(),
        }
    }

    async fn call(&self, tool: &str, args: JsonObject) -> CallToolResult {
        match tool {
            "send_notification" => {
                let request: SendNotification = match arguments(args) {
                    Ok(request) => request,
                    Err(result) => return result,
                };
                match self.send(request).await {
                    Ok(text) => success(text),
                    Err(text) => failure(text),
                }
            }
            _ => success(self.channels_text()),
        }
    }
}
