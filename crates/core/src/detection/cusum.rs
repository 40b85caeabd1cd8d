//! CUSUM on the log-martingale: S = max(0, S + log M - decay).

#[derive(Debug, Clone)]
pub struct Cusum {
    decay: f64,
    s: f64,
}

impl Cusum {
    pub fn new(decay: f64) -> Self {
        Self { decay, s: 0.0 }
    }

    pub fn update(&mut self, log_m: f64) -> f64 {
        self.s = (self.s + log_m - self.decay).max(0.0);
        self.s
    }

    pub fn value(&self) -> f64 {
        self.s
    }

    /// Holds S at or under `ceiling` (a bound on the evidence it keeps, so that it falls back
    /// within a bounded number of steps once the evidence stops).
    pub fn clamp_to(&mut self, ceiling: f64) -> f64 {
        self.s = self.s.min(ceiling);
        self.s
    }

    pub fn reset(&mut self) {
        self.s = 0.0;
    }

    /// Multiplies S by `factor` (in [0, 1]): the start-up phase's gentle end.
    pub fn scale(&mut self, factor: f64) {
        self.s *= factor.clamp(0.0, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// No shift: while log M never exceeds the decay, S stays exactly 0.
        #[test]
        fn stays_zero_without_evidence(decay in 0.0f64..5.0, logs in prop::collection::vec(-50.0f64..0.0, 1..200)) {
            let mut c = Cusum::new(decay);
            for lm in logs {
                prop_assert_eq!(c.update(lm.min(decay)), 0.0);
            }
        }

        /// A shift: log M above the decay by delta makes S grow by delta per step, so it crosses
        /// any threshold t within ceil(t / delta) + 1 steps.
        #[test]
        fn alarms_after_a_shift(decay in 0.0f64..5.0, delta in 0.1f64..10.0, t in 0.1f64..100.0) {
            let mut c = Cusum::new(decay);
            let steps = (t / delta).ceil() as usize + 1;
            let s = (0..steps).map(|_| c.update(decay + delta)).last().unwrap();
            prop_assert!(s > t);
        }
    }
}
