//! Calibrated sequential detection, as in the paper's detectors: per-frame nonconformity
//! scores become inductive conformal p-values ([`conformal`]), a power martingale over a
//! sliding window of p-values measures evidence against exchangeability ([`martingale`]),
//! and CUSUM on log M turns that evidence into an alarm ([`cusum`]). [`selection`] picks the
//! latents that make up the score, [`tuning`] chooses the pipeline parameters from data.
//!
//! Everything is f64 and in log space where products appear, so nothing overflows or
//! underflows however long a drive runs.

pub mod change;
pub mod conformal;
pub mod cusum;
pub mod direction;
pub mod martingale;
pub mod relative;
pub mod selection;
pub mod startup;
pub mod tuning;

use serde::{Deserialize, Serialize};

pub use conformal::Calibration;

/// What is wrong with calibration data or sequential-test parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectionError {
    #[error("calibration needs at least one score: give calibration drives with frames")]
    NoCalibrationScores,
    #[error("calibration scores must be finite, found {0}: check the encoder's outputs")]
    NonFiniteCalibrationScore(f64),
    #[error("{param} {reason}")]
    InvalidParam { param: &'static str, reason: String },
    #[error("latent selection: {0}")]
    Selection(String),
    #[error("no tuning frame filled the window of {0}; use longer in-distribution tuning drives")]
    NoTuningFrames(usize),
    #[error("joint threshold: {0}")]
    Joint(String),
    #[error("every validation OOD drive needs an onset frame")]
    MissingOnset,
    #[error("unknown ranking '{0}' (expected quiet or variance)")]
    UnknownRank(String),
}

fn invalid(param: &'static str, reason: String) -> DetectionError {
    DetectionError::InvalidParam { param, reason }
}
pub use cusum::Cusum;
pub use martingale::PowerMartingale;

/// Parameters of the sequential pipeline, stored in the bundle's calibration section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineParams {
    /// Sliding window of p-values the martingale multiplies over (the paper: 20).
    pub window: usize,
    /// Points of the midpoint grid over epsilon in (0, 1) for the power-martingale mixture.
    #[serde(default = "default_grid")]
    pub epsilon_grid: usize,
    /// Subtracted from log M at each step: CUSUM's drift, keeps S at 0 under no shift.
    pub decay: f64,
    /// Alarm when S exceeds this.
    pub cusum_threshold: f64,
}

/// The longest martingale window a pipeline may have (frames).
pub const MAX_WINDOW: usize = 10_000;
/// The finest epsilon grid of the power-martingale mixture.
pub const MAX_EPSILON_GRID: usize = 10_000;

pub fn default_grid() -> usize {
    100
}

impl Default for PipelineParams {
    fn default() -> Self {
        Self {
            window: 20,
            epsilon_grid: default_grid(),
            decay: 2.0,
            cusum_threshold: 10.0,
        }
    }
}

impl PipelineParams {
    pub fn validate(&self) -> Result<(), DetectionError> {
        // Upper bounds: both size per-frame buffers and work, and a typo must not allocate the
        // machine away.
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(invalid(
                "window",
                format!("must be 1..={MAX_WINDOW}, got {}", self.window),
            ));
        }
        if !(1..=MAX_EPSILON_GRID).contains(&self.epsilon_grid) {
            return Err(invalid(
                "epsilon_grid",
                format!("must be 1..={MAX_EPSILON_GRID}, got {}", self.epsilon_grid),
            ));
        }
        if !self.decay.is_finite() || self.decay < 0.0 {
            return Err(invalid(
                "decay",
                format!("must be finite and >= 0, got {}", self.decay),
            ));
        }
        if !self.cusum_threshold.is_finite() || self.cusum_threshold <= 0.0 {
            return Err(invalid(
                "cusum_threshold",
                format!("must be finite and > 0, got {}", self.cusum_threshold),
            ));
        }
        Ok(())
    }
}

/// One step of the sequential pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Step {
    pub p_value: f64,
    /// log of the power martingale over the current window.
    pub log_martingale: f64,
    /// The CUSUM statistic after this step.
    pub cusum: f64,
    /// True once the window holds `window` p-values.
    pub window_full: bool,
    /// `cusum > threshold` (only once the window is full).
    pub alarm: bool,
    /// The threshold in force at this step: what a reader of the step (the monitor's alarm
    /// ratio, the start-up phase's certification) compares S with, so that none of them has to
    /// rebuild when which threshold applies.
    pub threshold: f64,
}

