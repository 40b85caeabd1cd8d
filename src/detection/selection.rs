//! Latent selection on in-distribution sequences (the reference implementation's rule): for
//! each latent, the mean absolute frame-to-frame change of its KL within each drive; latents
//! are ranked by the variance of that mean across drives, highest first, and the top k kept.

/// `kl[drive][frame][latent]`. Returns `(latent, variance)` sorted by variance, highest
/// first (ties by index).
pub fn rank_latents(kl: &[Vec<Vec<f64>>]) -> Result<Vec<(usize, f64)>, String> {
    if kl.len() < 2 {
        return Err(format!(
            "latent selection needs at least two in-distribution drives, got {}",
            kl.len()
        ));
    }
    let n = kl
        .iter()
        .flatten()
        .next()
        .map(Vec::len)
        .ok_or("latent selection got empty drives")?;
    let mut means = vec![vec![0.0; kl.len()]; n];
    for (d, drive) in kl.iter().enumerate() {
        if drive.len() < 2 {
            return Err(format!(
                "drive {d} has {} frame(s); latent selection needs at least two per drive",
                drive.len()
            ));
        }
        if let Some(f) = drive.iter().find(|f| f.len() != n) {
            return Err(format!(
                "drive {d} has a frame with {} latents, expected {n}",
                f.len()
            ));
        }
        for (j, m) in means.iter_mut().enumerate() {
            let total: f64 = drive.windows(2).map(|w| (w[1][j] - w[0][j]).abs()).sum();
            m[d] = total / (drive.len() - 1) as f64;
        }
    }
    let mut ranked: Vec<(usize, f64)> = means
        .iter()
        .enumerate()
        .map(|(j, m)| {
            let mean = m.iter().sum::<f64>() / m.len() as f64;
            (
                j,
                m.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / m.len() as f64,
            )
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(ranked)
}

/// The top `k` latents of a ranking, in ascending index order.
pub fn top_k(ranked: &[(usize, f64)], k: usize) -> Vec<usize> {
    let mut sel: Vec<usize> = ranked.iter().take(k.max(1)).map(|(j, _)| *j).collect();
    sel.sort_unstable();
    sel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_variance_across_drives_of_mean_abs_change() {
        // latent 0: steady in both drives (variance 0); latent 1: jumps in drive A only.
        let a = vec![vec![1.0, 0.0], vec![1.0, 5.0], vec![1.0, 0.0]];
        let b = vec![vec![2.0, 1.0], vec![2.0, 1.0], vec![2.0, 1.0]];
        let ranked = rank_latents(&[a, b]).unwrap();
        assert_eq!(ranked[0].0, 1);
        assert!((ranked[0].1 - 6.25).abs() < 1e-12); // means 5 and 0 -> variance 6.25
        assert_eq!(ranked[1], (0, 0.0));
        assert_eq!(top_k(&ranked, 1), vec![1]);
        assert!(rank_latents(&[vec![vec![1.0]; 3]]).is_err());
    }
}
