//! The throughput chart: an inline SVG drawn on the server, one line per
//! outcome, one point per minute.

use maud::{Markup, html};

/// The series drawn, in the order of a point's counts, with their CSS class.
pub(super) const SERIES: [(&str, &str); 4] = [
    ("started", "s-started"),
    ("succeeded", "s-succeeded"),
    ("failed", "s-failed"),
    ("dead", "s-dead"),
];

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 22.0;

/// A round number at least `n` (1, 2, 5 × a power of ten).
fn nice_ceiling(n: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            let v = step.saturating_mul(m);
            if v >= n || v == u64::MAX {
                return v;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// Half of a round number, as the middle gridline's label ("2.5").
fn half(top: u64) -> String {
    if top.is_multiple_of(2) {
        (top / 2).to_string()
    } else {
        format!("{}.5", top / 2)
    }
}

/// The chart of `minutes` (oldest first, one entry per minute).
pub(super) fn throughput(minutes: &[[u64; 4]]) -> Markup {
    let n = minutes.len().max(2);
    let peak = minutes
        .iter()
        .flat_map(|m| m.iter())
        .copied()
        .max()
        .unwrap_or(0);
    let top = nice_ceiling(peak.max(1));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    #[allow(clippy::cast_precision_loss)] // counts and indices far below 2^52
    let x = |i: usize| LEFT + plot_w * i as f64 / (n - 1) as f64;
    #[allow(clippy::cast_precision_loss)]
    let y = |v: u64| TOP + plot_h * (1.0 - v as f64 / top as f64);
    let line = |series: usize| -> String {
        minutes
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{:.1},{:.1}", x(i), y(m[series])))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let totals: Vec<u64> = (0..4).map(|s| minutes.iter().map(|m| m[s]).sum()).collect();
    let label = format!(
        "Jobs per minute over the last {} minutes: {}",
        minutes.len(),
        SERIES
            .iter()
            .zip(&totals)
            .map(|((name, _), t)| format!("{t} {name}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let view_box = format!("0 0 {WIDTH} {HEIGHT}");
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(view_box) role="img" aria-label=(label) {
                title { (label) }
                @for frac in [0.0, 0.5, 1.0] {
                    line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(TOP + plot_h * frac) y2=(TOP + plot_h * frac) {}
                }
                text.axis x=(LEFT - 4.0) y=(TOP + 4.0) text-anchor="end" { (top) }
                text.axis x=(LEFT - 4.0) y=(TOP + plot_h / 2.0 + 4.0) text-anchor="end" { (half(top)) }
                text.axis x=(LEFT - 4.0) y=(TOP + plot_h + 4.0) text-anchor="end" { "0" }
                text.axis x=(LEFT) y=(HEIGHT - 6.0) { "−" (minutes.len()) " min" }
                text.axis x=(WIDTH - RIGHT) y=(HEIGHT - 6.0) text-anchor="end" { "now" }
                @for (i, (_, class)) in SERIES.iter().enumerate() {
                    polyline class=(format!("series {class}")) points=(line(i)) {}
                }
            }
            figcaption {
                @for ((name, class), total) in SERIES.iter().zip(&totals) {
                    span.legend { span class=(format!("swatch {class}")) {} (name) " " strong { (total) } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_round_and_the_svg_has_a_line_per_series() {
        assert_eq!(
            [0, 1, 3, 7, 10, 11, 40, 999].map(nice_ceiling),
            [1, 1, 5, 10, 10, 20, 50, 1000]
        );
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
        assert_eq!([1, 2, 5, 10].map(half), ["0.5", "1", "2.5", "5"]);
        let svg = throughput(&[[0, 0, 0, 0], [4, 3, 1, 0]]).into_string();
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(
            svg.contains("4 started, 3 succeeded, 1 failed, 0 dead"),
            "{svg}"
        );
        // An empty hour still draws.
        assert!(throughput(&[]).into_string().contains("<svg"));
    }
}
