//! Webhook signature headers (GitHub, Stripe, Slack, plain HMAC): checking any headers against
//! any body, and the headers a correct sender makes.
//!
//! Input: `SCHEME \0 SECRET \0 BODY \0 HEADERS \0 NOW TOLERANCE`: the scheme (`github`, `stripe`,
//! `slack`, or `hmac HEADER-NAME`), the shared secret, the raw body, `name: value` header lines
//! as the sender sent them, and the current Unix time and tolerance in seconds (defaults when
//! absent).
//!
//! Properties: no headers make `verify` panic, and a refusal never shows the expected MAC; for
//! GitHub a delivery is only accepted with the right MAC; what `sign` makes is accepted (with the
//! MAC's hex in upper case too, and for Stripe among other `v1` values), and refused once the body
//! changes or, for the timestamped schemes, once the clock moves past the tolerance.
#![no_main]

use autopilot_control_plane::domain::signature::{
    sign, verify, Scheme, SignatureError, DEFAULT_TOLERANCE_SECS,
};
use autopilot_fuzz::{header_lines, header_map, parts};
use libfuzzer_sys::fuzz_target;

/// A time the fuzzer's clock starts from when the input gives none (2026-01-01).
const DEFAULT_NOW: i64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    let [scheme, secret, body, headers, clock] = parts::<5>(data);
    let scheme = match String::from_utf8_lossy(scheme).trim() {
        "github" => Scheme::Github,
        "stripe" => Scheme::Stripe,
        "slack" => Scheme::Slack,
        other => Scheme::Hmac {
            header: other
                .strip_prefix("hmac")
                .map(str::trim)
                .filter(|name| http::HeaderName::from_bytes(name.as_bytes()).is_ok())
                .unwrap_or("x-signature-256")
                .to_ascii_lowercase(),
        },
    };
    let clock = String::from_utf8_lossy(clock);
    let mut clock = clock.split_whitespace().map(str::parse::<i64>);
    let now = clock.next().and_then(Result::ok).unwrap_or(DEFAULT_NOW);
    let tolerance = clock
        .next()
        .and_then(Result::ok)
        .map_or(DEFAULT_TOLERANCE_SECS, i64::unsigned_abs);

    // Whatever the sender sent.
    let sent = header_lines(&String::from_utf8_lossy(headers));
    let result = verify(&scheme, secret, &header_map(&sent), body, now, tolerance);
    let expected = sign(&scheme, secret, body, now);
    if let Err(error) = &result {
        // Messages name the configured header, which is the webhook owner's text, not the MAC.
        let text = error
            .to_string()
            .replace(&scheme.signature_header(), "HEADER");
        assert!(!text.is_empty());
        let mac = expected_mac_hex(&scheme, &expected);
        assert!(!text.contains(&mac), "a refusal shows the MAC: {text}");
    }
    if result.is_ok() && scheme == Scheme::Github {
        let given = &header_map(&sent)["x-hub-signature-256"];
        let given = given
            .to_str()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        assert_eq!(
            given, expected[0].1,
            "accepted a signature that is not the MAC"
        );
    }

    // What a correct sender sends.
    let accepts = |headers: &[(String, String)], body: &[u8], now: i64| {
        verify(&scheme, secret, &header_map(headers), body, now, tolerance)
    };
    assert_eq!(accepts(&expected, body, now), Ok(()), "{expected:?}");
    let upper: Vec<(String, String)> = expected
        .iter()
        .map(|(name, value)| (name.clone(), upper_hex_mac(value)))
        .collect();
    assert_eq!(accepts(&upper, body, now), Ok(()), "{upper:?}");
    let mut changed = body.to_vec();
    changed.push(b'!');
    assert!(
        matches!(
            accepts(&expected, &changed, now),
            Err(SignatureError::Mismatch { .. })
        ),
        "a changed body passes"
    );
    if scheme == Scheme::Stripe {
        let (name, value) = &expected[0];
        let (timestamp, mac) = value.split_once(',').expect("t=…,v1=…");
        let several = format!("{timestamp},v1={},v0=x,{mac}", "0".repeat(64));
        assert_eq!(accepts(&[(name.clone(), several)], body, now), Ok(()));
    }
    if matches!(scheme, Scheme::Stripe | Scheme::Slack) {
        let past_tolerance = i64::try_from(tolerance)
            .ok()
            .and_then(|tolerance| now.checked_add(tolerance)?.checked_add(1));
        if let Some(later) = past_tolerance {
            assert!(
                matches!(
                    accepts(&expected, body, later),
                    Err(SignatureError::Stale { .. })
                ),
                "a delivery signed {tolerance} s ago is fresh"
            );
        }
    }
});

/// The hex MAC inside the signature header a sender makes.
fn expected_mac_hex(scheme: &Scheme, headers: &[(String, String)]) -> String {
    let value = &headers[0].1;
    match scheme {
        Scheme::Stripe => value.rsplit("v1=").next().unwrap_or_default().to_owned(),
        _ => value.rsplit('=').next().unwrap_or_default().to_owned(),
    }
}

/// The same header value with its hex MAC in upper case (prefixes and timestamps unchanged).
fn upper_hex_mac(value: &str) -> String {
    match value.rsplit_once('=') {
        Some((head, hex)) if hex.len() == 64 => format!("{head}={}", hex.to_ascii_uppercase()),
        _ => value.to_owned(),
    }
}
