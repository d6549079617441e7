//! Webhook signature verification.
//!
//! Contract:
//!
//! * Every scheme is HMAC-SHA256 keyed with the webhook's shared secret.
//! * [`verify`] checks the signature headers of one delivery against the raw
//!   request body. The MAC is always compared in constant time through
//!   [`Mac::verify_slice`]; the expected signature is never rendered as text.
//! * Schemes:
//!   * [`Scheme::Github`]: `X-Hub-Signature-256: sha256=<64 hex>` over the body.
//!   * [`Scheme::Stripe`]: `Stripe-Signature: t=<unix secs>,v1=<hex>[,v1=…]`
//!     over `"{t}." + body`; any of the first 16 `v1` values may match, `v0`
//!     and unknown keys are ignored.
//!   * [`Scheme::Slack`]: `X-Slack-Signature: v0=<hex>` plus
//!     `X-Slack-Request-Timestamp: <unix secs>` over `"v0:{ts}:" + body`.
//!   * [`Scheme::Hmac`]: a configurable header holding the MAC of the body as
//!     64 hex digits (optionally prefixed `sha256=`) or as standard base64 of
//!     the 32 bytes (padding optional).
//! * Timestamped schemes (Stripe, Slack) refuse deliveries whose timestamp is
//!   more than `tolerance_secs` away from `now_unix` (in either direction) as
//!   [`SignatureError::Stale`]; the timestamp is checked once the header is
//!   well formed and before the MAC.
//! * Header values longer than [`MAX_HEADER_VALUE_BYTES`] or not made of
//!   visible ASCII are [`SignatureError::Malformed`]. Hex is accepted in any
//!   case. Error messages describe what was expected and never contain the
//!   secret or the expected MAC.
//! * No input can make this module panic; timestamp arithmetic cannot
//!   overflow.
//! * [`sign`] produces the headers a well-behaved sender would attach, for
//!   tests, benchmarks and documentation.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Default allowed distance, in seconds, between a delivery's signed
/// timestamp and the current time.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Header used by [`Scheme::Hmac`] when the configuration names none.
pub const DEFAULT_HMAC_HEADER: &str = "x-signature-256";

/// Longest signature-related header value accepted, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// Most `v1` entries of a `Stripe-Signature` header that are considered.
pub const MAX_STRIPE_SIGNATURES: usize = 16;

const GITHUB_HEADER: &str = "X-Hub-Signature-256";
const STRIPE_HEADER: &str = "Stripe-Signature";
const SLACK_SIGNATURE_HEADER: &str = "X-Slack-Signature";
const SLACK_TIMESTAMP_HEADER: &str = "X-Slack-Request-Timestamp";

/// Length of an HMAC-SHA256 tag in bytes.
const MAC_LEN: usize = 32;

/// Standard base64 alphabet, accepting input with or without padding.
const BASE64_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How a sender signs its webhook deliveries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the raw body.
    Github,
    /// Stripe: `Stripe-Signature: t=<ts>,v1=<hex>` over `"{t}." + body`.
    Stripe,
    /// Slack: `X-Slack-Signature: v0=<hex>` and `X-Slack-Request-Timestamp`
    /// over `"v0:{ts}:" + body`.
    Slack,
    /// Generic HMAC-SHA256 of the raw body in the named header, as hex
    /// (optionally `sha256=`-prefixed) or standard base64.
    Hmac {
        /// Name of the header carrying the signature (case-insensitive).
        header: String,
    },
}

impl Scheme {
    /// Stable identifier of the scheme: `"github"`, `"stripe"`, `"slack"` or
    /// `"hmac_sha256"`.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Github => "github",
            Scheme::Stripe => "stripe",
            Scheme::Slack => "slack",
            Scheme::Hmac { .. } => "hmac_sha256",
        }
    }

    /// The header carrying the signature, in its conventional spelling
    /// (e.g. `X-Hub-Signature-256`); for [`Scheme::Hmac`] the configured name
    /// as given. Header lookups are case-insensitive.
    pub fn signature_header(&self) -> String {
        match self {
            Scheme::Github => GITHUB_HEADER.to_string(),
            Scheme::Stripe => STRIPE_HEADER.to_string(),
            Scheme::Slack => SLACK_SIGNATURE_HEADER.to_string(),
            Scheme::Hmac { header } => header.clone(),
        }
    }
}

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required header is absent.
    #[error(
        "the {header} header is missing: the sender must sign each delivery \
         (check that signing is enabled and that the webhook uses the right scheme)"
    )]
    Missing {
        /// The header that was expected.
        header: String,
    },
    /// A header is present but does not have the expected shape.
    #[error("{detail}")]
    Malformed {
        /// The offending header.
        header: String,
        /// What was expected, as a complete sentence naming the header.
        detail: String,
    },
    /// The signed timestamp is too far from the current time.
    #[error(
        "the signed timestamp is {age_secs} seconds away from the current time, \
         more than the allowed {tolerance_secs} seconds: the delivery may be a \
         replay, or the sender's or this server's clock is wrong"
    )]
    Stale {
        /// `now - timestamp` in seconds (negative for timestamps in the
        /// future), saturated to the `i64` range.
        age_secs: i64,
        /// The tolerance that was exceeded.
        tolerance_secs: u64,
    },
    /// The signature is well formed but was not produced with this secret
    /// over this body.
    #[error(
        "the {header} signature does not match this webhook's secret: \
         check the secret configured at the sender"
    )]
    Mismatch {
        /// The header whose signature failed.
        header: String,
    },
}

