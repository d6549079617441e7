//! The `Lease` conformance suite, run on the NATS KV lease and on the store lease (SQLite and
//! PostgreSQL), and what only the KV lease has: a nats-server that goes away, restarts or loses
//! its store under it.
//!
//! The KV tests use the nats-server of `TEST_NATS_URL` when it is set, else one of their own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use autopilot_control_plane::lease::StoreLease;
use autopilot_proto::{BusError, JetStreamBus, JetStreamConfig, KvLease, Lease, LeaseError};
use autopilot_tests::components;
use autopilot_tests::nats::NatsServer;
use futures::future::join_all;
use tokio::time::{sleep, Instant};

use crate::bus::fast_jetstream_config;

/// Short, to keep the suite fast; 1 s is the KV lease's minimum.
const TTL: Duration = Duration::from_secs(1);
/// How long an unrenewed lease may take to become free: the TTL, plus the server's expiry timer
/// for NATS KV (measured well under a second), plus slack for a loaded machine.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(8);

/// Opens the lease `name` as another process would: its own connection to the backend.
trait OpenLease: Fn(&'static str) -> Self::Opened {
    type Opened: Future<Output = Arc<dyn Lease>>;
}

impl<F, Fut> OpenLease for F
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn Lease>>,
{
    type Opened = Fut;
}

async fn conformance(open: impl OpenLease) {
    one_holder_at_a_time(&open).await;
    renewal_keeps_the_lease_past_its_ttl(&open).await;
    an_unrenewed_lease_is_taken_over_after_its_ttl(&open).await;
    release_frees_the_lease_at_once(&open).await;
    concurrent_takers_get_one_lease(&open).await;
}

/// The first holder takes it; a second is refused while the first renews. A token names a
/// tenure: renewing keeps it.
async fn one_holder_at_a_time(open: &impl OpenLease) {
    let (a, b) = (open("exclusive").await, open("exclusive").await);
    assert_eq!(a.ttl(), TTL);
    let first = a
        .acquire("holder-a")
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!(
        b.acquire("holder-b").await.unwrap(),
        None,
        "{}",
        a.backend()
    );
    let renewed = a
        .acquire("holder-a")
        .await
        .unwrap()
        .expect("the holder renews it");
    assert_eq!(renewed, first, "{}", a.backend());
    assert_eq!(
        b.acquire("holder-b").await.unwrap(),
        None,
        "{}",
        a.backend()
    );
}

/// A holder renewing well within the TTL keeps the lease for several TTLs.
async fn renewal_keeps_the_lease_past_its_ttl(open: &impl OpenLease) {
    let (a, b) = (open("renewed").await, open("renewed").await);
    let first = a.acquire("holder-a").await.unwrap().expect("free lease");
    let until = Instant::now() + TTL * 3;
    while Instant::now() < until {
        sleep(TTL / 4).await;
        let token = a
            .acquire("holder-a")
            .await
            .unwrap()
            .expect("a holder renewing in time keeps the lease");
        assert_eq!(token, first, "{}", a.backend());
        assert_eq!(
            b.acquire("holder-b").await.unwrap(),
            None,
            "{}",
            a.backend()
        );
    }
}

/// A holder that stops renewing loses the lease after the TTL, not before: the next holder gets
/// a larger token, and the earlier holder steps down and cannot undo the takeover.
async fn an_unrenewed_lease_is_taken_over_after_its_ttl(open: &impl OpenLease) {
    let (a, b) = (open("expiring").await, open("expiring").await);
    let written = Instant::now();
    let first = a.acquire("holder-a").await.unwrap().expect("free lease");
    let (second, after) = take_when_free(&*b, "holder-b", written).await;
    eprintln!(
        "{}: an unrenewed lease was taken over {after:?} after it was written (ttl {TTL:?})",
        b.backend()
    );
    assert!(after >= TTL, "{}: taken over after {after:?}", b.backend());
    assert!(second > first, "{}: {second} <= {first}", b.backend());
    assert_eq!(
        a.acquire("holder-a").await.unwrap(),
        None,
        "{}",
        a.backend()
    );
    a.release("holder-a").await.unwrap();
    let kept = b
        .acquire("holder-b")
        .await
        .unwrap()
        .expect("an earlier holder's release leaves the new holder's lease alone");
    assert_eq!(kept, second, "{}", b.backend());
}

