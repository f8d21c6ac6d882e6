//! P6: a `Group` of 2 workers against 1 on a CPU-bound, pure-Python operation per plane.
//!
//! A `u16` stack shared with each group; per plane, a Python-level loop over the rows
//! computing a rolling hash of each (bytecode only, the GIL held throughout), one `f64`
//! per row written into the worker's part of a shared output. The same map on a group
//! of 1 and a group of 2; the two outputs must agree.

use std::time::{Duration, Instant};

use pixgate::{Gateway, Group, SharedArray};

use super::report::{Row, Target};
use super::{Bench, BenchError, Scenario, TIMEOUT};

/// The per-plane function the workers run (the criterion bench runs it too).
const ROW_HASH: &str = include_str!("../../../benches/row_hash.py");

/// Adds P6's rows and its target ratio.
pub(crate) fn group(b: &mut Bench) -> Result<(), BenchError> {
    let p = Scenario::P6;
    let (planes, side) = b.pick((4, 128), (16, 512));
    let maps = b.pick(2, 7);
    let mut input = SharedArray::<u16>::zeros(&[planes, side, side])?;
    for (i, x) in input.view_mut()?.iter_mut().enumerate() {
        *x = (i.wrapping_mul(2_654_435_761) >> 7) as u16;
    }
    let mut medians = Vec::new();
    let mut outputs = Vec::new();
    for n in [1usize, 2] {
        b.step(format!("P6 group of {n}"));
        let builder =
            Gateway::builder(&format!("popen//python={}//id=bench-p6x{n}", b.opts.python))
                .output(b.worker_output())
                .handshake_timeout(Duration::from_secs(60));
        let g = Group::with_builder(&builder, n)?;
        let mut out = SharedArray::<f64>::zeros(&[planes, side])?;
        // The first map warms up: the workers import numpy and compile the function.
        g.map_planes(ROW_HASH, "row_hash", &input, &mut out, 0, Some(TIMEOUT))?;
        let mut samples = Vec::with_capacity(maps);
        for _ in 0..maps {
            let t = Instant::now();
            g.map_planes(ROW_HASH, "row_hash", &input, &mut out, 0, Some(TIMEOUT))?;
            samples.push(t.elapsed().as_secs_f64());
        }
        g.terminate(Duration::from_secs(10))?;
        medians.push(
            b.report.row(
                Row::new(
                    p,
                    format!("Group of {n}, row hash over {planes} planes of {side}²"),
                    &samples,
                )
                .note("seconds per map"),
            ),
        );
        outputs.push(out);
    }
    if outputs[0].view()? != outputs[1].view()? {
        return Err(BenchError::Answer(
            "a group of 2 computed another result than a group of 1".to_string(),
        ));
    }
    b.report.ratio(
        p,
        "1 worker ÷ 2 workers time".to_string(),
        medians[0].zip(medians[1]).map(|(one, two)| one / two),
        "×",
        Target::AtLeast(1.8),
    );
    Ok(())
}
