//! A Gaussian mixture over the Mahalanobis score's features: its reference when one Gaussian
//! cannot cover the in-distribution scenes. With one Gaussian the busiest clear scenes (close-ups
//! of buses and buildings) lie far from the mean and set the alarm threshold; a mixture can give
//! such a scene kind a component of its own (docs/detector-experiments.md, "A mixture
//! reference").
//!
//! The score of a frame x is -2 ln sum_j w_j sqrt(det P_j / det P_max) exp(-m_j(x)^2 / 2), with
//! m_j the Mahalanobis distance to component j and P_max the most concentrated component's
//! precision: twice the negative log-likelihood up to a constant, never negative, and the
//! squared Mahalanobis distance itself when there is one component.
//!
//! Fitted by EM from a seeded k-means++ start, so a calibration run is reproducible.

use crate::score::{cholesky, spd_inverse, ScoreError};
use serde::{Deserialize, Serialize};

/// SplitMix64: the k-means++ start's random numbers. A few lines instead of a dependency of
/// the core (whose dependency graph is pinned so tract compiles once); seeded, so fits repeat.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One Gaussian of the mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Mixing weight; the weights sum to 1.
    pub weight: f64,
    pub mean: Vec<f64>,
    /// Inverse covariance, row-major.
    pub precision: Vec<f64>,
    /// ln det of `precision`.
    pub log_det_precision: f64,
}

/// Ridge added to each component's covariance, as for the single Gaussian.
const RIDGE: f64 = 1e-6;
/// EM stops when the mean log-likelihood per frame improves by less than this.
const TOL: f64 = 1e-4;
const MAX_ITER: usize = 100;
/// Lloyd iterations of the k-means start.
const KMEANS_ITER: usize = 20;

/// Squared Mahalanobis distance of `x` to a mean under a precision matrix.
pub fn mahalanobis2(x: &[f64], mean: &[f64], precision: &[f64]) -> f64 {
    let d = mean.len();
    let diff: Vec<f64> = x.iter().zip(mean).map(|(a, m)| a - m).collect();
    (0..d)
        .map(|i| {
            let row = &precision[i * d..(i + 1) * d];
            diff[i] * row.iter().zip(&diff).map(|(p, v)| p * v).sum::<f64>()
        })
        .sum()
}

/// The mixture score of `x` (see the module doc); NaN if `x` has the wrong length.
pub fn score(components: &[Component], x: &[f64]) -> f64 {
    if components.iter().any(|c| c.mean.len() != x.len()) {
        return f64::NAN;
    }
    let max_ld = components
        .iter()
        .map(|c| c.log_det_precision)
        .fold(f64::NEG_INFINITY, f64::max);
    let terms: Vec<f64> = components
        .iter()
        .map(|c| {
            c.weight.ln() + 0.5 * (c.log_det_precision - max_ld)
                - 0.5 * mahalanobis2(x, &c.mean, &c.precision)
        })
        .collect();
    // NaN stays NaN (a fault, never a perfect score); rounding below 0 is clamped.
    let s = -2.0 * log_sum_exp(&terms);
    if s.is_nan() {
        s
    } else {
        s.max(0.0)
    }
}

