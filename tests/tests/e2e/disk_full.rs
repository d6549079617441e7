//! The disk filling up under the embedded SQLite store: deliveries are refused with 503 and the
//! reason while there is no space, nothing acknowledged is lost or half-written, and intake
//! comes back by itself once space returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use autopilot_tests::harness::TestServer;
use reqwest::StatusCode;
use serde_json::json;

/// A small tmpfs of the test's own, so "the disk is full" is this test's alone.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    /// Mounts `size` of tmpfs (needs root, as CI runs); `None` where mounting is not possible
    /// and components may be skipped.
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
                autopilot_tests::components::missing(
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
        loop {
            if file
                .write_all(&block)
                .and_then(|_| file.sync_all())
                .is_err()
            {
                break;
            }
        }
        // The last partial blocks too.
        while file.write_all(&[0u8; 512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

fn integrity(db: &Path) -> String {
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('PRAGMA integrity_check').fetchone()[0]); print(c.execute('SELECT COUNT(*) FROM runs').fetchone()[0])")
        .arg(db)
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_deliveries_with_503_loses_nothing_and_recovers() {
    let Some(disk) = SmallDisk::mount("24m") else {
        return;
    };
    let data = Arc::new(tempfile::tempdir_in(&disk.mount).unwrap());
    let server = TestServer::builder()
        .sqlite()
        .data_dir(Arc::clone(&data))
        .start()
        .await;
    let webhook = server
        .create_webhook(json!({
            "name": "full",
            "prompt_template": "Look at {{payload.n}}",
            "pool": "nowhere",
        }))
        .await;
    let url = webhook["url"].as_str().unwrap().to_owned();
    let deliver = |n: usize| {
        let (server, url) = (&server, url.clone());
        async move {
            server
                .deliver(
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("idempotency-key", &format!("d-{n}")),
                    ],
                    json!({ "n": n, "padding": "p".repeat(2000) }).to_string(),
                )
                .await
        }
    };

    let mut accepted = Vec::new();
    for n in 0..20 {
        let (status, _, body) = deliver(n).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        accepted.push(body["run_id"].as_str().unwrap().to_owned());
    }

    let filler = disk.fill();
    // The WAL may still have room from earlier writes: go on until the disk says no.
    let mut refused = None;
    for n in 20..5_000 {
        let (status, _, body) = deliver(n).await;
        match status {
            StatusCode::ACCEPTED => accepted.push(body["run_id"].as_str().unwrap().to_owned()),
            StatusCode::SERVICE_UNAVAILABLE => {
                refused = Some(body);
                break;
            }
            other => panic!("delivery {n} answered {other}: {body}"),
        }
    }
    let refused = refused.expect("a full disk refuses deliveries");
    let reason = refused.to_string().to_lowercase();
    assert!(
        reason.contains("full"),
        "the refusal says the disk is full: {refused}"
    );
    // Still refused, still answering, not crashed.
    let (status, _, _) = deliver(9_999).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, health) = server.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "{health}");

    // Space returns: intake goes on by itself.
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for n in 10_000..10_050 {
        let (status, _, body) = deliver(n).await;
        if status == StatusCode::ACCEPTED {
            accepted.push(body["run_id"].as_str().unwrap().to_owned());
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "deliveries are accepted again once space returns"
    );

    // Every acknowledged run is there, readable.
    for run_id in &accepted {
        let run = server.run(run_id).await;
        assert_eq!(run["id"], run_id.as_str(), "{run}");
    }
    server.stop().await.unwrap();
    let db = data.path().join("autopilot.db");
    let report = integrity(&db);
    let mut lines = report.lines();
    assert_eq!(lines.next(), Some("ok"), "integrity check: {report}");
    let runs: usize = lines.next().unwrap_or("0").parse().unwrap();
    assert_eq!(
        runs,
        accepted.len(),
        "runs stored against deliveries answered 202"
    );
}
