//! The keys that sign OAuth access tokens, and their rotation.
//!
//! The keys form a ring: one current key, which signs, and the keys it replaced, each of which
//! still verifies until its grace period ends, so the tokens it signed live out their lifetime
//! and no client is logged out by a rotation. Every key has an id, which a token names in its
//! header (`kid`), so checking a token takes one key, not a search. The ring lives in one store
//! setting, sealed like every secret there, and is shared by every replica.
//!
//! `autopilot signing-key rotate` is a process of its own that may have no way to tell the
//! replicas (the embedded bus lives inside the serving process), so the store is the only
//! channel, and each replica reads the ring again:
//! - before it signs a token, so a token issued after a rotation carries the new key at once,
//!   on every replica;
//! - when a token names a key its copy does not have (at most once per
//!   [`UNKNOWN_KEY_REREAD_GAP`]), which is how a key only just made becomes known;
//! - when its copy is older than [`RING_MAX_AGE`], so a ring whose old keys were dropped at once
//!   (`--revoke-previous`) stops them verifying on every replica within that time.
//!
//! A retired key's grace period is stored with it as an instant (`verify_until`), so replicas
//! agree on it whatever their own configuration, and a copy of the ring stops honouring the key
//! at that instant without reading the store again.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::seal::Sealer;
use crate::store::Store;
use crate::tokens::{self, AccessClaims, TokenRefusal};

/// The setting that holds the ring, sealed.
pub const SIGNING_KEYS_SETTING: &str = "oauth_signing_keys_sealed";
/// Where versions before key rotation kept their one key, sealed. It stays while the ring still
/// holds that key, for replicas of such a version during an upgrade, and is blanked after.
pub(crate) const LEGACY_SEALED_SETTING: &str = "oauth_signing_key_sealed";
/// Where versions before sealing kept their one key in plain hex; blanked once the ring holds it.
const LEGACY_PLAIN_SETTING: &str = "oauth_signing_key";

/// How old a replica's copy of the ring may get before it reads it again.
pub const RING_MAX_AGE: Duration = Duration::from_secs(30);
/// The least time between two readings caused by tokens naming an unknown key, so made-up key
/// ids cannot make every request read the store.
pub const UNKNOWN_KEY_REREAD_GAP: Duration = Duration::from_secs(1);
/// Added to the access-token lifetime to make a retired key's grace period: room for a token
/// signed with the old key in the instant the rotation was written, and for clock skew between
/// replicas (tokens are checked with 5 seconds of leeway).
pub const ROTATION_MARGIN: Duration = Duration::from_secs(60);
/// Secret bytes of a key (HS256 wants at least the hash's 32).
const SECRET_BYTES: usize = 32;

/// A key that signs (or signed) access tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// Names the key in the tokens it signs (`kid`); random, and not secret.
    kid: String,
    #[serde(with = "secret_hex")]
    secret: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey {{ kid: {}, secret: <redacted> }}", self.kid)
    }
}

impl SigningKey {
    fn generate() -> SigningKey {
        SigningKey::with_secret(rand::random::<[u8; SECRET_BYTES]>().to_vec())
    }

    fn with_secret(secret: Vec<u8>) -> SigningKey {
        SigningKey {
            kid: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>()),
            secret,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// A key that no longer signs and verifies until `verify_until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredKey {
    #[serde(flatten)]
    pub key: SigningKey,
    pub verify_until: DateTime<Utc>,
}

/// The current key and the retired ones still kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    current: SigningKey,
    #[serde(default)]
    retired: Vec<RetiredKey>,
}

impl KeyRing {
    /// A ring of one new key.
    pub fn generate() -> KeyRing {
        KeyRing {
            current: SigningKey::generate(),
            retired: Vec::new(),
        }
    }

    /// The key that signs.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// The retired keys kept, whether or not their grace is over.
    pub fn retired(&self) -> &[RetiredKey] {
        &self.retired
    }

    /// The key named `kid` if it may verify a token at `now`.
    pub fn verifying_key(&self, kid: &str, now: DateTime<Utc>) -> Option<&SigningKey> {
        self.verifying_keys(now).find(|key| key.kid == kid)
    }

