//! The direction branch: how unevenly a frame's finest detail is spread over directions, as a
//! sequential statistic of its own beside the score.
//!
//! A motion blur removes the differences between neighbours along its own direction only. The
//! score (the posterior and the detail's octaves, in one mixture) takes a blurred frame for a
//! plain scene, and a directional feature mixed into it is diluted among the others (session
//! 34, docs/detector-experiments.md). Scored apart it is not: the frame's *weakest direction*,
//! how far the least detailed of four directions falls below their mean
//! ([`weakest_direction`]), gets its own conformal p-values from the calibration drives, its
//! own martingale, CUSUM and threshold, and the verdict alarms when either branch does.
//!
//! A clear scene's own balance depends on where the robot is (session 35: another map's clear
//! frames reach into motion blur's range, and an empty view's empty direction has no measurable
//! detail at all). So the detail is floored at one grey level (`floor`), and the statistic may
//! be taken against the stream's own recent past (`baseline`, the drive-relative branch's
//! [`Baseline`]): a place's anisotropy is then its own baseline, a blur a sudden change.
//!
//! The branch may measure another per-frame statistic instead (`mscn`, format version 5): the
//! natural-scene statistics of [`crate::mscn`], scored by a Gaussian mixture fitted on clear
//! drives. They see noise, rain, snow and motion blur whatever the scene shows (session 38);
//! everything after the statistic (p-values, CUSUM, threshold, split) is the same.
//!
//! The two share one false-alarm budget ([`split`]): the branch's threshold is the largest S
//! any tuning drive reached, and the pooled threshold moves up past one more tuning drive. A
//! fresh drive exchangeable with the tuning drives (K of them) then exceeds the first with
//! probability at most 1 / (K + 1) and the second with at most (K - r) / (K + 1), where the
//! pooled threshold alone, the r-th smallest, promised (K + 1 - r) / (K + 1): together, by the
//! union bound, the same promise.

use super::relative::BaselineParams;
use super::tuning::{largest_s, run};
use super::{Calibration, DetectionError, PipelineParams};
use crate::detail::{DetailExtractor, DetailSpec};
use crate::frame::Pixels;
use crate::mixture::{self, Component};
use crate::mscn::{MscnExtractor, FEATURES as MSCN_FEATURES};
use serde::{Deserialize, Serialize};

/// The branch's sequential pipeline, as session 34's exploration ran it: a one-frame window (an
/// onset counts from its first frame) and CUSUM's drift of 1 (a frame adds to S only when its
/// bet pays more than e).
pub const WINDOW: usize = 1;
pub const DECAY: f64 = 1.0;

/// The direction branch of a calibrated bundle (`calibration.direction`, format version 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionSection {
    /// Frames are area-resized to this size (luma) before the neighbours are compared.
    pub width: u32,
    pub height: u32,
    /// Added to every `D_theta` before the logarithm (luma in [0, 1]; absent: none, the first
    /// form of session 35).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub floor: f64,
    /// Scores the weakest direction against the median of the stream's own earlier values
    /// (absent: as measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineParams>,
    /// The branch's statistic, when not the weakest direction: the MSCN statistics' mixture
    /// score (format version 5; `floor` and `baseline` do not apply to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscn: Option<MscnReference>,
    /// The branch's own pipeline: window, epsilon grid, decay and threshold.
    pub pipeline: PipelineParams,
    /// The pooled threshold before the branch took its share (`calibration.pipeline` holds the
    /// one after).
    pub pooled_threshold_alone: f64,
    /// Tuning drives the budget was split on.
    pub tuning_drives: usize,
    /// The branch's statistic on every calibration frame (with a baseline, each drive against
    /// its own past): its conformal scores.
    pub scores: Vec<f64>,
}

/// The reference of the MSCN statistic (`calibration.direction.mscn`): a Gaussian mixture over
/// [`crate::mscn`]'s statistics of clear fit drives' frames; a frame's statistic is its
/// [`mixture::score`] (twice its negative log-likelihood, up to a constant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MscnReference {
    pub components: Vec<Component>,
}

