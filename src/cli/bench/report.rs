//! The results of a run, as a table, as JSON, and as the chart.

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

    /// The results as one JSON object (seconds for times).
    pub(crate) fn json(&self, opts: &Options) -> String {
        let s = crate::json_string;
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                let (m, p10, p90, n) = r.summary.map_or(
                    ("null".into(), "null".into(), "null".into(), 0),
                    |x| (float(x.median), float(x.p10), float(x.p90), x.n),
                );
                format!(
                    "{{\"scenario\": {}, \"case\": {}, \"median_s\": {m}, \"p10_s\": {p10}, \"p90_s\": {p90}, \"n\": {n}, \"note\": {}}}",
                    s(r.scenario.id()),
                    s(&r.case),
                    s(&r.note)
                )
            })
            .collect();
        let ratios: Vec<String> = self
            .ratios
            .iter()
            .map(|r| {
                let (op, t) = match r.target {
                    Target::AtMost(t) => ("<=", t),
                    Target::AtLeast(t) => (">=", t),
                };
                format!(
                    "{{\"scenario\": {}, \"name\": {}, \"value\": {}, \"unit\": {}, \"target\": {{\"op\": {}, \"value\": {}}}, \"met\": {}}}",
                    s(r.scenario.id()),
                    s(&r.name),
                    r.value.map_or_else(|| "null".into(), float),
                    s(if r.unit == "µs" { "us" } else { "ratio" }),
                    s(op),
                    float(t),
                    r.met().map_or_else(|| "null".into(), |m| m.to_string())
                )
            })
            .collect();
        let strings = |v: &[String]| v.iter().map(|x| s(x)).collect::<Vec<_>>().join(", ");
        format!(
            "{{\n  \"quick\": {},\n  \"python\": {},\n  \"svg\": {},\n  \"rows\": [\n    {}\n  ],\n  \"ratios\": [\n    {}\n  ],\n  \"notes\": [{}],\n  \"failures\": [{}]\n}}",
            opts.quick,
            s(&opts.python),
            s(&opts.svg.display().to_string()),
            rows.join(",\n    "),
            ratios.join(",\n    "),
            strings(&self.notes),
            strings(&self.failures)
        )
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

/// A JSON number; `null` when not finite.
fn float(v: f64) -> String {
    if v.is_finite() {
        format!("{v:e}")
    } else {
        "null".into()
    }
}
