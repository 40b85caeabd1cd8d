//! The start-up phase (`calibration.startup`): a stream's first frames are judged at the
//! calibrated thresholds, later ones at a lower share of them.
//!
//! Why: on clear tuning drives, the frames that set every threshold come at a drive's start.
//! The robot is put down at some pose (off its lane, facing a wall or the map's edge) and the
//! controller takes a few seconds to settle; once it has, clear frames rarely give the
//! sequential statistics any evidence (docs/detector-experiments.md, "A start-up phase").
//! One threshold for the whole drive makes every shift that comes later wait for evidence
//! that only a start needs. So the thresholds hold as calibrated for the first `frames`
//! scored frames of a stream, and after them each is `cruise_scale` times its calibrated value
//! (never under `floor`). Both are chosen on the same tuning drives, so that together the
//! phases alarm on no more of them than the calibrated thresholds' promise allows
//! ([`cruise_scale`]).

use super::DetectionError;
use serde::{Deserialize, Serialize};

/// The start-up phase of a calibrated bundle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupSection {
    /// Scored frames of a stream judged at the calibrated thresholds.
    pub frames: u64,
    /// After them, every branch's threshold in force is this share of its calibrated value,
    /// in (0, 1].
    pub cruise_scale: f64,
    /// ... but never under this: ln(branches / rate), the level at which the CUSUM of
    /// exchangeable p-values alarms on at most `rate` of the frames over all its branches
    /// (Ville's inequality, once per start of the CUSUM). Video frames are not exchangeable,
    /// so this is a floor, not the guarantee: the tuning drives are.
    pub floor: f64,
    /// Tuning drives on which some branch exceeds its threshold in force, counted at
    /// `cruise_scale` before the floor (so at most this many at the thresholds in force).
    pub tuning_drives_alarmed: usize,
    /// How many the calibrated thresholds' promise allows (`guarantee.drives_over`).
    pub tuning_drives_allowed: usize,
}

impl StartupSection {
    /// A branch's threshold in force after `scored` frames of the stream, from its calibrated
    /// one.
    pub fn threshold(&self, calibrated: f64, scored: u64) -> f64 {
        if scored < self.frames {
            calibrated
        } else {
            (calibrated * self.cruise_scale).max(self.floor)
        }
    }

    /// The section's own consistency: what a hand-edited bundle could break.
    pub fn validate(&self) -> Result<(), DetectionError> {
        let invalid = |param, reason: String| Err(DetectionError::InvalidParam { param, reason });
        if self.frames == 0 {
            return invalid("calibration.startup.frames", "must be at least 1".into());
        }
        if !(self.cruise_scale > 0.0 && self.cruise_scale <= 1.0) {
            return invalid(
                "calibration.startup.cruise_scale",
                format!(
                    "must be in (0, 1], got {}: a start-up phase only lowers thresholds after it",
                    self.cruise_scale
                ),
            );
        }
        if !(self.floor.is_finite() && self.floor >= 0.0) {
            return invalid(
                "calibration.startup.floor",
                format!("must be finite and >= 0, got {}", self.floor),
            );
        }
        Ok(())
    }
}

/// The floor of every threshold after the start-up: ln(branches / rate).
pub fn floor(branches: usize, rate: f64) -> f64 {
    (branches.max(1) as f64 / rate).ln()
}

