//! The drive-relative branch: each frame's nonconformity score set against the same stream's
//! own recent past, as a second sequential statistic beside the pooled one.
//!
//! The pooled p-value compares a frame with every calibration frame, so the scene-to-scene
//! spread of clear drives sets how far a shift must lift the score before it counts: a map whose
//! clear frames score low hides a shift that lifts them to an ordinary level (snow on
//! small_loop, docs/detector-experiments.md). The relative score s'(t) = s(t) - median of the
//! stream's scores at least `gap` frames old (over `window` frames) removes that spread: it gets
//! its own conformal p-values (calibration drives, each against itself), martingale, CUSUM and
//! threshold from whole tuning drives, exactly as the pooled branch.
//!
//! It cannot stand alone: a stream that starts out of distribution, or drifts slower than `gap`,
//! is its own baseline. The pooled branch stays behind it (at `pooled_scale` times its own
//! threshold, so that the two together keep one threshold's drive-level promise:
//! [`split`]), and alone at its own threshold until the first baseline exists (the start-up
//! hold: a robot switched on in the shift is judged by the pooled branch as before).

use super::tuning::{largest_s, run};
use super::{Calibration, DetectionError, PipelineParams};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Where the baseline comes from, in scored frames of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineParams {
    /// Frames whose median is the baseline.
    pub window: usize,
    /// How old the newest baseline frame is: an onset is compared with the scene before it for
    /// this many frames; a change slower than this becomes the baseline.
    pub gap: usize,
    /// The start-up hold: the pooled branch keeps its own threshold for the stream's first this
    /// many scored frames (at least `window`; absent: `window`, until the first baseline). A
    /// longer hold keeps a shift present from the start in the pooled branch's full view for
    /// longer, at the cost of a share of the false-alarm budget ([`split`] simulates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<usize>,
}

/// The longest baseline window or gap (frames): both size the stream's score history.
pub const MAX_BASELINE: usize = 100_000;

impl BaselineParams {
    /// A baseline of `window` frames at least `gap` old, held for `window` frames.
    pub fn new(window: usize, gap: usize) -> Self {
        Self {
            window,
            gap,
            hold: None,
        }
    }

    /// Scored frames the pooled branch keeps its own threshold for.
    pub fn hold(&self) -> usize {
        self.hold.unwrap_or(self.window)
    }

    pub fn validate(&self) -> Result<(), DetectionError> {
        for (param, v) in [("relative.window", self.window), ("relative.gap", self.gap)] {
            if !(1..=MAX_BASELINE).contains(&v) {
                return Err(DetectionError::InvalidParam {
                    param,
                    reason: format!("must be 1..={MAX_BASELINE}, got {v}"),
                });
            }
        }
        let hold = self.hold();
        if !(self.window..=2 * MAX_BASELINE).contains(&hold) {
            return Err(DetectionError::InvalidParam {
                param: "relative.hold",
                reason: format!(
                    "must be at least the window ({}) and at most {}, got {hold}",
                    self.window,
                    2 * MAX_BASELINE
                ),
            });
        }
        Ok(())
    }
}

/// One stream's score history and its relative scores.
#[derive(Debug, Clone)]
pub struct Baseline {
    params: BaselineParams,
    /// The last `window + gap` scores, oldest first: the baseline is the first `window` of them
    /// (until the stream has more, the stream's first `window` frames).
    history: VecDeque<f64>,
    scratch: Vec<f64>,
    /// Scores pushed so far (saturating).
    seen: usize,
}

impl Baseline {
    pub fn new(params: BaselineParams) -> Self {
        Self {
            params,
            history: VecDeque::with_capacity(params.window + params.gap),
            scratch: Vec::with_capacity(params.window),
            seen: 0,
        }
    }

    /// True while the start-up hold lasts: the next frame is within the stream's first
    /// `hold` scored frames.
    pub fn holding(&self) -> bool {
        self.seen < self.params.hold()
    }

    pub fn params(&self) -> &BaselineParams {
        &self.params
    }

    /// True once a baseline exists (the stream's first `window` frames have been seen).
    pub fn is_ready(&self) -> bool {
        self.history.len() >= self.params.window
    }

    /// The relative score of the next frame, then records it; `None` while no baseline exists
    /// (the frame goes into it). Non-finite scores are never fed (the monitor faults on them).
    pub fn push(&mut self, score: f64) -> Option<f64> {
        let relative = self.is_ready().then(|| score - self.median());
        if self.history.len() == self.params.window + self.params.gap {
            self.history.pop_front();
        }
        self.history.push_back(score);
        self.seen = self.seen.saturating_add(1);
        relative
    }

