//! Latency percentiles, one definition for the evaluation report, the benches and the node.

use serde::Serialize;

/// Nearest-rank percentiles of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles of `v` (None when empty).
pub fn percentiles(mut v: Vec<f64>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Some(Percentiles {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: q(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        assert_eq!(percentiles(vec![]), None);
        let p = percentiles((1..=100).rev().map(f64::from).collect()).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (51.0, 90.0, 99.0, 100.0));
    }
}