/// The cruise scale and the tuning drives it alarms on, from each tuning drive's alarm ratio
/// per frame (max over its branches of S / its calibrated threshold in force, S unbounded):
/// drives whose ratio exceeds 1 in their first `frames` frames alarm in the start-up; of the
/// others, at most `allowed` minus those may exceed the scale afterwards, so the scale is the
/// next such drive's largest ratio after the start-up (never above 1). Drives too short to
/// leave the start-up count only there.
pub fn cruise_scale(ratios: &[Vec<f64>], frames: usize, allowed: usize) -> (f64, usize) {
    let largest = |r: &[f64]| r.iter().copied().fold(0.0f64, f64::max);
    let (started, cruising): (Vec<&Vec<f64>>, Vec<&Vec<f64>>) = ratios
        .iter()
        .partition(|r| largest(&r[..frames.min(r.len())]) > 1.0);
    let mut after: Vec<f64> = cruising
        .iter()
        .map(|r| largest(&r[frames.min(r.len())..]))
        .collect();
    after.sort_by(|a, b| b.total_cmp(a));
    let Some(room) = allowed.checked_sub(started.len()) else {
        // The start-up alone spends the budget: no lower threshold is certified after it.
        return (
            1.0,
            started.len() + after.iter().filter(|&&m| m > 1.0).count(),
        );
    };
    // A scale no drive's ratio reaches leaves every threshold at the floor.
    let scale = after
        .get(room)
        .copied()
        .unwrap_or(0.0)
        .clamp(f64::MIN_POSITIVE, 1.0);
    let over = after.iter().filter(|&&m| m > scale).count();
    (scale, started.len() + over)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(frames: u64, cruise_scale: f64, floor: f64) -> StartupSection {
        StartupSection {
            frames,
            cruise_scale,
            floor,
            tuning_drives_alarmed: 0,
            tuning_drives_allowed: 1,
        }
    }

    #[test]
    fn thresholds_hold_through_the_start_up_and_fall_after_it_to_the_floor_at_most() {
        let s = section(3, 0.25, 5.0);
        assert_eq!(s.threshold(40.0, 0), 40.0);
        assert_eq!(s.threshold(40.0, 2), 40.0);
        assert_eq!(s.threshold(40.0, 3), 10.0);
        assert_eq!(s.threshold(12.0, 3), 5.0);
    }

    #[test]
    fn a_section_that_would_raise_thresholds_or_never_start_is_refused() {
        assert!(section(3, 0.5, 1.0).validate().is_ok());
        assert!(section(0, 0.5, 1.0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("frames"));
        assert!(section(3, 1.5, 1.0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("(0, 1]"));
        assert!(section(3, 0.0, 1.0).validate().is_err());
        assert!(section(3, 0.5, f64::NAN).validate().is_err());
    }

    #[test]
    fn the_floor_is_ln_branches_over_rate() {
        assert!((floor(1, 1e-4) - 10_000f64.ln()).abs() < 1e-12);
        assert!((floor(3, 5e-5) - 60_000f64.ln()).abs() < 1e-12);
    }

    /// Four drives, a start-up of 2 frames: one alarms at its start (ratio 1.5), the others'
    /// largest ratios after it are 0.9, 0.4 and 0.2. With 2 drives allowed, one more may alarm
    /// after the start-up: the scale is the next drive's 0.4, and 2 drives alarm.
    #[test]
    fn the_scale_spends_what_the_start_up_leaves_of_the_budget() {
        let ratios = vec![
            vec![1.5, 0.1, 0.1],
            vec![0.9, 0.1, 0.9],
            vec![1.0, 0.8, 0.4],
            vec![0.1, 0.1, 0.2],
        ];
        assert_eq!(cruise_scale(&ratios, 2, 2), (0.4, 2));
        // With one drive allowed, the start-up spent it: the largest after it, 0.9.
        assert_eq!(cruise_scale(&ratios, 2, 1), (0.9, 1));
        // None allowed: the start-up's drive is already over, so nothing is lowered.
        assert_eq!(cruise_scale(&ratios, 2, 0), (1.0, 1));
        // A start-up that covers the whole drive: no frame after it, every threshold at its floor.
        let (scale, alarmed) = cruise_scale(&ratios, 3, 1);
        assert!(scale > 0.0 && scale < 1e-300);
        assert_eq!(alarmed, 1);
    }

    /// A ratio of exactly 1 does not alarm (S equal to the threshold), as in tuning.
    #[test]
    fn a_ratio_at_the_threshold_is_not_an_alarm() {
        let ratios = vec![vec![1.0, 0.5], vec![0.3, 0.6]];
        assert_eq!(cruise_scale(&ratios, 1, 0), (0.6, 0));
    }
}
