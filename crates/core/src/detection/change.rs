//! The change branch: how far the posterior moved since the frame before, as a sequential
//! statistic of its own beside the score.
//!
//! A camera at 15 frames a second sees nearly the same scene twice in a row, so the encoder's
//! mean `mu` moves a little from frame to frame: a clear drive's steps are small and smooth.
//! A condition that changes the image from one frame to the next by more than the robot's own
//! motion does (dirt or drops that flicker, a failing cable or sensor, interference) moves it
//! far. Session 45 measured it (docs/detector-experiments.md): on the validation drives the
//! occlusion frames' steps are 10 times a clear drive's typical step, while the pooled score
//! gave them p-values of only about 0.015, its slowest type. Conditions that change every
//! frame alike (darkness, fog, a steady blur) do not move the posterior at all: the branch
//! sees only what changes between frames and leaves the rest to the score.
//!
//! The step `mu_t - mu_(t-1)` is scored by a Gaussian fitted on clear fit drives' steps
//! ([`mixture::score`], one component); conformal p-values come from the calibration drives'
//! steps, and the branch has its own martingale, CUSUM and threshold, with a share of the
//! pooled threshold's false-alarm budget as the direction branch has ([`super::direction`]'s
//! split).
//!
//! A step measures motion over time, so it is only comparable at the frame interval it was
//! calibrated at (`interval_ns`): a slower stream's steps are longer (session 45: at half the
//! rate, 21 of 117 clear tuning drives would alarm). The meter takes each step over about the
//! calibrated interval, from the stamps: a frame sooner than 3/4 of it is measured against the
//! same earlier frame as the one before (a shorter step, never a false alarm's cause); where
//! that frame is by now more than 5/4 of the interval back but the frame just before is not
//! (jitter: an early frame after a late one, or a run of early frames), from the frame just
//! before, so the step is not lost; and a gap of more than 5/4 of the interval since the frame
//! before is not measured at all (the branch then gives no evidence until the next step; the
//! other branches go on).

use super::{Calibration, DetectionError, PipelineParams};
use crate::mixture::{self, Component};
use serde::{Deserialize, Serialize};

/// The branch's sequential pipeline: one-frame window, CUSUM's drift of 1, as the direction
/// branch's ([`super::direction::WINDOW`]).
pub const WINDOW: usize = 1;
pub const DECAY: f64 = 1.0;

/// A step sooner than this share of the calibrated interval is measured from the same earlier
/// frame as the step before.
pub const SOONEST: f64 = 0.75;
/// A gap longer than this share of the calibrated interval is not measured. Steps over twice
/// the interval alarmed on 21 of 117 clear tuning drives (session 45) and none between was
/// measured, so the margin is kept small: a camera's jitter, not a slower camera.
pub const LATEST: f64 = 1.25;

/// The change branch of a calibrated bundle (`calibration.change`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeSection {
    /// The frame interval the steps were measured at (ns): the calibration drives' median.
    pub interval_ns: i64,
    /// One Gaussian over clear fit drives' steps of every latent's mu.
    pub components: Vec<Component>,
    /// The branch's own pipeline: window, epsilon grid, decay and threshold.
    pub pipeline: PipelineParams,
    /// The pooled threshold before the branch took its share.
    pub pooled_threshold_before: f64,
    /// Tuning drives the budget was split on.
    pub tuning_drives: usize,
    /// The step's score on every calibration step: its conformal scores.
    pub scores: Vec<f64>,
}

impl ChangeSection {
    /// Checks the section against the encoder's latent count.
    pub fn validate(&self, latents: usize) -> Result<(), DetectionError> {
        self.pipeline.validate()?;
        if self.interval_ns <= 0 {
            return Err(DetectionError::InvalidParam {
                param: "change.interval_ns",
                reason: format!(
                    "must be a positive frame interval in ns, got {}",
                    self.interval_ns
                ),
            });
        }
        mixture::validate(&self.components, latents).map_err(|e| DetectionError::InvalidParam {
            param: "change.components",
            reason: format!("{e} (one Gaussian over the steps of every latent's mu)"),
        })?;
        Calibration::new(self.scores.clone()).map(|_| ())
    }

