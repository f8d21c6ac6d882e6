//! Target P6: a group of workers splitting CPU-bound pure-Python work over planes.
//!
//! A 16-plane `u16` stack of 512 × 512 is shared with a [`Group`]; each worker runs, for
//! each plane of its range, a Python-level loop over the plane's rows computing a rolling
//! hash of each row (about 25 ms per plane on one core: pure bytecode, the GIL held
//! throughout, so threads in one interpreter could not share it) and writes one value
//! per row into its part of a shared `f64` output of 16 × 512. The same map runs on a
//! group of 1 and a group of 2; the line
//!
//! `group: P6 ... speed-up X.XX×`
//!
//! reports the median time of each and their ratio (the ideal is the number of cores
//! the machine can give the workers). Besides it, criterion's own report.
//!
//! Without `--bench` (criterion's test mode, `cargo test --benches`) the stack is 4
//! planes of 16 × 16 and each routine runs once: the line is printed but is no
//! measurement.
//!
//! The interpreter is `$PIXGATE_PYTHON`, else `.venv/bin/python`, else `python3`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use pixgate::{Gateway, Group, OutputMode, SharedArray};

/// Longest a map may take.
const T: Duration = Duration::from_secs(120);

#[path = "../tests/common/mod.rs"]
mod common;
use common::python;

/// Criterion runs benchmarks for real only when given `--bench`; otherwise (test mode)
/// each routine runs once, and this bench keeps to a tiny stack.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A rolling hash of each row, in pure Python (the same file `pixgate bench` runs).
const ROW_HASH: &str = include_str!("row_hash.py");

fn group(n: usize) -> Group {
    let b = Gateway::builder(&format!("popen//python={}//id=bench-p6x{n}", python()))
        .output(OutputMode::Stderr)
        .handshake_timeout(T);
    Group::with_builder(&b, n).expect("start group")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn p6(c: &mut Criterion) {
    let full = full_run();
    let (planes, side) = if full { (16, 512) } else { (4, 16) };
    if !full {
        println!("group: test mode (no --bench): a tiny stack, one map each; not measurements");
    }
    let mut input = SharedArray::<u16>::zeros(&[planes, side, side]).expect("input");
    for (i, x) in input.view_mut().expect("view").iter_mut().enumerate() {
        *x = (i.wrapping_mul(2_654_435_761) >> 7) as u16;
    }
    let groups = [group(1), group(2)];
    let mut outputs: Vec<SharedArray<f64>> = (0..2)
        .map(|_| SharedArray::zeros(&[planes, side]).expect("output"))
        .collect();
    // Warm-up: numpy imported and the segments mapped in every worker.
    for (g, out) in groups.iter().zip(&mut outputs) {
        g.map_planes(ROW_HASH, "row_hash", &input, out, 0, Some(T))
            .expect("map");
    }
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut bg = c.benchmark_group("group_p6");
    bg.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(3));
    for (k, (g, out)) in groups.iter().zip(&mut outputs).enumerate() {
        let rec = &mut times[k];
        bg.bench_function(
            BenchmarkId::new("row_hash", format!("workers={}", g.len())),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        g.map_planes(ROW_HASH, "row_hash", &input, out, 0, Some(T))
                            .expect("map");
                        let dt = t.elapsed();
                        rec.push(dt.as_secs_f64());
                        total += dt;
                    }
                    total
                })
            },
        );
    }
    bg.finish();
    assert_eq!(
        outputs[0].view().expect("view"),
        outputs[1].view().expect("view"),
        "one worker and two agree"
    );
    let one = median(&mut times[0]);
    let two = median(&mut times[1]);
    println!(
        "group: P6 row hash over {planes} planes of {side}×{side} u16 (pure Python): \
         1 worker {:.1} ms, 2 workers {:.1} ms, {:.1} ms per plane; speed-up {:.2}×",
        one * 1e3,
        two * 1e3,
        one * 1e3 / planes as f64,
        one / two
    );
    for g in &groups {
        g.terminate(Duration::from_secs(5)).expect("terminate");
    }
}

criterion_group!(benches, p6);
criterion_main!(benches);