/// Score -> p-value -> log M -> S, one frame at a time.
#[derive(Debug, Clone)]
pub struct SequentialDetector {
    calibration: Calibration,
    martingale: PowerMartingale,
    cusum: Cusum,
    params: PipelineParams,
    /// S is held at or under this many times the threshold in force ([`Self::set_ceiling`]);
    /// `None`: unbounded.
    ceiling: Option<f64>,
}

/// The largest ceiling a [`SequentialDetector`] takes, in thresholds.
pub const MAX_CEILING: f64 = 1000.0;

/// Whether `c` (in thresholds) is a ceiling a [`SequentialDetector`] takes: over 1 and at most
/// [`MAX_CEILING`]. Over 1, it never touches S before the first alarm (S is at most the
/// threshold until then), so it changes no first alarm and no false-alarm promise, only how
/// long S stays high after one. Exactly 1 would hold S at the threshold, never over it: no
/// alarm at all.
pub fn ceiling_is_valid(c: f64) -> bool {
    c > 1.0 && c <= MAX_CEILING
}

/// [`ceiling_is_valid`] as the library's parameter check (`None`: unbounded, always valid).
pub fn check_ceiling(ceiling: Option<f64>) -> Result<(), DetectionError> {
    match ceiling.filter(|&c| !ceiling_is_valid(c)) {
        Some(c) => Err(invalid(
            "cusum_ceiling",
            format!("must be over 1 and at most {MAX_CEILING} thresholds (None: off), got {c}"),
        )),
        None => Ok(()),
    }
}

impl SequentialDetector {
    pub fn new(calibration: Calibration, params: PipelineParams) -> Result<Self, DetectionError> {
        params.validate()?;
        Ok(Self {
            martingale: PowerMartingale::new(params.window, params.epsilon_grid),
            cusum: Cusum::new(params.decay),
            calibration,
            params,
            ceiling: None,
        })
    }

    /// Holds S at or under `ceiling` times the threshold in force from the next step on
    /// (`None`: unbounded). Without a ceiling, S keeps every frame's evidence: after a long
    /// shift it may stand hundreds over the threshold and take hundreds of clear frames to
    /// fall back (docs/detector-experiments.md, session 39). With one, it falls from the
    /// ceiling to the threshold within (ceiling - 1) x threshold / decay steps of p-value 1
    /// (a typical clear frame lowers S by a little more than the decay; one with a small
    /// p-value may raise it).
    pub fn set_ceiling(&mut self, ceiling: Option<f64>) -> Result<(), DetectionError> {
        check_ceiling(ceiling)?;
        self.ceiling = ceiling;
        Ok(())
    }

    pub fn params(&self) -> &PipelineParams {
        &self.params
    }

    pub fn set_cusum_threshold(&mut self, t: f64) {
        self.params.cusum_threshold = t;
    }

    /// Feeds one finite score.
    pub fn step(&mut self, score: f64) -> Step {
        let p_value = self.calibration.p_value(score);
        let log_martingale = self.martingale.push(p_value);
        let window_full = self.martingale.is_full();
        // S only accumulates once the window is full: a partial window is not the statistic
        // the threshold was tuned for.
        let cusum = if window_full {
            self.cusum.update(log_martingale);
            match self.ceiling {
                Some(c) => self.cusum.clamp_to(c * self.params.cusum_threshold),
                None => self.cusum.value(),
            }
        } else {
            self.cusum.value()
        };
        Step {
            p_value,
            log_martingale,
            cusum,
            window_full,
            alarm: window_full && cusum > self.params.cusum_threshold,
            threshold: self.params.cusum_threshold,
        }
    }

    /// Multiplies S by `factor` (in [0, 1]; the start-up phase's gentle end, as a branch's
    /// threshold falls by it).
    pub fn scale_cusum(&mut self, factor: f64) {
        self.cusum.scale(factor);
    }

    /// Zeroes S (the operator's reset); the p-value window is kept.
    pub fn reset_cusum(&mut self) {
        self.cusum.reset();
    }

    /// Zeroes S and empties the p-value window, as a new detector would start.
    pub fn restart(&mut self) {
        self.cusum.reset();
        self.martingale = PowerMartingale::new(self.params.window, self.params.epsilon_grid);
    }

