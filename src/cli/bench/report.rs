//! The results of a run, as a table, as JSON, and as the chart.

use serde::Serialize;

use super::stats::Summary;
use super::svg::{self, Axis, Panel, Series};
use super::{Options, Scenario, label};

/// Which panel of the chart a row is drawn in, and where.
#[derive(Clone, Debug)]
pub(crate) enum Plot {
    /// Latency against array size (P2): x bytes, y the median seconds.
    Latency { series: String, bytes: u64 },
    /// Frames per second against frame size (P5): x pixels, y 1 ÷ median seconds.
    Throughput { series: String, pixels: u64 },
}

/// One measured case: a summary of per-iteration seconds.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub scenario: Scenario,
    pub case: String,
    pub summary: Option<Summary>,
    pub note: String,
    pub plot: Option<Plot>,
}

impl Row {
    /// A row of `samples` (seconds each).
    pub(crate) fn new(scenario: Scenario, case: impl Into<String>, samples: &[f64]) -> Row {
        Row {
            scenario,
            case: case.into(),
            summary: Summary::of(samples),
            note: String::new(),
            plot: None,
        }
    }

    /// The same row with a note.
    pub(crate) fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    /// The same row, drawn in the chart.
    pub(crate) fn plot(mut self, plot: Plot) -> Row {
        self.plot = Some(plot);
        self
    }

    /// The median in seconds, when there were samples.
    pub(crate) fn median(&self) -> Option<f64> {
        self.summary.map(|s| s.median)
    }
}

/// Which side of a target a ratio must be on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    AtMost(f64),
    AtLeast(f64),
}

/// A figure computed from rows of the same run, against its target.
#[derive(Clone, Debug)]
pub(crate) struct Ratio {
    pub scenario: Scenario,
    pub name: String,
    /// `None` when a figure it needs was not measured.
    pub value: Option<f64>,
    /// `×` or `µs`.
    pub unit: &'static str,
    pub target: Target,
}

impl Ratio {
    /// Whether the value is on the right side of the target.
    pub(crate) fn met(&self) -> Option<bool> {
        self.value.map(|v| match self.target {
            Target::AtMost(t) => v <= t,
            Target::AtLeast(t) => v >= t,
        })
    }
}

