use super::*;
use crate::tokens::tests::{claims, AUDIENCE, ISSUER};

const GRACE: Duration = Duration::from_secs(16 * 60);

async fn sqlite_store(dir: &std::path::Path) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.join("autopilot.db").display());
    crate::store::connect_with(&url, 2).await.unwrap()
}

fn kid_of(token: &str) -> String {
    tokens::access_token_key_id(token).unwrap().expect("a kid")
}

async fn verify(keys: &SigningKeys, token: &str) -> Result<AccessClaims, TokenRefusal> {
    keys.verify(ISSUER, AUDIENCE, token).await
}

fn graceful() -> Rotation {
    Rotation::Graceful { grace: GRACE }
}

/// A token as a version before rotation signed it: no `kid`.
fn legacy_token(secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn the_ring_is_sealed_in_the_store_and_the_same_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let sealer = Sealer::from_key(&[3; 32]);
    let (_, ring) = load_or_create(store.as_ref(), &sealer).await.unwrap();
    assert_eq!(ring.current().secret().len(), SECRET_BYTES);
    assert!(ring.retired().is_empty());
    let stored = store
        .get_setting(SIGNING_KEYS_SETTING)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !stored.contains(&hex::encode(ring.current().secret())),
        "stored in plain"
    );
    assert_eq!(
        load_or_create(store.as_ref(), &sealer).await.unwrap().1,
        ring
    );

    let err = load_or_create(store.as_ref(), &Sealer::from_key(&[4; 32]))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("AUTOPILOT_SECRET_KEY"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_key_from_before_rotation_becomes_the_current_key_and_its_tokens_stay_valid() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let sealer = Sealer::from_key(&[3; 32]);
    let old = [9u8; 32];
    store
        .put_setting(
            LEGACY_SEALED_SETTING,
            &sealer.seal(LEGACY_SEALED_SETTING, &old),
        )
        .await
        .unwrap();
    let keys = SigningKeys::load(Arc::clone(&store), sealer.clone())
        .await
        .unwrap();
    assert_eq!(keys.copy().ring.current().secret(), old);
    assert_eq!(
        verify(&keys, &legacy_token(&old)).await.unwrap().sub,
        "client"
    );
    // Without a kid, a token is checked with each key; a refusal from the key that signed it
    // says what is wrong.
    let foreign = legacy_token(&[1; 32]);
    assert_eq!(verify(&keys, &foreign).await, Err(TokenRefusal::Invalid));
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &AccessClaims {
            exp: Utc::now().timestamp() - 60,
            ..claims()
        },
        &jsonwebtoken::EncodingKey::from_secret(&old),
    )
    .unwrap();
    keys_rotate(&store, &sealer, graceful()).await;
    assert_eq!(verify(&keys, &expired).await, Err(TokenRefusal::Expired));

    // The copy for replicas of the earlier version stays while the ring holds the key...
    assert!(store
        .get_setting(LEGACY_SEALED_SETTING)
        .await
        .unwrap()
        .is_some_and(|sealed| !sealed.is_empty()));
    // ...and goes with it.
    keys_rotate(&store, &sealer, Rotation::RevokePrevious).await;
    assert_eq!(
        store
            .get_setting(LEGACY_SEALED_SETTING)
            .await
            .unwrap()
            .as_deref(),
        Some("")
    );
}

#[tokio::test]
async fn a_plain_key_from_an_earlier_version_is_sealed_into_the_ring_and_blanked() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let old = [7u8; 32];
    store
        .put_setting(LEGACY_PLAIN_SETTING, &hex::encode(old))
        .await
        .unwrap();
    let sealer = Sealer::from_key(&[3; 32]);
    let (_, ring) = load_or_create(store.as_ref(), &sealer).await.unwrap();
    assert_eq!(ring.current().secret(), old);
    assert_eq!(
        store
            .get_setting(LEGACY_PLAIN_SETTING)
            .await
            .unwrap()
            .as_deref(),
        Some(""),
        "the plain copy is blanked"
    );
    assert_eq!(
        load_or_create(store.as_ref(), &sealer).await.unwrap().1,
        ring
    );
}

/// A store of its own in `dir`, the sealer, and the signing keys loaded from them.
async fn loaded_keys(dir: &std::path::Path) -> (Arc<dyn Store>, Sealer, SigningKeys) {
    let store = sqlite_store(dir).await;
    let sealer = Sealer::from_key(&[3; 32]);
    let keys = SigningKeys::load(Arc::clone(&store), sealer.clone())
        .await
        .unwrap();
    (store, sealer, keys)
}

async fn keys_rotate(store: &Arc<dyn Store>, sealer: &Sealer, rotation: Rotation) -> KeyRing {
    rotate(store.as_ref(), sealer, rotation).await.unwrap()
}

