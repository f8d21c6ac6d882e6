//! `pixgate bench`: the project's performance scenarios, run on this machine, with each
//! target ratio computed from figures of the same run.
//!
//! Scenarios (see BENCHMARKS.md, *How `pixgate bench` measures*):
//!
//! - P1 small-value round trip: raw pipe echo, pixgate, execnet;
//! - P2 handoff of a resident array, 1 MiB … 8 GiB, and a multiprocessing peer;
//! - P3 512 MiB `uint16` doubled in place by the worker, and execnet sending the bytes;
//! - P4 filling 1 GiB from Rust: a warm pool slot against `memcpy`, a fresh array
//!   against the first touch of fresh anonymous memory;
//! - P5 frame streams, lock-step and pipelined, and a multiprocessing peer;
//! - P6 a `Group` of workers (a placeholder until `Group` exists);
//! - P7 start-up to the first answer, against execnet;
//! - P8 the anonymous transport against named segments, in the same run: handoff of a
//!   resident array and of a pool frame, the first handoff of a one-off array, and the
//!   creation and first touch of a fresh array;
//! - P10 a result array made in Python (`pixgate.empty` + copy) against numpy's own
//!   memory and a bare shared mapping. (P9, ssh against execnet, needs an sshd and runs
//!   as `make bench-ssh`.)
//!
//! Every wait has a time limit, every array and pool made here is dropped (and so
//! unlinked) before the command returns, and the peers' blocks are unlinked by the
//! peers themselves.

mod arrays;
mod control;
mod frames;
mod group;
mod peers;
mod report;
mod results;
mod stats;
mod svg;
mod transports;

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use indicatif::ProgressBar;
use pixgate::{ErrorKind, Gateway, OutputMode};

use report::Report;

/// Longest wait for any single answer from a worker.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;

/// One benchmark scenario, named as in the project's performance goals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scenario {
    P1,
    P2,
    P3,
    P4,
    P5,
    P6,
    P7,
    P8,
    P10,
}

impl Scenario {
    /// Every scenario, in the order they run (P1 first: P2 and P5 compare with it).
    pub(crate) const ALL: [Scenario; 9] = [
        Scenario::P1,
        Scenario::P2,
        Scenario::P3,
        Scenario::P4,
        Scenario::P5,
        Scenario::P6,
        Scenario::P7,
        Scenario::P8,
        Scenario::P10,
    ];

    /// `P1` … `P8`, `P10`.
    pub(crate) fn id(self) -> &'static str {
        match self {
            Scenario::P1 => "P1",
            Scenario::P2 => "P2",
            Scenario::P3 => "P3",
            Scenario::P4 => "P4",
            Scenario::P5 => "P5",
            Scenario::P6 => "P6",
            Scenario::P7 => "P7",
            Scenario::P8 => "P8",
            Scenario::P10 => "P10",
        }
    }

    /// What the scenario measures, in a few words.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Scenario::P1 => "small-value round trip",
            Scenario::P2 => "resident-array handoff",
            Scenario::P3 => "uint16 array doubled in place by the worker",
            Scenario::P4 => "filling an array from Rust",
            Scenario::P5 => "frame stream, handoff only",
            Scenario::P6 => "Group of 2 workers vs 1",
            Scenario::P7 => "start-up to first answer",
            Scenario::P8 => "anonymous transport vs named segments",
            Scenario::P10 => "a result array made in Python",
        }
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|p| p.id().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown scenario {s:?}, expected one of P1 … P8, P10"))
    }
}

/// Parses a size such as `8G`, `512MiB`, `64m` or a number of bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size {s:?}: expected a number, optionally followed by K, M or G"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        other => {
            return Err(format!(
                "size {s:?}: unknown unit {other:?}, expected K, M or G"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("size {s:?}: expected between 1 byte and 16 EiB"))
}