/// Everything a run found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    /// Adds a row; returns its median.
    pub(crate) fn row(&mut self, row: Row) -> Option<f64> {
        let m = row.median();
        self.rows.push(row);
        m
    }

    /// Adds a ratio.
    pub(crate) fn ratio(
        &mut self,
        scenario: Scenario,
        name: impl Into<String>,
        value: Option<f64>,
        unit: &'static str,
        target: Target,
    ) {
        self.ratios.push(Ratio {
            scenario,
            name: name.into(),
            value: value.filter(|v| v.is_finite()),
            unit,
            target,
        });
    }

    /// Adds a note shown under the table.
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Records that a scenario ended with an error.
    pub(crate) fn fail(&mut self, scenario: Scenario, message: String) {
        // The first line says what failed; a remote traceback follows it.
        let first = message.lines().next().unwrap_or_default();
        let more = if message.lines().nth(1).is_some() {
            " (…)"
        } else {
            ""
        };
        self.failures
            .push(format!("{} failed: {first}{more}", scenario.id()));
    }

    /// The table of rows, the ratios against their targets, then notes and failures.
    pub(crate) fn table(&self) -> String {
        let mut rows =
            vec![["SCENARIO", "CASE", "MEDIAN", "P10", "P90", "N", "NOTE"].map(String::from)];
        for r in &self.rows {
            let (m, p10, p90, n) = match r.summary {
                Some(s) => (secs(s.median), secs(s.p10), secs(s.p90), s.n.to_string()),
                None => ("-".into(), "-".into(), "-".into(), "0".into()),
            };
            rows.push([
                format!("{} {}", r.scenario.id(), r.scenario.title()),
                r.case.clone(),
                m,
                p10,
                p90,
                n,
                r.note.clone(),
            ]);
        }
        let mut out = crate::aligned(&rows);
        if !self.ratios.is_empty() {
            out.push('\n');
            let mut rows = vec![["TARGET", "", "VALUE", "TARGET", "MET"].map(String::from)];
            for r in &self.ratios {
                rows.push([
                    r.scenario.id().to_string(),
                    r.name.clone(),
                    r.value
                        .map_or_else(|| "-".to_string(), |v| number(v, r.unit)),
                    match r.target {
                        Target::AtMost(t) => format!("≤ {}", number(t, r.unit)),
                        Target::AtLeast(t) => format!("≥ {}", number(t, r.unit)),
                    },
                    match r.met() {
                        Some(true) => "met".into(),
                        Some(false) => "missed".into(),
                        None => "not measured".into(),
                    },
                ]);
            }
            out.push_str(&crate::aligned(&rows));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for f in &self.failures {
            out.push_str(&format!("error: {f}\n"));
        }
        out
    }

    /// The results as one JSON object (seconds for times), a row or ratio a line.
    pub(crate) fn json(&self, opts: &Options) -> String {
        let rows = self
            .rows
            .iter()
            .map(|r| RowJson {
                scenario: r.scenario.id(),
                case: &r.case,
                median_s: r.summary.map(|x| x.median),
                p10_s: r.summary.map(|x| x.p10),
                p90_s: r.summary.map(|x| x.p90),
                n: r.summary.map_or(0, |x| x.n),
                note: &r.note,
            })
            .collect();
        let ratios = self
            .ratios
            .iter()
            .map(|r| {
                let (op, value) = match r.target {
                    Target::AtMost(t) => ("<=", t),
                    Target::AtLeast(t) => (">=", t),
                };
                RatioJson {
                    scenario: r.scenario.id(),
                    name: &r.name,
                    value: r.value,
                    unit: if r.unit == "µs" { "us" } else { "ratio" },
                    target: TargetJson { op, value },
                    met: r.met(),
                }
            })
            .collect();
        let json = ReportJson {
            quick: opts.quick,
            python: &opts.python,
            svg: opts.svg.display().to_string(),
            rows,
            ratios,
            notes: &self.notes,
            failures: &self.failures,
        };
        crate::json::to_string(&json, 2)
    }

    /// The chart: P2's latency against size, P5's frame rate against frame size.
    pub(crate) fn chart(&self) -> String {
        let mut latency: Vec<Series> = Vec::new();
        let mut rate: Vec<Series> = Vec::new();
        let mut sizes: Vec<f64> = Vec::new();
        let mut sides: Vec<f64> = Vec::new();
        let add = |list: &mut Vec<Series>, name: &str, p: (f64, f64)| match list
            .iter_mut()
            .find(|s| s.name == name)
        {
            Some(s) => s.points.push(p),
            None => list.push(Series {
                name: name.to_string(),
                points: vec![p],
            }),
        };
        for r in &self.rows {
            let Some(m) = r.median() else { continue };
            match &r.plot {
                Some(Plot::Latency { series, bytes }) => {
                    add(&mut latency, series, (*bytes as f64, m));
                    sizes.push(*bytes as f64);
                }
                Some(Plot::Throughput { series, pixels }) => {
                    add(&mut rate, series, (*pixels as f64, 1.0 / m));
                    sides.push(*pixels as f64);
                }
                None => {}
            }
        }
        let panels = [
            Panel {
                title: "P2 resident-array handoff: latency vs size".into(),
                x: Axis {
                    label: "array size".into(),
                    ticks: Some(sizes),
                    format: |v| label(v.round() as u64),
                },
                y: Axis {
                    label: "median time per handoff (there and back)".into(),
                    ticks: None,
                    format: secs,
                },
                series: latency,
            },
            Panel {
                title: "P5 uint16 frame stream: throughput vs frame size".into(),
                x: Axis {
                    label: "frame size (pixels, uint16)".into(),
                    ticks: Some(sides),
                    format: |v| format!("{}²", v.sqrt().round()),
                },
                y: Axis {
                    label: "frames per second (1 ÷ median)".into(),
                    ticks: None,
                    format: |v| format!("{v:.0}"),
                },
                series: rate,
            },
        ];
        svg::chart("pixgate bench", &panels)
    }
}

