//! Live cost estimates from per-message token usage, used to stop a run that passes its budget
//! before the CLI's own final figure arrives. The recorded cost is always the CLI's
//! `total_cost_usd`; these prices only decide when to stop.

use autopilot_proto::TokenUsage;

/// USD per million tokens: input, output, cache write, cache read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

const fn prices(input: f64, output: f64, cache_read: f64, cache_write: f64) -> Prices {
    Prices {
        input,
        output,
        cache_write,
        cache_read,
    }
}

/// The most expensive family: what an unknown model is priced at.
const MOST_EXPENSIVE: Prices = prices(15.0, 75.0, 1.5, 18.75);

/// Model id fragments and their prices, most specific first. Checked against the prices the
/// CLI itself applies (tests/fixtures/stream-json/NOTES.md).
const TABLE: &[(&str, Prices)] = &[
    ("opus-5", prices(4.0, 20.0, 0.2, 5.0)),
    ("fable-5", prices(8.0, 40.0, 0.2, 10.0)),
    ("opus-4-6", prices(5.0, 25.0, 0.5, 6.25)),
    ("opus-4-5", prices(5.0, 25.0, 0.5, 6.25)),
    ("opus", MOST_EXPENSIVE),
    ("sonnet-5", prices(2.0, 10.0, 0.1, 2.5)),
    ("sonnet", prices(3.0, 15.0, 0.3, 3.75)),
    ("haiku-5", prices(0.1, 0.5, 0.01, 0.125)),
    ("3-5-haiku", prices(0.8, 4.0, 0.08, 1.0)),
    ("haiku", prices(1.0, 5.0, 0.1, 1.25)),
];

/// Prices for a model id. Unknown models are priced like the most expensive family, so a budget
/// is never overrun because of a model this table has not heard of.
pub fn prices_for(model: &str) -> Prices {
    let model = model.to_ascii_lowercase();
    TABLE
        .iter()
        .find(|(fragment, _)| model.contains(fragment))
        .map_or(MOST_EXPENSIVE, |(_, prices)| *prices)
}

pub fn cost_usd(model: &str, usage: &TokenUsage) -> f64 {
    let prices = prices_for(model);
    let per_token = |count: u64, per_million: f64| count as f64 * per_million / 1_000_000.0;
    per_token(usage.input_tokens, prices.input)
        + per_token(usage.output_tokens, prices.output)
        + per_token(usage.cache_write_tokens, prices.cache_write)
        + per_token(usage.cache_read_tokens, prices.cache_read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sonnet_costs_follow_the_published_prices() {
        let usage = TokenUsage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        };
        let cost = cost_usd("claude-sonnet-4-5-20250929", &usage);
        assert!((cost - 4.5).abs() < 1e-9, "{cost}");
        assert_eq!(prices_for("some-future-model"), MOST_EXPENSIVE);
        // The CLI's own figure for 2,500 input and 52 output tokens on its default model.
        let usage = TokenUsage {
            input_tokens: 2500,
            output_tokens: 52,
            ..Default::default()
        };
        assert!((cost_usd("claude-opus-5-5", &usage) - 0.01104).abs() < 1e-12);
    }
}
