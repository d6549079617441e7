//! The tools half of the `Store` conformance suite (MCP servers, credentials, tool bundles), and
//! the secret key's rotation over a store, jobs' memory and dynamic servers' versions, on SQLite
//! and on a real PostgreSQL.

use std::sync::Arc;

use autopilot_control_plane::domain::dynamic::{scan, Author, DynamicVersion};
use autopilot_control_plane::domain::memory::{MemoryFilter, MemoryItem, MemoryScope};
use autopilot_control_plane::domain::tools::{
    AccessLevel, Credential, McpServer, ServerTool, ToolBundle, ToolGrant, Transport,
};
use autopilot_control_plane::domain::webhook::Webhook;
use autopilot_control_plane::keys::secret::{reseal_all, Resealed};
use autopilot_control_plane::keys::signing::SigningKeys;
use autopilot_control_plane::seal::Sealer;
use autopilot_control_plane::store::{connect, Store, StoreError};
use autopilot_proto::JobId;
use autopilot_tests::components;
use chrono::{TimeZone, Utc};

fn at(ms: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

fn server(name: &str) -> McpServer {
    McpServer {
        name: name.into(),
        description: Some("notes".into()),
        transport: Transport::Stdio {
            command: "python3".into(),
            args: vec!["notes.py".into()],
            env: [("TOKEN".into(), "${NOTES_TOKEN}".into())].into(),
        },
        tools: vec![ServerTool {
            name: "lookup".into(),
            description: None,
            access: AccessLevel::Read,
        }],
        tools_listed_at: None,
        oauth: None,
        created_at: at(1_000),
        updated_at: at(1_000),
    }
}

fn credential(sealer: &Sealer, name: &str, value: &str, ms: i64) -> Credential {
    let (wrapped_key, sealed_value) =
        sealer.seal_enveloped(&Credential::context(name), value.as_bytes());
    Credential {
        name: name.into(),
        wrapped_key,
        sealed_value,
        fingerprint: sealer.fingerprint(value.as_bytes()),
        created_at: at(ms),
        updated_at: at(ms),
        last_used_at: None,
    }
}

async fn conformance(store: Arc<dyn Store>) {
    // Servers: round trip, unique names, replace, delete.
    let mut notes = server("notes");
    store.insert_server(&notes).await.unwrap();
    assert!(matches!(
        store.insert_server(&notes).await,
        Err(StoreError::Conflict(message)) if message.contains("notes")
    ));
    notes.description = None;
    notes.updated_at = at(2_000);
    store.update_server(&notes).await.unwrap();
    assert_eq!(store.list_servers().await.unwrap(), vec![notes.clone()]);
    assert!(matches!(
        store.update_server(&server("other")).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.delete_server("notes").await.unwrap());
    assert!(!store.delete_server("notes").await.unwrap());

    // Credentials: a second put replaces the value and keeps the first creation time.
    let sealer = Sealer::from_key(&[3; 32]);
    store
        .put_credential(&credential(&sealer, "NOTES_TOKEN", "first", 1_000))
        .await
        .unwrap();
    let second = credential(&sealer, "NOTES_TOKEN", "second", 5_000);
    store.put_credential(&second).await.unwrap();
    let stored = store.list_credentials().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].created_at, at(1_000));
    assert_eq!(stored[0].updated_at, at(5_000));
    assert_eq!(stored[0].sealed_value, second.sealed_value);
    store
        .mark_credentials_used(&["NOTES_TOKEN".into(), "ABSENT".into()], at(9_000))
        .await
        .unwrap();
    assert_eq!(
        store.list_credentials().await.unwrap()[0].last_used_at,
        Some(at(9_000))
    );
    store.mark_credentials_used(&[], at(9_500)).await.unwrap();
    assert!(store.delete_credential("NOTES_TOKEN").await.unwrap());
    assert!(store.list_credentials().await.unwrap().is_empty());

    // Bundles.
    let mut bundle = ToolBundle {
        name: "reporting".into(),
        description: None,
        servers: vec![ToolGrant {
            server: "email".into(),
            access: AccessLevel::Write,
            allow: vec![],
            deny: vec!["send_bulk".into()],
        }],
        tools: vec!["Read".into()],
        created_at: at(1_000),
        updated_at: at(1_000),
    };
    store.insert_bundle(&bundle).await.unwrap();
    assert!(matches!(
        store.insert_bundle(&bundle).await,
        Err(StoreError::Conflict(_))
    ));
    bundle.tools.push("Write".into());
    bundle.updated_at = at(3_000);
    store.update_bundle(&bundle).await.unwrap();
    assert_eq!(store.list_bundles().await.unwrap(), vec![bundle.clone()]);
    assert!(store.delete_bundle("reporting").await.unwrap());
    assert!(store.list_bundles().await.unwrap().is_empty());
}