#[tokio::test]
async fn after_a_rotation_old_tokens_verify_and_new_ones_name_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sealer, keys) = loaded_keys(dir.path()).await;
    let before = keys.sign(&claims()).await.unwrap();
    let first_kid = kid_of(&before);

    let started = Utc::now();
    let ring = keys_rotate(&store, &sealer, graceful()).await;
    let retired = &ring.retired()[0];
    assert_eq!(retired.key.kid(), first_kid);
    let grace = chrono::Duration::from_std(GRACE).unwrap();
    assert!(retired.verify_until >= started + grace && retired.verify_until <= Utc::now() + grace);

    assert_eq!(verify(&keys, &before).await.unwrap().sub, "client");
    let after = keys.sign(&claims()).await.unwrap();
    assert_eq!(kid_of(&after), ring.current().kid());
    assert_ne!(kid_of(&after), first_kid);
    assert_eq!(verify(&keys, &after).await.unwrap().sub, "client");

    // A second replica that read the ring before the rotation learns the new key from the first
    // token naming it.
    let other = SigningKeys::load(Arc::clone(&store), sealer.clone())
        .await
        .unwrap();
    let newer = keys_rotate(&store, &sealer, graceful()).await;
    let newest = keys.sign(&claims()).await.unwrap();
    assert_eq!(kid_of(&newest), newer.current().kid());
    tokio::time::sleep(UNKNOWN_KEY_REREAD_GAP).await;
    assert_eq!(verify(&other, &newest).await.unwrap().sub, "client");
    assert_eq!(verify(&other, &before).await.unwrap().sub, "client");
}

#[tokio::test]
async fn revoking_the_previous_keys_refuses_their_tokens_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sealer, keys) = loaded_keys(dir.path()).await;
    let before = keys.sign(&claims()).await.unwrap();
    let ring = keys_rotate(&store, &sealer, Rotation::RevokePrevious).await;
    assert!(ring.retired().is_empty());
    // Signing reads the ring, so this replica knows at once.
    let after = keys.sign(&claims()).await.unwrap();
    assert_eq!(verify(&keys, &before).await, Err(TokenRefusal::RetiredKey));
    assert!(TokenRefusal::RetiredKey.to_string().contains("retired"));
    assert_eq!(verify(&keys, &after).await.unwrap().sub, "client");

    // A made-up key id is refused the same way, and rereads the store at most once a gap.
    let forged = tokens::sign_access_token(&[5; 32], "made-up", &claims()).unwrap();
    assert_eq!(verify(&keys, &forged).await, Err(TokenRefusal::RetiredKey));
}

#[test]
fn a_retired_key_verifies_until_its_grace_ends_and_is_dropped_at_the_next_rotation() {
    let now = Utc::now();
    let minutes = chrono::Duration::minutes;
    let first = KeyRing::generate();
    let first_kid = first.current().kid().to_owned();
    let second = first.rotated(now, minutes(16));
    assert_ne!(second.current().kid(), first_kid);
    assert!(second
        .verifying_key(&first_kid, now + minutes(15))
        .is_some());
    assert!(second
        .verifying_key(&first_kid, now + minutes(16))
        .is_none());
    assert_eq!(second.verifying_keys(now).count(), 2);
    assert_eq!(second.verifying_keys(now + minutes(17)).count(), 1);
    assert!(
        second.has(&first_kid),
        "kept, past its grace, until the next rotation"
    );

    let second_kid = second.current().kid().to_owned();
    let third = second.rotated(now + minutes(20), minutes(16));
    let kept: Vec<&str> = third.retired().iter().map(|r| r.key.kid()).collect();
    assert_eq!(
        kept,
        [second_kid.as_str()],
        "the first key's grace was over"
    );
    assert!(!third.has(&first_kid));

    let replaced = third.replaced();
    assert!(replaced.retired().is_empty());
    assert!(!replaced.has(&second_kid) && !replaced.has(third.current().kid()));
}

#[test]
fn a_rings_debug_text_shows_no_secret() {
    let ring = KeyRing::generate();
    let text = format!("{ring:?}");
    assert!(text.contains(ring.current().kid()));
    assert!(!text.contains(&hex::encode(ring.current().secret())));
    assert!(!text.contains(&format!("{:?}", ring.current().secret())));
}

#[tokio::test]
async fn rotations_at_the_same_time_lose_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let sealer = Sealer::from_key(&[3; 32]);
    let (_, first) = load_or_create(store.as_ref(), &sealer).await.unwrap();
    let (a, b) = tokio::join!(
        rotate(store.as_ref(), &sealer, graceful()),
        rotate(store.as_ref(), &sealer, graceful())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (_, last) = load_or_create(store.as_ref(), &sealer).await.unwrap();
    // One rotation followed the other: the last ring holds every key made.
    let mut held: Vec<&str> = last.retired().iter().map(|r| r.key.kid()).collect();
    held.push(last.current().kid());
    for kid in [first.current().kid(), a.current().kid(), b.current().kid()] {
        assert!(held.contains(&kid), "{kid} was lost: {held:?}");
    }
}