    /// A meter for a new stream.
    pub fn meter(&self) -> ChangeMeter {
        ChangeMeter {
            interval_ns: self.interval_ns,
            components: self.components.clone(),
            last: None,
            held: None,
        }
    }

    /// One line for tools' summaries.
    pub fn describe(&self) -> String {
        format!(
            "the posterior's step over {:.1} ms: window {}, decay {}, threshold {:.4} (the pooled one {:.4} before its share; {} tuning drives)",
            self.interval_ns as f64 / 1e6,
            self.pipeline.window,
            self.pipeline.decay,
            self.pipeline.cusum_threshold,
            self.pooled_threshold_before,
            self.tuning_drives
        )
    }
}

/// The step `to - from` of every latent's mu: what the Gaussian is fitted on and scores.
pub fn step(from: &[f32], to: &[f32]) -> Vec<f64> {
    to.iter()
        .zip(from)
        .map(|(&b, &a)| f64::from(b) - f64::from(a))
        .collect()
}

/// The step's score: twice the negative log-density of `to - from` under the fitted Gaussian
/// (up to a constant), the larger the more unusual.
pub fn step_score(components: &[Component], from: &[f32], to: &[f32]) -> f64 {
    mixture::score(components, &step(from, to))
}

/// The steps of one drive's consecutive frames (calibration and tuning drives: consecutive
/// frames at the calibrated interval).
pub fn drive_scores(components: &[Component], mus: &[Vec<f32>]) -> Vec<f64> {
    mus.windows(2)
        .map(|w| step_score(components, &w[0], &w[1]))
        .collect()
}

/// A frame the meter may measure a step from: its mu and stamp.
type Seen = (Vec<f32>, Option<i64>);

/// Measures a stream's steps over about the calibrated interval (the module's doc).
#[derive(Debug, Clone)]
pub struct ChangeMeter {
    interval_ns: i64,
    components: Vec<Component>,
    /// The frame just before.
    last: Option<Seen>,
    /// An earlier frame the next step is measured from, held while the step into the frame
    /// just before came sooner than the interval; otherwise the step is from `last`.
    held: Option<Seen>,
}

