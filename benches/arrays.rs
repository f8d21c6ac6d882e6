//! Arrays handed to a CPython worker through shared memory, in one run:
//!
//! 1. `handoff`: a resident `SharedArray<u8>` of 1 MiB … 8 GiB is lent to a remote
//!    echo, which sends it straight back (that releases it); next to it, a small int
//!    echoed on the same channel. Twice: *kept*, as shipped (the worker keeps the
//!    segment mapped between handoffs), and *fresh* (the remote code drops the kept
//!    mapping after each handoff, as `FORGET` would, so each handoff maps anew).
//! 2. `exchange_512MiB`: a 512 MiB `u16` array lent, doubled in place by the remote
//!    (`arr *= 2`, timed there with `perf_counter`), given back, kept and fresh; the
//!    host's time per exchange against the worker's numpy time, and against execnet
//!    sending the bytes (`benches/peer_execnet_arrays.py`).
//! 3. `memory`: peak memory of host and worker while a 1 GiB and a 4 GiB stack is lent,
//!    doubled in place by the worker and given back, and the worker's memory after the
//!    host dropped the stack (`/proc/self/status`, peaks reset with `clear_refs` first).
//!
//! Every figure is printed as a line starting with `arrays:` besides criterion's output.
//! Without `--bench` (criterion's test mode, `cargo test --benches`) only arrays of at
//! most 64 MiB are used and the execnet peer is skipped.
//!
//! The interpreter is `$PIXGATE_PYTHON`, else `.venv/bin/python`, else `python3`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use pixgate::{Gateway, OutputMode, SharedArray, Value};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// Longest wait for any answer from the worker.
const T: Duration = Duration::from_secs(120);

#[path = "../tests/common/mod.rs"]
mod common;
use common::python;

/// Criterion runs benchmarks for real only when given `--bench`; otherwise (test mode)
/// each routine runs once, and this bench keeps to small arrays.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn gateway(id: &str) -> Gateway {
    Gateway::builder(&format!("popen//python={}//id={id}", python()))
        .output(OutputMode::Stderr)
        .handshake_timeout(T)
        .spawn()
        .expect("spawn gateway")
}

