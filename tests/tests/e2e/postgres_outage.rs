//! PostgreSQL going away under a webhook load: restarted (stopped as a crash would, then
//! started), and every connection dropped at once (a failover or a proxy restart). While it is
//! gone deliveries wait or are refused with 503, never accepted and lost; afterwards intake
//! comes back without restarting Autopilot.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autopilot_tests::harness::TestServer;
use autopilot_tests::postgres::PrivatePostgres;
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Tally {
    accepted: Vec<(Instant, String)>,
    refused: Vec<Instant>,
    other: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_refused_not_lost_while_postgres_restarts_or_drops_connections() {
    let Some(postgres) = PrivatePostgres::start() else {
        return;
    };
    let server = Arc::new(
        TestServer::builder()
            .database_url(postgres.fresh_database().await)
            .start()
            .await,
    );
    let webhook = server
        .create_webhook(json!({
            "name": "steady",
            "prompt_template": "Look at {{payload.n}}",
            "pool": "nowhere",
            "rate_limit": { "per_second": 1_000_000, "burst": 1_000_000 },
        }))
        .await;
    let url = webhook["url"].as_str().unwrap().to_owned();

    // Four senders, one delivery at a time each, for the whole test.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = CancellationToken::new();
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (server, url, tally, stop) = (
                Arc::clone(&server),
                url.clone(),
                Arc::clone(&tally),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.is_cancelled() {
                    n += 1;
                    let body = json!({ "n": format!("{sender}-{n}") }).to_string();
                    let id = format!("{sender}-{n}");
                    let (status, _, answer) = server
                        .deliver(
                            &url,
                            &[
                                ("content-type", "application/json"),
                                ("idempotency-key", &id),
                            ],
                            body,
                        )
                        .await;
                    {
                        let mut tally = tally.lock().unwrap();
                        match status {
                            StatusCode::ACCEPTED => tally.accepted.push((
                                Instant::now(),
                                answer["run_id"].as_str().unwrap().to_owned(),
                            )),
                            StatusCode::SERVICE_UNAVAILABLE => tally.refused.push(Instant::now()),
                            other => tally.other.push(format!("{other}: {answer}")),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let accepted_since = |at: Instant| {
        tally
            .lock()
            .unwrap()
            .accepted
            .iter()
            .filter(|(when, _)| *when > at)
            .count()
    };
    let wait_for_intake = |since: Instant| async move {
        let deadline = since + Duration::from_secs(30);
        while accepted_since(since) == 0 {
            assert!(
                Instant::now() < deadline,
                "intake did not come back within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        since.elapsed()
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(accepted_since(Instant::now() - Duration::from_secs(1)) > 0);

    // A restart: down for 3 s, as after a crash.
    let down_at = Instant::now();
    postgres.stop_immediately();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused_while_down = tally
        .lock()
        .unwrap()
        .refused
        .iter()
        .filter(|when| **when > down_at)
        .count();
    let up_at = Instant::now();
    postgres.start_again();
    let after_restart = wait_for_intake(up_at).await;

    // Every connection dropped at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dropped_at = Instant::now();
    let dropped = postgres.drop_connections().await;
    let after_drop = wait_for_intake(dropped_at).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    for sender in senders {
        sender.await.unwrap();
    }

    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "postgres outage: {} accepted, {} refused (503; {refused_while_down} while down), \
         intake back {after_restart:?} after the restart, {after_drop:?} after {dropped} \
         connections were dropped",
        tally.accepted.len(),
        tally.refused.len()
    );
    // A delivery that arrives while PostgreSQL is away either waits for a connection (up to the
    // pool's acquire timeout) and is then stored, or is refused with 503: nothing else.
    assert!(
        tally.other.is_empty(),
        "only 202 or 503, got {} others, the first: {:?}",
        tally.other.len(),
        tally.other.first()
    );
    // Nothing acknowledged was lost.
    for (_, run_id) in &tally.accepted {
        let run = server.run(run_id).await;
        assert_eq!(run["id"], run_id.as_str(), "{run}");
    }
}