    /// Every key that may verify a token at `now`, the current one first.
    pub fn verifying_keys(&self, now: DateTime<Utc>) -> impl Iterator<Item = &SigningKey> {
        let retired = self
            .retired
            .iter()
            .filter(move |retired| retired.verify_until > now)
            .map(|retired| &retired.key);
        std::iter::once(&self.current).chain(retired)
    }

    /// Whether the ring has a key named `kid`, in its grace or past it.
    fn has(&self, kid: &str) -> bool {
        self.current.kid == kid || self.retired.iter().any(|retired| retired.key.kid == kid)
    }

    /// Whether the ring holds this secret (as any of its keys).
    fn holds_secret(&self, secret: &[u8]) -> bool {
        std::iter::once(&self.current)
            .chain(self.retired.iter().map(|retired| &retired.key))
            .any(|key| tokens::same(&key.secret, secret))
    }

    /// The ring after a rotation at `now`: a new key signs, the current one verifies until
    /// `now + grace`, and the retired keys whose grace is over are dropped.
    pub fn rotated(&self, now: DateTime<Utc>, grace: chrono::Duration) -> KeyRing {
        let mut retired: Vec<RetiredKey> = self
            .retired
            .iter()
            .filter(|retired| retired.verify_until > now)
            .cloned()
            .collect();
        retired.insert(
            0,
            RetiredKey {
                key: self.current.clone(),
                verify_until: now + grace,
            },
        );
        KeyRing {
            current: SigningKey::generate(),
            retired,
        }
    }

    /// The ring after an emergency rotation (a key may have leaked): a new key and no other, so
    /// every token signed before is refused.
    pub fn replaced(&self) -> KeyRing {
        KeyRing::generate()
    }

    fn seal(&self, sealer: &Sealer) -> String {
        let plain = serde_json::to_vec(self).expect("a key ring always serializes");
        sealer.seal(SIGNING_KEYS_SETTING, &plain)
    }

    fn open(sealer: &Sealer, sealed: &str) -> anyhow::Result<KeyRing> {
        let plain = sealer.open(SIGNING_KEYS_SETTING, sealed).with_context(|| {
            "the OAuth signing keys in the store do not open with this secret key \
             (AUTOPILOT_SECRET_KEY or DATA_DIR/secret.key): give every replica the key the \
             store was made with"
        })?;
        serde_json::from_slice(&plain).context("the stored OAuth signing keys are not readable")
    }
}

/// Hex in the sealed JSON, so the secret is never in a debug or error text by accident either.
mod secret_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secret: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(secret))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(text).map_err(|_| serde::de::Error::custom("a signing key is not hex"))
    }
}

/// The ring as stored (`None` before the first start), with its sealed text for a
/// compare-and-set.
async fn read_ring(
    store: &dyn Store,
    sealer: &Sealer,
) -> anyhow::Result<Option<(String, KeyRing)>> {
    match store.get_setting(SIGNING_KEYS_SETTING).await? {
        Some(sealed) => {
            let ring = KeyRing::open(sealer, &sealed)?;
            Ok(Some((sealed, ring)))
        }
        None => Ok(None),
    }
}

/// The ring, made on first start. A key left by a version before rotation becomes its current
/// key, so the tokens that key signed (they name no key) stay valid.
pub async fn load_or_create(
    store: &dyn Store,
    sealer: &Sealer,
) -> anyhow::Result<(String, KeyRing)> {
    if let Some(found) = read_ring(store, sealer).await? {
        return Ok(found);
    }
    let ring = match legacy_secret(store, sealer).await? {
        Some(secret) => KeyRing {
            current: SigningKey::with_secret(secret),
            retired: Vec::new(),
        },
        None => KeyRing::generate(),
    };
    // Replicas starting together: the first one stores its ring, and all read that one.
    store
        .put_setting_if_absent(SIGNING_KEYS_SETTING, &ring.seal(sealer))
        .await?;
    let found = read_ring(store, sealer)
        .await?
        .context("the OAuth signing keys vanished from the store")?;
    // The plain copy goes as soon as the ring holds the key sealed; the sealed copy stays for
    // replicas of the previous version, until a rotation drops that key.
    if store
        .get_setting(LEGACY_PLAIN_SETTING)
        .await?
        .is_some_and(|plain| !plain.is_empty())
    {
        store.put_setting(LEGACY_PLAIN_SETTING, "").await?;
    }
    Ok(found)
}

