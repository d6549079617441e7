//! Tests of `super` (the signature module), kept beside it so the module itself reads as one piece.

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
