//! Choosing the pipeline's parameters from data, with the data kept apart by drive:
//! calibration drives give the conformal scores, in-distribution tuning drives set
//! `cusum_threshold` for a target false-alarm rate (a conformal quantile over whole drives, so
//! that correlated frames do not void it: [`drive_threshold`]), and validation OOD drives pick
//! k, window and decay by the least detection delay. Test drives are never seen here.

use super::selection::top_k;
use super::{Calibration, DetectionError, PipelineParams, SequentialDetector, Step};
use crate::score::nonconformity;
use serde::{Deserialize, Serialize};

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

/// What an alarm threshold promises, and on what evidence (stored in the bundle).
///
/// The threshold is a conformal quantile over whole drives, not frames: each in-distribution
/// tuning drive, run from S = 0, gives one number, its largest S. If a fresh in-distribution
/// drive is exchangeable with the tuning drives *as a whole* (drives are independent draws of
/// the same kind of driving; frames within a drive may be correlated in any way), its largest S
/// exceeds the threshold with probability at most `per_drive_false_alarm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdGuarantee {
    /// Tuning drives whose largest S made the threshold.
    pub drives: usize,
    /// Frames with a full window in the shortest of them: the stretch the guarantee is for.
    pub frames_per_drive: usize,
    /// Bound on the probability that an in-distribution stretch of `frames_per_drive` frames,
    /// started from S = 0, raises any alarm: (K + 1 - r) / (K + 1) for the r-th smallest of K.
    pub per_drive_false_alarm: f64,
    /// `per_drive_false_alarm / frames_per_drive`: alarmed stretches per frame.
    pub per_frame_false_alarm: f64,
    /// False when too few tuning drives were given to certify the target rate: the threshold
    /// is then their largest S, and the bound above is the best they can give.
    pub target_met: bool,
}

impl ThresholdGuarantee {
    /// Tuning drives whose largest S is over the threshold (K - r for the r-th smallest of K),
    /// from the bound (K + 1 - r) / (K + 1).
    pub fn drives_over(&self) -> usize {
        ((self.per_drive_false_alarm * (self.drives + 1) as f64).round() as usize).saturating_sub(1)
    }
}

/// The alarm threshold for a target rate of false alarms per in-distribution frame, set on
/// whole tuning drives (see [`ThresholdGuarantee`]) and never below ln(1/rate), the level that
/// one window's log M exceeds with probability at most `rate` if the p-values are
/// exchangeable (Ville): with a one-frame window and no decay that is the conformal
/// e-detector's run-length guarantee. Frames with S equal to the threshold do not alarm.
pub fn drive_threshold(
    cal: &Calibration,
    params: &PipelineParams,
    id_scores: &[Vec<f64>],
    rate: f64,
) -> Result<(f64, ThresholdGuarantee), DetectionError> {
    // Per drive: its largest S and how many frames filled the window.
    let per_drive: Vec<(f64, usize)> = id_scores
        .iter()
        .map(|d| largest_s(&run(cal, params, d)))
        .filter(|&(_, n)| n > 0)
        .collect();
    if per_drive.is_empty() {
        return Err(DetectionError::NoTuningFrames(params.window));
    }
    let frames = per_drive.iter().map(|&(_, n)| n).min().unwrap_or(1);
    let maxima: Vec<f64> = per_drive.iter().map(|&(m, _)| m).collect();
    let (largest, guarantee) = certified_quantile(maxima, frames, rate);
    Ok((largest.max((1.0 / rate.max(1e-6)).ln()), guarantee))
}

/// The largest S over the steps with a full window (0 without one), and how many there are:
/// what a threshold set on whole drives takes of each.
pub fn largest_s(steps: &[Step]) -> (f64, usize) {
    steps
        .iter()
        .filter(|st| st.window_full)
        .fold((0.0f64, 0), |(m, n), st| (m.max(st.cusum), n + 1))
}

