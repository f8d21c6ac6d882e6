//! A small, dependency-free SVG writer for `pixgate bench`'s chart: panels side by side,
//! each with logarithmic axes, ticks, labels, one polyline per series and a legend.

use std::fmt::Write as _;

/// Width of one panel, in SVG user units.
const PANEL_W: f64 = 480.0;
/// Height of the whole chart.
const HEIGHT: f64 = 490.0;
/// The plot area inside a panel: left, right, top and bottom edges.
const PLOT: (f64, f64, f64, f64) = (78.0, 460.0, 50.0, 320.0);
/// Series colours, in order (colour-blind-safe palette).
const COLOURS: [&str; 6] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9",
];

/// One logarithmic axis.
pub(crate) struct Axis {
    /// The axis title.
    pub label: String,
    /// Tick positions; `None` places them at 1, 2 and 5 times each power of ten.
    pub ticks: Option<Vec<f64>>,
    /// How a tick's value is written.
    pub format: fn(f64) -> String,
}

/// A named line of points (x, y), both positive.
pub(crate) struct Series {
    /// The name shown in the legend.
    pub name: String,
    /// The points; those not positive and finite on both axes are left out.
    pub points: Vec<(f64, f64)>,
}

/// One panel of the chart.
pub(crate) struct Panel {
    /// The title above the plot.
    pub title: String,
    /// The horizontal axis.
    pub x: Axis,
    /// The vertical axis.
    pub y: Axis,
    /// The lines drawn.
    pub series: Vec<Series>,
}

/// A standalone SVG document with `panels` side by side under `title`.
pub(crate) fn chart(title: &str, panels: &[Panel]) -> String {
    let width = PANEL_W * panels.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, "<title>{}</title>", escape(title));
    let _ = writeln!(
        out,
        r#"<rect x="0" y="0" width="{width}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        write_panel(&mut out, panel, i as f64 * PANEL_W);
    }
    out.push_str("</svg>\n");
    out
}

fn write_panel(out: &mut String, panel: &Panel, dx: f64) {
    let (l, r, t, b) = PLOT;
    let _ = writeln!(out, r#"<g class="panel" transform="translate({dx},0)">"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
        (l + r) / 2.0,
        t - 12.0,
        escape(&panel.title)
    );
    let points = |s: &Series| -> Vec<(f64, f64)> {
        let mut p: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|&(x, y)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite())
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let all: Vec<(f64, f64)> = panel.series.iter().flat_map(points).collect();
    let xr = range(all.iter().map(|p| p.0), panel.x.ticks.as_deref());
    let yr = range(all.iter().map(|p| p.1), panel.y.ticks.as_deref());
    let sx = |x: f64| l + (x.log10() - xr.0) / (xr.1 - xr.0) * (r - l);
    let sy = |y: f64| b - (y.log10() - yr.0) / (yr.1 - yr.0) * (b - t);

    // Frame, grid and ticks.
    let _ = writeln!(
        out,
        r##"<rect class="plot" x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        r - l,
        b - t
    );
    let _ = writeln!(out, r#"<g class="x-axis">"#);
    for v in ticks(xr, panel.x.ticks.as_deref()) {
        let x = sx(v);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{b}" stroke="#ddd"/><line x1="{x:.1}" y1="{b}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            b + 5.0,
            b + 18.0,
            escape(&(panel.x.format)(v))
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text></g>"#,
        (l + r) / 2.0,
        b + 38.0,
        escape(&panel.x.label)
    );
    let _ = writeln!(out, r#"<g class="y-axis">"#);
    for v in ticks(yr, panel.y.ticks.as_deref()) {
        let y = sy(v);
        let _ = writeln!(
            out,
            r##"<line x1="{l}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#ddd"/><line x1="{}" y1="{y:.1}" x2="{l}" y2="{y:.1}" stroke="#333"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            l - 5.0,
            l - 8.0,
            y + 4.0,
            escape(&(panel.y.format)(v))
        );
    }
    let _ = writeln!(
        out,
        r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle" font-size="12">{}</text></g>"#,
        l - 62.0,
        (t + b) / 2.0,
        escape(&panel.y.label)
    );

    // Data.
    if all.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data in this run</text>"##,
            (l + r) / 2.0,
            (t + b) / 2.0
        );
    }
    for (i, s) in panel.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let p = points(s);
        let _ = writeln!(
            out,
            r#"<g class="series" stroke="{colour}" fill="{colour}">"#
        );
        if p.len() > 1 {
            let coords: Vec<String> = p
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke-width="1.5" points="{}"/>"#,
                coords.join(" ")
            );
        }
        for &(x, y) in &p {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3"/>"#,
                sx(x),
                sy(y)
            );
        }
        out.push_str("</g>\n");
    }

    // Legend, below the x-axis title: two entries a row when the names are short.
    let _ = writeln!(out, r#"<g class="legend">"#);
    let columns = if panel.series.iter().all(|s| s.name.chars().count() <= 26) {
        2
    } else {
        1
    };
    for (i, s) in panel.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let x = l + (i % columns) as f64 * 195.0;
        let y = b + 62.0 + (i / columns) as f64 * 18.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/><circle cx="{}" cy="{y}" r="3" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            x + 22.0,
            x + 11.0,
            x + 28.0,
            y + 4.0,
            escape(&s.name)
        );
    }
    out.push_str("</g>\n</g>\n");
}

