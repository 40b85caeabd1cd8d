//! The power martingale over a sliding window of p-values, mixed over epsilon.
//!
//! For one epsilon the power martingale of n p-values is prod_i eps * p_i^(eps - 1); each factor
//! has expectation 1 under uniform p-values. Mixing over eps in (0, 1) with the midpoint rule
//! on `grid` points, M = (1/K) sum_k eps_k^n exp((eps_k - 1) sum_i ln p_i), is again a mixture
//! of test martingales, so E[M] = 1 holds exactly for the grid version too (Ville: P(M >= c)
//! <= 1/c per window). Computed as a log-sum-exp: no overflow or underflow for any p in (0, 1].

use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct PowerMartingale {
    window: usize,
    eps: Vec<f64>,
    ln_eps: Vec<f64>,
    ln_p: VecDeque<f64>,
}

impl PowerMartingale {
    pub fn new(window: usize, grid: usize) -> Self {
        let eps: Vec<f64> = (0..grid).map(|k| (k as f64 + 0.5) / grid as f64).collect();
        let ln_eps = eps.iter().map(|e| e.ln()).collect();
        Self {
            window,
            eps,
            ln_eps,
            ln_p: VecDeque::with_capacity(window + 1),
        }
    }

    pub fn is_full(&self) -> bool {
        self.ln_p.len() >= self.window
    }

    /// Adds a p-value (in (0, 1]) and returns log M over the window's p-values.
    pub fn push(&mut self, p: f64) -> f64 {
        self.ln_p.push_back(p.ln());
        if self.ln_p.len() > self.window {
            self.ln_p.pop_front();
        }
        log_mixture(
            &self.ln_p.iter().copied().collect::<Vec<_>>(),
            &self.eps,
            &self.ln_eps,
        )
    }
}

/// log((1/K) sum_k exp(n ln eps_k + (eps_k - 1) sum ln p)).
fn log_mixture(ln_p: &[f64], eps: &[f64], ln_eps: &[f64]) -> f64 {
    let n = ln_p.len() as f64;
    let sum_ln_p: f64 = ln_p.iter().sum();
    let terms: Vec<f64> = eps
        .iter()
        .zip(ln_eps)
        .map(|(e, le)| n * le + (e - 1.0) * sum_ln_p)
        .collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    max + sum.ln() - (eps.len() as f64).ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn one_p_value_of_one_gives_log_m_of_mean_eps() {
        // n = 1, p = 1: M = mean(eps) = 0.5 on a symmetric midpoint grid.
        let mut m = PowerMartingale::new(5, 100);
        assert!((m.push(1.0) - 0.5f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn tiny_p_values_grow_log_m_without_overflow() {
        let mut m = PowerMartingale::new(20, 100);
        let mut last = f64::NEG_INFINITY;
        for _ in 0..20 {
            last = m.push(1e-300);
        }
        assert!(last.is_finite() && last > 1000.0);
        for _ in 0..40 {
            last = m.push(1.0);
        }
        assert!(last.is_finite() && last < 0.0);
    }

    /// Ville/Markov: for i.i.d. uniform p-values, the share of windows with M >= c stays at or
    /// below 1/c (E[M] = 1). Checked on many independent windows.
    fn share_at_least(c: f64, seed: u64) -> f64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let trials = 20_000;
        let hits = (0..trials)
            .filter(|_| {
                let mut m = PowerMartingale::new(20, 100);
                let mut log_m = 0.0;
                for _ in 0..20 {
                    log_m = m.push(1.0 - rng.random::<f64>()); // (0, 1]
                }
                log_m >= c.ln()
            })
            .count();
        hits as f64 / trials as f64
    }

    #[test]
    fn ville_bound_holds_for_uniform_p_values() {
        for c in [10.0, 100.0] {
            let share = share_at_least(c, c as u64);
            assert!(share <= 1.0 / c, "share of windows with M >= {c}: {share}");
        }
    }

    proptest! {
        #[test]
        fn log_m_is_always_finite(ps in prop::collection::vec(1e-300f64..=1.0, 1..60), window in 1usize..30) {
            let mut m = PowerMartingale::new(window, 100);
            for p in ps {
                prop_assert!(m.push(p).is_finite());
            }
        }
    }
}