/// Every sealed value follows the secret key to its new value, and a second run (as after an
/// interrupted one) finds everything done.
async fn rotation(store: Arc<dyn Store>) {
    let (old, new) = (Sealer::from_key(&[1; 32]), Sealer::from_key(&[2; 32]));
    SigningKeys::load(Arc::clone(&store), old.clone())
        .await
        .unwrap();
    let mut webhook = super::store_webhooks::webhook("signed", "token-digest");
    webhook.signing_secret = Some(old.seal(&Webhook::secret_context(webhook.id), b"whsec_1"));
    store.insert_webhook(&webhook).await.unwrap();
    store
        .put_credential(&credential(&old, "SMTP_PASSWORD", "hunter2-long", 1_000))
        .await
        .unwrap();

    let done = reseal_all(store.as_ref(), &old, &new).await.unwrap();
    assert_eq!(
        done,
        Resealed {
            settings: 1,
            webhooks: 1,
            credentials: 1,
            already: 0
        }
    );
    let webhook = store.get_webhook(webhook.id).await.unwrap().unwrap();
    let sealed = webhook.signing_secret.unwrap();
    let context = Webhook::secret_context(webhook.id);
    assert_eq!(new.open(&context, &sealed).unwrap(), b"whsec_1");
    assert!(old.open(&context, &sealed).is_err());
    let stored = store.list_credentials().await.unwrap().remove(0);
    let context = Credential::context("SMTP_PASSWORD");
    assert_eq!(
        new.open_enveloped(&context, &stored.wrapped_key, &stored.sealed_value)
            .unwrap(),
        b"hunter2-long"
    );
    assert!(old
        .open_enveloped(&context, &stored.wrapped_key, &stored.sealed_value)
        .is_err());
    assert_eq!(stored.fingerprint, new.fingerprint(b"hunter2-long"));
    SigningKeys::load(Arc::clone(&store), new.clone())
        .await
        .expect("the signing keys open with the new key");

    let again = reseal_all(store.as_ref(), &old, &new).await.unwrap();
    assert_eq!(
        again,
        Resealed {
            already: 3,
            ..Resealed::default()
        }
    );
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/autopilot.db", dir.path().display());
    let store = connect(&url).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn tools_store_conformance_sqlite() {
    let (_dir, store) = sqlite().await;
    conformance(store).await;
}

#[tokio::test]
async fn tools_store_conformance_postgres() {
    let Some(url) = components::fresh_postgres_database().await else {
        return;
    };
    conformance(connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn the_secret_key_rotation_seals_every_value_again_sqlite() {
    let (_dir, store) = sqlite().await;
    rotation(store).await;
}

#[tokio::test]
async fn the_secret_key_rotation_seals_every_value_again_postgres() {
    let Some(url) = components::fresh_postgres_database().await else {
        return;
    };
    rotation(connect(&url).await.unwrap()).await;
}

fn item(key: &str, value: &str, ms: i64) -> MemoryItem {
    MemoryItem {
        key: key.into(),
        value: Some(value.into()),
        bytes: value.len() as u64,
        updated_at: at(ms),
        run_id: None,
    }
}

/// Jobs' memory: scopes kept apart, the limit on entries held in one statement (a full scope
/// still replaces), prefixes matched with their case, searches ignoring ASCII case with `%` and
/// `_` taken literally, most recent first.
async fn memory(store: Arc<dyn Store>) {
    let job = MemoryScope::Job(JobId::new());
    let other = MemoryScope::Job(JobId::new());
    assert!(store
        .put_memory(&job, &item("Reports/a", "to Ada", 1_000), 2)
        .await
        .unwrap());
    assert!(store
        .put_memory(&job, &item("reports/b", "50%_done", 2_000), 2)
        .await
        .unwrap());
    assert!(
        !store
            .put_memory(&job, &item("c", "full", 3_000), 2)
            .await
            .unwrap(),
        "a third key in a scope of two"
    );
    assert!(
        store
            .put_memory(&job, &item("Reports/a", "to Ada, again", 4_000), 2)
            .await
            .unwrap(),
        "a full scope still replaces"
    );
    assert!(store
        .put_memory(&other, &item("c", "elsewhere", 5_000), 2)
        .await
        .unwrap());
    assert_eq!(store.count_memory(&job).await.unwrap(), 2);

    let got = store.get_memory(&job, "Reports/a").await.unwrap().unwrap();
    assert_eq!(got.value.as_deref(), Some("to Ada, again"));
    assert_eq!((got.bytes, got.updated_at), (13, at(4_000)));
    assert_eq!(store.get_memory(&other, "Reports/a").await.unwrap(), None);

    let keys =
        |items: Vec<MemoryItem>| -> Vec<String> { items.into_iter().map(|i| i.key).collect() };
    let all = store
        .list_memory(&job, &MemoryFilter::Prefix(String::new()), 10)
        .await
        .unwrap();
    assert!(
        all.iter().all(|i| i.value.is_none()),
        "a list leaves values out"
    );
    assert_eq!(keys(all), ["Reports/a", "reports/b"], "most recent first");
    let prefixed = store
        .list_memory(&job, &MemoryFilter::Prefix("reports/".into()), 10)
        .await
        .unwrap();
    assert_eq!(keys(prefixed), ["reports/b"], "a prefix keeps its case");
    let found = store
        .list_memory(&job, &MemoryFilter::Containing("ADA".into()), 10)
        .await
        .unwrap();
    assert_eq!(found[0].value.as_deref(), Some("to Ada, again"));
    assert_eq!(keys(found), ["Reports/a"]);
    let literal = store
        .list_memory(&job, &MemoryFilter::Containing("0%_".into()), 10)
        .await
        .unwrap();
    assert_eq!(keys(literal), ["reports/b"]);
    let wildcard = store
        .list_memory(&job, &MemoryFilter::Containing("a%a".into()), 10)
        .await
        .unwrap();
    assert!(wildcard.is_empty(), "`%` is not a wildcard: {wildcard:?}");
    let one = store
        .list_memory(&job, &MemoryFilter::Prefix(String::new()), 1)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);

    assert!(store.delete_memory(&job, "reports/b").await.unwrap());
    assert!(!store.delete_memory(&job, "reports/b").await.unwrap());
    assert_eq!(store.clear_memory(&job).await.unwrap(), 1);
    assert_eq!(store.count_memory(&job).await.unwrap(), 0);
    assert_eq!(
        store.count_memory(&other).await.unwrap(),
        1,
        "other scopes stay"
    );
}

#[tokio::test]
async fn memory_store_conformance_sqlite() {
    let (_dir, store) = sqlite().await;
    memory(store).await;
}

#[tokio::test]
async fn memory_store_conformance_postgres() {
    let Some(url) = components::fresh_postgres_database().await else {
        return;
    };
    memory(connect(&url).await.unwrap()).await;
}

/// Dynamic servers' versions: kept in order, replaced whole, a version number taken once,
/// forgotten with their server.
async fn dynamic_versions(store: Arc<dyn Store>) {
    let version = |number: u32| DynamicVersion {
        server: "dice".into(),
        version: number,
        description: None,
        code: format!("print({number})"),
        env: [("TOKEN".into(), "${DICE_TOKEN}".into())].into(),
        author: Author::Agent,
        scan: scan("import os"),
        validation: None,
        approved_at: None,
        created_at: at(1_000 + i64::from(number)),
    };
    store.insert_dynamic_version(&version(2)).await.unwrap();
    store.insert_dynamic_version(&version(1)).await.unwrap();
    assert!(matches!(
        store.insert_dynamic_version(&version(1)).await,
        Err(StoreError::Conflict(_))
    ));
    let mut approved = version(2);
    approved.approved_at = Some(at(5_000));
    store.update_dynamic_version(&approved).await.unwrap();
    assert!(matches!(
        store.update_dynamic_version(&version(9)).await,
        Err(StoreError::NotFound)
    ));
    let listed = store.list_dynamic_versions("dice").await.unwrap();
    assert_eq!(listed, vec![version(1), approved]);
    assert!(store
        .list_dynamic_versions("other")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.delete_dynamic_versions("dice").await.unwrap(), 2);
    assert!(store
        .list_dynamic_versions("dice")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn dynamic_versions_store_conformance_sqlite() {
    let (_dir, store) = sqlite().await;
    dynamic_versions(store).await;
}

#[tokio::test]
async fn dynamic_versions_store_conformance_postgres() {
    let Some(url) = components::fresh_postgres_database().await else {
        return;
    };
    dynamic_versions(connect(&url).await.unwrap()).await;
}