/// Seconds in ns, µs, ms or s, whichever reads best.
pub(crate) fn secs(s: f64) -> String {
    let us = s * 1e6;
    if us < 1.0 {
        format!("{:.0} ns", us * 1000.0)
    } else if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// A ratio as `1.23×`, or a time difference as `12.3 µs`.
fn number(v: f64, unit: &str) -> String {
    if unit == "µs" {
        format!("{v:.1} µs")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}×")
    } else {
        format!("{v:.2}×")
    }
}

/// `bench --json`. Numbers that are not finite are written as `null`.
#[derive(Debug, Serialize)]
struct ReportJson<'a> {
    quick: bool,
    python: &'a str,
    svg: String,
    rows: Vec<RowJson<'a>>,
    ratios: Vec<RatioJson<'a>>,
    notes: &'a [String],
    failures: &'a [String],
}

/// One row in `bench --json`: seconds, `null` when nothing was measured.
#[derive(Debug, Serialize)]
struct RowJson<'a> {
    scenario: &'static str,
    case: &'a str,
    median_s: Option<f64>,
    p10_s: Option<f64>,
    p90_s: Option<f64>,
    n: usize,
    note: &'a str,
}

/// One ratio in `bench --json`; `value` and `met` are `null` when not measured.
#[derive(Debug, Serialize)]
struct RatioJson<'a> {
    scenario: &'static str,
    name: &'a str,
    value: Option<f64>,
    /// `us` or `ratio`.
    unit: &'static str,
    target: TargetJson,
    met: Option<bool>,
}

/// `{"op": "<=", "value": 1.05}`.
#[derive(Debug, Serialize)]
struct TargetJson {
    op: &'static str,
    value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_row_and_ratio_a_line_with_null_for_what_was_not_measured() {
        let opts = Options {
            quick: true,
            only: Vec::new(),
            svg: "out \"x\".svg".into(),
            json: true,
            python: r"C:\python".into(),
            max_size: None,
            spin: std::time::Duration::ZERO,
            backing_dir: None,
        };
        let mut report = Report::default();
        let samples: Vec<f64> = (1..=11).map(f64::from).collect();
        report.row(Row::new(Scenario::P1, "echo", &samples).note("a\tnote"));
        report.row(Row::new(Scenario::P6, "nothing", &[]));
        report.ratio(Scenario::P1, "a ÷ b", Some(1.5), "×", Target::AtMost(2.0));
        report.ratio(
            Scenario::P2,
            "gap",
            Some(f64::NAN),
            "µs",
            Target::AtLeast(3.0),
        );
        report.note("skipped \"x\"");
        report.fail(Scenario::P3, "boom\ntraceback".into());

        let text = report.json(&opts);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"  \"rows\": ["), "{text}");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("    {")).count(),
            4,
            "a line per row and per ratio:\n{text}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).expect(&text);
        let expected = serde_json::json!({
            "quick": true,
            "python": r"C:\python",
            "svg": "out \"x\".svg",
            "rows": [
                {"scenario": "P1", "case": "echo", "median_s": 6.0, "p10_s": 2.0,
                 "p90_s": 10.0, "n": 11, "note": "a\tnote"},
                {"scenario": "P6", "case": "nothing", "median_s": null, "p10_s": null,
                 "p90_s": null, "n": 0, "note": ""}
            ],
            "ratios": [
                {"scenario": "P1", "name": "a ÷ b", "value": 1.5, "unit": "ratio",
                 "target": {"op": "<=", "value": 2.0}, "met": true},
                {"scenario": "P2", "name": "gap", "value": null, "unit": "us",
                 "target": {"op": ">=", "value": 3.0}, "met": null}
            ],
            "notes": ["skipped \"x\""],
            "failures": ["P3 failed: boom (…)"]
        });
        assert_eq!(parsed, expected);
    }
}
