//! The `pixgate` command line: `demo`, `doctor`, `exec`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use pixgate::{ErrorKind, Gateway, Value};

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
    /// Start a worker, run a short remote computation and show the timings.
    Demo {
        /// Gateway spec (execnet syntax).
        #[arg(long, default_value = "popen//id=demo")]
        spec: String,
        /// Round trips to time.
        #[arg(long, default_value_t = 2000)]
        round_trips: usize,
    },
    /// Report the interpreter, numpy, /dev/shm and huge pages.
    Doctor {
        /// Gateway spec (execnet syntax).
        #[arg(long, default_value = "popen//id=doctor")]
        spec: String,
    },
    /// Run Python source in a worker and print every value it sends on `channel`.
    Exec {
        /// Gateway spec (execnet syntax).
        #[arg(long, default_value = "popen//id=exec")]
        spec: String,
        /// Seconds to wait for each value (0 waits as long as the worker lives).
        #[arg(long, default_value_t = 0.0)]
        timeout: f64,
        /// The Python source.
        source: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { spec, round_trips } => demo(&spec, round_trips),
        Command::Doctor { spec } => doctor(&spec),
        Command::Exec {
            spec,
            timeout,
            source,
        } => exec(&spec, timeout, &source),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pixgate: {e}");
            ExitCode::FAILURE
        }
    }
}

const DEMO_SOURCE: &str = r#"
import sys, time
print(f"worker up: Python {sys.version.split()[0]}")
for n in channel:
    t = time.perf_counter()
    primes = [p for p in range(2, n) if all(p % d for d in range(2, int(p ** 0.5) + 1))]
    elapsed = time.perf_counter() - t
    print(f"{len(primes)} primes below {n} in {elapsed * 1e3:.1f} ms")
    channel.send({"n": n, "count": len(primes), "largest": primes[-1], "seconds": elapsed})
"#;

fn demo(spec: &str, round_trips: usize) -> pixgate::Result<ExitCode> {
    let timeout = Duration::from_secs(30);
    let t0 = Instant::now();
    let gw = Gateway::spawn(spec)?;
    let spawn = t0.elapsed();
    let info = gw.info().clone();
    println!(
        "gateway {} up: pid {}, Python {} at {}, numpy {}, helper {} ({})",
        gw.id(),
        info.pid,
        info.python_version,
        info.executable,
        info.numpy_version.as_deref().unwrap_or("absent"),
        info.helper_version,
        match info.helper_source {
            pixgate::HelperSource::Bootstrap => "bootstrapped",
            pixgate::HelperSource::Installed => "installed",
        }
    );

    let t1 = Instant::now();
    let ch = gw.remote_exec(DEMO_SOURCE)?;
    ch.send(10_000)?;
    let first = ch.receive_timeout(timeout)?;
    let first_answer = t1.elapsed();
    for n in [50_000, 100_000] {
        ch.send(n)?;
        let r = ch.receive_timeout(timeout)?;
        println!("  answer: {r}");
    }
    println!("  first answer: {first}");
    ch.close()?;
    ch.wait_close(Some(timeout))?;

    let echo = gw.remote_exec("for x in channel:\n    channel.send(x)")?;
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..round_trips.max(1) {
        let t = Instant::now();
        echo.send(i as i64)?;
        echo.receive_timeout(timeout)?;
        samples.push(t.elapsed());
    }
    echo.close()?;
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];

    let t2 = Instant::now();
    let status = gw.exit(Duration::from_secs(5))?;
    let exit = t2.elapsed();

    println!();
    println!("{:<44} {:>12}", "step", "time");
    println!("{:<44} {:>12}", "spawn + bootstrap + handshake", fmt(spawn));
    println!(
        "{:<44} {:>12}",
        "remote_exec to first answer",
        fmt(first_answer)
    );
    println!(
        "{:<44} {:>12}",
        format!("small-value round trip, median of {}", samples.len()),
        fmt(pct(0.5))
    );
    println!("{:<44} {:>12}", "  p10", fmt(pct(0.1)));
    println!("{:<44} {:>12}", "  p90", fmt(pct(0.9)));
    println!("{:<44} {:>12}", "exit", fmt(exit));
    println!("worker ended with {}", status.status_text());
    Ok(ExitCode::SUCCESS)
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn exec(spec: &str, timeout: f64, source: &str) -> pixgate::Result<ExitCode> {
    let gw = Gateway::spawn(spec)?;
    let ch = gw.remote_exec(source)?;
    loop {
        let item = if timeout > 0.0 {
            ch.receive_timeout(Duration::from_secs_f64(timeout))
        } else {
            ch.receive()
        };
        match item {
            Ok(v) => println!("{v}"),
            Err(e) if matches!(e.kind(), ErrorKind::ChannelClosed { .. }) => break,
            Err(e) => {
                eprintln!("pixgate: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    gw.exit(Duration::from_secs(5))?;
    Ok(ExitCode::SUCCESS)
}

fn doctor(spec: &str) -> pixgate::Result<ExitCode> {
    let mut ok = true;
    match Gateway::spawn(spec) {
        Ok(gw) => {
            let i = gw.info();
            println!("interpreter      {}", i.executable);
            println!("python           {}", i.python_version);
            match &i.numpy_version {
                Some(v) => println!("numpy            {v}"),
                None => {
                    println!("numpy            absent (needed for arrays: pip install numpy)");
                    ok = false;
                }
            }
            let probe =
                gw.remote_exec("import sys\nchannel.send((sys.platform, sys.maxsize > 2**32))")?;
            if let Ok(Value::Tuple(t)) = probe.receive_timeout(Duration::from_secs(10)) {
                println!("platform         {} (64-bit: {})", t[0], t[1]);
            }
            gw.exit(Duration::from_secs(5))?;
        }
        Err(e) => {
            println!("interpreter      unusable: {e}");
            ok = false;
        }
    }
    match nix::sys::statvfs::statvfs("/dev/shm") {
        // The field types differ between platforms (u64 on Linux, u32 on macOS).
        #[allow(clippy::unnecessary_cast)]
        Ok(s) => {
            let frag = s.fragment_size() as u64;
            let total = s.blocks() as u64 * frag;
            let free = s.blocks_available() as u64 * frag;
            println!(
                "/dev/shm         {} total, {} free",
                human(total),
                human(free)
            );
            if total < 1 << 30 {
                println!("                 warning: under 1 GiB; large stacks will not fit");
            }
        }
        Err(e) => {
            println!("/dev/shm         unavailable: {e}");
            ok = false;
        }
    }
    println!("huge pages       {}", huge_pages());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn human(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn huge_pages() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let shm_huge = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/dev/shm"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)?
                .split(',')
                .find(|o| o.starts_with("huge="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "huge=never".to_string());
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unavailable".to_string());
    format!(
        "HugePages_Total {} (size {} kB); /dev/shm mounted {}; shmem THP: {}",
        field("HugePages_Total:"),
        field("Hugepagesize:"),
        shm_huge,
        thp
    )
}
