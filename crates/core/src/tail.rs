//! The upper tail of a distance's in-distribution distribution, stored compactly, so that two
//! distances on different scales (a 48-feature posterior distance and a one-feature motion
//! residual) can be put on one: -ln of the fraction of in-distribution frames at least as far.
//! A score that takes the larger of two such tail scores sees a frame that is extreme in either
//! part, where one distance over both parts dilutes the smaller part
//! (docs/detector-experiments.md, "The motion residual").

use serde::{Deserialize, Serialize};

/// Tail levels per decade: the table holds the distance exceeded by a fraction
/// 10^(-j / LEVELS_PER_DECADE) of the frames, for j = 0, 1, ... down to 1 / frames.
pub const LEVELS_PER_DECADE: u32 = 20;

/// Quantiles of a distance over in-distribution frames at log-spaced tail levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tail {
    /// Entry j is exceeded by a fraction 10^(-j / 20) of the frames it was measured on (entry
    /// 0: the smallest distance); non-decreasing, at least two entries.
    pub quantiles: Vec<f64>,
}

/// Why a tail table is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tail table: {0}")]
pub struct TailError(String);

impl Tail {
    /// The table of `distances` (at least 10 finite values).
    pub fn measure(distances: &[f64]) -> Result<Self, TailError> {
        let mut d: Vec<f64> = distances.to_vec();
        if d.len() < 10 || d.iter().any(|v| !v.is_finite()) {
            return Err(TailError(format!(
                "needs at least 10 finite distances, got {} values",
                d.len()
            )));
        }
        d.sort_by(f64::total_cmp);
        let n = d.len() as f64;
        let levels = (n.log10() * f64::from(LEVELS_PER_DECADE)).floor() as i32;
        let quantiles = (0..=levels)
            .map(|j| {
                let q = 10f64.powf(-f64::from(j) / f64::from(LEVELS_PER_DECADE));
                // The value exceeded by (about) a fraction q: the (1 - q) empirical quantile.
                let i = ((1.0 - q) * n).floor() as usize;
                d[i.min(d.len() - 1)]
            })
            .collect();
        Ok(Self { quantiles })
    }

    pub fn validate(&self) -> Result<(), TailError> {
        let q = &self.quantiles;
        if q.len() < 2 || q.iter().any(|v| !v.is_finite()) || q.windows(2).any(|w| w[1] < w[0]) {
            return Err(TailError(
                "quantiles must be at least two finite, non-decreasing values".into(),
            ));
        }
        Ok(())
    }

    /// -ln of the fraction of frames at least as far as `d`: 0 at or below the smallest,
    /// interpolated linearly in ln(fraction) between levels, and continued beyond the largest
    /// along the last level's slope, so that frames farther than any measured one stay
    /// ordered. NaN stays NaN.
    pub fn score(&self, d: f64) -> f64 {
        if d.is_nan() {
            return d;
        }
        let q = &self.quantiles;
        let step = std::f64::consts::LN_10 / f64::from(LEVELS_PER_DECADE);
        let last = q.len() - 1;
        if d <= q[0] {
            return 0.0;
        }
        // The first level whose quantile is at least d.
        let j = q.partition_point(|&v| v < d);
        if j > last {
            // Beyond the table: the last non-flat segment's slope (flat tables: a step per unit).
            let k = (1..=last).rev().find(|&k| q[k] > q[k - 1]);
            let slope = k.map_or(1.0, |k| step / (q[k] - q[k - 1]));
            return last as f64 * step + (d - q[last]) * slope;
        }
        let (lo, hi) = (q[j - 1], q[j]);
        let frac = if hi > lo { (d - lo) / (hi - lo) } else { 1.0 };
        ((j - 1) as f64 + frac) * step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_is_minus_ln_the_fraction_exceeding() {
        // 10,000 distances 1..=10000: a fraction 10^-j/20 exceed the (1 - q) quantile.
        let d: Vec<f64> = (1..=10_000).map(f64::from).collect();
        let t = Tail::measure(&d).unwrap();
        assert_eq!(t.quantiles.len(), 81);
        assert_eq!(t.score(0.5), 0.0);
        for x in [5000.0, 9000.0, 9900.0, 9990.0] {
            let want = d.iter().filter(|&&v| v >= x).count() as f64 / d.len() as f64;
            let s = t.score(x);
            assert!((s - -want.ln()).abs() < 0.06, "{x}: {s} vs {}", -want.ln());
        }
        // Monotone, and beyond the largest distance still increasing.
        let xs = [100.0, 5000.0, 9999.0, 10_000.0, 10_001.0, 20_000.0];
        let s: Vec<f64> = xs.iter().map(|&x| t.score(x)).collect();
        assert!(s.windows(2).all(|w| w[1] > w[0]), "{s:?}");
        assert!(t.score(f64::NAN).is_nan());
    }

    #[test]
    fn bad_tables_are_errors() {
        assert!(Tail::measure(&[1.0; 5]).is_err());
        assert!(Tail::measure(&[1.0, f64::NAN, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]).is_err());
        let t = Tail {
            quantiles: vec![2.0, 1.0],
        };
        assert!(t.validate().is_err());
        // A constant distance: every frame at or below it scores 0, above it grows.
        let t = Tail::measure(&[3.0; 100]).unwrap();
        assert!(t.validate().is_ok());
        assert_eq!(t.score(3.0), 0.0);
        assert!(t.score(4.0) > t.score(3.5));
    }
}