/// A release lets the next holder in at once; tokens grow with every change of holder.
async fn release_frees_the_lease_at_once(open: &impl OpenLease) {
    let (a, b, c) = (
        open("released").await,
        open("released").await,
        open("released").await,
    );
    // Releasing what one does not hold is harmless.
    c.release("holder-c").await.unwrap();
    let first = a.acquire("holder-a").await.unwrap().expect("free lease");
    c.release("holder-c").await.unwrap();
    assert_eq!(
        b.acquire("holder-b").await.unwrap(),
        None,
        "{}",
        a.backend()
    );
    a.release("holder-a").await.unwrap();
    let second = b
        .acquire("holder-b")
        .await
        .unwrap()
        .expect("a released lease is free at once");
    assert!(second > first, "{}: {second} <= {first}", b.backend());
    assert_eq!(
        a.acquire("holder-a").await.unwrap(),
        None,
        "{}",
        a.backend()
    );
    b.release("holder-b").await.unwrap();
    let third = a
        .acquire("holder-a")
        .await
        .unwrap()
        .expect("released again, taken again");
    assert!(third > second, "{}: {third} <= {second}", a.backend());
}

/// Five processes trying at the same moment: exactly one gets the lease.
async fn concurrent_takers_get_one_lease(open: &impl OpenLease) {
    let leases = join_all((0..5).map(|_| open("contended"))).await;
    let holders: Vec<String> = (0..5).map(|n| format!("holder-{n}")).collect();
    let tokens = join_all(
        leases
            .iter()
            .zip(&holders)
            .map(|(lease, holder)| lease.acquire(holder)),
    )
    .await;
    let winners: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter_map(|(n, token)| token.as_ref().unwrap().map(|_| n))
        .collect();
    assert_eq!(winners.len(), 1, "{}: {tokens:?}", leases[0].backend());
    let winner = winners[0];
    for (n, (lease, holder)) in leases.iter().zip(&holders).enumerate() {
        let token = lease.acquire(holder).await.unwrap();
        assert_eq!(
            token.is_some(),
            n == winner,
            "{}: {holder}",
            lease.backend()
        );
    }
}

