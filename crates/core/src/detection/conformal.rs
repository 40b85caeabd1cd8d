//! Inductive conformal p-values against a fixed set of calibration scores.

use super::DetectionError;

/// Calibration scores from in-distribution frames not used for training.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    sorted: Vec<f64>,
}

impl Calibration {
    pub fn new(mut scores: Vec<f64>) -> Result<Self, DetectionError> {
        if scores.is_empty() {
            return Err(DetectionError::NoCalibrationScores);
        }
        if let Some(s) = scores.iter().find(|s| !s.is_finite()) {
            return Err(DetectionError::NonFiniteCalibrationScore(*s));
        }
        scores.sort_by(f64::total_cmp);
        Ok(Self { sorted: scores })
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    pub fn scores(&self) -> &[f64] {
        &self.sorted
    }

    /// p = (#{cal >= s} + 1) / (N + 1): in (0, 1], non-increasing in `s`.
    pub fn p_value(&self, s: f64) -> f64 {
        let below = self.sorted.partition_point(|&c| c < s);
        let at_or_above = self.sorted.len() - below;
        (at_or_above as f64 + 1.0) / (self.sorted.len() as f64 + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn p_values_by_hand_including_ties() {
        let c = Calibration::new(vec![3.0, 1.0, 2.0, 2.0]).unwrap();
        assert_eq!(c.p_value(0.5), 1.0); // all 4 >= s: (4+1)/5
        assert_eq!(c.p_value(2.0), 4.0 / 5.0); // 2, 2, 3
        assert_eq!(c.p_value(2.5), 2.0 / 5.0);
        assert_eq!(c.p_value(9.0), 1.0 / 5.0);
        assert!(Calibration::new(vec![]).is_err());
        assert!(Calibration::new(vec![1.0, f64::NAN]).is_err());
    }

    proptest! {
        #[test]
        fn p_is_in_unit_interval_and_non_increasing(cal in prop::collection::vec(-1e6f64..1e6, 1..200), a in -2e6f64..2e6, b in -2e6f64..2e6) {
            let c = Calibration::new(cal).unwrap();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let (pl, ph) = (c.p_value(lo), c.p_value(hi));
            prop_assert!(pl > 0.0 && pl <= 1.0 && ph > 0.0 && ph <= 1.0);
            prop_assert!(ph <= pl);
        }
    }
}