    /// The median of the baseline window (the mean of the middle two for an even window, as
    /// numpy's, so the offline study reproduces it).
    fn median(&mut self) -> f64 {
        let w = self.params.window;
        self.scratch.clear();
        self.scratch.extend(self.history.iter().take(w));
        let s = &mut self.scratch;
        let (_, &mut hi, _) = s.select_nth_unstable_by(w / 2, f64::total_cmp);
        if w % 2 == 1 {
            hi
        } else {
            let lo = s[..w / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo + hi) / 2.0
        }
    }
}

/// The relative scores of a whole recorded drive (calibration and tuning), as a stream sees
/// them: the first `window` frames have none.
pub fn relative_scores(scores: &[f64], params: BaselineParams) -> Vec<f64> {
    let mut b = Baseline::new(params);
    scores.iter().filter_map(|&s| b.push(s)).collect()
}

/// How the two branches share the false-alarm budget, chosen on tuning drives alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Split {
    /// The pooled branch's threshold is multiplied by this once a baseline exists.
    pub pooled_scale: f64,
    /// The relative branch's threshold is its own tuned one times this.
    pub relative_scale: f64,
    /// Tuning drives on which either branch alarms under this split.
    pub drives_alarmed: usize,
    /// Tuning drives one threshold's promise allows to alarm.
    pub drives_allowed: usize,
}

/// The pooled scales [`split`] tries, least first.
pub const POOLED_SCALES: [f64; 9] = [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0];

