//! Start-up time of a gateway, as BENCHMARKS.md's P7 times it: spawn, handshake,
//! `remote_exec("channel.send(1)")` and the answer; the exit is not timed.
//!
//! `cargo run --release --example startup -- SPEC [N]` prints the median, the 10th and
//! the 90th percentile over N starts (default 20), and one round trip of a small value
//! on the last gateway (median of 200).

use std::time::{Duration, Instant};

use pixgate::{Gateway, OutputMode, Value};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() -> Result<(), pixgate::Error> {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "popen".to_string());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut times = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let gw = Gateway::builder(&spec)
            .output(OutputMode::Discard)
            .handshake_timeout(Duration::from_secs(120))
            .spawn()?;
        let ch = gw.remote_exec("channel.send(1)")?;
        let v = ch.receive_timeout(Duration::from_secs(120))?;
        times.push(t.elapsed());
        assert_eq!(v, Value::Int(1));
        if let Some(old) = last.replace(gw) {
            drop(old);
        }
    }
    times.sort();
    let gw = last.expect("at least one start");
    let ch = gw.remote_exec("for x in channel:\n    channel.send(x)")?;
    let mut trips = Vec::with_capacity(200);
    for i in 0..200i64 {
        let t = Instant::now();
        ch.send(Value::from(i))?;
        ch.receive_timeout(Duration::from_secs(60))?;
        trips.push(t.elapsed());
    }
    trips.sort();
    let info = gw.info();
    println!(
        "{} {} ({}): start-up median {:.1} ms, p10 {:.1} ms, p90 {:.1} ms over {n}; round trip median {:.1} µs",
        spec,
        info.python_version,
        info.executable,
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.1).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3,
        percentile(&trips, 0.5).as_secs_f64() * 1e6,
    );
    Ok(())
}
