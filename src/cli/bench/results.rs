//! P10: a result array made in Python. The worker times, in turn and in the same run,
//! five ways to hold a copy of a 48 MiB `uint16` stack (as a scikit-image pipeline's
//! output would be):
//!
//! - `np.empty_like` + `np.copyto`: plain numpy memory (the reference);
//! - `pixgate.empty` + `np.copyto`, the array dropped in the worker: the next one reuses
//!   its segment (`pixgate.reuse_limit`);
//! - the same in a new segment each time: what `pixgate.empty` costs without reuse;
//! - `pixgate.empty` + `np.copyto`, the array moved to the host, which drops it: a
//!   pipeline's results, whose segments come back for reuse once the host lets go;
//! - a bare shared anonymous mapping (`mmap(-1, MAP_SHARED)`) + `np.copyto`: what the
//!   kernel charges for new shared memory itself.
//!
//! Targets: pixgate ÷ numpy ≤ 1.5 (kept and moved), a new segment ÷ the bare mapping
//! ≤ 1.1 (pixgate adds nothing to the kernel's cost of new shared memory).

use super::report::{Row, Target};
use super::{Bench, BenchError, MIB, Scenario, TIMEOUT};
use pixgate::Value;

const TIMER: &str = include_str!("../../../python-helper/remote/bench_results.py");

/// P10; see the module docs.
pub(crate) fn results(b: &mut Bench) -> Result<(), BenchError> {
    let p = Scenario::P10;
    let bytes = b.pick(8 * MIB, 48 * MIB).min(b.max_bytes);
    let rounds = b.pick(5, 30);
    b.step(format!(
        "P10 result array made in Python: {} MiB, numpy / pixgate.empty / bare shmem in turn",
        bytes / MIB
    ));
    let gw = b.gateway("bench-p10")?;
    let ch = gw.remote_exec(TIMER)?;
    ch.send(Value::Tuple(vec![
        Value::from(bytes as i64),
        Value::from(rounds as i64),
    ]))?;
    // The moved case's arrays arrive one by one: each is adopted and dropped at once
    // (which frees its segment for the worker's next one), then acknowledged.
    let reply = loop {
        let v = ch.receive_timeout(TIMEOUT)?;
        if !matches!(v, Value::Array(_)) {
            break v;
        }
        drop(pixgate::SharedArray::<u16>::from_value(v)?);
        ch.send(Value::None)?;
    };
    let lists: Vec<Vec<f64>> = reply
        .as_seq()
        .map(|s| {
            s.iter()
                .map(|l| {
                    l.as_seq()
                        .map(|v| v.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    if lists.len() != 5 || lists.iter().any(|l| l.len() != rounds) {
        return Err(BenchError::Answer(format!(
            "expected five lists of {rounds} times, got {reply}"
        )));
    }
    let mib = bytes / MIB;
    let case = |i: usize, what: &str, note: Option<&str>| {
        let row = Row::new(p, format!("{mib} MiB, {what}"), &lists[i]);
        match note {
            Some(n) => row.note(n),
            None => row,
        }
    };
    let plain = b
        .report
        .row(case(0, "np.empty_like + copyto (numpy memory)", None));
    let kept = b.report.row(case(
        1,
        "pixgate.empty + copyto, dropped in the worker",
        Some("reuses the segment of the array before"),
    ));
    let fresh = b.report.row(case(
        2,
        "pixgate.empty + copyto, a new segment",
        Some("no segment kept for reuse"),
    ));
    let moved = b.report.row(case(
        3,
        "pixgate.empty + copyto, moved to the host",
        Some("reuses the segment the host let go of"),
    ));
    let floor = b.report.row(case(
        4,
        "bare shared mapping + copyto",
        Some("the kernel's cost of new shared memory"),
    ));
    b.report.ratio(
        p,
        "result made in Python, pixgate.empty ÷ numpy",
        kept.zip(plain).map(|(s, n)| s / n),
        "×",
        Target::AtMost(1.5),
    );
    b.report.ratio(
        p,
        "result moved to the host, pixgate.empty ÷ numpy",
        moved.zip(plain).map(|(s, n)| s / n),
        "×",
        Target::AtMost(1.5),
    );
    b.report.ratio(
        p,
        "a new segment ÷ bare shared mapping (the kernel's floor)",
        fresh.zip(floor).map(|(s, f)| s / f),
        "×",
        Target::AtMost(1.1),
    );
    ch.close()?;
    gw.exit(std::time::Duration::from_secs(20))?;
    Ok(())
}
