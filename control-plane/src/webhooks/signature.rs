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
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    const SECRET: &[u8] = b"secret";
    const BODY: &[u8] = br#"{"action":"opened"}"#;
    const TS: i64 = 1_700_000_000;

    // All vectors below were computed independently with Python:
    //   python3 -c 'import hmac,hashlib; print(hmac.new(b"secret", <msg>, hashlib.sha256).hexdigest())'
    // with BODY = b'{"action":"opened"}'.
    // <msg> = BODY
    const GITHUB_HEX: &str = "d42142b53efbc7cf5cd20b6e074eb33707e0de3b368f698e6d6f6c824ffb8d37";
    // <msg> = b"1700000000." + BODY
    const STRIPE_HEX: &str = "1417f649bf8e3534d7427bf7aad9119403d798c8e95cd864ea02051bb11a66a4";
    // <msg> = b"1700000000." + BODY, but keyed with b"other"
    const STRIPE_OTHER_SECRET_HEX: &str =
        "268fd8fe1bbc488adc5116164c1d2b692214a9928c4de3c49736cb64b5cc687e";
    // <msg> = b"v0:1700000000:" + BODY
    const SLACK_HEX: &str = "e6129c4a71273432438be12f990def7d525341511702a1207cbf1b1dc1057dbe";
    // base64.b64encode(hmac.new(b"secret", BODY, hashlib.sha256).digest())
    const HMAC_B64: &str = "1CFCtT77x89c0gtuB06zNwfg3js2j2mObW9sgk/7jTc=";

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn map_owned(pairs: &[(String, String)]) -> HeaderMap {
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        map(&borrowed)
    }

    fn hmac_scheme() -> Scheme {
        Scheme::Hmac {
            header: DEFAULT_HMAC_HEADER.to_string(),
        }
    }

    fn all_schemes() -> Vec<Scheme> {
        vec![Scheme::Github, Scheme::Stripe, Scheme::Slack, hmac_scheme()]
    }

    fn check(scheme: &Scheme, headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
        verify(scheme, SECRET, headers, body, TS, DEFAULT_TOLERANCE_SECS)
    }

    fn is_malformed(r: Result<(), SignatureError>) -> bool {
        matches!(r, Err(SignatureError::Malformed { .. }))
    }

    #[test]
    fn names_and_headers() {
        assert_eq!(Scheme::Github.name(), "github");
        assert_eq!(Scheme::Stripe.name(), "stripe");
        assert_eq!(Scheme::Slack.name(), "slack");
        assert_eq!(hmac_scheme().name(), "hmac_sha256");
        assert_eq!(Scheme::Github.signature_header(), "X-Hub-Signature-256");
        assert_eq!(Scheme::Stripe.signature_header(), "Stripe-Signature");
        assert_eq!(Scheme::Slack.signature_header(), "X-Slack-Signature");
        assert_eq!(hmac_scheme().signature_header(), "x-signature-256");
    }

    #[test]
    fn github_vector() {
        let value = format!("sha256={GITHUB_HEX}");
        let headers = map(&[("x-hub-signature-256", &value)]);
        assert_eq!(check(&Scheme::Github, &headers, BODY), Ok(()));
        assert_eq!(
            sign(&Scheme::Github, SECRET, BODY, 0),
            vec![("x-hub-signature-256".to_string(), value)]
        );
    }

    #[test]
    fn github_uppercase_hex() {
        let value = format!("sha256={}", GITHUB_HEX.to_ascii_uppercase());
        let headers = map(&[("X-Hub-Signature-256", &value)]);
        assert_eq!(check(&Scheme::Github, &headers, BODY), Ok(()));
    }

    #[test]
    fn github_malformed() {
        for bad in [
            GITHUB_HEX.to_string(),
            format!("sha1={GITHUB_HEX}"),
            format!("sha256={}", &GITHUB_HEX[..40]),
            format!("sha256={GITHUB_HEX}00"),
            format!("sha256={}zz", &GITHUB_HEX[..62]),
            "sha256=".to_string(),
        ] {
            let headers = map(&[("x-hub-signature-256", &bad)]);
            let err = check(&Scheme::Github, &headers, BODY).unwrap_err();
            assert_eq!(
                err.to_string(),
                "X-Hub-Signature-256 must look like `sha256=<64 hex digits>`",
                "{bad}"
            );
        }
    }

    #[test]
    fn stripe_vector() {
        let value = format!("t={TS},v1={STRIPE_HEX}");
        let headers = map(&[("stripe-signature", &value)]);
        assert_eq!(check(&Scheme::Stripe, &headers, BODY), Ok(()));
        assert_eq!(
            sign(&Scheme::Stripe, SECRET, BODY, TS),
            vec![("stripe-signature".to_string(), value)]
        );
    }

    #[test]
    fn stripe_second_v1_matches_and_extras_ignored() {
        let value = format!(
            " t={TS} , v1={STRIPE_OTHER_SECRET_HEX}, v0=abc ,foo=bar, v1={} ,junk",
            STRIPE_HEX.to_ascii_uppercase()
        );
        let headers = map(&[("stripe-signature", &value)]);
        assert_eq!(check(&Scheme::Stripe, &headers, BODY), Ok(()));
    }

    #[test]
    fn stripe_only_first_sixteen_v1_considered() {
        let mut value = format!("t={TS}");
        for _ in 0..MAX_STRIPE_SIGNATURES {
            value.push_str(&format!(",v1={STRIPE_OTHER_SECRET_HEX}"));
        }
        value.push_str(&format!(",v1={STRIPE_HEX}"));
        let headers = map(&[("stripe-signature", &value)]);
        assert_eq!(
            check(&Scheme::Stripe, &headers, BODY),
            Err(SignatureError::Mismatch {
                header: "Stripe-Signature".to_string()
            })
        );
    }

    #[test]
    fn stripe_wrong_secret() {
        let value = format!("t={TS},v1={STRIPE_OTHER_SECRET_HEX}");
        let headers = map(&[("stripe-signature", &value)]);
        let err = check(&Scheme::Stripe, &headers, BODY).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the Stripe-Signature signature does not match this webhook's secret: \
             check the secret configured at the sender"
        );
    }

    #[test]
    fn stripe_stale() {
        let value = format!("t={TS},v1={STRIPE_HEX}");
        let headers = map(&[("stripe-signature", &value)]);
        let now = TS + DEFAULT_TOLERANCE_SECS as i64 + 1;
        assert_eq!(
            verify(
                &Scheme::Stripe,
                SECRET,
                &headers,
                BODY,
                now,
                DEFAULT_TOLERANCE_SECS
            ),
            Err(SignatureError::Stale {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        // Exactly at the tolerance is still accepted, in both directions.
        for now in [TS + 300, TS - 300] {
            assert_eq!(
                verify(
                    &Scheme::Stripe,
                    SECRET,
                    &headers,
                    BODY,
                    now,
                    DEFAULT_TOLERANCE_SECS
                ),
                Ok(())
            );
        }
        // A future timestamp reports a negative age.
        assert_eq!(
            verify(
                &Scheme::Stripe,
                SECRET,
                &headers,
                BODY,
                TS - 301,
                DEFAULT_TOLERANCE_SECS
            ),
            Err(SignatureError::Stale {
                age_secs: -301,
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn stripe_malformed() {
        for bad in [
            format!("v1={STRIPE_HEX}"),
            format!("t=abc,v1={STRIPE_HEX}"),
            format!("t=1.5,v1={STRIPE_HEX}"),
            format!("t={TS}"),
            format!("t={TS},v0={STRIPE_HEX}"),
            format!("t={TS},v1=abcd"),
            String::new(),
            ",,,".to_string(),
        ] {
            let headers = map(&[("stripe-signature", &bad)]);
            assert!(
                is_malformed(check(&Scheme::Stripe, &headers, BODY)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn slack_vector() {
        let sig = format!("v0={SLACK_HEX}");
        let ts = TS.to_string();
        let headers = map(&[
            ("x-slack-signature", &sig),
            ("x-slack-request-timestamp", &ts),
        ]);
        assert_eq!(check(&Scheme::Slack, &headers, BODY), Ok(()));
        assert_eq!(
            sign(&Scheme::Slack, SECRET, BODY, TS),
            vec![
                ("x-slack-signature".to_string(), sig),
                ("x-slack-request-timestamp".to_string(), ts),
            ]
        );
    }

    #[test]
    fn slack_uppercase_hex_and_stale() {
        let sig = format!("v0={}", SLACK_HEX.to_ascii_uppercase());
        let ts = TS.to_string();
        let headers = map(&[
            ("x-slack-signature", &sig),
            ("x-slack-request-timestamp", &ts),
        ]);
        assert_eq!(check(&Scheme::Slack, &headers, BODY), Ok(()));
        assert_eq!(
            verify(&Scheme::Slack, SECRET, &headers, BODY, TS + 1000, 60),
            Err(SignatureError::Stale {
                age_secs: 1000,
                tolerance_secs: 60
            })
        );
    }

    #[test]
    fn slack_missing_headers() {
        let sig = format!("v0={SLACK_HEX}");
        let ts = TS.to_string();
        let only_sig = map(&[("x-slack-signature", &sig)]);
        assert_eq!(
            check(&Scheme::Slack, &only_sig, BODY),
            Err(SignatureError::Missing {
                header: "X-Slack-Request-Timestamp".to_string()
            })
        );
        let only_ts = map(&[("x-slack-request-timestamp", &ts)]);
        assert_eq!(
            check(&Scheme::Slack, &only_ts, BODY),
            Err(SignatureError::Missing {
                header: "X-Slack-Signature".to_string()
            })
        );
    }

    #[test]
    fn slack_malformed() {
        let good_sig = format!("v0={SLACK_HEX}");
        let ts = TS.to_string();
        for (sig, ts) in [
            (SLACK_HEX.to_string(), ts.clone()),
            (format!("v1={SLACK_HEX}"), ts.clone()),
            ("v0=1234".to_string(), ts.clone()),
            (good_sig.clone(), "soon".to_string()),
            (good_sig.clone(), "99999999999999999999999".to_string()),
            (good_sig, String::new()),
        ] {
            let headers = map(&[
                ("x-slack-signature", &sig),
                ("x-slack-request-timestamp", &ts),
            ]);
            assert!(
                is_malformed(check(&Scheme::Slack, &headers, BODY)),
                "{sig} {ts}"
            );
        }
    }

    #[test]
    fn hmac_vectors_hex_prefixed_and_base64() {
        let scheme = hmac_scheme();
        let prefixed = format!("sha256={GITHUB_HEX}");
        let upper = GITHUB_HEX.to_ascii_uppercase();
        let unpadded = HMAC_B64.trim_end_matches('=');
        for value in [
            GITHUB_HEX,
            prefixed.as_str(),
            upper.as_str(),
            HMAC_B64,
            unpadded,
        ] {
            let headers = map(&[("X-Signature-256", value)]);
            assert_eq!(check(&scheme, &headers, BODY), Ok(()), "{value}");
        }
        assert_eq!(
            sign(&scheme, SECRET, BODY, 0),
            vec![("x-signature-256".to_string(), prefixed)]
        );
    }

    #[test]
    fn hmac_custom_header_name_is_case_insensitive() {
        let scheme = Scheme::Hmac {
            header: "X-My-Sig".to_string(),
        };
        let headers = map(&[("x-my-sig", GITHUB_HEX)]);
        assert_eq!(check(&scheme, &headers, BODY), Ok(()));
        let pairs = sign(&scheme, SECRET, BODY, 0);
        assert_eq!(pairs[0].0, "x-my-sig");
    }

    #[test]
    fn hmac_malformed() {
        let scheme = hmac_scheme();
        for bad in [
            "",
            "sha256=",
            "abcdef",
            &GITHUB_HEX[..63],
            "1CFCtT77x89c0gtuB06zNwfg3js2j2mObW9sgk/7jT==",
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
        ] {
            let headers = map(&[(DEFAULT_HMAC_HEADER, bad)]);
            assert!(is_malformed(check(&scheme, &headers, BODY)), "{bad:?}");
        }
        let err = check(&scheme, &map(&[(DEFAULT_HMAC_HEADER, "abc")]), BODY).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"));
    }

    #[test]
    fn missing_headers() {
        let empty = HeaderMap::new();
        for scheme in all_schemes() {
            assert_eq!(
                check(&scheme, &empty, BODY),
                Err(SignatureError::Missing {
                    header: scheme.signature_header()
                })
            );
        }
        // A configured header name that is not even a valid header name is
        // simply never present.
        let odd = Scheme::Hmac {
            header: "not a header\n".to_string(),
        };
        assert!(matches!(
            check(&odd, &empty, BODY),
            Err(SignatureError::Missing { .. })
        ));
    }

    #[test]
    fn flipped_body_byte_and_wrong_secret_mismatch() {
        for scheme in all_schemes() {
            let headers = map_owned(&sign(&scheme, SECRET, BODY, TS));
            assert_eq!(check(&scheme, &headers, BODY), Ok(()));

            let mut flipped = BODY.to_vec();
            flipped[3] ^= 0x01;
            assert_eq!(
                check(&scheme, &headers, &flipped),
                Err(SignatureError::Mismatch {
                    header: scheme.signature_header()
                }),
                "{scheme:?}"
            );

            let wrong = verify(
                &scheme,
                b"other",
                &headers,
                BODY,
                TS,
                DEFAULT_TOLERANCE_SECS,
            );
            assert_eq!(
                wrong,
                Err(SignatureError::Mismatch {
                    header: scheme.signature_header()
                })
            );
        }
    }

    #[test]
    fn oversized_and_non_ascii_values_are_malformed() {
        let long = format!("sha256={GITHUB_HEX}{}", " ".repeat(MAX_HEADER_VALUE_BYTES));
        let headers = map(&[("x-hub-signature-256", &long)]);
        assert!(is_malformed(check(&Scheme::Github, &headers, BODY)));

        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            HeaderValue::from_bytes("sha256=é".as_bytes()).unwrap(),
        );
        let err = check(&Scheme::Github, &headers, BODY).unwrap_err();
        assert!(err.to_string().contains("visible ASCII"));
    }

    #[test]
    fn messages_never_leak_the_secret_or_expected_mac() {
        let secret = b"hunter2-distinctive-secret";
        let expected = hex::encode(mac_of(secret, &[BODY]));
        let zeros = format!("sha256={}", "0".repeat(64));
        let cases = [
            (
                Scheme::Github,
                map(&[("x-hub-signature-256", zeros.as_str())]),
            ),
            (Scheme::Github, map(&[("x-hub-signature-256", "sha256=zz")])),
            (hmac_scheme(), map(&[(DEFAULT_HMAC_HEADER, "nope")])),
        ];
        for (scheme, headers) in cases {
            let err = verify(&scheme, secret, &headers, BODY, TS, 0).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains(&expected), "{text}");
        }
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let value = format!("t={},v1={STRIPE_HEX}", i64::MIN);
        let headers = map(&[("stripe-signature", &value)]);
        assert_eq!(
            verify(
                &Scheme::Stripe,
                SECRET,
                &headers,
                BODY,
                i64::MAX,
                u64::MAX / 2
            ),
            Err(SignatureError::Stale {
                age_secs: i64::MAX,
                tolerance_secs: u64::MAX / 2
            })
        );
        // With the widest tolerance, freshness passes and the MAC decides.
        assert_eq!(
            verify(&Scheme::Stripe, SECRET, &headers, BODY, i64::MAX, u64::MAX),
            Err(SignatureError::Mismatch {
                header: "Stripe-Signature".to_string()
            })
        );
    }

    fn arb_scheme() -> impl Strategy<Value = Scheme> {
        prop_oneof![
            Just(Scheme::Github),
            Just(Scheme::Stripe),
            Just(Scheme::Slack),
            Just(Scheme::Hmac {
                header: DEFAULT_HMAC_HEADER.to_string()
            }),
        ]
    }

    fn arb_timestamp() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(0i64),
            any::<i64>(),
            (TS - 1000)..(TS + 1000),
        ]
    }

    /// Header values: raw bytes (skipped later if `HeaderValue` refuses them),
    /// arbitrary unicode, and near-valid shapes.
    fn arb_header_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..100),
            any::<String>().prop_map(String::into_bytes),
            "(sha256=|v0=|t=[0-9-]{0,21},v1=)?[0-9a-fA-F]{0,70}".prop_map(String::into_bytes),
            "[ -~]{0,200}".prop_map(String::into_bytes),
            "t=[0-9+-]{0,22}(,v[01]=[0-9a-f]{64}){0,20}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            scheme in arb_scheme(),
            secret in proptest::collection::vec(any::<u8>(), 0..80),
            values in proptest::collection::vec(arb_header_value(), 0..4),
            body in proptest::collection::vec(any::<u8>(), 0..200),
            now in arb_timestamp(),
            tolerance in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..1000],
        ) {
            let names = [
                "x-hub-signature-256",
                "stripe-signature",
                "x-slack-signature",
                "x-slack-request-timestamp",
                DEFAULT_HMAC_HEADER,
            ];
            for (i, raw) in values.iter().enumerate() {
                let Ok(value) = HeaderValue::from_bytes(raw) else { continue };
                let mut headers = HeaderMap::new();
                for name in names {
                    headers.insert(name, value.clone());
                }
                // Mix in a value from another generator for the Slack pair.
                if let Some(other) = values.get(i + 1).and_then(|b| HeaderValue::from_bytes(b).ok()) {
                    headers.insert("x-slack-request-timestamp", other);
                }
                let _ = verify(&scheme, &secret, &headers, &body, now, tolerance);
            }
            let _ = verify(&scheme, &secret, &HeaderMap::new(), &body, now, tolerance);
        }

        #[test]
        fn sign_then_verify_round_trips(
            scheme in arb_scheme(),
            secret in proptest::collection::vec(any::<u8>(), 0..100),
            body in proptest::collection::vec(any::<u8>(), 0..500),
            ts in arb_timestamp(),
            skew in -300i64..=300,
        ) {
            let headers = map_owned(&sign(&scheme, &secret, &body, ts));
            let now = ts.saturating_add(skew);
            prop_assert_eq!(
                verify(&scheme, &secret, &headers, &body, now, DEFAULT_TOLERANCE_SECS),
                Ok(())
            );
        }

        #[test]
        fn tampered_body_never_verifies(
            scheme in arb_scheme(),
            secret in proptest::collection::vec(any::<u8>(), 0..40),
            body in proptest::collection::vec(any::<u8>(), 1..200),
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let headers = map_owned(&sign(&scheme, &secret, &body, TS));
            let mut tampered = body.clone();
            let i = index.index(tampered.len());
            tampered[i] ^= flip;
            let is_mismatch = matches!(
                verify(&scheme, &secret, &headers, &tampered, TS, DEFAULT_TOLERANCE_SECS),
                Err(SignatureError::Mismatch { .. })
            );
            prop_assert!(is_mismatch);
        }
    }
}
