//! What the dashboard keeps and reads beyond jobs and runs: operator sessions and usage totals.

use chrono::{DateTime, Utc};

/// A signed-in browser. The cookie carries the session id; the store keeps only its digest.
#[derive(Clone, Debug, PartialEq)]
pub struct DashboardSession {
    /// Hex SHA-256 of the session id.
    pub id_hash: String,
    /// The token each state-changing form of this session carries (`_csrf`).
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// How usage is added up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGroup {
    /// By UTC day of the run's creation (`2026-12-07`).
    Day,
    /// By job name (runs without a job: quick runs and webhook-only runs, under `""`).
    Job,
    /// By the models a run used, as the run lists them (`["claude-sonnet-4-5"]`).
    Model,
    /// By who paid: `api` (billed), `subscription` (the CLI's estimate), `none` (not a Claude
    /// run).
    Billing,
}

/// Runs, tokens and cost of one group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageTotals {
    pub label: String,
    pub runs: u64,
    pub cost_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl UsageTotals {
    /// The share of input tokens read from the prompt cache (0 when there were none).
    pub fn cache_hit_rate(&self) -> f64 {
        let input = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens;
        if input == 0 {
            return 0.0;
        }
        self.cache_read_tokens as f64 / input as f64
    }

    /// Adds another group's totals to these.
    pub fn add(&mut self, other: &UsageTotals) {
        self.runs += other.runs;
        self.cost_usd += other.cost_usd;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
    }
}
