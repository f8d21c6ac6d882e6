//! P10: a result array made in Python. The worker times, in turn and in the same run,
//! three ways to hold a copy of a 48 MiB `uint16` stack (as a scikit-image pipeline's
//! output would be):
//!
//! - `np.empty_like` + `np.copyto`: plain numpy memory (the reference);
//! - `pixgate.empty` + `np.copyto`: a shared array, ready to move to the host;
//! - a bare shared anonymous mapping (`mmap(-1, MAP_SHARED)`) + `np.copyto`: what the
//!   kernel charges for shared memory itself, below which no shared array can go.
//!
//! Target: pixgate ÷ numpy ≤ 1.5. The third row says how much of the gap is the
//! kernel's: numpy's own memory is private and gets transparent huge pages, shared
//! memory gets them only where the machine enables them for shmem.

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
    let reply = ch.receive_timeout(TIMEOUT)?;
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
    if lists.len() != 3 || lists.iter().any(|l| l.len() != rounds) {
        return Err(BenchError::Answer(format!(
            "expected three lists of {rounds} times, got {reply}"
        )));
    }
    let mib = bytes / MIB;
    let plain = b.report.row(Row::new(
        p,
        format!("{mib} MiB, np.empty_like + copyto (numpy memory)"),
        &lists[0],
    ));
    let shared = b.report.row(Row::new(
        p,
        format!("{mib} MiB, pixgate.empty + copyto"),
        &lists[1],
    ));
    let floor = b.report.row(
        Row::new(
            p,
            format!("{mib} MiB, bare shared mapping + copyto"),
            &lists[2],
        )
        .note("the kernel's cost of shared memory"),
    );
    b.report.ratio(
        p,
        "result made in Python, pixgate.empty ÷ numpy",
        shared.zip(plain).map(|(s, n)| s / n),
        "×",
        Target::AtMost(1.5),
    );
    b.report.ratio(
        p,
        "pixgate.empty ÷ bare shared mapping (the kernel's floor)",
        shared.zip(floor).map(|(s, f)| s / f),
        "×",
        Target::AtMost(1.1),
    );
    ch.close()?;
    gw.exit(std::time::Duration::from_secs(20))?;
    Ok(())
}
