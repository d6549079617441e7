//! The disk filling up under the embedded SQLite store, in its short form (the scenario is
//! `autopilot_tests::chaos::disk_full`; `bench chaos` runs it longer).

use std::time::Duration;

use autopilot_tests::chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_deliveries_with_503_loses_nothing_and_recovers() {
    let Some(finding) = chaos::disk_full(Duration::from_secs(2)).await else {
        return;
    };
    eprintln!("{}", finding.row());
    assert!(finding.held(), "{finding:?}");
}
