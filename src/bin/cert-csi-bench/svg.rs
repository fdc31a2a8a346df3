//! Hand-written SVG bar charts; two plots do not justify a plotting crate.

use std::fmt::Write;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
const COLORS: [&str; 5] = ["#4477aa", "#66ccee", "#228833", "#ccbb44", "#ee6677"];

/// A bar chart: one bar per series in each group.
pub struct Chart<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub series: &'a [&'a str],
    /// `(group label, one value per series)`.
    pub groups: &'a [(String, Vec<f64>)],
    /// A horizontal line across the chart, e.g. a rate limit.
    pub line: Option<(&'a str, f64)>,
    /// Groups `[from, to)` shaded behind the bars, e.g. a jitter window.
    pub band: Option<(&'a str, usize, usize)>,
    /// Label only every n-th group on the x axis (1 labels all).
    pub label_every: usize,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round axis maximum at or above `max` (1, 2 or 5 times a power of ten).
pub fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * magnitude)
}

pub fn render(chart: &Chart<'_>) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let data_max = chart
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .chain(chart.line.map(|(_, v)| v))
        .fold(0.0, f64::max);
    let y_max = nice_max(data_max * 1.05);
    let y = |v: f64| TOP + plot_h - (v / y_max) * plot_h;
    let n = chart.groups.len().max(1) as f64;
    let group_w = plot_w / n;
    let bar_w = (group_w * 0.8 / chart.series.len().max(1) as f64).max(0.5);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(chart.title)
    );
    if let Some((label, from, to)) = chart.band {
        let x0 = LEFT + from as f64 * group_w;
        let x1 = LEFT + (to.min(chart.groups.len())) as f64 * group_w;
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#eeeeee"/><text x="{:.1}" y="{}" fill="#777777">{}</text>"##,
            (x1 - x0).max(0.0),
            x0 + 4.0,
            TOP + 14.0,
            escape(label)
        );
    }
    // Y axis with five ticks.
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            trim(v),
            y = y(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(chart.y_label)
    );
    for (g, (label, values)) in chart.groups.iter().enumerate() {
        let gx = LEFT + g as f64 * group_w + group_w * 0.1;
        for (i, v) in values.iter().enumerate() {
            let top = y(*v);
            let _ = writeln!(
                s,
                r#"<rect x="{:.2}" y="{top:.2}" width="{bar_w:.2}" height="{:.2}" fill="{}"><title>{} {}: {}</title></rect>"#,
                gx + i as f64 * bar_w,
                (TOP + plot_h - top).max(0.0),
                COLORS[i % COLORS.len()],
                escape(label),
                escape(chart.series.get(i).copied().unwrap_or("")),
                trim(*v)
            );
        }
        if g % chart.label_every.max(1) == 0 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                LEFT + (g as f64 + 0.5) * group_w,
                TOP + plot_h + 16.0,
                escape(label)
            );
        }
    }
    if let Some((label, v)) = chart.line {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{yv:.1}" y2="{yv:.1}" stroke="#cc3311" stroke-width="2" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" fill="#cc3311">{}</text>"##,
            WIDTH - RIGHT,
            WIDTH - RIGHT - 4.0,
            y(v) - 5.0,
            escape(label),
            yv = y(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="black"/><line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="black"/>"#,
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h,
        TOP + plot_h
    );
    // Legend, when there is more than one series.
    if chart.series.len() > 1 {
        for (i, name) in chart.series.iter().enumerate() {
            let x = LEFT + i as f64 * 150.0;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                HEIGHT - 28.0,
                COLORS[i % COLORS.len()],
                x + 16.0,
                HEIGHT - 18.0,
                escape(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(10.0), 10.0);
        assert_eq!(nice_max(11.0), 20.0);
        assert_eq!(nice_max(0.07), 0.1);
    }

    #[test]
    fn chart_is_one_svg_element_with_escaped_text() {
        let groups = vec![
            ("a<b".to_string(), vec![1.0, 2.0]),
            ("c".into(), vec![3.0, 0.5]),
        ];
        let svg = render(&Chart {
            title: "t & u",
            y_label: "ms",
            series: &["p50", "p99"],
            groups: &groups,
            line: Some(("limit 2/s", 2.0)),
            band: Some(("window", 0, 1)),
            label_every: 1,
        });
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(svg.contains("t &amp; u") && svg.contains("a&lt;b"));
        assert!(!svg.contains("a<b"));
        // Four bars, the background, the band and two legend swatches.
        assert_eq!(svg.matches("<rect").count(), 4 + 1 + 1 + 2);
        assert!(svg.contains("limit 2/s"));
    }
}