fn log_sum_exp(t: &[f64]) -> f64 {
    let m = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + t.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// The command-line options a fit's errors tell the user to change: the component count and
/// the drives fitted on.
#[derive(Debug, Clone, Copy)]
pub struct FitFlags {
    pub components: &'static str,
    pub fit: &'static str,
}

/// The score's mixture reference (`vae-ood calibrate --components K --fit DRIVES`).
pub const SCORE_FLAGS: FitFlags = FitFlags {
    components: "--components",
    fit: "--fit",
};

/// Fits `k` components to `x` (every row the same length, more rows per component than
/// features). Errors name what to change, in `flags`' words: fewer components or more fit
/// frames.
pub fn fit(
    x: &[Vec<f64>],
    k: usize,
    seed: u64,
    flags: FitFlags,
) -> Result<Vec<Component>, ScoreError> {
    let n = x.len();
    let d = x.first().map_or(0, Vec::len);
    if k == 0 {
        return Err(ScoreError::Components(
            "a mixture needs at least one component".into(),
        ));
    }
    if n == 0 || d == 0 {
        return Err(ScoreError::Components(format!(
            "no fit frame has features to fit on ({n} frames): give more {} drives",
            flags.fit
        )));
    }
    if n <= k * (d + 1) {
        return Err(ScoreError::Components(format!(
            "{k} components of {d} features need more than {} fit frames, got {n}: use fewer {} or more {} drives",
            k * (d + 1),
            flags.components,
            flags.fit
        )));
    }
    if x.iter().any(|r| r.len() != d) {
        return Err(ScoreError::RaggedFitFrames);
    }
    // Start: hard k-means++ assignments, then EM on soft responsibilities.
    let labels = kmeans(x, k, seed);
    let mut resp = vec![0.0; n * k];
    for (i, &l) in labels.iter().enumerate() {
        resp[i * k + l] = 1.0;
    }
    let mut comps = m_step(x, &resp, k, flags)?;
    let mut last = f64::NEG_INFINITY;
    for _ in 0..MAX_ITER {
        let ll = e_step(x, &comps, &mut resp);
        comps = m_step(x, &resp, k, flags)?;
        if ll - last < TOL {
            break;
        }
        last = ll;
    }
    Ok(comps)
}

/// Responsibilities of every component for every frame; returns the mean log-likelihood
/// (up to the constant d/2 ln 2 pi).
fn e_step(x: &[Vec<f64>], comps: &[Component], resp: &mut [f64]) -> f64 {
    let k = comps.len();
    let mut total = 0.0;
    for (i, row) in x.iter().enumerate() {
        let t: Vec<f64> = comps
            .iter()
            .map(|c| {
                c.weight.ln() + 0.5 * c.log_det_precision
                    - 0.5 * mahalanobis2(row, &c.mean, &c.precision)
            })
            .collect();
        let lse = log_sum_exp(&t);
        total += lse;
        for (j, v) in t.iter().enumerate() {
            resp[i * k + j] = (v - lse).exp();
        }
    }
    total / x.len() as f64
}

fn m_step(
    x: &[Vec<f64>],
    resp: &[f64],
    k: usize,
    flags: FitFlags,
) -> Result<Vec<Component>, ScoreError> {
    let (n, d) = (x.len(), x[0].len());
    (0..k)
        .map(|j| {
            let nj: f64 = (0..n).map(|i| resp[i * k + j]).sum();
            if nj < (d + 1) as f64 {
                return Err(ScoreError::Components(format!(
                    "component {j} of {k} holds {nj:.0} frames, fewer than the {} its {d} features need: use fewer {} or more {} drives",
                    d + 1,
                    flags.components,
                    flags.fit
                )));
            }
            let mut mean = vec![0.0; d];
            for (i, row) in x.iter().enumerate() {
                let r = resp[i * k + j] / nj;
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += r * v;
                }
            }
            let mut cov = vec![0.0; d * d];
            for (i, row) in x.iter().enumerate() {
                let r = resp[i * k + j] / nj;
                if r == 0.0 {
                    continue;
                }
                let diff: Vec<f64> = row.iter().zip(&mean).map(|(a, m)| a - m).collect();
                for a in 0..d {
                    let ra = r * diff[a];
                    for b in 0..=a {
                        cov[a * d + b] += ra * diff[b];
                    }
                }
            }
            for a in 0..d {
                cov[a * d + a] += RIDGE;
                for b in 0..a {
                    cov[b * d + a] = cov[a * d + b];
                }
            }
            let precision = spd_inverse(&cov, d)?;
            // ln det P = -ln det C = -2 sum ln diag(chol C).
            let l = cholesky(&cov, d)?;
            let log_det_precision = -2.0 * (0..d).map(|a| l[a * d + a].ln()).sum::<f64>();
            Ok(Component {
                weight: nj / n as f64,
                mean,
                precision,
                log_det_precision,
            })
        })
        .collect()
}

