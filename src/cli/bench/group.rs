//! P6: a `Group` of 2 workers against 1 on a CPU-bound, pure-Python operation per plane.
//!
//! PLACEHOLDER — `pixgate::Group` is not part of this build. When it is, this scenario
//! becomes: a stack of planes, a pure-Python loop over each plane's pixels in the
//! worker, handed out plane by plane to a `Group` of 1 and of 2 workers; rows of the
//! time per stack for each, and the ratio 1-worker ÷ 2-worker time against its target.
//! Until then it only says so, in the table and the JSON.

use super::report::Row;
use super::{Bench, BenchError, Scenario};

/// Adds P6's row, which says the scenario is not available in this build.
pub(crate) fn group(b: &mut Bench) -> Result<(), BenchError> {
    b.report.row(
        Row::new(
            Scenario::P6,
            "Group of 2 vs 1, pure-Python per-plane operation",
            &[],
        )
        .note("not available in this build (no Group yet)"),
    );
    Ok(())
}