impl ChangeMeter {
    /// The step into this frame, or `None` for a stream's first frame and after a gap.
    /// Frames without stamps are taken as consecutive; a stream that switches between stamped
    /// and unstamped frames starts again (the gap between them is unknown).
    pub fn measure(&mut self, mu: &[f32], stamp_ns: Option<i64>) -> Option<f64> {
        let since = |seen: &Seen| seen.1.zip(stamp_ns).map(|(a, b)| b - a);
        let latest = LATEST * self.interval_ns as f64;
        let here = (mu.to_vec(), stamp_ns);
        // A first frame, a switch of stamping, a gap since the frame before, or stamps that
        // went back (a restarted camera or bag): start again here.
        let Some(last) = self.last.replace(here).filter(|last| {
            last.1.is_some() == stamp_ns.is_some()
                && !since(last).is_some_and(|dt| dt <= 0 || dt as f64 > latest)
        }) else {
            self.held = None;
            return None;
        };
        // The held frame while it is near enough, else the frame just before.
        let anchor = match self.held.take() {
            Some(h) if !since(&h).is_some_and(|dt| dt as f64 > latest) => h,
            _ => last,
        };
        let s = step_score(&self.components, &anchor.0, mu);
        // Sooner than the interval: measured, but the next step starts from the same frame.
        if since(&anchor).is_some_and(|dt| (dt as f64) < SOONEST * self.interval_ns as f64) {
            self.held = Some(anchor);
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A standard Gaussian over two latents: a step's score is its squared length.
    fn unit() -> Vec<Component> {
        vec![Component {
            weight: 1.0,
            mean: vec![0.0, 0.0],
            precision: vec![1.0, 0.0, 0.0, 1.0],
            log_det_precision: 0.0,
        }]
    }

    fn meter() -> ChangeMeter {
        ChangeMeter {
            interval_ns: 100,
            components: unit(),
            last: None,
            held: None,
        }
    }

    #[test]
    fn a_longer_step_scores_higher() {
        let c = unit();
        let near = step_score(&c, &[0.0, 0.0], &[0.1, 0.0]);
        let far = step_score(&c, &[0.0, 0.0], &[3.0, 0.0]);
        assert!(far > near, "{far} <= {near}");
        assert_eq!(drive_scores(&c, &vec![vec![0.0, 0.0]; 3]).len(), 2);
    }

    #[test]
    fn steps_are_taken_over_about_the_calibrated_interval() {
        let mut m = meter();
        assert_eq!(
            m.measure(&[0.0, 0.0], Some(0)),
            None,
            "no step into a first frame"
        );
        let one = m.measure(&[1.0, 0.0], Some(100)).unwrap();
        // Sooner than 3/4 of the interval: from the same frame as the step before (100).
        let soon = m.measure(&[1.0, 0.0], Some(150)).unwrap();
        assert!(soon < one, "a frame like its predecessor: a small step");
        let after = m.measure(&[3.0, 0.0], Some(200)).unwrap();
        assert_eq!(after, step_score(&unit(), &[1.0, 0.0], &[3.0, 0.0]));
        // A gap of more than 5/4 of the interval: not measured, and the next step starts there.
        assert_eq!(m.measure(&[9.0, 0.0], Some(326)), None);
        let next = m.measure(&[9.0, 0.0], Some(426)).unwrap();
        assert_eq!(next, step_score(&unit(), &[9.0, 0.0], &[9.0, 0.0]));
        // Jitter: an early frame (60 after), then one 70 after it. The step before's frame is
        // 130 back, past 5/4 of the interval, so the step is taken from the early frame, not
        // dropped; a frame on time after that is measured from the frame just before.
        assert!(m.measure(&[7.0, 0.0], Some(486)).is_some());
        let late = m.measure(&[5.0, 0.0], Some(556)).unwrap();
        assert_eq!(late, step_score(&unit(), &[7.0, 0.0], &[5.0, 0.0]));
        let on_time = m.measure(&[5.0, 1.0], Some(656)).unwrap();
        assert_eq!(on_time, step_score(&unit(), &[5.0, 0.0], &[5.0, 1.0]));
        // An on-time frame after one more than a quarter early is 140 after it: a gap, lost.
        assert!(m.measure(&[5.0, 1.0], Some(716)).is_some());
        assert_eq!(m.measure(&[5.0, 1.0], Some(856)), None);
        // Stamps that go back from the frame just before, though not from the anchor, start
        // again.
        assert!(m.measure(&[5.0, 1.0], Some(906)).is_some());
        assert_eq!(m.measure(&[5.0, 1.0], Some(880)), None);
        // Stamps that go back start again.
        assert_eq!(m.measure(&[0.0, 0.0], Some(10)), None);
        assert!(m.measure(&[0.0, 0.0], Some(110)).is_some());
        // A switch to unstamped frames starts again (the gap is unknown); unstamped frames are
        // consecutive; a switch back starts again too.
        assert_eq!(m.measure(&[0.0, 0.0], None), None);
        assert!(m.measure(&[0.0, 0.0], None).is_some());
        assert_eq!(m.measure(&[0.0, 0.0], Some(500)), None);
    }

    #[test]
    fn a_section_is_checked() {
        let s = ChangeSection {
            interval_ns: 66_666_667,
            components: unit(),
            pipeline: PipelineParams {
                window: WINDOW,
                epsilon_grid: 100,
                decay: DECAY,
                cusum_threshold: 20.0,
            },
            pooled_threshold_before: 15.0,
            tuning_drives: 78,
            scores: vec![1.0, 2.0],
        };
        s.validate(2).unwrap();
        let e = s.validate(3).unwrap_err().to_string();
        assert!(e.contains("change.components"), "{e}");
        let e = ChangeSection {
            interval_ns: 0,
            ..s.clone()
        }
        .validate(2)
        .unwrap_err()
        .to_string();
        assert!(e.contains("change.interval_ns"), "{e}");
        assert!(ChangeSection {
            scores: vec![],
            ..s
        }
        .validate(2)
        .is_err());
    }
}