    pub fn cusum(&self) -> f64 {
        self.cusum.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn detector(threshold: f64) -> SequentialDetector {
        let cal = Calibration::new((0..200).map(f64::from).collect()).unwrap();
        let params = PipelineParams {
            window: 1,
            epsilon_grid: 20,
            decay: 1.0,
            cusum_threshold: threshold,
        };
        SequentialDetector::new(cal, params).unwrap()
    }

    proptest! {
        /// A ceiling over one threshold never changes S up to and including the first
        /// alarm (so no first alarm moves); afterwards S stays at or under it, and once the
        /// evidence stops S is back at or under the threshold within (ceiling - 1) x threshold
        /// / decay steps.
        #[test]
        fn a_ceiling_changes_nothing_before_the_first_alarm_and_bounds_the_recovery(
            ceiling in prop_oneof![Just(1.0 + f64::EPSILON), 1.0f64..5.0],
            threshold in 1.0f64..50.0,
            scores in proptest::collection::vec(prop_oneof![0.0f64..200.0, Just(1000.0)], 1..300),
        ) {
            let (mut free, mut held) = (detector(threshold), detector(threshold));
            held.set_ceiling(Some(ceiling)).unwrap();
            let mut alarmed = false;
            for &s in &scores {
                let (a, b) = (free.step(s), held.step(s));
                if !alarmed {
                    prop_assert_eq!(a.alarm, b.alarm);
                    if !a.alarm {
                        prop_assert_eq!(a, b);
                    }
                }
                alarmed |= a.alarm;
                prop_assert!(b.cusum <= ceiling * threshold + 1e-9);
            }
            // Clear frames from here on (the least unusual score: p-value 1, S falls by more
            // than the decay).
            let steps = ((ceiling - 1.0) * threshold).ceil() as usize;
            let last = (0..steps).map(|_| held.step(0.0)).last();
            let s = last.map_or(held.cusum(), |st| st.cusum);
            prop_assert!(s <= threshold, "S {s} after {steps} clear steps");
        }
    }

    #[test]
    fn a_ceiling_outside_its_range_is_refused() {
        let mut d = detector(10.0);
        for bad in [0.5, 1.0, f64::NAN, f64::INFINITY, 0.0, 1000.5] {
            let e = d.set_ceiling(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("cusum_ceiling"), "{e}");
        }
        d.set_ceiling(None).unwrap();
    }

    proptest! {
        /// Any operator-given parameters are either refused with an error or give a pipeline
        /// that runs on any score sequence, non-finite scores included, without panicking and
        /// with a statistic that stays finite and non-negative (issue 15: no argument in any
        /// range panics).
        #[test]
        fn parameters_are_refused_or_run_without_panicking(
            window in prop_oneof![8 => 0usize..40, 1 => MAX_WINDOW - 1..MAX_WINDOW + 2],
            epsilon_grid in prop_oneof![8 => 0usize..300, 1 => MAX_EPSILON_GRID - 1..MAX_EPSILON_GRID + 2],
            decay in prop_oneof![8 => 0.0f64..10.0, 1 => -5.0f64..0.0, 1 => Just(f64::NAN), 1 => Just(f64::INFINITY)],
            threshold in prop_oneof![8 => 0.001f64..1e6, 1 => -5.0f64..0.0, 1 => Just(f64::NAN), 1 => Just(0.0)],
            cal in proptest::collection::vec(-1e3f64..1e3, 1..50),
            scores in proptest::collection::vec(
                prop_oneof![-1e6f64..1e6, Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
                0..80,
            ),
        ) {
            let params = PipelineParams { window, epsilon_grid, decay, cusum_threshold: threshold };
            let valid = params.validate().is_ok();
            prop_assert_eq!(
                valid,
                (1..=MAX_WINDOW).contains(&window) && (1..=MAX_EPSILON_GRID).contains(&epsilon_grid) && decay.is_finite() && decay >= 0.0
                    && threshold.is_finite() && threshold > 0.0
            );
            let cal = Calibration::new(cal).unwrap();
            match SequentialDetector::new(cal, params) {
                Err(_) => prop_assert!(!valid),
                Ok(mut det) => {
                    for s in scores {
                        let st = det.step(s);
                        prop_assert!(st.p_value > 0.0 && st.p_value <= 1.0, "{st:?}");
                        prop_assert!(st.cusum.is_finite() && st.cusum >= 0.0, "{st:?}");
                    }
                }
            }
        }
    }
}