fn label(bytes: usize) -> String {
    if bytes >= GIB {
        format!("{}GiB", bytes / GIB)
    } else {
        format!("{}MiB", bytes / MIB)
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn micros(secs: f64) -> String {
    format!("{:.1} µs", secs * 1e6)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_seq()
        .expect("a tuple or list")
        .iter()
        .map(|x| {
            x.as_f64()
                .or_else(|| x.as_i64().map(|i| i as f64))
                .expect("a number")
        })
        .collect()
}

/// The per-exchange times a routine recorded, with criterion's warm-up included.
#[derive(Default)]
struct Rec(Vec<f64>);

impl Rec {
    /// The median of the recorded times, leaving out the first (cold) one.
    fn median(&self) -> f64 {
        median(self.0.get(1..).filter(|s| !s.is_empty()).unwrap_or(&self.0))
    }
}

/// Fresh mappings fault their pages in on every handoff; criterion's defaults would take
/// minutes on the large arrays.
fn configure(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// Echoes `(value, fresh)` as `value`; with `fresh`, drops the worker's kept mapping of
/// an array afterwards, as FORGET does, so that the next handoff maps it anew.
const ECHO: &str = "\
from pixgate import _array, _transfer
for msg, fresh in channel:
    channel.send(msg)
    if fresh:
        _transfer.forget(_array.segment_of(msg)[0].name)
    del msg
";

fn with_fresh(v: Value, fresh: bool) -> Value {
    Value::Tuple(vec![v, fresh.into()])
}

fn handoff(c: &mut Criterion) {
    let full = full_run();
    let sizes: &[usize] = if full {
        &[MIB, 64 * MIB, GIB, 8 * GIB]
    } else {
        &[MIB, 64 * MIB]
    };
    if !full {
        println!(
            "arrays: test mode (no --bench): small arrays, one exchange each; not measurements"
        );
    }
    let gw = gateway("bench-handoff");
    let ch = gw.remote_exec(ECHO).expect("remote_exec");
    let mut g = c.benchmark_group("handoff");
    configure(&mut g);
    g.sampling_mode(SamplingMode::Auto);

    let mut small = Rec::default();
    let mut i = 0i64;
    g.bench_function("small_int", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                i += 1;
                let t1 = Instant::now();
                ch.send(with_fresh(i.into(), false)).expect("send");
                let back = ch.receive_timeout(T).expect("receive");
                small.0.push(t1.elapsed().as_secs_f64());
                assert_eq!(back.as_i64(), Some(i));
            }
            t.elapsed()
        })
    });
    let small_med = small.median();
    let mut table: Vec<(&str, usize, f64)> = vec![];
    println!("arrays: handoff small_int median {}", micros(small_med));
    configure(&mut g);

    for &n in sizes {
        let mut a = SharedArray::<u8>::zeros(&[n]).expect("zeros");
        // Resident: every page written once by the host.
        a.view_mut().expect("view_mut").fill(1);
        for fresh in [false, true] {
            let mode = if fresh { "fresh" } else { "kept" };
            let mut rec = Rec::default();
            g.bench_with_input(BenchmarkId::new(mode, label(n)), &n, |b, _| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        let t1 = Instant::now();
                        ch.send(with_fresh(a.lend().expect("lend"), fresh))
                            .expect("send");
                        let back = ch.receive_timeout(T).expect("receive");
                        rec.0.push(t1.elapsed().as_secs_f64());
                        assert!(matches!(back, Value::Array(_)));
                        assert!(!a.is_lent(), "sending it back releases it");
                    }
                    t.elapsed()
                })
            });
            let m = rec.median();
            table.push((mode, n, m));
            println!(
                "arrays: handoff {mode} {} median {} ({:.2}× and +{} over the small int; {} exchanges)",
                label(n),
                micros(m),
                m / small_med,
                micros(m - small_med),
                rec.0.len()
            );
        }
        drop(a);
    }
    g.finish();
    for mode in ["kept", "fresh"] {
        let rows: Vec<&(&str, usize, f64)> = table.iter().filter(|r| r.0 == mode).collect();
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            println!(
                "arrays: handoff {mode}: {} ÷ {} = {:.2}×",
                label(last.1),
                label(first.1),
                last.2 / first.2
            );
        }
    }
    ch.close().expect("close");
    gw.exit(Duration::from_secs(30)).expect("exit");
}

/// Doubles each lent array in place, timing numpy there; first, the same operation on a
/// private, already-faulted array of the same size (numpy's own speed, median of 5).
const DOUBLE: &str = "\
import time, statistics
import numpy as np
n = channel.receive()
warm = np.full(n, 3, dtype=np.uint16)
warm *= 2
ts = []
for _ in range(5):
    t = time.perf_counter()
    warm *= 2
    ts.append(time.perf_counter() - t)
del warm
channel.send(statistics.median(ts))
from pixgate import _array, _transfer
for arr, fresh in channel:
    t = time.perf_counter()
    arr *= 2
    dt = time.perf_counter() - t
    channel.send((arr, dt))
    if fresh:
        _transfer.forget(_array.segment_of(arr)[0].name)
    del arr
";