/// Tries `holder` every 50 ms until it takes the lease; returns its token and how long after
/// `since` that was. Fails after [`TAKEOVER_WITHIN`].
async fn take_when_free(lease: &dyn Lease, holder: &str, since: Instant) -> (u64, Duration) {
    loop {
        if let Some(token) = lease.acquire(holder).await.unwrap() {
            return (token, since.elapsed());
        }
        assert!(
            since.elapsed() < TAKEOVER_WITHIN,
            "{}: {holder} did not get the lease within {TAKEOVER_WITHIN:?}",
            lease.backend()
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// `TEST_NATS_URL` when the test script set it, else a nats-server of the test's own (kept
/// alive by the caller).
async fn nats() -> Option<(String, Option<NatsServer>)> {
    match std::env::var("TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => Some((url, None)),
        _ => {
            let server = NatsServer::start().await?;
            Some((server.url(), Some(server)))
        }
    }
}

async fn kv_lease(url: &str, config: &JetStreamConfig, name: &str, ttl: Duration) -> KvLease {
    let bus = JetStreamBus::connect(url, config.clone())
        .await
        .expect("connect to nats-server");
    bus.lease(name, ttl).await.expect("open the KV lease")
}

/// The raw JetStream view of the lease bucket, to look at what the server holds.
async fn lease_stream(url: &str, config: &JetStreamConfig) -> async_nats::jetstream::stream::Info {
    let client = async_nats::connect(url)
        .await
        .expect("connect to nats-server");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(format!("KV_{}-leases", config.prefix))
        .await
        .expect("the lease bucket exists");
    stream.info().await.expect("lease bucket info").clone()
}

#[tokio::test]
async fn lease_conformance_nats_kv() {
    let Some((url, _server)) = nats().await else {
        return;
    };
    let config = fast_jetstream_config();
    conformance(|name| {
        let (url, config) = (url.clone(), config.clone());
        async move { Arc::new(kv_lease(&url, &config, name, TTL).await) as Arc<dyn Lease> }
    })
    .await;
    let bucket = lease_stream(&url, &config).await.config;
    assert_eq!(
        (bucket.max_age, bucket.max_messages_per_subject),
        (TTL, 1),
        "the bucket expires unrenewed values after the ttl and keeps no history"
    );
}

#[tokio::test]
async fn lease_conformance_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/autopilot.db", dir.path().display());
    conformance(|name| {
        let url = url.clone();
        async move { store_lease(&url, name).await }
    })
    .await;
}

#[tokio::test]
async fn lease_conformance_postgres() {
    let Some(url) = components::fresh_postgres_database().await else {
        return;
    };
    conformance(|name| {
        let url = url.clone();
        async move { store_lease(&url, name).await }
    })
    .await;
}

async fn store_lease(url: &str, name: &str) -> Arc<dyn Lease> {
    let store = autopilot_control_plane::store::connect(url)
        .await
        .expect("open the store");
    Arc::new(StoreLease::new(store, name, TTL))
}

/// A server that comes back without its store has lost the lease: the holder steps down (or
/// cannot reach the server yet), a holder takes it again once the server is back, and its token
/// is still larger than any before (the bucket is created again starting high, see `KvLease`).
#[tokio::test]
async fn kv_lease_after_nats_server_lost_its_store() {
    let Some(mut server) = NatsServer::start().await else {
        return;
    };
    let config = fast_jetstream_config();
    let a = kv_lease(&server.url(), &config, "scheduler", TTL * 2).await;
    let b = kv_lease(&server.url(), &config, "scheduler", TTL * 2).await;
    let first = a.acquire("holder-a").await.unwrap().expect("free lease");

    server
        .restart_without_store()
        .await
        .expect("restart nats-server");
    match a.acquire("holder-a").await {
        Ok(None) | Err(LeaseError::Unavailable(_)) => {}
        Ok(Some(token)) => panic!("the lease went with the store, yet renewed as {token}"),
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        match b.acquire("holder-b").await {
            Ok(Some(token)) => break token,
            other => eprintln!("not yet: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "nobody could take the lease after the restart"
        );
        sleep(Duration::from_millis(200)).await;
    };
    assert!(
        second > first,
        "tokens keep growing after the server lost its store: {second} <= {first}"
    );
    assert_eq!(a.acquire("holder-a").await.unwrap(), None);
}

/// The server remembers the last revision of a bucket that `max_age` emptied, across a restart
/// with its store: tokens keep growing.
#[tokio::test]
async fn kv_lease_tokens_grow_across_a_restart_with_an_empty_bucket() {
    let Some(mut server) = NatsServer::start().await else {
        return;
    };
    let config = fast_jetstream_config();
    let a = kv_lease(&server.url(), &config, "scheduler", TTL).await;
    let first = a.acquire("holder-a").await.unwrap().expect("free lease");
    let deadline = Instant::now() + TAKEOVER_WITHIN;
    while lease_stream(&server.url(), &config).await.state.messages > 0 {
        assert!(Instant::now() < deadline, "the value never expired");
        sleep(Duration::from_millis(50)).await;
    }

    let bucket = lease_stream(&server.url(), &config).await;

    server.restart().await.expect("restart nats-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        match a.acquire("holder-b").await {
            Ok(Some(token)) => break token,
            other => eprintln!("not yet: {other:?}"),
        }
        assert!(Instant::now() < deadline, "the lease stayed unavailable");
        sleep(Duration::from_millis(200)).await;
    };
    assert!(second > first, "{second} <= {first}");
    // The same bucket, not one set up again (which would start high anyway).
    let after = lease_stream(&server.url(), &config).await;
    assert_eq!(after.created, bucket.created);
    assert_eq!(after.state.first_sequence, second, "{:?}", after.state);
}

/// With the server gone, renewing fails at once with a message naming the URL and what to start,
/// and so does opening a lease. The failed renewal was a step down: once the server is back, the
/// holder starts a new tenure with a new token (its value, which outlived the restart, names it).
#[tokio::test]
async fn kv_lease_without_a_server_says_what_to_start() {
    let Some(mut server) = NatsServer::start().await else {
        return;
    };
    let url = server.url();
    let config = fast_jetstream_config();
    let bus = JetStreamBus::connect(&url, config).await.unwrap();
    // Long enough for the value to outlive the restart below.
    let lease = bus.lease("scheduler", TTL * 10).await.unwrap();
    let first = lease
        .acquire("holder-a")
        .await
        .unwrap()
        .expect("free lease");

    server.kill();
    let renewal = tokio::time::timeout(Duration::from_secs(10), lease.acquire("holder-a"))
        .await
        .expect("a renewal gives up within its timeout");
    match renewal {
        Err(LeaseError::Unavailable(message)) => {
            assert!(message.contains(&url), "{message}");
            assert!(message.contains("nats-server"), "{message}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    match bus.lease("another", TTL * 10).await {
        Err(BusError::Unavailable(message)) => {
            assert!(message.contains(&url), "{message}");
            assert!(message.contains("nats-server"), "{message}");
        }
        other => panic!("expected unavailable, got {:?}", other.err()),
    }

    server.restart().await.expect("restart nats-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    let again = loop {
        match lease.acquire("holder-a").await {
            Ok(Some(token)) => break token,
            other => eprintln!("not yet: {other:?}"),
        }
        assert!(Instant::now() < deadline, "the lease stayed unavailable");
        sleep(Duration::from_millis(200)).await;
    };
    assert!(again > first, "{again} <= {first}");
}

/// A holder that forgot its revision (here: the same holder id in a new process) takes its own
/// lease back as a new tenure, and the copy that remembers the old revision steps down.
#[tokio::test]
async fn kv_lease_same_holder_in_a_new_process_takes_it_back() {
    let Some((url, _server)) = nats().await else {
        return;
    };
    let config = fast_jetstream_config();
    let before = kv_lease(&url, &config, "scheduler", TTL * 5).await;
    let after = kv_lease(&url, &config, "scheduler", TTL * 5).await;
    let other = kv_lease(&url, &config, "scheduler", TTL * 5).await;
    let first = before.acquire("holder-a").await.unwrap().expect("free");
    let second = after
        .acquire("holder-a")
        .await
        .unwrap()
        .expect("the value names this holder");
    assert!(second > first, "{second} <= {first}");
    assert_eq!(before.acquire("holder-a").await.unwrap(), None);
    assert_eq!(other.acquire("holder-b").await.unwrap(), None);
    assert_eq!(after.acquire("holder-a").await.unwrap(), Some(second));
}

/// A name that is not a key token, or a TTL under a second, is refused naming the setting.
#[tokio::test]
async fn kv_lease_validates_its_settings() {
    let Some((url, _server)) = nats().await else {
        return;
    };
    let bus = JetStreamBus::connect(&url, fast_jetstream_config())
        .await
        .unwrap();
    for (name, ttl, field) in [
        ("", TTL, "name"),
        ("sched.uler", TTL, "name"),
        ("sched uler", TTL, "name"),
        ("scheduler", Duration::from_millis(500), "ttl"),
    ] {
        match bus.lease(name, ttl).await {
            Err(BusError::InvalidConfig(message)) => {
                assert!(message.contains(field), "{name:?} {ttl:?}: {message}")
            }
            other => panic!(
                "{name:?} {ttl:?}: expected invalid config, got {:?}",
                other.err()
            ),
        }
    }
}

/// Several processes opening the lease of a new deployment at once all succeed; one opened with
/// another TTL brings the bucket's expiry to it, and the leases keep working.
#[tokio::test]
async fn kv_lease_setup_is_concurrent_and_follows_the_ttl() {
    let Some((url, _server)) = nats().await else {
        return;
    };
    let config = fast_jetstream_config();
    let leases = join_all((0..5).map(|_| kv_lease(&url, &config, "scheduler", TTL))).await;
    assert_eq!(lease_stream(&url, &config).await.config.max_age, TTL);
    let first = leases[0]
        .acquire("holder-a")
        .await
        .unwrap()
        .expect("free lease");

    let longer = kv_lease(&url, &config, "scheduler", TTL * 3).await;
    assert_eq!(lease_stream(&url, &config).await.config.max_age, TTL * 3);
    assert_eq!(longer.ttl(), TTL * 3);
    assert_eq!(longer.acquire("holder-b").await.unwrap(), None);
    assert_eq!(leases[0].acquire("holder-a").await.unwrap(), Some(first));
}