/// What `pixgate bench` was asked to do.
pub(crate) struct Options {
    /// Small sizes and few iterations.
    pub quick: bool,
    /// The scenarios to run; all when empty.
    pub only: Vec<Scenario>,
    /// Where the chart goes.
    pub svg: PathBuf,
    /// Print JSON instead of the table.
    pub json: bool,
    /// The interpreter for workers and peers.
    pub python: String,
    /// The largest array any scenario creates; `None` chooses by the room in /dev/shm.
    pub max_size: Option<u64>,
    /// How long pixgate's gateways poll the pipe before they sleep.
    pub spin: Duration,
    /// Where pools keep their slots (a tmpfs mount, e.g. with huge pages); /dev/shm
    /// when `None`.
    pub backing_dir: Option<PathBuf>,
}

/// Errors of one scenario; they end that scenario, not the run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// pixgate itself failed.
    #[error(transparent)]
    Pixgate(#[from] pixgate::Error),
    /// A Python peer or helper process failed or printed something unexpected.
    #[error("{what}: {reason}")]
    Peer { what: String, reason: String },
    /// A worker's answer was not what the scenario sent it to compute.
    #[error("unexpected answer from the worker: {0}")]
    Answer(String),
    /// The scenario could not be set up as described.
    #[error("{0}")]
    Setup(String),
}

/// The state of a run: options, sizes, progress and the results so far.
pub(crate) struct Bench<'o> {
    pub opts: &'o Options,
    pub report: Report,
    progress: ProgressBar,
    /// The largest array that fits, in bytes.
    pub max_bytes: u64,
    /// P1's pixgate round trip, median seconds, once P1 ran.
    pub p1_pixgate: Option<f64>,
    execnet: Option<bool>,
}

impl Bench<'_> {
    /// Shows what runs now next to the progress bar.
    pub(crate) fn step(&self, what: impl Into<String>) {
        self.progress.set_message(what.into());
    }

    /// Where the workers' output goes: stderr, around the progress bar.
    pub(crate) fn worker_output(&self) -> OutputMode {
        crate::progress::worker_output(&self.progress)
    }

    /// A gateway on the benchmark's interpreter.
    pub(crate) fn gateway(&self, id: &str) -> Result<Gateway, BenchError> {
        Ok(
            Gateway::builder(&format!("popen//python={}//id={id}", self.opts.python))
                .spin(self.opts.spin)
                .output(self.worker_output())
                .handshake_timeout(Duration::from_secs(60))
                .exit_timeout(Duration::from_secs(20))
                .spawn()?,
        )
    }

    /// A gateway on the benchmark's interpreter with arrays of `transport`.
    pub(crate) fn gateway_with(
        &self,
        id: &str,
        transport: pixgate::segment::Transport,
    ) -> Result<Gateway, BenchError> {
        Ok(
            Gateway::builder(&format!("popen//python={}//id={id}", self.opts.python))
                .spin(self.opts.spin)
                .output(self.worker_output())
                .handshake_timeout(Duration::from_secs(60))
                .exit_timeout(Duration::from_secs(20))
                .transport(transport)
                .spawn()?,
        )
    }

    /// A pool builder with the run's backing directory.
    pub(crate) fn pool(&self) -> pixgate::PoolBuilder {
        let p = pixgate::Pool::builder();
        match &self.opts.backing_dir {
            Some(d) => p.backing_dir(d),
            None => p,
        }
    }

    /// Pick `quick` or `full` by the run's mode.
    pub(crate) fn pick<T>(&self, quick: T, full: T) -> T {
        if self.opts.quick { quick } else { full }
    }

    /// Longest a peer script may run.
    pub(crate) fn peer_deadline(&self) -> Duration {
        self.pick(Duration::from_secs(30), Duration::from_secs(900))
    }

    /// Whether the interpreter can import execnet (asked once); notes it when not.
    pub(crate) fn has_execnet(&mut self) -> bool {
        if let Some(yes) = self.execnet {
            return yes;
        }
        let yes = peers::importable(&self.opts.python, "execnet");
        if !yes {
            self.report.note(format!(
                "execnet peers skipped: {} cannot import execnet",
                self.opts.python
            ));
        }
        self.execnet = Some(yes);
        yes
    }
}

