//! Load and soak: many channels on one gateway, many gateways at once, and a long run of
//! small round trips with periodic array lends, watching both processes' memory.
//!
//! The soak sends `PIXGATE_SOAK_MESSAGES` round trips (default 10⁵ so that
//! `cargo test` stays short; `make soak` runs 10⁶) and fails if either process's
//! resident set grows by 1 % or more between the end of a warm-up (the first 10 % of
//! the messages) and the end, or if the run overruns its deadline
//! (`PIXGATE_SOAK_DEADLINE_SECS`, default 10 minutes per 10⁶ messages, at least one
//! minute). The tests of this file run one at a time: the host's memory is the whole
//! test process's.

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{assert_no_segments, gateway, serial};
use pixgate::{Channel, Gateway, OutputMode, SharedArray, Value};

/// The limit for every blocking call here: generous, since 1,000 Python threads or 16
/// interpreters starting at once share two cores.
const WAIT: Duration = Duration::from_secs(60);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Resident set size in KiB, from `/proc/<pid>/status` (`self` for this process).
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

const ECHO_ONCE: &str = "channel.send(channel.receive())";

#[test]
fn a_thousand_channels_at_once_on_one_gateway_each_echo_their_item() {
    let _serial = serial();
    const THREADS: usize = 8;
    const PER_THREAD: usize = 125;
    let gw = gateway();
    let opened = Barrier::new(THREADS);
    let start = Instant::now();
    let checked: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (gw, opened) = (&gw, &opened);
                s.spawn(move || {
                    let channels: Vec<Channel> = (0..PER_THREAD)
                        .map(|_| gw.remote_exec(ECHO_ONCE).expect("remote_exec"))
                        .collect();
                    // All 1,000 are open before any item is sent.
                    opened.wait();
                    for (k, ch) in channels.iter().enumerate() {
                        let item = Value::Tuple(vec![
                            Value::Int((t * PER_THREAD + k) as i64),
                            Value::from(format!("item {t}/{k}")),
                        ]);
                        ch.send_value(&item).expect("send");
                    }
                    for (k, ch) in channels.iter().enumerate() {
                        let back = ch.receive_timeout(WAIT).expect("echo");
                        let seq = back.as_seq().expect("a tuple back");
                        assert_eq!(seq[0].as_i64(), Some((t * PER_THREAD + k) as i64));
                        assert_eq!(seq[1].as_str(), Some(format!("item {t}/{k}").as_str()));
                        ch.wait_close(Some(WAIT)).expect("remote side closes");
                    }
                    channels.len()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("thread")).sum()
    });
    let took = start.elapsed();
    assert_eq!(checked, THREADS * PER_THREAD);
    eprintln!(
        "1000 channels: {checked} round trips checked on {THREADS} threads in {:.2} s \
         ({:.0} channels/s, open + echo + close)",
        took.as_secs_f64(),
        checked as f64 / took.as_secs_f64()
    );
    gw.exit(WAIT).expect("exit");
    assert_no_segments();
}

const DOUBLER: &str = "
for msg in channel:
    if isinstance(msg, int):
        channel.send(msg + 1)
    else:
        msg *= 2
        channel.send(msg)
    del msg
";

/// Lends a fresh array of `n` u32 to a doubling channel and checks it comes back doubled.
fn lend_doubled(ch: &Channel, n: usize, fill: u32) {
    let mut a = SharedArray::<u32>::zeros(&[n]).expect("array");
    a.view_mut().expect("view").fill(fill);
    ch.send_value(&a.lend().expect("lend")).expect("send");
    let back = ch.receive_timeout(WAIT).expect("array back");
    assert!(matches!(back, Value::Array(_)), "{back:?}");
    drop(back);
    let want = fill.wrapping_mul(2);
    assert!(
        a.view().expect("released").iter().all(|&v| v == want),
        "lent array not doubled"
    );
}

#[test]
fn sixteen_gateways_at_once_each_do_round_trips_and_a_lend() {
    let _serial = serial();
    const GATEWAYS: usize = 16;
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..GATEWAYS)
            .map(|g| {
                s.spawn(move || {
                    let gw = Gateway::builder(&common::spec(&format!("id=load{g}")))
                        .output(OutputMode::Capture)
                        .handshake_timeout(WAIT)
                        .spawn()
                        .expect("spawn");
                    let ch = gw.remote_exec(DOUBLER).expect("remote_exec");
                    for i in 0..10i64 {
                        ch.send(i).expect("send");
                        let back = ch.receive_timeout(WAIT).expect("receive");
                        assert_eq!(back.as_i64(), Some(i + 1), "gateway {g}");
                    }
                    lend_doubled(&ch, 1 << 16, g as u32);
                    ch.close().expect("close");
                    gw.exit(WAIT).expect("exit");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("gateway thread");
        }
    });
    eprintln!(
        "16 gateways: spawned, 10 round trips and a 256 KiB lend each, exited, in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    assert_no_segments();
}

#[test]
fn a_soak_of_small_round_trips_and_lends_keeps_both_processes_memory_flat() {
    let _serial = serial();
    let messages = env_u64("PIXGATE_SOAK_MESSAGES").unwrap_or(100_000).max(10);
    let limit = Duration::from_secs(
        env_u64("PIXGATE_SOAK_DEADLINE_SECS").unwrap_or((600 * messages / 1_000_000).max(60)),
    );
    const LEND_EVERY: u64 = 1000;
    let warm_up = messages / 10;

    let gw = gateway();
    let worker = gw.pid().to_string();
    let ch = gw.remote_exec(DOUBLER).expect("remote_exec");
    let start = Instant::now();
    let deadline = start + limit;
    let mut after_warm_up = None;
    let mut lends = 0u64;
    for i in 0..messages {
        if i == warm_up {
            after_warm_up = Some((rss_kib("self"), rss_kib(&worker), Instant::now()));
        }
        if i % 1000 == 0 && Instant::now() > deadline {
            panic!("soak: {i} of {messages} messages after {limit:?}, past the deadline");
        }
        if i % LEND_EVERY == LEND_EVERY / 2 {
            lend_doubled(&ch, 16 * 1024, i as u32);
            lends += 1;
        }
        ch.send(i as i64).expect("send");
        let back = ch.receive_timeout(WAIT).expect("receive");
        assert_eq!(back.as_i64(), Some(i as i64 + 1), "message {i}");
    }
    let took = start.elapsed();
    let (host_end, worker_end) = (rss_kib("self"), rss_kib(&worker));
    let (host_warm, worker_warm, warm_at) = after_warm_up.expect("warm-up reached");
    let steady = warm_at.elapsed();
    let growth = |a: u64, b: u64| (b as f64 - a as f64) * 100.0 / a as f64;
    let (host_growth, worker_growth) =
        (growth(host_warm, host_end), growth(worker_warm, worker_end));
    eprintln!(
        "soak: {messages} round trips and {lends} lends of 64 KiB in {:.1} s ({:.0} round trips/s, \
         {:.1} µs each); RSS after the warm-up of {warm_up} → at the end: host {host_warm} → \
         {host_end} KiB ({host_growth:+.2} %), worker {worker_warm} → {worker_end} KiB \
         ({worker_growth:+.2} %), {:.1} s apart",
        took.as_secs_f64(),
        messages as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / messages as f64,
        steady.as_secs_f64(),
    );
    ch.close().expect("close");
    gw.exit(WAIT).expect("exit");
    assert!(
        host_growth < 1.0 && worker_growth < 1.0,
        "resident memory grew by 1 % or more: host {host_growth:+.2} %, worker {worker_growth:+.2} %"
    );
    assert_no_segments();
}