/// Checks a stored mixture over `dim` features: shapes, finite values, positive-definite
/// precisions whose stored ln det is their own (the score trusts it, it is not recomputed per
/// frame: a hand-edited precision with a stale ln det would shift every score without a word),
/// and positive weights that sum to 1.
pub fn validate(components: &[Component], dim: usize) -> Result<(), ScoreError> {
    let bad = |m: String| Err(ScoreError::Components(m));
    if components.is_empty() {
        return bad("a mixture needs at least one component".into());
    }
    for (i, c) in components.iter().enumerate() {
        if c.mean.len() != dim || c.precision.len() != dim * dim {
            return bad(format!(
                "component {i} has a mean of {} and a precision of {} values; {dim} features need {dim} and {}",
                c.mean.len(),
                c.precision.len(),
                dim * dim
            ));
        }
        if c.mean
            .iter()
            .chain(&c.precision)
            .chain([&c.weight, &c.log_det_precision])
            .any(|v| !v.is_finite())
        {
            return bad(format!("component {i} holds a NaN or an infinite value"));
        }
        let Ok(l) = cholesky(&c.precision, dim) else {
            return bad(format!(
                "component {i}'s precision is not positive-definite"
            ));
        };
        let log_det = 2.0 * (0..dim).map(|i| l[i * dim + i].ln()).sum::<f64>();
        if (log_det - c.log_det_precision).abs() > 1e-6 * (1.0 + log_det.abs()) {
            return bad(format!(
                "component {i}'s log_det_precision is {} but its precision's ln det is {log_det}",
                c.log_det_precision
            ));
        }
    }
    let total: f64 = components.iter().map(|c| c.weight).sum();
    if components.iter().any(|c| c.weight <= 0.0) || (total - 1.0).abs() > 1e-6 {
        return bad(format!(
            "weights must be positive and sum to 1 (they sum to {total})"
        ));
    }
    Ok(())
}