/// The log10 range an axis shows: the data and the explicit ticks, padded a little; one
/// decade around 1 when there is nothing.
fn range(values: impl Iterator<Item = f64>, ticks: Option<&[f64]>) -> (f64, f64) {
    let logs: Vec<f64> = values
        .chain(ticks.unwrap_or_default().iter().copied())
        .filter(|v| *v > 0.0 && v.is_finite())
        .map(f64::log10)
        .collect();
    let lo = logs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(0.3);
    let mid = (lo + hi) / 2.0;
    let (lo, hi) = (mid - span / 2.0, mid + span / 2.0);
    (lo - span * 0.08, hi + span * 0.08)
}

/// The tick values inside `range` (log10): the explicit ones, or 1, 2, 5 × 10ᵏ (only the
/// powers of ten when the range spans more than three decades, every multiple when it
/// spans less than one).
fn ticks(range: (f64, f64), explicit: Option<&[f64]>) -> Vec<f64> {
    let inside = |v: f64| v > 0.0 && v.log10() >= range.0 - 1e-9 && v.log10() <= range.1 + 1e-9;
    if let Some(t) = explicit {
        let mut t: Vec<f64> = t.iter().copied().filter(|&v| inside(v)).collect();
        t.sort_by(f64::total_cmp);
        t.dedup();
        return t;
    }
    let steps: &[f64] = if range.1 - range.0 > 3.0 {
        &[1.0]
    } else if range.1 - range.0 > 1.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    };
    let mut out = Vec::new();
    for k in (range.0.floor() as i32)..=(range.1.ceil() as i32) {
        for m in steps {
            let v = m * 10f64.powi(k);
            if inside(v) {
                out.push(v);
            }
        }
    }
    out
}

/// `text` with the characters XML gives meaning escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(label: &str, ticks: Option<Vec<f64>>) -> Axis {
        Axis {
            label: label.into(),
            ticks,
            format: |v| format!("{v}"),
        }
    }

    /// Checks that every tag closes in order and returns the element names in document
    /// order: enough XML to tell a well-formed document from a broken one.
    fn elements(svg: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("an unclosed tag") + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            assert!(!tag.contains('<'), "a tag inside a tag: {tag}");
            if tag.starts_with('?') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched </{name}>"
                );
                continue;
            }
            let name = tag
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_end_matches('/');
            names.push(name.to_string());
            if !tag.ends_with('/') {
                stack.push(name.to_string());
            }
            // Text between tags may hold entities but no bare ampersand.
            let text = &rest[..rest.find('<').unwrap_or(rest.len())];
            for (i, _) in text.match_indices('&') {
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"]
                        .iter()
                        .any(|e| text[i..].starts_with(e)),
                    "bare & in {text:?}"
                );
            }
        }
        assert!(stack.is_empty(), "unclosed elements: {stack:?}");
        names
    }

    #[test]
    fn a_chart_of_two_panels_is_well_formed_with_axes_series_and_legends() {
        let panels = [
            Panel {
                title: "latency <P2>".into(),
                x: axis("bytes", Some(vec![1e6, 6.4e7, 1e9])),
                y: axis("seconds", None),
                series: vec![
                    Series {
                        name: "pixgate".into(),
                        points: vec![(1e9, 3e-4), (1e6, 1e-4), (6.4e7, 2e-4)],
                    },
                    Series {
                        name: "shm & Pipe".into(),
                        points: vec![(1e6, 5e-5), (0.0, 1.0), (1e9, f64::NAN)],
                    },
                ],
            },
            Panel {
                title: "throughput".into(),
                x: axis("pixels", None),
                y: axis("frames per second", None),
                series: vec![],
            },
        ];
        let svg = chart("pixgate bench", &panels);
        let names = elements(&svg);
        assert_eq!(names.first().map(String::as_str), Some("svg"));
        assert!(svg.contains(r#"xmlns="http://www.w3.org/2000/svg""#));
        assert_eq!(svg.matches(r#"class="panel""#).count(), 2);
        assert_eq!(svg.matches(r#"class="x-axis""#).count(), 2);
        assert_eq!(svg.matches(r#"class="legend""#).count(), 2);
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 1);
        // Three points of the first series, one valid point of the second, plus one
        // legend marker each.
        assert_eq!(names.iter().filter(|n| *n == "circle").count(), 4 + 2);
        assert!(svg.contains("latency &lt;P2&gt;"));
        assert!(svg.contains("shm &amp; Pipe"));
        assert!(svg.contains("no data in this run"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn automatic_ticks_fall_on_one_two_five_inside_the_range() {
        let r = (-4.1, -2.9);
        let t = ticks(r, None);
        let near = |a: f64, b: f64| (a / b - 1.0).abs() < 1e-9;
        assert!(near(t[0], 1e-4), "{t:?}");
        assert!(t.iter().all(|v| v.log10() >= r.0 && v.log10() <= r.1));
        for want in [2e-4, 5e-4, 1e-3] {
            assert!(
                t.iter().any(|&v| near(v, want)),
                "{want} missing from {t:?}"
            );
        }
        assert_eq!(ticks((0.0, 6.0), None).len(), 7);
        assert_eq!(ticks((0.0, 0.99), None).len(), 9);
        assert_eq!(
            ticks((0.0, 1.0), Some(&[2.0, 2.0, 1.0, 100.0])),
            vec![1.0, 2.0]
        );
        assert_eq!(range(std::iter::empty(), None), (0.0, 1.0));
    }
}
