//! Charts drawn here as SVG, so a page needs no charting script. Labels are escaped like any
//! other text.

use std::fmt::Write;

use super::format::escape;

/// One bar: its label (under it) and value, and the value as shown (in its title).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub shown: String,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const AXIS: f64 = 20.0;

/// A bar chart, scaled to the largest value, with `title` for assistive technology.
pub fn bar_chart(title: &str, bars: &[Bar]) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}"><title>{}</title>"#,
        escape(title),
        escape(title)
    );
    let max = bars.iter().map(|bar| bar.value).fold(0.0_f64, f64::max);
    if bars.is_empty() || max <= 0.0 {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" class="chart-empty">nothing in this period</text></svg>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let slot = WIDTH / bars.len() as f64;
    // Thin bars for long periods, never wider than a tenth of the chart.
    let bar_width = (slot * 0.8).clamp(1.0, WIDTH / 10.0);
    let label_every = (bars.len() / 12).max(1);
    for (i, bar) in bars.iter().enumerate() {
        let height = (bar.value / max) * (HEIGHT - AXIS - 4.0);
        let x = i as f64 * slot + (slot - bar_width) / 2.0;
        let y = HEIGHT - AXIS - height;
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{bar_width:.1}" height="{height:.1}"><title>{}: {}</title></rect>"#,
            escape(&bar.label),
            escape(&bar.shown)
        );
        if i % label_every == 0 {
            let _ = write!(
                svg,
                r#"<text class="chart-label" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                x + bar_width / 2.0,
                HEIGHT - 5.0,
                escape(bar.label.get(5..).unwrap_or(&bar.label))
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_labels_are_escaped() {
        let svg = bar_chart(
            "cost <by> day",
            &[
                Bar {
                    label: "2026-12-01".into(),
                    value: 1.0,
                    shown: "$1".into(),
                },
                Bar {
                    label: "<script>".into(),
                    value: 2.0,
                    shown: "$2".into(),
                },
            ],
        );
        assert!(svg.contains("cost &lt;by&gt; day"));
        assert!(!svg.contains("<script>"));
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains(r#"height="156.0""#), "{svg}");
    }
}