/// The conformal quantile of one value per tuning drive (each drive's largest statistic) that
/// a fresh drive exceeds with probability at most `rate` x `frames`, where enough drives
/// certify it (else their largest), and what it promises. `values` must not be empty.
fn certified_quantile(mut values: Vec<f64>, frames: usize, rate: f64) -> (f64, ThresholdGuarantee) {
    let k = values.len();
    values.sort_by(f64::total_cmp);
    let alpha = (rate.max(0.0) * frames as f64).min(1.0);
    // The r-th smallest (1-based) of K: a fresh drive exceeds it with probability <= (K+1-r)/(K+1).
    let wanted = ((1.0 - alpha) * (k + 1) as f64).ceil() as usize;
    let r = wanted.clamp(1, k);
    let per_drive_false_alarm = (k + 1 - r) as f64 / (k + 1) as f64;
    (
        values[r - 1],
        ThresholdGuarantee {
            drives: k,
            frames_per_drive: frames,
            per_drive_false_alarm,
            per_frame_false_alarm: per_drive_false_alarm / frames as f64,
            target_met: wanted <= k,
        },
    )
}

/// One scale `c` for several detectors run together, whose combined verdict alarms when any
/// detector's S exceeds its own threshold times `c`: the certified quantile (as
/// [`drive_threshold`]'s) of V_i = max over detectors d of M_id / t_d, where M_id is tuning
/// drive i's largest S under detector d and t_d that detector's threshold. A fresh drive
/// exchangeable with the tuning drives then raises any alarm of any detector with the
/// probability one threshold promises alone, not the sum of them. Never below 1: a detector's
/// own threshold is already certified, and the scale only tightens.
///
/// `largest[d][i]` is M_id (every detector over the same drives, in the same order);
/// `frames` the shortest drive's frames with a statistic.
pub fn joint_scale(
    largest: &[Vec<f64>],
    thresholds: &[f64],
    frames: usize,
    rate: f64,
) -> Result<(f64, ThresholdGuarantee), DetectionError> {
    let v = ratios(largest, thresholds)?
        .into_iter()
        .map(|r| r.into_iter().fold(0.0, f64::max))
        .collect();
    let (c, guarantee) = certified_quantile(v, frames.max(1), rate);
    Ok((c.max(1.0), guarantee))
}

/// [`joint_scale`]'s budget split unequally: detector `keep` stays at its own threshold and the
/// others share the least common scale (>= 1) at which no more tuning drives alarm, on any
/// detector, than one threshold promises (the same certified quantile, of V_i = max over the
/// other detectors of M_id / t_d, with every drive over `keep`'s own threshold counted as
/// alarming whatever the others do). `None` when those drives alone spend more than the
/// promise allows. Any such split keeps the one drive-level promise on drives exchangeable with
/// the tuning drives, but only as well as the kept detector's own threshold holds on fresh ones:
/// session 26 kept the flow detector (the pair's only view of motion shifts) and detected more
/// validation drives than the equal split, yet raised 9 alarms on 52 fresh clear drives
/// (docs/detector-experiments.md, "The pair's false-alarm budget split unequally").
pub fn keep_own_scale(
    largest: &[Vec<f64>],
    thresholds: &[f64],
    keep: usize,
    frames: usize,
    rate: f64,
) -> Result<Option<f64>, DetectionError> {
    if keep >= thresholds.len() {
        return Err(DetectionError::Joint(format!(
            "detector {keep} kept at its own threshold, of {}",
            thresholds.len()
        )));
    }
    let v = ratios(largest, thresholds)?
        .into_iter()
        .map(|r| match r[keep] > 1.0 {
            true => f64::INFINITY,
            false => r
                .iter()
                .enumerate()
                .filter(|&(d, _)| d != keep)
                .fold(0.0f64, |m, (_, &x)| m.max(x)),
        })
        .collect();
    let (c, _) = certified_quantile(v, frames.max(1), rate);
    Ok(c.is_finite().then(|| c.max(1.0)))
}

/// Per tuning drive, every detector's M_id / t_d (checked: the same drives for every detector,
/// a finite positive threshold each).
fn ratios(largest: &[Vec<f64>], thresholds: &[f64]) -> Result<Vec<Vec<f64>>, DetectionError> {
    let k = largest.first().map_or(0, Vec::len);
    let joint = |why: String| Err(DetectionError::Joint(why));
    if k == 0 {
        return joint("no tuning drive gave a statistic".into());
    }
    if largest.len() != thresholds.len() || largest.iter().any(|m| m.len() != k) {
        return joint("every detector needs a threshold and a value for each tuning drive".into());
    }
    if let Some(t) = thresholds.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
        return joint(format!(
            "a detector's threshold is {t}: each must be finite and positive"
        ));
    }
    Ok((0..k)
        .map(|i| {
            largest
                .iter()
                .zip(thresholds)
                .map(|(m, t)| m[i] / t)
                .collect()
        })
        .collect())
}