impl MscnReference {
    /// The checks of the score's mixture reference ([`mixture::validate`]) over the
    /// [`MSCN_FEATURES`] statistics.
    pub fn validate(&self) -> Result<(), DetectionError> {
        mixture::validate(&self.components, MSCN_FEATURES).map_err(|e| {
            DetectionError::InvalidParam {
                param: "direction.mscn",
                reason: e.to_string(),
            }
        })
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The one grey level of 8-bit frames: the default detail floor.
pub const GREY_LEVEL: f64 = 1.0 / 255.0;

impl DirectionSection {
    pub fn validate(&self) -> Result<(), DetectionError> {
        self.pipeline.validate()?;
        if !(0.0..=1.0).contains(&self.floor) {
            return Err(DetectionError::InvalidParam {
                param: "direction.floor",
                reason: format!("must be 0..=1 (luma in [0, 1]), got {}", self.floor),
            });
        }
        if let Some(b) = &self.baseline {
            b.validate()?;
        }
        if let Some(m) = &self.mscn {
            if self.baseline.is_some() {
                return Err(DetectionError::InvalidParam {
                    param: "direction.mscn",
                    reason: "the MSCN statistic is scored as measured: remove `baseline`".into(),
                });
            }
            m.validate()?;
            MscnExtractor::new(self.width, self.height).map_err(|e| {
                DetectionError::InvalidParam {
                    param: "direction.width/height",
                    reason: e.to_string(),
                }
            })?;
        }
        self.spec()
            .validate()
            .map_err(|e| DetectionError::InvalidParam {
                param: "direction.width/height",
                reason: e.to_string(),
            })?;
        Calibration::new(self.scores.clone()).map(|_| ())
    }

    pub fn spec(&self) -> DetailSpec {
        spec(self.width, self.height)
    }

    /// A meter for the section's statistic before any baseline (of a validated section).
    pub fn meter(&self) -> DirectionMeter {
        match &self.mscn {
            Some(m) => DirectionMeter::mscn(self.width, self.height, m.components.clone())
                .expect("a validated section's size"),
            None => DirectionMeter::new(self.width, self.height, self.floor),
        }
    }

    /// One line for tools' summaries.
    pub fn describe(&self) -> String {
        let against = match &self.baseline {
            Some(b) => format!(
                ", against the median of {} frames at least {} old",
                b.window, b.gap
            ),
            None => String::new(),
        };
        let statistic = match &self.mscn {
            Some(m) => format!(
                "MSCN statistics ({} mixture components)",
                m.components.len()
            ),
            None => format!("weakest direction, floor {:.4}", self.floor),
        };
        format!(
            "{statistic} at {}x{}{against}: window {}, decay {}, threshold {:.4} (the pooled one {:.4} before its share; {} tuning drives)",
            self.width,
            self.height,
            self.pipeline.window,
            self.pipeline.decay,
            self.pipeline.cusum_threshold,
            self.pooled_threshold_alone,
            self.tuning_drives
        )
    }
}

/// How far the least detailed of the four directions falls below their mean, in ln units
/// (>= 0): mean ln(D + floor) - min ln(D + floor) over the four `D_theta`
/// ([`crate::detail::DetailExtractor::direction_means`]). A clear scene's is about 0.2 on the
/// training maps; a motion blur's near 1 (session 34).
pub fn weakest_direction(means: [f64; 4], floor: f64) -> f64 {
    let l = means.map(|d| (d + floor).max(1e-6).ln());
    l.iter().sum::<f64>() / 4.0 - l.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The detail channel that measures the balance at a size: the finest octave only, no cells.
pub fn spec(width: u32, height: u32) -> DetailSpec {
    DetailSpec {
        octaves: 1,
        directions: true,
        ..DetailSpec::at(width, height)
    }
}

/// Measures the branch's statistic frame after frame: [`weakest_direction`], or the MSCN
/// statistics' mixture score.
pub enum DirectionMeter {
    Weakest {
        detail: DetailExtractor,
        floor: f64,
    },
    Mscn {
        extractor: MscnExtractor,
        components: Vec<Component>,
    },
}

impl DirectionMeter {
    /// The weakest direction at a size.
    pub fn new(width: u32, height: u32, floor: f64) -> Self {
        Self::Weakest {
            detail: DetailExtractor::new(spec(width, height)),
            floor,
        }
    }

    /// The MSCN statistics at a size, scored against a mixture over them.
    pub fn mscn(
        width: u32,
        height: u32,
        components: Vec<Component>,
    ) -> Result<Self, crate::mscn::MscnSizeError> {
        Ok(Self::Mscn {
            extractor: MscnExtractor::new(width, height)?,
            components,
        })
    }

    /// The frame's statistic.
    pub fn measure(&mut self, px: Pixels<'_>) -> f64 {
        match self {
            Self::Weakest { detail, floor } => {
                weakest_direction(detail.direction_means(px), *floor)
            }
            Self::Mscn {
                extractor,
                components,
            } => extractor
                .features(px)
                // A frame without texture: no evidence, the least unusual score (p = 1).
                .map_or(0.0, |f| mixture::score(components, &f)),
        }
    }

    /// The statistic from direction means measured elsewhere at its size (the detail channel's
    /// pass over the same luma); `None` for a statistic that needs more than the means.
    pub fn from_means(&self, means: [f64; 4]) -> Option<f64> {
        match self {
            Self::Weakest { floor, .. } => Some(weakest_direction(means, *floor)),
            Self::Mscn { .. } => None,
        }
    }

    /// Whether the direction means at `detail`'s size are all it needs, so that one luma pass
    /// serves both ([`crate::detail::DetailExtractor::features_and_direction_means`]).
    pub fn shares_luma_with(&self, other: &DetailExtractor) -> bool {
        match self {
            Self::Weakest { detail, .. } => {
                let (a, b) = (detail.spec(), other.spec());
                (a.width, a.height) == (b.width, b.height)
            }
            Self::Mscn { .. } => false,
        }
    }
}

/// The two thresholds that share one budget ([`split`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    /// The pooled branch's threshold, one tuning drive further up.
    pub pooled: f64,
    /// The direction branch's: the largest S of the tuning drives (and at least `floor`).
    pub direction: f64,
}

/// Splits the pooled threshold's false-alarm budget with the direction branch (the module's
/// doc), or another branch that takes its share alike (`branch`, as errors name it: the change
/// branch, [`super::change`]): the direction threshold is the largest S over the tuning
/// drives' direction scores (and at least `floor`, the Ville level), the pooled one the
/// smallest tuning drive's largest pooled S above the pooled threshold. An error when no
/// tuning drive is above it: the pooled threshold then spends no budget the branch could take
/// (give more tuning drives).
pub fn split(
    pooled: (&Calibration, &PipelineParams),
    pooled_tuning: &[Vec<f64>],
    direction: (&Calibration, &PipelineParams),
    direction_tuning: &[Vec<f64>],
    floor: f64,
    branch: &'static str,
) -> Result<Split, DetectionError> {
    let maxima = |cal: &Calibration, p: &PipelineParams, drives: &[Vec<f64>]| -> Vec<f64> {
        drives
            .iter()
            .map(|d| largest_s(&run(cal, p, d)).0)
            .collect()
    };
    let alone = pooled.1.cusum_threshold;
    let next = maxima(pooled.0, pooled.1, pooled_tuning)
        .into_iter()
        .filter(|&m| m > alone)
        .min_by(f64::total_cmp)
        .ok_or_else(|| {
            DetectionError::InvalidParam {
                param: branch,
                reason: format!("no tuning drive's S exceeds the pooled threshold {alone}, so it has no budget to share with the {branch} branch: give more tuning drives"),
            }
        })?;
    let largest = maxima(direction.0, direction.1, direction_tuning)
        .into_iter()
        .fold(0.0f64, f64::max);
    Ok(Split {
        pooled: next,
        direction: largest.max(floor),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weakest_direction_is_the_deepest_fall_below_the_mean() {
        let e = std::f64::consts::E;
        assert_eq!(weakest_direction([0.1; 4], 0.0), 0.0);
        // ln D = (1, 0, 0, -1) (mean 0): the fourth direction is the weakest, 1 below.
        let d = [e, 1.0, 1.0, 1.0 / e];
        assert!((weakest_direction(d, 0.0) - 1.0).abs() < 1e-12);
        // An empty view: one direction holds a little detail, the others none. Unfloored it is
        // extreme; floored at one grey level it is nearly balanced.
        let empty = [0.0, 0.002, 0.002, 0.002];
        assert!(weakest_direction(empty, 0.0) > 5.0);
        assert!(weakest_direction(empty, GREY_LEVEL) < 0.5);
    }

    /// The MSCN reference is checked as the score's mixture is: a fitted one passes; a stale ln
    /// det, weights that do not sum to 1 or a precision that is not positive-definite do not.
    #[test]
    fn an_mscn_reference_is_checked_as_the_scores_mixture_is() {
        // Deterministic, spread features: row i's feature j is a smooth function of (i, j).
        let x: Vec<Vec<f64>> = (0..400)
            .map(|i| {
                (0..MSCN_FEATURES)
                    .map(|j| ((i * 7 + j * 13) as f64 * 0.37).sin() + (i % 2) as f64 * 3.0)
                    .collect()
            })
            .collect();
        let fitted = MscnReference {
            components: mixture::fit(&x, 2, 0, mixture::SCORE_FLAGS).unwrap(),
        };
        fitted.validate().unwrap();
        let broken = |edit: &dyn Fn(&mut Vec<Component>)| {
            let mut m = fitted.clone();
            edit(&mut m.components);
            m.validate().unwrap_err().to_string()
        };
        let e = broken(&|c| c[0].log_det_precision += 1.0);
        assert!(e.contains("direction.mscn") && e.contains("ln det"), "{e}");
        assert!(broken(&|c| c[0].weight *= 0.5).contains("sum to 1"));
        let e = broken(&|c| c[1].precision[0] = -1.0);
        assert!(
            e.contains("component 1's precision is not positive-definite"),
            "{e}"
        );
        assert!(broken(&|c| c.clear()).contains("at least one component"));
    }

    #[test]
    fn the_split_keeps_one_promise() {
        let cal = Calibration::new((0..100).map(f64::from).collect()).unwrap();
        let p = PipelineParams {
            window: 1,
            epsilon_grid: 20,
            decay: 1.0,
            cusum_threshold: 1.0,
        };
        // Ten tuning drives: drive i holds i frames scored above every calibration score.
        let drives: Vec<Vec<f64>> = (0..10)
            .map(|i| {
                let mut d = vec![50.0; 30];
                d[10..10 + i].fill(1000.0);
                d
            })
            .collect();
        let m: Vec<f64> = drives
            .iter()
            .map(|d| largest_s(&run(&cal, &p, d)).0)
            .collect();
        let mut sorted = m.clone();
        sorted.sort_by(f64::total_cmp);
        // The pooled threshold alone at the 8th smallest: 2 drives over it.
        let pooled = PipelineParams {
            cusum_threshold: sorted[7],
            ..p.clone()
        };
        let s = split(
            (&cal, &pooled),
            &drives,
            (&cal, &p),
            &drives,
            0.5,
            "direction",
        )
        .unwrap();
        assert_eq!(s.pooled, sorted[8]);
        assert_eq!(m.iter().filter(|&&x| x > s.pooled).count(), 1);
        assert_eq!(s.direction, sorted[9]);
        assert_eq!(m.iter().filter(|&&x| x > s.direction).count(), 0);
        // No drive over the pooled threshold: nothing to share.
        let top = PipelineParams {
            cusum_threshold: sorted[9],
            ..p.clone()
        };
        assert!(
            split((&cal, &top), &drives, (&cal, &p), &drives, 0.5, "change")
                .unwrap_err()
                .to_string()
                .contains("the change branch")
        );
    }
}
