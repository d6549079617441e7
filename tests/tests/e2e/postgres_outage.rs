//! PostgreSQL restarted and its connections dropped under a webhook load, in its short form (the
//! scenario is `autopilot_tests::chaos::postgres_outage`; `bench chaos` runs it longer).

use std::time::Duration;

use autopilot_tests::chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_refused_not_lost_while_postgres_restarts_or_drops_connections() {
    let Some(finding) = chaos::postgres_outage(Duration::from_secs(3)).await else {
        return;
    };
    eprintln!("{}", finding.row());
    assert!(finding.held(), "{finding:?}");
}
