//! `bench chaos [SECONDS] [--write]`: the chaos scenarios of `autopilot_tests::chaos` in their
//! long form (each fault held or followed by SECONDS of load), printed as RELIABILITY.md's
//! table; with `--write`, that table replaces the one between the chaos markers of
//! RELIABILITY.md in the current directory.

use std::time::Duration;

use anyhow::Context;
use autopilot_tests::chaos::{self, Finding, LeaderFault, WorkerFault, TABLE_HEADING};

const BEGIN: &str = "<!-- chaos:begin (written by `bench chaos --write`) -->";
const END: &str = "<!-- chaos:end -->";

pub async fn run(seconds: u64, write: bool) -> anyhow::Result<()> {
    let long = Duration::from_secs(seconds);
    let mut findings: Vec<Finding> = Vec::new();
    eprintln!("chaos: the scheduler's leader killed, then paused, under 50 per-second jobs…");
    for fault in [LeaderFault::Kill, LeaderFault::Pause] {
        findings.extend(chaos::leader_failover(fault, 50, long).await);
    }
    let between = (long / 3).max(Duration::from_secs(2));
    eprintln!(
        "chaos: a rolling restart of the control planes, {} s apart…",
        between.as_secs()
    );
    findings.extend(chaos::rolling_restart(50, between).await);
    let isolated = long.max(Duration::from_secs(25));
    eprintln!(
        "chaos: a worker paused, then cut off from NATS, for {} s mid-run…",
        isolated.as_secs()
    );
    for fault in [WorkerFault::Pause, WorkerFault::Partition] {
        findings.extend(chaos::worker_isolated(fault, isolated).await);
    }
    eprintln!("chaos: NATS down for {seconds} s under a run load…");
    findings.extend(chaos::nats_outage(long).await);
    eprintln!("chaos: PostgreSQL down for {seconds} s under webhook load…");
    findings.extend(chaos::postgres_outage(long).await);
    eprintln!("chaos: the SQLite disk full for {seconds} s under webhook load…");
    findings.extend(chaos::disk_full(long).await);

    let date = chrono::Utc::now().format("%Y-%m-%d");
    let mut table = format!(
        "{BEGIN}\n\n`bench chaos {seconds}` on {date} (this machine: 2 cores):\n\n{TABLE_HEADING}\n"
    );
    for finding in &findings {
        table.push_str(&finding.row());
        table.push('\n');
    }
    table.push_str(&format!("\n{END}"));
    println!("\n{table}");
    let broken: Vec<&Finding> = findings.iter().filter(|f| !f.held()).collect();
    if write {
        let path = "RELIABILITY.md";
        let text = std::fs::read_to_string(path)
            .context("read RELIABILITY.md (run from the repository)")?;
        let (start, end) = match (text.find(BEGIN), text.find(END)) {
            (Some(start), Some(end)) if start < end => (start, end + END.len()),
            _ => anyhow::bail!("RELIABILITY.md has no chaos markers ({BEGIN} … {END})"),
        };
        std::fs::write(path, format!("{}{table}{}", &text[..start], &text[end..]))?;
        eprintln!("wrote the table into {path}");
    }
    anyhow::ensure!(
        broken.is_empty(),
        "{} scenario(s) broke a promise: {broken:#?}",
        broken.len()
    );
    Ok(())
}
