//! Row shapes shared by both SQL dialects, and their conversion to and from domain types.
//! Times are stored as milliseconds since the epoch, ids as text, lists as JSON text.

use autopilot_proto::{EventKind, JobId, RunEvent, RunId, TokenUsage};
use autopilot_worker::trace;
use chrono::{DateTime, TimeZone, Utc};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

use super::StoreError;
use crate::domain::oauth::{AuthCode, OAuthClient, RefreshToken};
use crate::domain::rules::JobRules;
use crate::domain::webhook::{PreviousToken, StoredPayload, Webhook};
use crate::domain::{Job, JobKind, RetryPolicy, Run, RunSettings, Schedule};

pub fn to_ms(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

pub fn from_ms(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("time {ms} out of range")))
}

fn opt_from_ms(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(from_ms).transpose()
}

pub fn parse<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|err| StoreError::Corrupt(format!("{what} `{text}`: {err}")))
}

fn json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt(format!("{what}: {err}")))
}

pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain values always serialize")
}

fn to_u32(what: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} out of range")))
}

fn to_u64(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} out of range")))
}

pub fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[derive(sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub kind: String,
    pub prompt: String,
    pub schedule_kind: String,
    pub schedule_expr: Option<String>,
    pub timezone: String,
    pub enabled: bool,
    pub model: Option<String>,
    pub allowed_tools: String,
    pub disallowed_tools: String,
    pub max_turns: Option<i64>,
    pub timeout_secs: i64,
    pub max_cost_usd: Option<f64>,
    pub misfire_policy: String,
    pub misfire_cap: i64,
    pub overlap_policy: String,
    pub retry_count: i64,
    pub retry_backoff_secs: i64,
    pub pool: String,
    pub fire_cursor_ms: i64,
    pub missed_fires: i64,
    pub overlap_skipped: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub retry_lost: bool,
    /// JSON; empty (`{}`) for jobs stored before sandboxes existed.
    pub sandbox: String,
    pub trace_content: bool,
    pub tool_grants: String,
    pub tool_bundles: String,
    pub image: Option<String>,
    /// JSON [`JobRules`]; `{}` when there are none.
    pub rules: String,
}

/// The schedule as stored: (`schedule_kind`, `schedule_expr`).
pub fn schedule_columns(schedule: &Schedule) -> (&'static str, Option<String>) {
    match schedule {
        Schedule::Cron(expr) => ("cron", Some(expr.clone())),
        Schedule::At(at) => ("at", Some(at.to_rfc3339())),
        Schedule::Every { every_secs, start } => (
            "interval",
            Some(format!("{every_secs}@{}", start.to_rfc3339())),
        ),
        Schedule::None => ("none", None),
    }
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;

    fn try_from(row: JobRow) -> Result<Self, Self::Error> {
        let schedule = match (row.schedule_kind.as_str(), row.schedule_expr) {
            ("cron", Some(expr)) => Schedule::Cron(expr),
            ("at", Some(at)) => Schedule::At(
                DateTime::parse_from_rfc3339(&at)
                    .map_err(|err| StoreError::Corrupt(format!("one-shot time `{at}`: {err}")))?
                    .with_timezone(&Utc),
            ),
            ("interval", Some(text)) => {
                let corrupt = || StoreError::Corrupt(format!("interval `{text}`"));
                let (every, start) = text.split_once('@').ok_or_else(corrupt)?;
                Schedule::Every {
                    every_secs: every.parse().map_err(|_| corrupt())?,
                    start: DateTime::parse_from_rfc3339(start)
                        .map_err(|_| corrupt())?
                        .with_timezone(&Utc),
                }
            }
            ("none", _) => Schedule::None,
            (kind, _) => return Err(StoreError::Corrupt(format!("schedule kind `{kind}`"))),
        };
        let kind: JobKind = parse("job kind", &row.kind)?;
        let sandbox = if row.sandbox.trim() == "{}" {
            kind.default_sandbox()
        } else {
            json("sandbox", &row.sandbox)?
        };
        Ok(Job {
            id: parse("job id", &row.id)?,
            name: row.name,
            description: row.description,
            kind,
            prompt: row.prompt,
            schedule,
            timezone: row.timezone,
            enabled: row.enabled,
            settings: RunSettings {
                model: row.model,
                allowed_tools: json("allowed_tools", &row.allowed_tools)?,
                disallowed_tools: json("disallowed_tools", &row.disallowed_tools)?,
                max_turns: row.max_turns.map(|n| to_u32("max_turns", n)).transpose()?,
                timeout_secs: to_u64("timeout_secs", row.timeout_secs)?,
                max_cost_usd: row.max_cost_usd,
                pool: row.pool,
                retry: RetryPolicy {
                    count: to_u32("retry_count", row.retry_count)?,
                    backoff_secs: to_u64("retry_backoff_secs", row.retry_backoff_secs)?,
                    lost: row.retry_lost,
                },
                sandbox,
                trace_content: row.trace_content,
                servers: json("tool_grants", &row.tool_grants)?,
                bundles: json("tool_bundles", &row.tool_bundles)?,
                image: row.image,
            },
            rules: json::<JobRules>("rules", &row.rules)?,
            misfire_policy: parse("misfire policy", &row.misfire_policy)?,
            misfire_cap: to_u32("misfire_cap", row.misfire_cap)?,
            overlap_policy: parse("overlap policy", &row.overlap_policy)?,
            fire_cursor: from_ms(row.fire_cursor_ms)?,
            missed_fires: to_u64("missed_fires", row.missed_fires)?,
            overlap_skipped: to_u64("overlap_skipped", row.overlap_skipped)?,
            created_at: from_ms(row.created_at_ms)?,
            updated_at: from_ms(row.updated_at_ms)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct RunRow {
    pub id: String,
    pub job_id: Option<String>,
    pub job_name: Option<String>,
    pub trigger: String,
    pub status: String,
    pub attempt: i64,
    pub scheduled_for_ms: Option<i64>,
    pub settings: String,
    pub created_at_ms: i64,
    pub dispatched_at_ms: Option<i64>,
    pub not_before_ms: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub heartbeat_at_ms: Option<i64>,
    pub worker_id: Option<String>,
    pub exit_code: Option<i64>,
    pub is_error: bool,
    pub error: Option<String>,
    pub result: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost_usd: Option<f64>,
    pub num_turns: Option<i64>,
    pub models: String,
    pub permission_denials: i64,
    pub webhook_id: Option<String>,
    pub delivery_id: Option<String>,
    pub trace_parent: Option<String>,
    pub billing: Option<String>,
}

/// What a run's row says of the trace context its run was created in: every webhook delivery
/// writes one, and the row's size is what the one SQLite writer spends its time on.
/// - `~` alone: the sampled span whose ids derive from the run's id
///   (`autopilot_worker::trace::run_span_ids`), as the request that created the run made it.
/// - `~` and the 25 bytes it names (trace id, span id, flags) in unpadded base64url: 35
///   characters instead of 55.
/// - Anything else, and rows written before, are kept as they are.
pub(crate) fn stored_trace_parent(traceparent: &str, run_id: RunId) -> std::borrow::Cow<'_, str> {
    use base64::Engine as _;
    let text = traceparent.as_bytes();
    let mut bytes = [0_u8; 25];
    // Upper-case hex would come back lower-case: such a value is kept as it is.
    let compact = text.len() == 55
        && text.starts_with(b"00-")
        && text[35] == b'-'
        && text[52] == b'-'
        && decode_lower_hex(&text[3..35], &mut bytes[..16])
        && decode_lower_hex(&text[36..52], &mut bytes[16..24])
        && decode_lower_hex(&text[53..55], &mut bytes[24..]);
    if !compact {
        return traceparent.into();
    }
    let derived = trace::run_span_ids(run_id).is_some_and(|(trace_id, span_id)| {
        bytes[..16] == trace_id.to_bytes()
            && bytes[16..24] == span_id.to_bytes()
            && bytes[24] == TraceFlags::SAMPLED.to_u8()
    });
    if derived {
        return DERIVED_TRACE_PARENT.into();
    }
    let mut stored = String::with_capacity(35);
    stored.push('~');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut stored);
    stored.into()
}

/// Decodes lower-case hex, two digits a byte, into `out`; false for anything else.
fn decode_lower_hex(text: &[u8], out: &mut [u8]) -> bool {
    fn digit(character: u8) -> Option<u8> {
        match character {
            b'0'..=b'9' => Some(character - b'0'),
            b'a'..=b'f' => Some(character - b'a' + 10),
            _ => None,
        }
    }
    text.len() == 2 * out.len()
        && text.chunks_exact(2).zip(out).all(|(pair, byte)| {
            let (Some(high), Some(low)) = (digit(pair[0]), digit(pair[1])) else {
                return false;
            };
            *byte = high << 4 | low;
            true
        })
}

/// How a row says that its run's trace context derives from the run's id.
const DERIVED_TRACE_PARENT: &str = "~";

/// The `traceparent` a stored value (see [`stored_trace_parent`]) of the run `run_id` stands
/// for.
pub(crate) fn read_trace_parent(stored: String, run_id: RunId) -> String {
    use base64::Engine as _;
    if stored == DERIVED_TRACE_PARENT {
        return trace::run_traceparent(run_id).unwrap_or(stored);
    }
    let Some(encoded) = stored.strip_prefix('~') else {
        return stored;
    };
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) {
        Ok(bytes) if bytes.len() == 25 => trace::format_traceparent(
            TraceId::from_bytes(bytes[..16].try_into().expect("16 bytes")),
            SpanId::from_bytes(bytes[16..24].try_into().expect("8 bytes")),
            TraceFlags::new(bytes[24]),
        ),
        _ => stored,
    }
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;

    fn try_from(row: RunRow) -> Result<Self, Self::Error> {
        let id = parse("run id", &row.id)?;
        Ok(Run {
            id,
            job_id: row
                .job_id
                .as_deref()
                .map(|id| parse("job id", id))
                .transpose()?,
            job_name: row.job_name,
            trigger: parse("trigger", &row.trigger)?,
            status: parse("run status", &row.status)?,
            attempt: to_u32("attempt", row.attempt)?,
            scheduled_for: opt_from_ms(row.scheduled_for_ms)?,
            settings: json("run settings", &row.settings)?,
            created_at: from_ms(row.created_at_ms)?,
            dispatched_at: opt_from_ms(row.dispatched_at_ms)?,
            not_before: opt_from_ms(row.not_before_ms)?,
            started_at: opt_from_ms(row.started_at_ms)?,
            finished_at: opt_from_ms(row.finished_at_ms)?,
            heartbeat_at: opt_from_ms(row.heartbeat_at_ms)?,
            worker_id: row.worker_id,
            exit_code: row
                .exit_code
                .map(|code| i32::try_from(code).unwrap_or(i32::MIN)),
            is_error: row.is_error,
            error: row.error,
            result: row.result,
            usage: TokenUsage {
                input_tokens: to_u64("input_tokens", row.input_tokens)?,
                output_tokens: to_u64("output_tokens", row.output_tokens)?,
                cache_read_tokens: to_u64("cache_read_tokens", row.cache_read_tokens)?,
                cache_write_tokens: to_u64("cache_write_tokens", row.cache_write_tokens)?,
            },
            cost_usd: row.cost_usd,
            num_turns: row.num_turns.map(|n| to_u32("num_turns", n)).transpose()?,
            models: json("models", &row.models)?,
            permission_denials: to_u32("permission_denials", row.permission_denials)?,
            webhook_id: row
                .webhook_id
                .as_deref()
                .map(|id| parse("webhook id", id))
                .transpose()?,
            delivery_id: row.delivery_id,
            trace_parent: row.trace_parent.map(|stored| read_trace_parent(stored, id)),
            billing: row
                .billing
                .as_deref()
                .map(|billing| parse("billing", billing))
                .transpose()?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct EventRow {
    pub run_id: String,
    pub seq: i64,
    pub attempt: i64,
    pub at_ms: i64,
    pub kind: String,
    pub data: String,
}

impl TryFrom<EventRow> for RunEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, Self::Error> {
        Ok(RunEvent {
            run_id: parse::<RunId>("run id", &row.run_id)?,
            seq: row.seq,
            attempt: to_u32("attempt", row.attempt)?,
            at: from_ms(row.at_ms)?,
            kind: parse::<EventKind>("event kind", &row.kind)?,
            data: json("event data", &row.data)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct ClientRow {
    pub client_id: String,
    pub secret_hash: Option<String>,
    pub auth_method: String,
    pub redirect_uris: String,
    pub client_name: Option<String>,
    pub scope: String,
    pub created_at_ms: i64,
}

impl TryFrom<ClientRow> for OAuthClient {
    type Error = StoreError;

    fn try_from(row: ClientRow) -> Result<Self, Self::Error> {
        Ok(OAuthClient {
            client_id: row.client_id,
            secret_hash: row.secret_hash,
            auth_method: row.auth_method,
            redirect_uris: json("redirect_uris", &row.redirect_uris)?,
            client_name: row.client_name,
            scope: row.scope,
            created_at: from_ms(row.created_at_ms)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct CodeRow {
    pub code_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub resource: String,
    pub scope: String,
    pub expires_at_ms: i64,
}

impl TryFrom<CodeRow> for AuthCode {
    type Error = StoreError;

    fn try_from(row: CodeRow) -> Result<Self, Self::Error> {
        Ok(AuthCode {
            code_hash: row.code_hash,
            client_id: row.client_id,
            redirect_uri: row.redirect_uri,
            code_challenge: row.code_challenge,
            resource: row.resource,
            scope: row.scope,
            expires_at: from_ms(row.expires_at_ms)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct RefreshRow {
    pub token_hash: String,
    pub family_id: String,
    pub client_id: String,
    pub resource: String,
    pub scope: String,
    pub expires_at_ms: i64,
}

impl TryFrom<RefreshRow> for RefreshToken {
    type Error = StoreError;

    fn try_from(row: RefreshRow) -> Result<Self, Self::Error> {
        Ok(RefreshToken {
            token_hash: row.token_hash,
            family_id: row.family_id,
            client_id: row.client_id,
            resource: row.resource,
            scope: row.scope,
            expires_at: from_ms(row.expires_at_ms)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct WebhookRow {
    id: String,
    name: String,
    enabled: bool,
    token_hash: String,
    previous_token_hash: Option<String>,
    previous_token_expires_at_ms: Option<i64>,
    job_id: Option<String>,
    config: String,
    signing_secret: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl TryFrom<WebhookRow> for Webhook {
    type Error = StoreError;

    fn try_from(row: WebhookRow) -> Result<Self, Self::Error> {
        let corrupt = |what: &str, err: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("webhook {}: {what}: {err}", row.id))
        };
        let previous_token = match (
            row.previous_token_hash.clone(),
            row.previous_token_expires_at_ms,
        ) {
            (Some(token_hash), Some(ms)) => Some(PreviousToken {
                token_hash,
                expires_at: from_ms(ms)?,
            }),
            _ => None,
        };
        Ok(Webhook {
            id: row.id.parse().map_err(|err| corrupt("id", &err))?,
            name: row.name.clone(),
            enabled: row.enabled,
            token_hash: row.token_hash.clone(),
            previous_token,
            job_id: row
                .job_id
                .as_deref()
                .map(str::parse::<JobId>)
                .transpose()
                .map_err(|err| corrupt("job id", &err))?,
            config: serde_json::from_str(&row.config).map_err(|err| corrupt("config", &err))?,
            signing_secret: row.signing_secret.clone(),
            created_at: from_ms(row.created_at_ms)?,
            updated_at: from_ms(row.updated_at_ms)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct PayloadRow {
    run_id: String,
    content_type: String,
    headers: String,
    query: String,
    body: Vec<u8>,
    body_bytes: i64,
    truncated: bool,
}

impl TryFrom<PayloadRow> for StoredPayload {
    type Error = StoreError;

    fn try_from(row: PayloadRow) -> Result<Self, Self::Error> {
        let json = |what: &str, text: &str| {
            serde_json::from_str::<Vec<(String, String)>>(text)
                .map_err(|err| StoreError::Corrupt(format!("payload {what}: {err}")))
        };
        Ok(StoredPayload {
            run_id: row
                .run_id
                .parse()
                .map_err(|err| StoreError::Corrupt(format!("payload run id: {err}")))?,
            content_type: row.content_type,
            headers: json("headers", &row.headers)?,
            query: json("query", &row.query)?,
            body: row.body,
            body_bytes: u64::try_from(row.body_bytes).unwrap_or(0),
            truncated: row.truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_parents_are_stored_in_35_characters_and_read_back_as_given() {
        let run = RunId::new();
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let stored = stored_trace_parent(traceparent, run);
        assert_eq!(stored.len(), 35);
        assert!(stored.starts_with('~'), "{stored}");
        assert_eq!(read_trace_parent(stored.into_owned(), run), traceparent);
        for kept in [
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0z",
            "00-éf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "",
        ] {
            assert_eq!(stored_trace_parent(kept, run), kept);
            assert_eq!(read_trace_parent(kept.to_owned(), run), kept);
        }
        // A value that only looks compact is read as it is.
        assert_eq!(read_trace_parent("~abc".to_owned(), run), "~abc");
    }

    #[test]
    fn a_trace_context_derived_from_the_run_s_id_is_stored_in_one_character() {
        let run = RunId::new();
        let derived = trace::run_traceparent(run).expect("valid ids");
        let stored = stored_trace_parent(&derived, run);
        assert_eq!(stored, "~");
        assert_eq!(read_trace_parent(stored.into_owned(), run), derived);
        // Another run's, or the same ids unsampled, are stored whole.
        let other = stored_trace_parent(&derived, RunId::new());
        assert_eq!(other.len(), 35);
        assert_eq!(read_trace_parent(other.into_owned(), run), derived);
        let unsampled = format!("{}00", derived.strip_suffix("01").expect("sampled"));
        let stored = stored_trace_parent(&unsampled, run);
        assert_eq!(stored.len(), 35);
        assert_eq!(read_trace_parent(stored.into_owned(), run), unsampled);
    }
}