/// k-means++ seeding and Lloyd iterations on features standardised per column (the features
/// mix scales: posterior means near 1, log variances and detail energies of other sizes).
fn kmeans(x: &[Vec<f64>], k: usize, seed: u64) -> Vec<usize> {
    let (n, d) = (x.len(), x[0].len());
    let mut mean = vec![0.0; d];
    let mut sd = vec![0.0; d];
    for row in x {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v / n as f64;
        }
    }
    for row in x {
        for c in 0..d {
            sd[c] += (row[c] - mean[c]).powi(2) / n as f64;
        }
    }
    let z: Vec<Vec<f64>> = x
        .iter()
        .map(|r| {
            (0..d)
                .map(|c| (r[c] - mean[c]) / sd[c].sqrt().max(1e-12))
                .collect()
        })
        .collect();
    let dist2 = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum::<f64>();
    let mut rng = SplitMix64(seed);
    let mut centres = vec![z[(rng.next_f64() * n as f64) as usize % n].clone()];
    let mut near: Vec<f64> = z.iter().map(|r| dist2(r, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = near.iter().sum();
        let mut pick = rng.next_f64() * total;
        let mut idx = n - 1;
        for (i, w) in near.iter().enumerate() {
            if pick < *w {
                idx = i;
                break;
            }
            pick -= w;
        }
        centres.push(z[idx].clone());
        for (nd, r) in near.iter_mut().zip(&z) {
            *nd = nd.min(dist2(r, &centres[centres.len() - 1]));
        }
    }
    let mut labels = vec![0; n];
    for _ in 0..KMEANS_ITER {
        for (l, r) in labels.iter_mut().zip(&z) {
            *l = (0..k)
                .min_by(|&a, &b| dist2(r, &centres[a]).total_cmp(&dist2(r, &centres[b])))
                .unwrap_or(0);
        }
        for (j, c) in centres.iter_mut().enumerate() {
            let members: Vec<&Vec<f64>> = z
                .iter()
                .zip(&labels)
                .filter(|(_, &l)| l == j)
                .map(|(r, _)| r)
                .collect();
            if members.is_empty() {
                continue;
            }
            for (a, v) in c.iter_mut().enumerate() {
                *v = members.iter().map(|r| r[a]).sum::<f64>() / members.len() as f64;
            }
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two well separated 2-D clusters of unequal size and spread.
    fn two_clusters() -> Vec<Vec<f64>> {
        let mut rng = SplitMix64(7);
        let mut normal = || {
            let (a, b) = (rng.next_f64().max(1e-300), rng.next_f64());
            (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        };
        (0..3000)
            .map(|i| {
                if i % 3 == 0 {
                    vec![10.0 + 0.5 * normal(), -5.0 + 0.5 * normal()]
                } else {
                    vec![2.0 * normal(), 2.0 * normal()]
                }
            })
            .collect()
    }

    #[test]
    fn em_recovers_two_clusters_and_scores_both_as_near() {
        let x = two_clusters();
        let comps = fit(&x, 2, 0, SCORE_FLAGS).unwrap();
        let mut w: Vec<f64> = comps.iter().map(|c| c.weight).collect();
        w.sort_by(f64::total_cmp);
        assert!(
            (w[0] - 1.0 / 3.0).abs() < 0.02 && (w[1] - 2.0 / 3.0).abs() < 0.02,
            "{w:?}"
        );
        assert!(comps
            .iter()
            .any(|c| (c.mean[0] - 10.0).abs() < 0.1 && (c.mean[1] + 5.0).abs() < 0.1));
        // Both cluster centres score low (the broad one a little higher: its density is lower);
        // the empty space between them scores high, which one Gaussian (its mean lies in that
        // space) cannot do.
        let (a, b, between) = (
            score(&comps, &[0.0, 0.0]),
            score(&comps, &[10.0, -5.0]),
            score(&comps, &[5.0, -2.5]),
        );
        assert!(a < 7.0 && b < 3.0 && between > 2.0 * a, "{a} {b} {between}");
        let one = crate::score::Reference::fit(&x, None, vec![]).unwrap();
        assert!(one.distance(&[5.0, -2.5]) < one.distance(&[10.0, -5.0]));
        // Reproducible: the same seed gives the same mixture.
        assert_eq!(fit(&x, 2, 0, SCORE_FLAGS).unwrap(), comps);
    }

    #[test]
    fn one_component_is_the_squared_mahalanobis_distance() {
        let x = two_clusters();
        let comps = fit(&x, 1, 0, SCORE_FLAGS).unwrap();
        let one = crate::score::Reference::fit(&x, None, vec![]).unwrap();
        for p in [[0.0, 0.0], [3.0, -1.0], [12.0, 4.0]] {
            let (m, s) = (one.distance(&p), score(&comps, &p));
            // EM's covariance divides by n, the single fit's by n - 1.
            assert!((m - s).abs() < 1e-3 * m.max(1.0), "{m} {s}");
        }
        assert!(score(&comps, &[1.0]).is_nan());
        // A precision that overflows gives NaN terms: the score is NaN (a fault), never 0.
        let mut broken = fit(&x, 2, 0, SCORE_FLAGS).unwrap();
        broken[0].precision = vec![f64::MAX, f64::MAX, f64::MAX, f64::MAX];
        broken[0].mean = vec![1e200, -1e200];
        assert!(
            score(&broken, &[0.0, 0.0]).is_nan(),
            "{}",
            score(&broken, &[0.0, 0.0])
        );
    }

    #[test]
    fn too_many_components_for_the_frames_is_a_clear_error() {
        let x = two_clusters();
        let e = fit(&x[..20], 8, 0, SCORE_FLAGS).unwrap_err().to_string();
        assert!(e.contains("fewer --components"), "{e}");
        assert!(fit(&x, 0, 0, SCORE_FLAGS)
            .unwrap_err()
            .to_string()
            .contains("at least one"));
    }
}
