//! The `pixgate` command line: `demo`, `bench`, `doctor`, `exec`, `ls`, `inspect`, `gc`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "cli/bench/mod.rs"]
mod bench;
#[path = "cli/demo.rs"]
mod demo;
#[path = "cli/doctor.rs"]
mod doctor;
#[path = "cli/exec.rs"]
mod exec;
#[path = "cli/json.rs"]
mod json;
#[path = "cli/progress.rs"]
mod progress;
#[path = "cli/segments.rs"]
mod segments;
use segments::aligned;

#[derive(Parser)]
#[command(
    name = "pixgate",
    version,
    about = "Run Python next to Rust and hand it data without copying"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hand a generated 5-D image stack to Python through shared memory, get a maximum
    /// projection and plane means back, and time it against copying the bytes.
    Demo {
        /// Gateway spec (execnet syntax).
        #[arg(long, default_value = "popen//id=demo")]
        spec: String,
        /// The worker's interpreter, one path (as `$PIXGATE_PYTHON`: a spec's `python=`
        /// wins).
        #[arg(long)]
        python: Option<String>,
        /// Size of the stack in MiB (at least one 16 z × 2 c × 1024 × 1024 block).
        #[arg(long, default_value_t = 1024)]
        size_mib: usize,
        /// Skip the comparison with copying the bytes through the pipe.
        #[arg(long)]
        no_copy: bool,
        /// Small-value round trips to time at the end.
        #[arg(long, default_value_t = 2000)]
        round_trips: usize,
    },
    /// Run the performance scenarios (P1–P8, P10) on this machine: a table of median, p10,
    /// p90 and count per case, each target ratio from figures of the same run, and an
    /// SVG chart (handoff latency against size, frame rate against frame size).
    Bench {
        /// Small sizes and few iterations (well under a minute).
        #[arg(long)]
        quick: bool,
        /// Run only these scenarios, e.g. `P1,P5`.
        #[arg(long, value_delimiter = ',')]
        only: Vec<bench::Scenario>,
        /// Where to write the chart.
        #[arg(long, default_value = "pixgate-bench.svg")]
        svg: std::path::PathBuf,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The interpreter for workers and peers [default: $PIXGATE_PYTHON, else python3].
        #[arg(long)]
        python: Option<String>,
        /// The largest array to create, e.g. `1G` or `512M` [default: 8 GiB, less when
        /// /dev/shm or memory has no room for it].
        #[arg(long, value_parser = bench::parse_size)]
        max_size: Option<u64>,
        /// Microseconds pixgate's gateways poll the pipe before they sleep
        /// (`GatewayBuilder::spin`).
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// Keep pools' slots in this directory (e.g. a tmpfs mounted with huge=always)
        /// instead of /dev/shm.
        #[arg(long)]
        backing_dir: Option<std::path::PathBuf>,
    },
    /// Report the interpreter, numpy, the transport a gateway to it gets and why,
    /// whether sealed memfds work, the descriptor limit, /dev/shm and huge pages.
    Doctor {
        /// Gateway spec (execnet syntax).
        #[arg(long, default_value = "popen//id=doctor")]
        spec: String,
        /// The worker's interpreter, one path (as `$PIXGATE_PYTHON`: a spec's `python=`
        /// wins).
        #[arg(long)]
        python: Option<String>,
    },
    /// Run Python source in a worker and print every value it sends on `channel`.
    Exec {
        /// Gateway spec (execnet syntax).
        #[arg(long, default_value = "popen//id=exec")]
        spec: String,
        /// The worker's interpreter, one path (overrides the spec's `python=`).
        #[arg(long)]
        python: Option<String>,
        /// Seconds to wait for each value; past it the worker is killed and the command
        /// fails (0 waits as long as the worker lives).
        #[arg(long, default_value_t = 60.0, value_parser = parse_timeout)]
        timeout: f64,
        /// The Python source.
        source: String,
    },
    /// List this user's pixgate segments, named and anonymous.
    ///
    /// Named segments are the ones in /dev/shm; anonymous ones are found through /proc,
    /// in the descriptors and mappings of this user's processes, each slot of a pool
    /// arena under its key NAME@OFFSET. Each line shows the transport, creator, owner,
    /// holders (pid:fd), the pids that map it, dtype, shape, size and state (owned,
    /// shared, lent, moved). Nothing is written or removed.
    Ls {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the whole header and the metadata of one segment, named or anonymous.
    Inspect {
        /// The segment's name, its key (NAME@OFFSET for a slot of an arena), or a
        /// prefix of either that only one segment has; with or without the leading
        /// slash.
        name: String,
    },
    /// Remove the pixgate segments in /dev/shm whose creator is dead.
    ///
    /// A segment is removed when the process that created it no longer runs (judged by
    /// pid and start time, so a reused pid does not keep it) and the process it was
    /// handed to, if any, no longer runs either. A segment whose header cannot be read
    /// is removed only when no process has the pid in its name. Segments of running
    /// processes, objects of other users, symlinks, FIFOs and names that are not
    /// exactly pixgate's are never touched. Prints each segment with the reason
    /// (creator_dead, pid_reused, owner_dead, unreadable) and the count; exits 1 only
    /// when a segment could not be examined or removed. Gateways run the same sweep
    /// once per process when they start.
    Gc {
        /// Print what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print a JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `--python`: the interpreter every gateway of this command runs unless its spec
/// names one, through `$PIXGATE_PYTHON`.
fn use_python(python: Option<&str>) {
    if let Some(p) = python {
        // SAFETY: called on the main thread before any gateway or other thread exists.
        unsafe { std::env::set_var("PIXGATE_PYTHON", p) };
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo {
            spec,
            python,
            size_mib,
            no_copy,
            round_trips,
        } => {
            use_python(python.as_deref());
            demo::run(&demo::Options {
                spec,
                size_mib,
                compare_copy: !no_copy,
                round_trips,
            })
            .map(|()| ExitCode::SUCCESS)
        }
        Command::Bench {
            quick,
            only,
            svg,
            json,
            python,
            max_size,
            spin_us,
            backing_dir,
        } => bench::run(&bench::Options {
            quick,
            only,
            svg,
            json,
            python: python
                .or_else(|| {
                    std::env::var("PIXGATE_PYTHON")
                        .ok()
                        .filter(|p| !p.is_empty())
                })
                .unwrap_or_else(|| "python3".to_string()),
            max_size,
            spin: std::time::Duration::from_micros(spin_us),
            backing_dir,
        }),
        Command::Doctor { spec, python } => {
            use_python(python.as_deref());
            doctor::run(&spec)
        }
        Command::Exec {
            spec,
            python,
            timeout,
            source,
        } => exec::run(&spec, python.as_deref(), timeout, &source),
        Command::Ls { json } => segments::ls(json),
        Command::Inspect { name } => segments::inspect(&name),
        Command::Gc { dry_run, json } => segments::gc(dry_run, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pixgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `exec --timeout`: seconds, 0 for no limit; a negative, non-finite or absurdly large
/// value (past a year) is refused by clap with this message, never a panic.
fn parse_timeout(text: &str) -> Result<f64, String> {
    const MAX: f64 = 365.0 * 24.0 * 3600.0;
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !value.is_finite() || !(0.0..=MAX).contains(&value) {
        return Err(format!(
            "{text:?}: give seconds from 0 (no limit) to {MAX} (a year)"
        ));
    }
    Ok(value)
}