/// Verifies the signature of one webhook delivery.
///
/// `body` must be the raw request body, byte for byte. `now_unix` is the
/// current time in Unix seconds; `tolerance_secs` bounds the distance between
/// it and the signed timestamp for the Stripe and Slack schemes (it is
/// ignored by the others).
pub fn verify(
    scheme: &Scheme,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    match scheme {
        Scheme::Github => verify_github(secret, headers, body),
        Scheme::Stripe => verify_stripe(secret, headers, body, now_unix, tolerance_secs),
        Scheme::Slack => verify_slack(secret, headers, body, now_unix, tolerance_secs),
        Scheme::Hmac { header } => verify_plain_hmac(header, secret, headers, body),
    }
}

/// The headers (lower-case names, in order) that a sender following `scheme`
/// attaches to a delivery of `body` signed with `secret` at
/// `timestamp_unix`. The timestamp is only used by Stripe and Slack.
pub fn sign(
    scheme: &Scheme,
    secret: &[u8],
    body: &[u8],
    timestamp_unix: i64,
) -> Vec<(String, String)> {
    match scheme {
        Scheme::Github => vec![(
            GITHUB_HEADER.to_ascii_lowercase(),
            format!("sha256={}", hex::encode(mac_of(secret, &[body]))),
        )],
        Scheme::Stripe => {
            let ts = timestamp_unix.to_string();
            let tag = mac_of(secret, &[ts.as_bytes(), b".", body]);
            vec![(
                STRIPE_HEADER.to_ascii_lowercase(),
                format!("t={ts},v1={}", hex::encode(tag)),
            )]
        }
        Scheme::Slack => {
            let ts = timestamp_unix.to_string();
            let tag = mac_of(secret, &[b"v0:", ts.as_bytes(), b":", body]);
            vec![
                (
                    SLACK_SIGNATURE_HEADER.to_ascii_lowercase(),
                    format!("v0={}", hex::encode(tag)),
                ),
                (SLACK_TIMESTAMP_HEADER.to_ascii_lowercase(), ts),
            ]
        }
        Scheme::Hmac { header } => vec![(
            header.to_ascii_lowercase(),
            format!("sha256={}", hex::encode(mac_of(secret, &[body]))),
        )],
    }
}

fn verify_github(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    let value = header_str(headers, GITHUB_HEADER)?;
    let malformed = || {
        malformed(
            GITHUB_HEADER,
            format!("{GITHUB_HEADER} must look like `sha256=<64 hex digits>`"),
        )
    };
    let hex_part = strip_prefix_ignore_case(value, "sha256=").ok_or_else(malformed)?;
    let tag = decode_hex_mac(hex_part).ok_or_else(malformed)?;
    check_mac(keyed(secret)?, &[body], &tag, GITHUB_HEADER)
}

fn verify_stripe(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let value = header_str(headers, STRIPE_HEADER)?;
    let shape = "must look like `t=<unix seconds>,v1=<64 hex digits>`";

    let mut timestamp: Option<&str> = None;
    let mut candidates: Vec<[u8; MAC_LEN]> = Vec::new();
    for item in value.split(',') {
        let Some((key, val)) = item.trim().split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" if timestamp.is_none() => timestamp = Some(val.trim()),
            "v1" if candidates.len() < MAX_STRIPE_SIGNATURES => {
                let tag = decode_hex_mac(val.trim()).ok_or_else(|| {
                    malformed(
                        STRIPE_HEADER,
                        format!(
                            "{STRIPE_HEADER} {shape}: every `v1` value must be \
                             exactly 64 hex digits"
                        ),
                    )
                })?;
                candidates.push(tag);
            }
            _ => {}
        }
    }

    let ts_text = timestamp.ok_or_else(|| {
        malformed(
            STRIPE_HEADER,
            format!("{STRIPE_HEADER} {shape}: the `t=` timestamp is missing"),
        )
    })?;
    let ts = parse_unix_secs(ts_text).ok_or_else(|| {
        malformed(
            STRIPE_HEADER,
            format!("{STRIPE_HEADER} {shape}: `t=` must be an integer number of Unix seconds"),
        )
    })?;
    if candidates.is_empty() {
        return Err(malformed(
            STRIPE_HEADER,
            format!("{STRIPE_HEADER} {shape}: no `v1=` signature was found"),
        ));
    }
    check_fresh(ts, now_unix, tolerance_secs)?;

    let mut mac = keyed(secret)?;
    mac.update(ts_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    let matched = candidates
        .iter()
        .any(|tag| mac.clone().verify_slice(tag).is_ok());
    if matched {
        Ok(())
    } else {
        Err(mismatch(STRIPE_HEADER))
    }
}

