//! Choosing the pipeline's parameters from data, with the data kept apart by drive:
//! calibration drives give the conformal scores, in-distribution tuning drives set
//! `cusum_threshold` for a target false-alarm rate, and validation OOD drives pick k, window and
//! decay by the least detection delay. Test drives are never seen here.

use super::selection::top_k;
use super::{Calibration, DetectionError, PipelineParams, SequentialDetector, Step};
use crate::score::nonconformity;
use serde::Serialize;

/// A recorded drive: the parts of each frame's score, and for OOD drives the first OOD frame.
#[derive(Debug, Clone)]
pub struct Drive {
    pub id: String,
    /// Per frame, the terms the selected ones of which sum to the score: KL per latent for the
    /// KL score, the distance alone for the Mahalanobis score.
    pub parts: Vec<Vec<f64>>,
    /// Index of the first out-of-distribution frame (OOD drives only).
    pub onset: Option<usize>,
}

impl Drive {
    pub fn scores(&self, selected: &[usize]) -> Vec<f64> {
        self.parts
            .iter()
            .map(|f| nonconformity(f, selected))
            .collect()
    }
}

/// Runs the pipeline over one drive's scores (alarms off) and returns every step.
pub fn run(cal: &Calibration, params: &PipelineParams, scores: &[f64]) -> Vec<Step> {
    let mut p = params.clone();
    p.cusum_threshold = f64::MAX;
    let mut det = SequentialDetector::new(cal.clone(), p).expect("validated params");
    scores.iter().map(|&s| det.step(s)).collect()
}

/// The smallest threshold such that at most `rate` of the in-distribution frames (with a full
/// window) have S above it, and at least ln(1/rate). Frames with S equal to the threshold do
/// not alarm (`S > t`).
pub fn threshold_for_rate(
    cal: &Calibration,
    params: &PipelineParams,
    id_scores: &[Vec<f64>],
    rate: f64,
) -> Result<f64, DetectionError> {
    let mut s: Vec<f64> = id_scores
        .iter()
        .flat_map(|d| run(cal, params, d))
        .filter(|st| st.window_full)
        .map(|st| st.cusum)
        .collect();
    if s.is_empty() {
        return Err(DetectionError::NoTuningFrames(params.window));
    }
    s.sort_by(f64::total_cmp);
    let allowed = (rate.max(0.0) * s.len() as f64).floor() as usize;
    let t = s[s.len() - 1 - allowed.min(s.len() - 1)];
    // Floor: never below ln(1/rate), the level one window's log M exceeds with probability at
    // most `rate` under exchangeability (Ville). Short or calm tuning drives often leave S at 0,
    // and a threshold near 0 would alarm on any evidence at all.
    Ok(t.max((1.0 / rate.max(1e-6)).ln()))
}

/// Frames from onset to the first alarm at or after it; `None` if never detected.
pub fn detection_delay(steps: &[Step], onset: usize, threshold: f64) -> Option<usize> {
    steps
        .iter()
        .enumerate()
        .skip(onset)
        .find(|(_, st)| st.window_full && st.cusum > threshold)
        .map(|(i, _)| i - onset)
}

/// One evaluated parameter set.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub k: usize,
    pub window: usize,
    pub decay: f64,
    pub cusum_threshold: f64,
    /// Mean over validation OOD drives; a missed drive counts its whole OOD length.
    pub mean_delay: f64,
    pub missed: usize,
}

/// The search space.
#[derive(Debug, Clone)]
pub struct Grid {
    pub k: Vec<usize>,
    pub window: Vec<usize>,
    pub decay: Vec<f64>,
}

impl Grid {
    /// Every grid point must be a valid pipeline (the checks of [`PipelineParams::validate`])
    /// and each list must hold a value: found before any drive is scored, and by [`search`]
    /// for any caller.
    pub fn validate(&self, epsilon_grid: usize) -> Result<(), DetectionError> {
        if self.k.is_empty() || self.window.is_empty() || self.decay.is_empty() {
            return Err(DetectionError::InvalidParam {
                param: "grid",
                reason: "needs at least one value each of k, window and decay".into(),
            });
        }
        for &window in &self.window {
            for &decay in &self.decay {
                PipelineParams {
                    window,
                    epsilon_grid,
                    decay,
                    cusum_threshold: 1.0,
                }
                .validate()?;
            }
        }
        Ok(())
    }
}

