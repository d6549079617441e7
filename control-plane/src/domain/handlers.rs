//! What follows each run of a job (`on_end`): its outcome POSTed to a URL, written into the
//! job's workspace, posted to a channel of a registered `notify` server, or another job
//! triggered; and the POST a budget alert shares with them.

use autopilot_proto::RunStatus;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules::ChainOn;

/// Most result handlers a job may have.
pub const MAX_RESULT_HANDLERS: usize = 5;
/// Longest path of an outcome file in a workspace.
pub const MAX_OUTCOME_PATH_CHARS: usize = 200;

/// What happens after each run of a job ends (one of `on_end`): its outcome is POSTed to a URL
/// (`post`), written as a file in the job's workspace (`write`), or sent to a channel of a
/// registered `notify` server (`notify`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndHandler {
    /// POST the outcome (JSON: run id, job, status, result, error, tokens, cost) here: an https
    /// URL (http too when `allow_private`), signed with `sign_with`, retried with backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    /// Write the outcome (the same JSON) to this path in the job's workspace, relative (e.g.
    /// `.autopilot/last-run.json`), by the run's worker once the run's process has ended and
    /// before the workspace is saved; the next run finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<String>,
    /// Post a short message (status, job, result's start, cost, the run's page) to a channel
    /// of a registered `notify` server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyTarget>,
    /// Start a run of this job (name or id; stored as its id), once per run that ended, with
    /// the ended run as its `{{ parent }}`: a chain written on the parent's side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Which ends: `success`, `failure` (failed, timed out, lost) or `any` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<ChainOn>,
    /// With `post`: a vault credential whose value signs each body with HMAC-SHA256:
    /// `X-Autopilot-Signature: t=<unix seconds>,v1=<hex of HMAC(key, "<t>.<body>")>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_with: Option<String>,
    /// With `post`: let the URL reach private, loopback and link-local addresses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private: bool,
}

/// A channel of a registered `notify` server.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// The server's name in the registry (a fixed `notify` server).
    pub server: String,
    /// One of its `NOTIFY_CHANNELS`.
    pub channel: String,
}

impl EndHandler {
    /// Whether a run that ended `status` is handled.
    pub fn handles(&self, status: RunStatus) -> bool {
        self.on.unwrap_or(ChainOn::Any).matches(status)
    }

    /// The POST this handler makes, if it is one.
    pub fn as_post(&self) -> Option<ResultHandler> {
        self.post.as_ref().map(|post| ResultHandler {
            post: post.clone(),
            on: self.on,
            sign_with: self.sign_with.clone(),
            allow_private: self.allow_private,
        })
    }

    /// Checks handler `index` of `on_end` (not whether a notify server exists).
    pub fn validate(&self, index: usize) -> Result<(), (String, String)> {
        let field = |name: &str| format!("on_end.{index}.{name}");
        let kinds = [
            self.post.is_some(),
            self.write.is_some(),
            self.notify.is_some(),
            self.trigger.is_some(),
        ];
        if kinds.iter().filter(|given| **given).count() != 1 {
            return Err((
                format!("on_end.{index}"),
                "give exactly one of `post` (a URL), `write` (a path in the workspace), \
                 `notify` ({\"server\", \"channel\"}) or `trigger` (a job)"
                    .to_owned(),
            ));
        }
        if let Some(post) = self.as_post() {
            return post.validate(index);
        }
        if self.sign_with.is_some() || self.allow_private {
            return Err((
                field("sign_with"),
                "`sign_with` and `allow_private` go with `post`".to_owned(),
            ));
        }
        if let Some(path) = &self.write {
            check_outcome_path(path).map_err(|message| (field("write"), message))?;
        }
        if let Some(target) = &self.notify {
            super::tools::validate_server_name(&field("notify.server"), &target.server)
                .map_err(|err| (field("notify.server"), err.to_string()))?;
            if target.channel.trim().is_empty() {
                return Err((field("notify.channel"), "name a channel".to_owned()));
            }
        }
        Ok(())
    }
}

/// A path inside a workspace: relative, no `..`, no empty part, at most
/// [`MAX_OUTCOME_PATH_CHARS`] characters.
pub fn check_outcome_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.chars().count() <= MAX_OUTCOME_PATH_CHARS
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    match ok {
        true => Ok(()),
        false => Err(format!(
            "`{path}` is not a path in the workspace: relative, without `..` or empty parts, at \
             most {MAX_OUTCOME_PATH_CHARS} characters (e.g. `.autopilot/last-run.json`)"
        )),
    }
}

/// A POST of a run's outcome (an `on_end` handler with `post`) or of a budget alert: JSON to a
/// URL, signed when a key is named, retried with backoff.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultHandler {
    /// Where to POST the outcome: an https URL (http too when `allow_private`).
    pub post: String,
    /// Which ends: `success`, `failure` (failed, timed out, lost) or `any` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<ChainOn>,
    /// A vault credential whose value signs each body with HMAC-SHA256:
    /// `X-Autopilot-Signature: t=<unix seconds>,v1=<hex of HMAC(key, "<t>.<body>")>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_with: Option<String>,
    /// Let the URL reach private, loopback and link-local addresses (an internal endpoint).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private: bool,
}

impl ResultHandler {
    /// Whether a run that ended `status` is handled.
    pub fn handles(&self, status: RunStatus) -> bool {
        self.on.unwrap_or(ChainOn::Any).matches(status)
    }

    pub fn validate(&self, index: usize) -> Result<(), (String, String)> {
        self.validate_at(&format!("on_end.{index}"))
    }

    /// Checks it as the field `prefix` of the input.
    pub fn validate_at(&self, prefix: &str) -> Result<(), (String, String)> {
        let field = |name: &str| format!("{prefix}.{name}");
        let url = reqwest::Url::parse(self.post.trim()).map_err(|err| {
            (
                field("post"),
                format!("`{}` is not a URL: {err}", self.post),
            )
        })?;
        let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && self.allow_private);
        if !scheme_ok || url.host_str().is_none() {
            return Err((
                field("post"),
                "give an https URL (http only with `allow_private`, for an internal endpoint)"
                    .to_owned(),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err((
                field("post"),
                "put no credentials in the URL: name a vault credential in `sign_with`".to_owned(),
            ));
        }
        if let Some(name) = &self.sign_with {
            super::tools::validate_credential_name(&field("sign_with"), name)
                .map_err(|err| (field("sign_with"), err.to_string()))?;
        }
        Ok(())
    }
}