fn verify_slack(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let sig_value = header_str(headers, SLACK_SIGNATURE_HEADER)?;
    let ts_text = header_str(headers, SLACK_TIMESTAMP_HEADER)?;

    let tag = strip_prefix_ignore_case(sig_value, "v0=")
        .and_then(decode_hex_mac)
        .ok_or_else(|| {
            malformed(
                SLACK_SIGNATURE_HEADER,
                format!("{SLACK_SIGNATURE_HEADER} must look like `v0=<64 hex digits>`"),
            )
        })?;
    let ts = parse_unix_secs(ts_text).ok_or_else(|| {
        malformed(
            SLACK_TIMESTAMP_HEADER,
            format!("{SLACK_TIMESTAMP_HEADER} must be an integer number of Unix seconds"),
        )
    })?;
    check_fresh(ts, now_unix, tolerance_secs)?;
    check_mac(
        keyed(secret)?,
        &[b"v0:", ts_text.as_bytes(), b":", body],
        &tag,
        SLACK_SIGNATURE_HEADER,
    )
}

fn verify_plain_hmac(
    header: &str,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), SignatureError> {
    let value = header_str(headers, header)?;
    let malformed = || {
        malformed(
            header,
            format!(
                "{header} must hold the HMAC-SHA256 of the body as 64 hex digits \
                 (optionally prefixed `sha256=`) or as standard base64 of the 32 bytes"
            ),
        )
    };
    let tag = if let Some(hex_part) = strip_prefix_ignore_case(value, "sha256=") {
        decode_hex_mac(hex_part)
    } else if value.len() == 2 * MAC_LEN && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        decode_hex_mac(value)
    } else {
        decode_base64_mac(value)
    }
    .ok_or_else(malformed)?;
    check_mac(keyed(secret)?, &[body], &tag, header)
}

/// Looks up `name` and returns its first value, trimmed, if it is a
/// reasonably sized visible-ASCII string.
fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, SignatureError> {
    let value = headers.get(name).ok_or_else(|| SignatureError::Missing {
        header: name.to_string(),
    })?;
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(malformed(
            name,
            format!("{name} is longer than {MAX_HEADER_VALUE_BYTES} bytes; a signature header is much shorter"),
        ));
    }
    let text = value.to_str().map_err(|_| {
        malformed(
            name,
            format!("{name} must contain only visible ASCII characters"),
        )
    })?;
    Ok(text.trim())
}

fn malformed(header: &str, detail: String) -> SignatureError {
    SignatureError::Malformed {
        header: header.to_string(),
        detail,
    }
}

fn mismatch(header: &str) -> SignatureError {
    SignatureError::Mismatch {
        header: header.to_string(),
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
}

/// Decodes exactly 64 hex digits (any case) into a MAC.
fn decode_hex_mac(text: &str) -> Option<[u8; MAC_LEN]> {
    let mut out = [0u8; MAC_LEN];
    if text.len() != 2 * MAC_LEN {
        return None;
    }
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Decodes standard base64 (padding optional) of exactly 32 bytes.
fn decode_base64_mac(text: &str) -> Option<[u8; MAC_LEN]> {
    // 32 bytes encode to 43 characters without padding, 44 with.
    if !(43..=44).contains(&text.len()) {
        return None;
    }
    let bytes = BASE64_ANY_PADDING.decode(text).ok()?;
    <[u8; MAC_LEN]>::try_from(bytes.as_slice()).ok()
}

/// Parses a Unix timestamp in seconds (an optionally signed decimal integer).
fn parse_unix_secs(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    text.parse::<i64>().ok()
}

/// Refuses timestamps more than `tolerance_secs` away from `now_unix`.
fn check_fresh(ts: i64, now_unix: i64, tolerance_secs: u64) -> Result<(), SignatureError> {
    let age = i128::from(now_unix) - i128::from(ts);
    if age.unsigned_abs() > u128::from(tolerance_secs) {
        let age_secs = i64::try_from(age).unwrap_or(if age < 0 { i64::MIN } else { i64::MAX });
        return Err(SignatureError::Stale {
            age_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

fn keyed(secret: &[u8]) -> Result<HmacSha256, SignatureError> {
    // HMAC accepts keys of any length, so this cannot fail in practice; the
    // error arm only exists to avoid a panic path.
    <HmacSha256 as Mac>::new_from_slice(secret).map_err(|_| SignatureError::Malformed {
        header: "secret".to_string(),
        detail: "the configured webhook secret cannot be used as an HMAC key".to_string(),
    })
}

/// Feeds `parts` into `mac` and compares the result to `tag` in constant time.
fn check_mac(
    mut mac: HmacSha256,
    parts: &[&[u8]],
    tag: &[u8; MAC_LEN],
    header: &str,
) -> Result<(), SignatureError> {
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(tag).map_err(|_| mismatch(header))
}

/// Computes the MAC of the concatenation of `parts` (used only for signing).
fn mac_of(secret: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    if let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(secret) {
        for part in parts {
            mac.update(part);
        }
        out = mac.finalize().into_bytes().into();
    }
    out
}

#[cfg(test)]
#[path = "signature_tests.rs"]
mod tests;
