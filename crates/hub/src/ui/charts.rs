//! Line charts drawn by the hub as inline SVG: no script, no library. Each chart carries a
//! text summary for screen readers.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use crate::fleet::PointView;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 180.0;
const PAD_LEFT: f64 = 90.0;
const PAD_BOTTOM: f64 = 28.0;
const PAD_TOP: f64 = 16.0;

/// One line of a chart.
pub struct Series<'a> {
    pub label: &'a str,
    /// CSS class giving its colour.
    pub class: &'a str,
    pub points: &'a [PointView],
}

/// A chart of `series` over `[from, to]`. `percent` fixes the scale at 0-100.
pub fn line_chart(
    id: &str,
    title: &str,
    series: &[Series<'_>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    percent: bool,
    format: impl Fn(f64) -> String,
) -> Markup {
    let max_seen = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.avg))
        .fold(0.0_f64, f64::max);
    let top = if percent {
        100.0
    } else {
        nice_ceiling(max_seen)
    };
    let span = (to - from).num_milliseconds().max(1) as f64;
    let x = |ts: DateTime<Utc>| {
        PAD_LEFT + (ts - from).num_milliseconds() as f64 / span * (WIDTH - PAD_LEFT)
    };
    let y = |v: f64| PAD_TOP + (HEIGHT - PAD_BOTTOM - PAD_TOP) * (1.0 - (v / top).clamp(0.0, 1.0));
    let summary: Vec<String> = series
        .iter()
        .map(|s| match s.points.last() {
            Some(last) => {
                let peak = s.points.iter().map(|p| p.max).fold(f64::MIN, f64::max);
                format!(
                    "{}: now {}, peak {}",
                    s.label,
                    format(last.avg),
                    format(peak)
                )
            }
            None => format!("{}: no data in this range", s.label),
        })
        .collect();
    let title_id = format!("{id}-title");
    let desc_id = format!("{id}-desc");
    html! {
        figure.chart #(id) {
            figcaption id=(title_id) { (title) }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
                aria-labelledby=(title_id) aria-describedby=(desc_id) {
                @for frac in [0.0, 0.5, 1.0] {
                    line.grid x1=(PAD_LEFT) x2=(WIDTH) y1=(y(top * frac)) y2=(y(top * frac)) {}
                    text.axis x="2" y=(y(top * frac) + 7.0) { (format(top * frac)) }
                }
                text.axis x=(PAD_LEFT) y=(HEIGHT - 4.0) { (from.format("%m-%d %H:%M")) }
                text.axis.end x=(WIDTH) y=(HEIGHT - 4.0) { (to.format("%m-%d %H:%M")) }
                @for s in series {
                    @if let Some(last) = s.points.last() {
                        polyline class={ "line " (s.class) } points=(polyline(s.points, &x, &y)) {}
                        // The latest value, visible even when the range holds one point.
                        circle class={ "dot " (s.class) } cx=(format!("{:.1}", x(last.ts))) cy=(format!("{:.1}", y(last.avg))) r="3" {}
                    }
                }
            }
            p.legend id=(desc_id) {
                @for (s, text) in series.iter().zip(&summary) {
                    span class={ "key " (s.class) } { (text) } " "
                }
            }
        }
    }
}

fn polyline(
    points: &[PointView],
    x: &impl Fn(DateTime<Utc>) -> f64,
    y: &impl Fn(f64) -> f64,
) -> String {
    let mut out = String::with_capacity(points.len() * 14);
    for p in points {
        out.push_str(&format!("{:.1},{:.1} ", x(p.ts), y(p.avg)));
    }
    out
}

/// A round number at or above `v` (1, 2 or 5 times a power of ten), for the scale's top.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_end_on_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }
}