/// The one key of a version before rotation, if it left one.
async fn legacy_secret(store: &dyn Store, sealer: &Sealer) -> anyhow::Result<Option<Vec<u8>>> {
    let sealed = store
        .get_setting(LEGACY_SEALED_SETTING)
        .await?
        .filter(|sealed| !sealed.is_empty());
    if let Some(sealed) = sealed {
        let secret = sealer
            .open(LEGACY_SEALED_SETTING, &sealed)
            .with_context(|| {
                "the OAuth signing key in the store does not open with this secret key \
             (AUTOPILOT_SECRET_KEY or DATA_DIR/secret.key): give every replica the key the \
             store was made with"
            })?;
        return Ok(Some(secret));
    }
    let plain = store
        .get_setting(LEGACY_PLAIN_SETTING)
        .await?
        .filter(|plain| !plain.is_empty());
    plain
        .map(|plain| hex::decode(plain).context("the stored plain signing key is not hex"))
        .transpose()
}

/// How a rotation treats the keys it replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The replaced key verifies for `grace` more (at least the access-token lifetime).
    Graceful { grace: Duration },
    /// Every other key is dropped at once: for a key that may have leaked.
    RevokePrevious,
}

/// Rotates the ring in the store: a compare-and-set, tried again if another rotation (or a
/// first start) wrote in between. Returns the new ring.
pub async fn rotate(
    store: &dyn Store,
    sealer: &Sealer,
    rotation: Rotation,
) -> anyhow::Result<KeyRing> {
    const ATTEMPTS: usize = 5;
    let grace = match rotation {
        Rotation::Graceful { grace } => Some(
            chrono::Duration::from_std(grace)
                .ok()
                .filter(|grace| *grace < chrono::Duration::days(3650))
                .context("the grace period of the replaced signing key is too long")?,
        ),
        Rotation::RevokePrevious => None,
    };
    for _ in 0..ATTEMPTS {
        let (sealed, ring) = load_or_create(store, sealer).await?;
        let next = match grace {
            Some(grace) => ring.rotated(Utc::now(), grace),
            None => ring.replaced(),
        };
        if store
            .replace_setting(SIGNING_KEYS_SETTING, &sealed, &next.seal(sealer))
            .await?
        {
            forget_legacy_key_if_dropped(store, sealer, &next).await?;
            return Ok(next);
        }
    }
    anyhow::bail!(
        "the OAuth signing keys changed {ATTEMPTS} times while rotating them (is another \
         rotation running?); try again"
    )
}

/// Blanks the pre-rotation copy of the key once the ring no longer holds that key, so no copy
/// of a retired key outlives its grace. (A replica of that earlier version cannot start after
/// this, and says so: by then its tokens would be refused anyway.)
async fn forget_legacy_key_if_dropped(
    store: &dyn Store,
    sealer: &Sealer,
    ring: &KeyRing,
) -> anyhow::Result<()> {
    let Some(sealed) = store
        .get_setting(LEGACY_SEALED_SETTING)
        .await?
        .filter(|sealed| !sealed.is_empty())
    else {
        return Ok(());
    };
    let still_held = sealer
        .open(LEGACY_SEALED_SETTING, &sealed)
        .is_ok_and(|secret| ring.holds_secret(&secret));
    if !still_held {
        store.put_setting(LEGACY_SEALED_SETTING, "").await?;
    }
    Ok(())
}

/// One replica's copy of the ring, and when it was read.
struct RingCopy {
    ring: KeyRing,
    read_at: Instant,
}