/// Splits the budget: the least pooled scale (of [`POOLED_SCALES`]) at which the relative
/// branch keeps its own threshold while at most `allowed` tuning drives alarm, on either
/// branch; failing every scale, the largest, with the relative threshold raised to fit.
/// `allowed` is what the pooled threshold alone allows (its guarantee's K + 1 - r of K, less
/// one: [`drives_over`]), less any share a third branch took (a direction branch takes one
/// drive's). The combined verdict then keeps the one drive-level promise
/// ([`ThresholdGuarantee`]) on drives exchangeable with the tuning drives.
///
/// [`drives_over`]: super::tuning::ThresholdGuarantee::drives_over
/// [`ThresholdGuarantee`]: super::tuning::ThresholdGuarantee
///
/// Each tuning drive is run as the monitor runs a stream: the pooled branch at its own
/// threshold during the start-up hold (its first `hold` frames), then at the scale.
/// `tuning[i]` are drive i's scores, `relative_tuning[i]` its relative scores
/// ([`relative_scores`]).
#[allow(clippy::too_many_arguments)]
pub fn split(
    pooled_cal: &Calibration,
    params: &PipelineParams,
    allowed: usize,
    relative_cal: &Calibration,
    relative_threshold: f64,
    hold: usize,
    tuning: &[Vec<f64>],
    relative_tuning: &[Vec<f64>],
) -> Split {
    let pooled_threshold = params.cusum_threshold;
    // Per drive: the pooled S before and after the hold ends, and the relative branch's largest.
    let largest = |steps: &[super::Step]| largest_s(steps).0;
    let per_drive: Vec<(f64, f64, f64)> = tuning
        .iter()
        .zip(relative_tuning)
        .map(|(scores, relative)| {
            let s = run(pooled_cal, params, scores);
            let hold = hold.min(s.len());
            let rel = run(relative_cal, params, relative);
            (largest(&s[..hold]), largest(&s[hold..]), largest(&rel))
        })
        .collect();
    let at = |scale: f64| -> Option<(f64, usize)> {
        // Drives the pooled branch alarms on at this scale, then the least relative scale (>= 1)
        // that leaves room for the rest.
        let pooled: Vec<bool> = per_drive
            .iter()
            .map(|&(early, late, _)| early > pooled_threshold || late > scale * pooled_threshold)
            .collect();
        let k = pooled.iter().filter(|&&a| a).count();
        if k > allowed {
            return None;
        }
        let mut ratios: Vec<f64> = per_drive
            .iter()
            .zip(&pooled)
            .filter(|(_, &a)| !a)
            .map(|(&(_, _, r), _)| r / relative_threshold)
            .collect();
        ratios.sort_by(|a, b| b.total_cmp(a));
        let c = ratios.get(allowed - k).copied().unwrap_or(0.0).max(1.0);
        let alarmed = k + ratios.iter().filter(|&&r| r > c).count();
        Some((c, alarmed))
    };
    let found = POOLED_SCALES
        .iter()
        .find_map(|&a| at(a).filter(|&(c, _)| c == 1.0).map(|(c, n)| (a, c, n)))
        .or_else(|| {
            POOLED_SCALES
                .iter()
                .rev()
                .find_map(|&a| at(a).map(|(c, n)| (a, c, n)))
        });
    // The largest scale always fits unless the hold alone alarms too many drives; then the
    // relative branch is effectively off (its threshold past every tuning drive's) and the
    // pooled branch carries the budget as before.
    let (pooled_scale, relative_scale, drives_alarmed) = found.unwrap_or((
        1.0,
        f64::MAX.sqrt(),
        per_drive
            .iter()
            .filter(|&&(e, l, _)| e.max(l) > pooled_threshold)
            .count(),
    ));
    Split {
        pooled_scale,
        relative_scale,
        drives_alarmed,
        drives_allowed: allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::tuning::ThresholdGuarantee;
    use proptest::prelude::*;

    /// The study's definition (scripts/relative_study.py `rolling`), frame by frame, for frames
    /// from `window` on (before that the study looks ahead, which a stream cannot).
    fn study(s: &[f64], w: usize, g: usize) -> Vec<f64> {
        (w..s.len())
            .map(|t| {
                let hi = w.max(t.saturating_sub(g));
                let mut seg = s[hi - w..hi].to_vec();
                seg.sort_by(f64::total_cmp);
                let m = if w % 2 == 1 {
                    seg[w / 2]
                } else {
                    (seg[w / 2 - 1] + seg[w / 2]) / 2.0
                };
                s[t] - m
            })
            .collect()
    }

    proptest! {
        #[test]
        fn matches_the_offline_study(s in prop::collection::vec(-100.0f64..100.0, 0..120), w in 1usize..12, g in 1usize..40) {
            let got = relative_scores(&s, BaselineParams::new(w, g));
            prop_assert_eq!(got, study(&s, w, g));
        }
    }

    #[test]
    fn a_shift_counts_against_the_drives_own_past_until_it_becomes_the_baseline() {
        let p = BaselineParams::new(4, 6);
        let mut scores = vec![1.0; 20];
        scores.extend(vec![5.0; 30]);
        let r = relative_scores(&scores, p);
        // Frame 20 (the onset) is index 16 of the relative scores: 5 - 1.
        assert_eq!(r[16], 4.0);
        // Gap + window frames after the onset, the baseline is the shift itself.
        assert_eq!(r[16 + 10], 0.0);
        assert!(r[..16].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn the_split_keeps_the_relative_threshold_when_the_pooled_branch_makes_room() {
        let params = PipelineParams {
            window: 1,
            epsilon_grid: 100,
            decay: 1.0,
            cusum_threshold: 5.0,
        };
        let cal = Calibration::new((0..100).map(f64::from).collect()).unwrap();
        let rel = Calibration::new((0..100).map(|x| f64::from(x) - 50.0).collect()).unwrap();
        let g = ThresholdGuarantee {
            drives: 9,
            frames_per_drive: 50,
            per_drive_false_alarm: 0.2,
            per_frame_false_alarm: 0.004,
            target_met: true,
        };
        // Ten quiet drives: no branch alarms at any scale, so the least pooled scale is 1.
        let quiet: Vec<Vec<f64>> = (0..10).map(|_| vec![10.0; 60]).collect();
        let b = BaselineParams::new(5, 5);
        let run_split = |b: BaselineParams, drives: &[Vec<f64>]| {
            let relative: Vec<Vec<f64>> = drives.iter().map(|d| relative_scores(d, b)).collect();
            split(
                &cal,
                &params,
                g.drives_over(),
                &rel,
                5.0,
                b.hold(),
                drives,
                &relative,
            )
        };
        let s = run_split(b, &quiet);
        assert_eq!(
            (
                s.pooled_scale,
                s.relative_scale,
                s.drives_alarmed,
                s.drives_allowed
            ),
            (1.0, 1.0, 0, 1)
        );
        // Two drives whose pooled S climbs past the threshold early (scores at the top of the
        // calibration): with the hold covering them, both alarm at any scale, over the one
        // allowed, so no split fits and the relative branch is shut out; with the default hold,
        // a pooled scale that keeps their S under it is found.
        let mut drives = quiet.clone();
        for d in drives.iter_mut().take(2) {
            d[20..40].fill(99.5);
        }
        let short = run_split(b, &drives);
        assert!(
            short.pooled_scale > 1.0 && short.drives_alarmed <= 1,
            "{short:?}"
        );
        let long = BaselineParams {
            hold: Some(40),
            ..b
        };
        let held = run_split(long, &drives);
        assert_eq!(
            (held.pooled_scale, held.drives_alarmed),
            (1.0, 2),
            "{held:?}"
        );
        assert!(held.relative_scale > 1e100, "{held:?}");
    }

    #[test]
    fn the_hold_lasts_its_frames_and_is_at_least_the_window() {
        let p = BaselineParams {
            hold: Some(7),
            ..BaselineParams::new(3, 2)
        };
        let mut b = Baseline::new(p);
        let holding: Vec<bool> = (0..9)
            .map(|_| {
                let h = b.holding();
                b.push(1.0);
                h
            })
            .collect();
        assert_eq!(
            holding,
            [true, true, true, true, true, true, true, false, false]
        );
        assert!(p.validate().is_ok());
        let short = BaselineParams {
            hold: Some(2),
            ..BaselineParams::new(3, 2)
        };
        assert!(short.validate().is_err());
    }
}
