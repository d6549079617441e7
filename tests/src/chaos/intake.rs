//! The chaos scenarios on one server under a steady webhook load: its PostgreSQL going away
//! and coming back, its SQLite disk filling up. Four senders count every answer; a 202 must
//! never be lost, and nothing but 202 or 503 may come back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Finding;
use crate::harness::TestServer;
use crate::postgres::PrivatePostgres;

#[derive(Default)]
struct Tally {
    accepted: Vec<(Instant, String)>,
    /// When, and the answer's error code.
    refused: Vec<(Instant, String)>,
    other: Vec<String>,
}

/// Senders delivering to a webhook of their own: see [`deliver_steadily`].
type Senders = (
    CancellationToken,
    Arc<Mutex<Tally>>,
    Vec<tokio::task::JoinHandle<()>>,
);

/// Makes a webhook named `name` and starts four senders delivering to it one at a time each,
/// counting every answer, until the token returned is cancelled; returns once they have sent
/// for a second.
async fn deliver_steadily(server: &Arc<TestServer>, name: &str) -> Senders {
    let url = webhook_url(server, name).await;
    let stop = CancellationToken::new();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let senders = (0..4)
        .map(|sender| {
            let (server, url, tally, stop) = (
                Arc::clone(server),
                url.clone(),
                Arc::clone(&tally),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.is_cancelled() {
                    n += 1;
                    let id = format!("{sender}-{n}");
                    let body = json!({ "n": id }).to_string();
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
                            StatusCode::SERVICE_UNAVAILABLE => tally.refused.push((
                                Instant::now(),
                                answer["error"]["code"].as_str().unwrap_or("").to_owned(),
                            )),
                            other => tally.other.push(format!("{other}: {answer}")),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    (stop, tally, senders)
}

/// Stops the senders of [`deliver_steadily`] and returns what they counted; any answer but 202
/// or 503 fails the scenario.
async fn stop_senders(
    stop: &CancellationToken,
    senders: Vec<tokio::task::JoinHandle<()>>,
    tally: &Mutex<Tally>,
) -> Tally {
    stop.cancel();
    for sender in senders {
        sender.await.unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        tally.other.is_empty(),
        "only 202 or 503, got {} others, the first: {:?}",
        tally.other.len(),
        tally.other.first()
    );
    tally
}

/// How many acknowledged runs the server cannot show.
async fn lost_of(server: &TestServer, accepted: &[(Instant, String)]) -> u64 {
    let mut lost = 0;
    for (_, run_id) in accepted {
        let (status, _) = server
            .call(Method::GET, &format!("/api/v1/runs/{run_id}"), None)
            .await;
        if status != StatusCode::OK {
            lost += 1;
        }
    }
    lost
}

async fn webhook_url(server: &TestServer, name: &str) -> String {
    let webhook = server
        .create_webhook(json!({
            "name": name,
            "prompt_template": "Look at {{payload.n}}",
            "pool": "nowhere",
            "rate_limit": { "per_second": 1_000_000, "burst": 1_000_000 },
        }))
        .await;
    webhook["url"].as_str().unwrap().to_owned()
}

/// Waits until a delivery after `since` was accepted; how long that took.
async fn intake_back(tally: &Mutex<Tally>, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(30);
    loop {
        if tally
            .lock()
            .unwrap()
            .accepted
            .iter()
            .any(|(when, _)| *when > since)
        {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "intake did not come back within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A webhook load on one server over a PostgreSQL of its own, which is stopped as a crash
/// would (down for `down`), started again, and later has every connection dropped at once.
/// Deliveries wait or are refused with 503 meanwhile; any other answer is a failure.
pub async fn postgres_outage(down: Duration) -> Option<Finding> {
    let postgres = PrivatePostgres::start()?;
    let server = Arc::new(
        TestServer::builder()
            .database_url(postgres.fresh_database().await)
            .start()
            .await,
    );
    let (stop, tally, senders) = deliver_steadily(&server, "steady").await;

    postgres.stop_immediately();
    tokio::time::sleep(down).await;
    let up_at = Instant::now();
    postgres.start_again();
    let after_restart = intake_back(&tally, up_at).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let dropped_at = Instant::now();
    let dropped = postgres.drop_connections().await;
    let after_drop = intake_back(&tally, dropped_at).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = stop_senders(&stop, senders, &tally).await;
    Some(Finding {
        promise: "no acknowledged delivery lost",
        fault: format!(
            "PostgreSQL stopped as in a crash for {} s and started again; then its {dropped} client connections dropped at once",
            down.as_secs()
        ),
        load: format!(
            "webhook deliveries from 4 senders: {} answered 202, {} answered 503 (none otherwise)",
            tally.accepted.len(),
            tally.refused.len()
        ),
        lost: lost_of(&server, &tally.accepted).await,
        duplicated: 0,
        missing: 0,
        stuck: 0,
        recovery: format!(
            "intake back {:.1} s after the restart, {:.2} s after the drop, without restarting Autopilot",
            after_restart.as_secs_f64(),
            after_drop.as_secs_f64()
        ),
        shown_by: "postgres_outage::deliveries_are_refused_not_lost_while_postgres_restarts_or_drops_connections",
    })
}

/// A small tmpfs of the scenario's own, so "the disk is full" touches nothing else.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    /// Mounts `size` of tmpfs (needs root, as CI runs).
    fn mount(size: &str) -> Option<SmallDisk> {
        let mount = std::env::temp_dir().join(format!("autopilot-disk-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&mount).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .status();
        match status {
            Ok(status) if status.success() => Some(SmallDisk { mount }),
            other => {
                let _ = std::fs::remove_dir(&mount);
                crate::components::missing(
                    "a tmpfs mount (root)",
                    &format!("run the tests as root to mount a small filesystem ({other:?})"),
                )
            }
        }
    }

    /// Writes a file until the filesystem has no space left.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.mount.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).and_then(|_| file.sync_all()).is_ok() {}
        while file.write_all(&[0u8; 512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// `PRAGMA integrity_check` and the count of runs, read by Python's own SQLite.
fn integrity(db: &Path) -> (String, u64) {
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('PRAGMA integrity_check').fetchone()[0]); print(c.execute('SELECT COUNT(*) FROM runs').fetchone()[0])")
        .arg(db)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = text.lines();
    let check = lines.next().unwrap_or("no answer").to_owned();
    let runs = lines.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (check, runs)
}

/// The embedded SQLite store's disk fills up under a webhook load, then space returns.
/// Deliveries must be refused with 503 naming the full disk (never half-written), and be
/// accepted again once there is space, with every acknowledged run in an intact database.
pub async fn disk_full(full_for: Duration) -> Option<Finding> {
    let disk = SmallDisk::mount("24m")?;
    let data = Arc::new(tempfile::tempdir_in(&disk.mount).unwrap());
    let server = Arc::new(
        TestServer::builder()
            .sqlite()
            .data_dir(Arc::clone(&data))
            .start()
            .await,
    );
    let (stop, tally, senders) = deliver_steadily(&server, "full").await;

    let filler = disk.fill();
    let filled_at = Instant::now();
    // The WAL may have room left from earlier writes: wait for the disk to say no.
    let first_refusal = loop {
        let refusal = tally
            .lock()
            .unwrap()
            .refused
            .iter()
            .find(|(at, _)| *at > filled_at)
            .cloned();
        if let Some((at, code)) = refusal {
            // The refusal names the reason. (Not every write is refused while the disk is full:
            // one that fits in space the WAL already has goes through, and is kept.)
            assert_eq!(code, "storage_full");
            break at;
        }
        assert!(
            filled_at.elapsed() < Duration::from_secs(30),
            "deliveries were still accepted 30 s after the disk filled up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (health, _) = server.call(Method::GET, "/healthz", None).await;
    assert_eq!(health, StatusCode::OK);
    tokio::time::sleep(full_for.saturating_sub(first_refusal - filled_at)).await;

    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    let recovered = intake_back(&tally, freed_at).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = stop_senders(&stop, senders, &tally).await;
    let lost = lost_of(&server, &tally.accepted).await;
    let server = Arc::try_unwrap(server).ok().expect("the senders are done");
    server.stop().await.unwrap();
    let (check, runs) = integrity(&data.path().join("autopilot.db"));
    assert_eq!(check, "ok", "PRAGMA integrity_check");
    // Each run stored answered 202: a refused delivery left nothing behind.
    assert_eq!(
        runs,
        tally.accepted.len() as u64,
        "runs stored against 202s"
    );
    Some(Finding {
        promise: "no acknowledged delivery lost",
        fault: format!(
            "the disk under the embedded SQLite store full for {} s, then space freed",
            full_for.as_secs()
        ),
        load: format!(
            "webhook deliveries from 4 senders: {} answered 202, {} answered 503 `storage_full`",
            tally.accepted.len(),
            tally.refused.len()
        ),
        lost,
        duplicated: 0,
        missing: 0,
        stuck: 0,
        recovery: format!(
            "intake back {:.2} s after space returned; `PRAGMA integrity_check` ok, no run of a refused delivery",
            recovered.as_secs_f64()
        ),
        shown_by: "disk_full::a_full_disk_refuses_deliveries_with_503_loses_nothing_and_recovers",
    })
}
