//! The nonconformity score of the paper's detectors: the KL divergence between the encoder's
//! posterior N(mu, exp(logvar)) and the prior N(0, 1), per latent, summed over the selected
//! latents. Latents that vary with the scene rather than with the data distribution are left
//! out by the selection, which is why the sum is over a subset.

/// KL(N(mu, sigma^2) || N(0, 1)) per latent: 0.5 * (mu^2 + exp(logvar) - logvar - 1).
/// Computed in f64 so the sequential statistics built on it are reproducible.
pub fn kl_per_latent(mu: &[f32], logvar: &[f32]) -> Vec<f64> {
    mu.iter()
        .zip(logvar)
        .map(|(&m, &lv)| {
            let (m, lv) = (f64::from(m), f64::from(lv));
            0.5 * (m * m + lv.exp() - lv - 1.0)
        })
        .collect()
}

/// The nonconformity score: the KL summed over `selected` latent indices.
pub fn nonconformity(kl: &[f64], selected: &[usize]) -> f64 {
    selected.iter().map(|&i| kl[i]).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_at_the_prior_and_positive_elsewhere() {
        let kl = kl_per_latent(&[0.0, 1.0, 0.0, -2.0], &[0.0, 0.0, 1.0, -1.0]);
        assert_eq!(kl[0], 0.0);
        assert!((kl[1] - 0.5).abs() < 1e-12);
        assert!((kl[2] - 0.5 * (1f64.exp() - 2.0)).abs() < 1e-12);
        assert!((kl[3] - 0.5 * (4.0 + (-1f64).exp() + 1.0 - 1.0)).abs() < 1e-12);
        assert!((nonconformity(&kl, &[1, 3]) - (kl[1] + kl[3])).abs() < 1e-12);
    }

    proptest::proptest! {
        #[test]
        fn kl_is_never_negative(mu in -10f32..10.0, lv in -10f32..10.0) {
            proptest::prop_assert!(kl_per_latent(&[mu], &[lv])[0] >= 0.0);
        }
    }
}