/// Bytes that may be put into /dev/shm now: its free space, and no more than the
/// memory the kernel reports available, less a 1 GiB margin.
pub(crate) fn room() -> u64 {
    // The field types differ between platforms (u64 on Linux, u32 on macOS).
    #[allow(clippy::unnecessary_cast)]
    let shm = nix::sys::statvfs::statvfs("/dev/shm")
        .map(|s| s.blocks_available() as u64 * s.fragment_size() as u64)
        .unwrap_or(0);
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb * 1024);
    shm.min(available).saturating_sub(GIB)
}

/// Runs the selected scenarios, prints the table (or JSON) and writes the chart.
///
/// # Errors
///
/// Only when the chart cannot be written; a scenario that fails is reported in the
/// output and makes the exit code 1.
pub(crate) fn run(opts: &Options) -> pixgate::Result<ExitCode> {
    let selected: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| opts.only.is_empty() || opts.only.contains(s))
        .collect();
    let progress = crate::progress::bar(selected.len() as u64);
    let room = room();
    let max_bytes = opts.max_size.unwrap_or(8 * GIB).min(room);
    let mut b = Bench {
        opts,
        report: Report::default(),
        progress,
        max_bytes,
        p1_pixgate: None,
        execnet: None,
    };
    if opts.max_size.unwrap_or(8 * GIB) > room {
        b.report.note(format!(
            "arrays capped at {} (room in /dev/shm and memory, less 1 GiB)",
            label(max_bytes)
        ));
    }
    for s in selected {
        b.step(format!("{} {}", s.id(), s.title()));
        let result = match s {
            Scenario::P1 => control::round_trip(&mut b),
            Scenario::P2 => arrays::handoff(&mut b),
            Scenario::P3 => arrays::double_in_place(&mut b),
            Scenario::P4 => arrays::fill(&mut b),
            Scenario::P5 => frames::stream(&mut b),
            Scenario::P6 => group::group(&mut b),
            Scenario::P7 => control::start_up(&mut b),
            Scenario::P8 => transports::transports(&mut b),
            Scenario::P10 => results::results(&mut b),
        };
        if let Err(e) = result {
            b.report.fail(s, e.to_string());
        }
        b.progress.inc(1);
    }
    b.progress.finish_and_clear();

    let chart = b.report.chart();
    std::fs::write(&opts.svg, chart).map_err(|e| {
        pixgate::Error::new(ErrorKind::Io {
            context: format!("writing the chart to {}", opts.svg.display()),
            kind: e.kind(),
            message: e.to_string(),
            source: std::sync::Arc::new(e),
        })
    })?;
    if opts.json {
        println!("{}", b.report.json(opts));
    } else {
        print!("{}", b.report.table());
        println!("chart written to {}", opts.svg.display());
    }
    Ok(if b.report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `1 MiB`, `512 MiB`, `8 GiB`, `64 KiB`, `100 B`.
pub(crate) fn label(bytes: u64) -> String {
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_scenarios_parse_as_typed_on_the_command_line() {
        for (text, bytes) in [
            ("8G", 8 * GIB),
            ("8GiB", 8 * GIB),
            ("512MiB", 512 * MIB),
            ("64m", 64 * MIB),
            ("4096", 4096),
            ("1 K", 1024),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "G", "0", "12T", "-1M", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!("p5".parse(), Ok(Scenario::P5));
        assert_eq!("P8".parse(), Ok(Scenario::P8));
        assert_eq!("p10".parse(), Ok(Scenario::P10));
        assert!("P9".parse::<Scenario>().is_err());
        assert_eq!(label(GIB), "1 GiB");
        assert_eq!(label(3 * MIB / 2), "1536 KiB");
    }
}