/// Tuning drives needed to certify `rate` on stretches of `frames` frames: the smallest K with
/// 1 / (K + 1) <= rate x frames.
pub fn drives_needed(rate: f64, frames: usize) -> usize {
    let alpha = rate * frames as f64;
    if alpha <= 0.0 {
        return usize::MAX;
    }
    ((1.0 / alpha).ceil() as usize).saturating_sub(1).max(1)
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
    pub guarantee: ThresholdGuarantee,
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
        if self.k.contains(&0) {
            return Err(DetectionError::InvalidParam {
                param: "k",
                reason: "0: a candidate number of latents must be at least 1".into(),
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
                let (t, guarantee) = drive_threshold(&cal_scores, &params, &tune, rate)?;
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
                    guarantee,
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
    fn the_joint_scale_is_the_certified_quantile_of_each_drives_largest_ratio() {
        // 19 drives of 200 frames at 1/4000 per frame: r = 19 of 19 (the largest V_i).
        // Detector a (threshold 10) has ratios 0.1..1.9; detector b (threshold 20) is quiet
        // but on drive 0, where its ratio is 2.5: the largest V_i comes from either detector.
        let a: Vec<f64> = (1..=19).map(f64::from).collect();
        let mut b = vec![1.0; 19];
        b[0] = 50.0;
        let (c, g) =
            joint_scale(&[a.clone(), b.clone()], &[10.0, 20.0], 200, 1.0 / 4000.0).unwrap();
        assert!((c - 2.5).abs() < 1e-12, "{c}");
        assert!(
            g.target_met && (g.per_drive_false_alarm - 0.05).abs() < 1e-12,
            "{g:?}"
        );
        // A looser rate takes a lower rank: 1/2000 per frame over 200 frames, 2 of 20 above.
        let (c, g) = joint_scale(&[a, b], &[10.0, 20.0], 200, 1.0 / 2000.0).unwrap();
        assert!(
            (c - 1.9).abs() < 1e-12 && (g.per_drive_false_alarm - 0.1).abs() < 1e-12,
            "{c} {g:?}"
        );
        // Drives quiet under both thresholds never loosen them: the scale is at least 1.
        let (c, _) = joint_scale(&[vec![1.0; 19]], &[10.0], 200, 1.0 / 4000.0).unwrap();
        assert_eq!(c, 1.0);
    }

    #[test]
    fn keeping_one_detector_at_its_own_threshold_raises_only_the_others() {
        // 19 drives of 200 frames at 1/2000 per frame: r = 18 of 19, one drive may alarm.
        // Detector a (threshold 10) exceeds its own threshold only on drive 0, which spends
        // that budget; detector b (threshold 20, ratios 0.1..1.9) must stay under on the rest.
        let mut a = vec![5.0; 19];
        a[0] = 15.0;
        let b: Vec<f64> = (1..=19).map(|i| 2.0 * f64::from(i)).collect();
        let (largest, t, rate) = (vec![a, b], [10.0, 20.0], 1.0 / 2000.0);
        assert_eq!(
            keep_own_scale(&largest, &t, 0, 200, rate).unwrap(),
            Some(1.9)
        );
        // The equal split raises a too: both at the second largest max ratio, 1.8.
        let (c, _) = joint_scale(&largest, &t, 200, rate).unwrap();
        assert!((c - 1.8).abs() < 1e-12, "{c}");
        // Kept the other way round: b alone is over on 9 drives, more than the one allowed.
        assert_eq!(keep_own_scale(&largest, &t, 1, 200, rate).unwrap(), None);
        // Never below 1; an unknown detector or mismatched drives are errors.
        let quiet = vec![vec![1.0; 19], vec![1.0; 19]];
        assert_eq!(keep_own_scale(&quiet, &t, 1, 200, rate).unwrap(), Some(1.0));
        assert!(keep_own_scale(&quiet, &t, 2, 200, rate).is_err());
        assert!(keep_own_scale(&[vec![1.0], vec![]], &t, 0, 200, rate).is_err());
    }

    #[test]
    fn a_joint_scale_without_matching_inputs_is_an_error() {
        for (largest, thresholds, what) in [
            (vec![], vec![], "no tuning drive"),
            (
                vec![vec![1.0, 2.0], vec![1.0]],
                vec![1.0, 1.0],
                "each tuning drive",
            ),
            (vec![vec![1.0]], vec![1.0, 1.0], "each tuning drive"),
            (vec![vec![1.0]], vec![0.0], "finite and positive"),
        ] {
            let e = joint_scale(&largest, &thresholds, 10, 1e-4)
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    /// Drives of strongly correlated in-distribution scores: an AR(1) process (coefficient
    /// 0.95, so neighbouring frames are nearly equal, as in video) with a drive-specific level.
    fn correlated_drives(rng: &mut rand_chacha::ChaCha8Rng, n: usize, len: usize) -> Vec<Vec<f64>> {
        use rand::Rng;
        (0..n)
            .map(|_| {
                let level: f64 = rng.random_range(-0.5..0.5);
                let mut x = 0.0;
                (0..len)
                    .map(|_| {
                        x = 0.95 * x + 0.3 * (rng.random::<f64>() - 0.5);
                        level + x
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_drive_threshold_holds_on_correlated_frames() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let cal = Calibration::new(correlated_drives(&mut rng, 10, 200).concat()).unwrap();
        let params = PipelineParams {
            window: 1,
            epsilon_grid: 100,
            decay: 0.0,
            cusum_threshold: 1.0,
        };
        // 19 tuning drives of 200 frames certify 1/20 per drive at a rate of 1/4000 per frame.
        let tune = correlated_drives(&mut rng, 19, 200);
        let (t, g) = drive_threshold(&cal, &params, &tune, 1.0 / 4000.0).unwrap();
        assert!(g.target_met, "{g:?}");
        assert_eq!((g.drives, g.frames_per_drive), (19, 200));
        assert!((g.per_drive_false_alarm - 0.05).abs() < 1e-12, "{g:?}");
        // The threshold is the largest S of the tuning drives (r = 19 of 19), above Ville's.
        let largest = tune
            .iter()
            .flat_map(|d| run(&cal, &params, d))
            .map(|s| s.cusum)
            .fold(0.0, f64::max);
        assert_eq!(t, largest.max(4000f64.ln()));
        // Fresh drives of the same process alarm at most as often as promised (3 sigma slack).
        let fresh = correlated_drives(&mut rng, 2000, 200);
        let alarmed = fresh
            .iter()
            .filter(|d| run(&cal, &params, d).iter().any(|s| s.cusum > t))
            .count() as f64
            / 2000.0;
        let sigma = (0.05f64 * 0.95 / 2000.0).sqrt();
        assert!(alarmed <= 0.05 + 3.0 * sigma, "alarmed {alarmed}");
    }

    #[test]
    fn too_few_tuning_drives_give_their_largest_s_and_say_so() {
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
        let (t, g) = drive_threshold(&cal, &params, &id, 1e-4).unwrap();
        assert!(!g.target_met);
        assert_eq!(g.per_drive_false_alarm, 0.2, "1/(K+1) with K = 4");
        assert_eq!(g.frames_per_drive, 196, "frames with a full window");
        assert!(t >= 1e4f64.ln());
        assert_eq!(drives_needed(1e-4, 600), 16);
        assert_eq!(drives_needed(1.0 / 4000.0, 200), 19);

        // ID then far-out scores: an alarm follows the onset within a few frames.
        let mut drive: Vec<f64> = (0..50).map(|i| ((i * 37) % 100) as f64).collect();
        drive.extend(std::iter::repeat_n(1000.0, 50));
        let steps = run(&cal, &params, &drive);
        let d = detection_delay(&steps, 50, t).expect("detected");
        assert!(d <= params.window + 10, "delay {d}");
        assert_eq!(detection_delay(&steps[..50], 0, f64::MAX), None);
    }
}