/// Evaluates every grid point; the best (least mean delay, then fewest misses, then smaller
/// window and k) comes first.
pub fn search(
    ranked: &[(usize, f64)],
    cal: &[Drive],
    tune_id: &[Drive],
    val_ood: &[Drive],
    grid: &Grid,
    rate: f64,
    epsilon_grid: usize,
) -> Result<Vec<Candidate>, DetectionError> {
    grid.validate(epsilon_grid)?;
    if val_ood.iter().any(|d| d.onset.is_none()) {
        return Err(DetectionError::MissingOnset);
    }
    let mut out = vec![];
    for &k in &grid.k {
        let sel = top_k(ranked, k);
        let cal_scores = Calibration::new(cal.iter().flat_map(|d| d.scores(&sel)).collect())?;
        let tune: Vec<Vec<f64>> = tune_id.iter().map(|d| d.scores(&sel)).collect();
        let val: Vec<(Vec<f64>, usize)> = val_ood
            .iter()
            .map(|d| (d.scores(&sel), d.onset.unwrap_or(0)))
            .collect();
        for &window in &grid.window {
            for &decay in &grid.decay {
                let mut params = PipelineParams {
                    window,
                    epsilon_grid,
                    decay,
                    cusum_threshold: 1.0,
                };
                let t = threshold_for_rate(&cal_scores, &params, &tune, rate)?;
                params.cusum_threshold = t;
                let (mut total, mut missed) = (0.0, 0);
                for (scores, onset) in &val {
                    let steps = run(&cal_scores, &params, scores);
                    match detection_delay(&steps, *onset, t) {
                        Some(d) => total += d as f64,
                        None => {
                            missed += 1;
                            total += scores.len().saturating_sub(*onset) as f64;
                        }
                    }
                }
                out.push(Candidate {
                    k: sel.len(),
                    window,
                    decay,
                    cusum_threshold: t,
                    mean_delay: total / val.len().max(1) as f64,
                    missed,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        a.mean_delay
            .total_cmp(&b.mean_delay)
            .then(a.missed.cmp(&b.missed))
            .then(a.window.cmp(&b.window))
            .then(a.k.cmp(&b.k))
            .then(a.decay.total_cmp(&b.decay))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_with_an_unusable_point_is_an_error_not_a_panic() {
        let grid = |window: Vec<usize>, decay: Vec<f64>| Grid {
            k: vec![1],
            window,
            decay,
        };
        assert!(grid(vec![10], vec![0.0, 1.0]).validate(100).is_ok());
        for (g, eps, what) in [
            (grid(vec![0], vec![1.0]), 100, "window"),
            (grid(vec![], vec![1.0]), 100, "at least one value"),
            (grid(vec![10], vec![-1.0]), 100, "decay"),
            (grid(vec![10], vec![f64::NAN]), 100, "decay"),
            (grid(vec![10], vec![1.0]), 0, "epsilon_grid"),
        ] {
            let e = g.validate(eps).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        // search, as every caller reaches it, refuses the grid before running any pipeline.
        let cal = vec![Drive {
            id: "cal".into(),
            parts: vec![vec![1.0]; 20],
            onset: None,
        }];
        let e = search(
            &[(0, 0.0)],
            &cal,
            &cal,
            &[],
            &grid(vec![0], vec![0.0]),
            0.01,
            10,
        );
        assert!(e.unwrap_err().to_string().contains("window"));
    }

    #[test]
    fn threshold_allows_at_most_the_target_share_and_delay_counts_from_onset() {
        let cal = Calibration::new((0..100).map(f64::from).collect()).unwrap();
        let params = PipelineParams {
            window: 5,
            epsilon_grid: 50,
            decay: 0.5,
            cusum_threshold: 1.0,
        };
        let id: Vec<Vec<f64>> = (0..4)
            .map(|d| (0..200).map(|i| ((i * 37 + d * 11) % 100) as f64).collect())
            .collect();
        let t = threshold_for_rate(&cal, &params, &id, 0.01).unwrap();
        let frames: Vec<Step> = id
            .iter()
            .flat_map(|d| run(&cal, &params, d))
            .filter(|s| s.window_full)
            .collect();
        let above = frames.iter().filter(|s| s.cusum > t).count();
        assert!(
            above as f64 <= 0.01 * frames.len() as f64,
            "{above} of {}",
            frames.len()
        );

        // ID then far-out scores: an alarm follows the onset within a few frames.
        let mut drive: Vec<f64> = (0..50).map(|i| ((i * 37) % 100) as f64).collect();
        drive.extend(std::iter::repeat_n(1000.0, 50));
        let steps = run(&cal, &params, &drive);
        let d = detection_delay(&steps, 50, t).expect("detected");
        assert!(d <= params.window + 5, "delay {d}");
        assert_eq!(detection_delay(&steps[..50], 0, f64::MAX), None);
    }
}
