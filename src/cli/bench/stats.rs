//! Summaries of timing samples: median, 10th and 90th percentile, count.

/// The order statistics `pixgate bench` reports for a set of samples (seconds, or
/// whatever unit they came in).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    /// The 50th percentile.
    pub median: f64,
    /// The 10th percentile.
    pub p10: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// How many samples.
    pub n: usize,
}

impl Summary {
    /// The summary of `samples`; `None` when there are none or one is not finite.
    pub(crate) fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            median: percentile(&sorted, 0.5),
            p10: percentile(&sorted, 0.1),
            p90: percentile(&sorted, 0.9),
            n: sorted.len(),
        })
    }
}

/// The median of `samples`, when there are some and all are finite.
pub(crate) fn median(samples: &[f64]) -> Option<f64> {
    Summary::of(samples).map(|s| s.median)
}

/// The `p`-quantile (0 ≤ p ≤ 1) of sorted, non-empty samples, interpolating linearly
/// between the two nearest ranks.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let pos = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_small_sets_interpolate_between_ranks() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
        let one = Summary::of(&[3.0]).unwrap();
        assert_eq!((one.median, one.p10, one.p90, one.n), (3.0, 3.0, 3.0, 1));
        let two = Summary::of(&[2.0, 1.0]).unwrap();
        assert_eq!(two.median, 1.5);
        let s = Summary::of(&(1..=11).rev().map(f64::from).collect::<Vec<_>>()).unwrap();
        assert_eq!((s.median, s.p10, s.p90, s.n), (6.0, 2.0, 10.0, 11));
    }
}
