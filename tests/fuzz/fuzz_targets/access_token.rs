//! OAuth access tokens (HS256 JWTs for `/mcp`) and the `Authorization` header they come in.
//!
//! Input: `TOKEN \0 SUBJECT \0 SCOPE \0 EXPIRES-IN \0 FLIP`: a bearer token as a client sends it,
//! the subject and scope of a token this server signs, its lifetime in seconds (may be negative),
//! and which byte of the signed token to change.
//!
//! Properties: no token makes verification panic, and a refusal gives a reason; a token accepted
//! is for this issuer and audience and not expired; a token signed here comes back with its
//! claims until it expires, and is refused as expired after, as foreign when signed with another
//! key, issuer or audience, and as not valid once any byte of it changes; the bearer token read
//! from a header is the header's text after `Bearer `, trimmed.
#![no_main]

use autopilot_control_plane::tokens::{
    bearer, sign_access_token, verify_access_token, AccessClaims, TokenRefusal,
};
use autopilot_fuzz::{number, parts};
use chrono::Utc;
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz-signing-key-fuzz-signing-key";
const ISSUER: &str = "https://autopilot.example";
const AUDIENCE: &str = "https://autopilot.example/mcp";
/// The leeway `verify_access_token` gives expiry times, and a second for the clock to move.
const LEEWAY_SECS: i64 = 5 + 1;

fuzz_target!(|data: &[u8]| {
    let [token, subject, scope, expires_in, flip] = parts::<5>(data);
    let token = String::from_utf8_lossy(token);
    let now = Utc::now().timestamp();

    // Whatever a client sends.
    match verify_access_token(KEY, ISSUER, AUDIENCE, &token) {
        Err(reason) => assert!(!reason.to_string().is_empty()),
        Ok(claims) => {
            assert_eq!(
                (claims.iss.as_str(), claims.aud.as_str()),
                (ISSUER, AUDIENCE)
            );
            assert!(claims.exp + LEEWAY_SECS >= now, "an expired token passed");
        }
    }
    if let Ok(value) = http::HeaderValue::from_str(&token) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        if let Some(read) = bearer(&headers) {
            let rest = token
                .strip_prefix("Bearer ")
                .or_else(|| token.strip_prefix("bearer "))
                .expect("only a bearer header gives a token");
            assert_eq!(read, rest.trim());
        }
    }

    // A token this server signs.
    let expires_in = number::<i64>(expires_in)
        .unwrap_or(3600)
        .clamp(-1_000_000, 1_000_000);
    let claims = AccessClaims {
        iss: ISSUER.to_owned(),
        sub: String::from_utf8_lossy(subject).into_owned(),
        aud: AUDIENCE.to_owned(),
        exp: now + expires_in,
        iat: now,
        jti: "fuzz".to_owned(),
        scope: String::from_utf8_lossy(scope).into_owned(),
        client_id: String::from_utf8_lossy(subject).into_owned(),
    };
    let signed = sign_access_token(KEY, "fuzz-key", &claims).expect("signing cannot fail");
    let verified = verify_access_token(KEY, ISSUER, AUDIENCE, &signed);
    if expires_in > LEEWAY_SECS {
        let back = verified.expect("a fresh token signed here is accepted");
        assert_eq!(
            (&back.sub, &back.scope, back.exp),
            (&claims.sub, &claims.scope, claims.exp)
        );
    } else if expires_in < -LEEWAY_SECS {
        assert_eq!(verified.unwrap_err(), TokenRefusal::Expired);
    }
    if expires_in > LEEWAY_SECS {
        let refused = |key: &[u8], issuer: &str, audience: &str| {
            verify_access_token(key, issuer, audience, &signed).is_err()
        };
        assert!(refused(
            b"another key, another key, another",
            ISSUER,
            AUDIENCE
        ));
        assert!(refused(KEY, "https://elsewhere.example", AUDIENCE));
        assert!(refused(KEY, ISSUER, "https://elsewhere.example/mcp"));
        if let Some(&at) = flip.first() {
            let mut changed = signed.clone().into_bytes();
            let at = usize::from(at) * changed.len() / 256;
            changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(changed).expect("still ASCII");
            assert!(
                verify_access_token(KEY, ISSUER, AUDIENCE, &changed).is_err(),
                "a token changed at byte {at} passes: {changed}"
            );
        }
    }
});