fn exchange(c: &mut Criterion) {
    let full = full_run();
    let n = if full { 512 * MIB } else { 8 * MIB };
    let elems = n / 2;
    let name = format!("exchange_{}", label(n));
    let gw = gateway("bench-exchange");
    let ch = gw.remote_exec(DOUBLE).expect("remote_exec");
    ch.send(elems as i64).expect("send");
    let warm = ch
        .receive_timeout(T)
        .expect("receive")
        .as_f64()
        .expect("float");
    println!(
        "arrays: {name} numpy `a *= 2` on a private warm array in the worker: {:.2} ms",
        warm * 1e3
    );
    let mut a = SharedArray::<u16>::zeros(&[elems / 1024, 1024]).expect("zeros");
    a.view_mut().expect("view_mut").fill(3);
    let mut g = c.benchmark_group(&name);
    configure(&mut g);
    let mut medians = vec![];
    for fresh in [false, true] {
        let mode = if fresh { "fresh" } else { "kept" };
        let (mut host, mut numpy) = (Rec::default(), Rec::default());
        g.bench_function(mode, |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let t1 = Instant::now();
                    ch.send(with_fresh(a.lend().expect("lend"), fresh))
                        .expect("send");
                    let back = ch.receive_timeout(T).expect("receive");
                    host.0.push(t1.elapsed().as_secs_f64());
                    let back = back.as_seq().expect("a tuple");
                    assert!(matches!(back[0], Value::Array(_)));
                    numpy.0.push(back[1].as_f64().expect("float"));
                }
                t.elapsed()
            })
        });
        let (h, w) = (host.median(), numpy.median());
        println!(
            "arrays: {name} {mode}: exchange median {:.2} ms, numpy `arr *= 2` in the worker \
             median {:.2} ms, exchange ÷ numpy {:.3} ({} exchanges)",
            h * 1e3,
            w * 1e3,
            h / w,
            host.0.len()
        );
        medians.push((mode, h));
    }
    g.finish();
    drop(a);
    ch.close().expect("close");
    gw.exit(Duration::from_secs(30)).expect("exit");

    if !full {
        println!("arrays: execnet peer skipped (test mode)");
        return;
    }
    let peer = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/peer_execnet_arrays.py"
    );
    let out = Command::new(python())
        .args([peer, &(n / MIB).to_string(), "5"])
        .output()
        .expect("run the execnet peer");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(m) = text
        .split("\"median\": ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse::<f64>().ok())
    else {
        println!(
            "arrays: execnet peer failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    };
    println!("arrays: execnet peer: {}", text.trim());
    for (mode, h) in medians {
        println!(
            "arrays: {name} execnet median {:.3} s ÷ pixgate {mode} {:.2} ms = {:.0}×",
            m,
            h * 1e3,
            m / h
        );
    }
}

/// `/proc/self/status` fields read on both sides, in kB.
const FIELDS: [&str; 5] = ["VmHWM", "VmRSS", "RssAnon", "RssShmem", "VmPTE"];

#[derive(Clone, Copy, Debug)]
struct Status {
    hwm: f64,
    rss: f64,
    anon: f64,
    shmem: f64,
    pte: f64,
}

impl Status {
    fn from_kb(v: &[f64]) -> Status {
        Status {
            hwm: v[0],
            rss: v[1],
            anon: v[2],
            shmem: v[3],
            pte: v[4],
        }
    }

    fn own() -> Status {
        let text = std::fs::read_to_string("/proc/self/status").expect("read status");
        let v: Vec<f64> = FIELDS
            .iter()
            .map(|f| {
                text.lines()
                    .find_map(|l| l.strip_prefix(f)?.strip_prefix(':'))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .expect("status field")
            })
            .collect();
        Status::from_kb(&v)
    }
}

/// Resets this process's VmHWM to its current RSS.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("write clear_refs");
}

/// Receives a lent stack, doubles it in place, gives it back; reports its memory before,
/// once the stack is mapped, once it is doubled (still mapped), after letting go (the
/// mapping is kept), and after the host dropped the stack (FORGET).
const MEMORY: &str = "\
import numpy as np
FIELDS = ('VmHWM', 'VmRSS', 'RssAnon', 'RssShmem', 'VmPTE')
def status():
    d = {}
    with open('/proc/self/status') as f:
        for line in f:
            k, _, v = line.partition(':')
            if k in FIELDS:
                d[k] = int(v.split()[0])
    return tuple(d[k] for k in FIELDS)
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
channel.send(status())
arr = channel.receive()
mapped = status()
arr *= 2
doubled = status()
channel.send(arr)
del arr
channel.send((mapped, doubled, status()))
channel.receive()
channel.send(status())
";

fn mib(kb: f64) -> f64 {
    kb / 1024.0
}

fn memory(_c: &mut Criterion) {
    let full = full_run();
    let sizes: &[usize] = if full { &[GIB, 4 * GIB] } else { &[64 * MIB] };
    for &n in sizes {
        let budget = 50.0 + 0.01 * (n / MIB) as f64;
        {
            let mode = "kept";
            let gw = gateway("bench-memory");
            let ch = gw.remote_exec(MEMORY).expect("remote_exec");
            let w0 = Status::from_kb(&floats(&ch.receive_timeout(T).expect("receive")));
            reset_peak();
            let h0 = Status::own();
            let planes = n / (2 * MIB);
            let mut a = SharedArray::<u16>::zeros(&[planes, 1024, 1024]).expect("zeros");
            a.view_mut().expect("view_mut").fill(3);
            let h1 = Status::own();
            ch.send(a.lend().expect("lend")).expect("send");
            let back = ch.receive_timeout(T).expect("receive");
            assert!(matches!(back, Value::Array(_)));
            let r = ch.receive_timeout(T).expect("receive");
            let r = r.as_seq().expect("a tuple");
            let (wm, wd, wa) = (
                Status::from_kb(&floats(&r[0])),
                Status::from_kb(&floats(&r[1])),
                Status::from_kb(&floats(&r[2])),
            );
            let h2 = Status::own();
            {
                let v = a.view().expect("view");
                assert_eq!((v[[0, 0, 0]], v[[planes - 1, 1023, 1023]]), (6, 6));
            }
            drop(a);
            let h3 = Status::own();
            ch.send(0).expect("send");
            let wf = Status::from_kb(&floats(&ch.receive_timeout(T).expect("receive")));
            ch.close().expect("close");
            gw.exit(Duration::from_secs(30)).expect("exit");

            // Private (non-shared) peak over the side's own baseline: the peak RSS less the
            // shared pages mapped at the end (all of the stack, by then), less the
            // private RSS before the stack existed.
            let host_private = mib(h2.hwm - h2.shmem - (h0.rss - h0.shmem));
            let worker_private = mib(wd.hwm - wd.shmem - (w0.rss - w0.shmem));
            println!(
                "arrays: memory {} {mode} host: RSS {:.1} → {:.1} MiB (filled {:.1}, after drop {:.1}), \
                 VmHWM {:.1} MiB, RssShmem {:.1} MiB, RssAnon {:.1} → {:.1} MiB, VmPTE {:.0} kB; \
                 private peak over baseline {:.1} MiB (budget {budget:.1})",
                label(n),
                mib(h0.rss),
                mib(h2.rss),
                mib(h1.rss),
                mib(h3.rss),
                mib(h2.hwm),
                mib(h2.shmem),
                mib(h0.anon),
                mib(h2.anon),
                h2.pte,
                host_private,
            );
            println!(
                "arrays: memory {} {mode} worker: RSS {:.1} → mapped {:.1} → doubled {:.1} → released {:.1} → dropped by the host {:.1} MiB, \
                 VmHWM {:.1} MiB, RssShmem mapped {:.1} / doubled {:.1} MiB, RssAnon {:.1} → {:.1} MiB, \
                 VmPTE {:.0} → {:.0} kB; private peak over baseline {:.1} MiB (budget {budget:.1})",
                label(n),
                mib(w0.rss),
                mib(wm.rss),
                mib(wd.rss),
                mib(wa.rss),
                mib(wf.rss),
                mib(wd.hwm),
                mib(wm.shmem),
                mib(wd.shmem),
                mib(w0.anon),
                mib(wd.anon),
                w0.pte,
                wd.pte,
                worker_private,
            );
        }
    }
}

criterion_group!(benches, handoff, exchange, memory);
criterion_main!(benches);