/// The signing keys as a replica uses them: a copy of the ring, read again from the store as the
/// module documentation says.
pub struct SigningKeys {
    store: Arc<dyn Store>,
    sealer: Sealer,
    copy: RwLock<Arc<RingCopy>>,
    /// One reading at a time on the verifying path; the others wait and take its result.
    reading: tokio::sync::Mutex<()>,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKeys { <redacted> }")
    }
}

impl SigningKeys {
    /// Reads the ring, making it on first start.
    pub async fn load(store: Arc<dyn Store>, sealer: Sealer) -> anyhow::Result<SigningKeys> {
        let (_, ring) = load_or_create(store.as_ref(), &sealer).await?;
        Ok(SigningKeys {
            store,
            sealer,
            copy: RwLock::new(Arc::new(RingCopy {
                ring,
                read_at: Instant::now(),
            })),
            reading: tokio::sync::Mutex::new(()),
        })
    }

    fn copy(&self) -> Arc<RingCopy> {
        Arc::clone(&self.copy.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn keep(&self, copy: RingCopy) -> Arc<RingCopy> {
        let copy = Arc::new(copy);
        *self.copy.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&copy);
        copy
    }

    /// Signs an access token with the current key, as the store has it now.
    pub async fn sign(&self, claims: &AccessClaims) -> anyhow::Result<String> {
        let (_, ring) = load_or_create(self.store.as_ref(), &self.sealer)
            .await
            .context("reading the OAuth signing keys")?;
        let copy = self.keep(RingCopy {
            ring,
            read_at: Instant::now(),
        });
        let current = copy.ring.current();
        tokens::sign_access_token(&current.secret, &current.kid, claims).map_err(anyhow::Error::msg)
    }

    /// Checks an access token: its key (which must still verify), signature, issuer, audience
    /// and expiry.
    pub async fn verify(
        &self,
        issuer: &str,
        audience: &str,
        token: &str,
    ) -> Result<AccessClaims, TokenRefusal> {
        let kid = tokens::access_token_key_id(token)?;
        let mut copy = self.copy();
        let unknown_key = kid.as_deref().is_some_and(|kid| !copy.ring.has(kid))
            && copy.read_at.elapsed() >= UNKNOWN_KEY_REREAD_GAP;
        if unknown_key || copy.read_at.elapsed() >= RING_MAX_AGE {
            copy = self.read_again(&copy).await;
        }
        let now = Utc::now();
        let check =
            |key: &SigningKey| tokens::verify_access_token(&key.secret, issuer, audience, token);
        match kid {
            Some(kid) => copy
                .ring
                .verifying_key(&kid, now)
                .ok_or(TokenRefusal::RetiredKey)
                .and_then(check),
            // Signed by a version before rotation: whichever key verifies it. A refusal other
            // than a bad signature comes from the key that signed it, and says more.
            None => {
                let mut refusal = TokenRefusal::Invalid;
                for key in copy.ring.verifying_keys(now) {
                    match check(key) {
                        Ok(claims) => return Ok(claims),
                        Err(TokenRefusal::Invalid) => {}
                        Err(other) => refusal = other,
                    }
                }
                Err(refusal)
            }
        }
    }

    /// Reads the ring again unless another caller did since `seen` was taken. If the store
    /// cannot be read, the copy is kept (and the failure logged): refusing every client while the
    /// database blinks would be worse than honouring a ring at most a reading old.
    async fn read_again(&self, seen: &Arc<RingCopy>) -> Arc<RingCopy> {
        let _one_at_a_time = self.reading.lock().await;
        let latest = self.copy();
        if !Arc::ptr_eq(&latest, seen) {
            return latest;
        }
        let ring = match read_ring(self.store.as_ref(), &self.sealer).await {
            Ok(Some((_, ring))) => ring,
            Ok(None) => {
                tracing::error!(
                    "the OAuth signing keys are gone from the store; keeping the copy read before"
                );
                latest.ring.clone()
            }
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "reading the OAuth signing keys again failed; keeping the copy read before"
                );
                latest.ring.clone()
            }
        };
        self.keep(RingCopy {
            ring,
            read_at: Instant::now(),
        })
    }
}

#[cfg(test)]
#[path = "signing_tests.rs"]
mod tests;
