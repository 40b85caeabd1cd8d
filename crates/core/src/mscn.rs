//! Natural-scene statistics: how a frame's fine structure is distributed, apart from what it
//! shows.
//!
//! The shipped scores read a frame's content (the posterior) and its detail energy, so a rare
//! clear scene (a bus close up, the map's edge) scores like rain or fog for many frames and sets
//! the alarm threshold (docs/detector-experiments.md, "Issue 14's floors today"). Image-quality
//! research measures distortion apart from content: the mean-subtracted contrast-normalised
//! (MSCN) coefficients of a natural image follow a stable law whatever the image shows, and
//! noise, blur, rain streaks and snow change that law (Mittal, Moorthy and Bovik's BRISQUE,
//! 2012). [`MscnExtractor`] measures [`FEATURES`] statistics of that law per frame, at two
//! scales; session 38's exploration found them separating noise, rain, snow and motion blur
//! from every clear tuning frame ("Natural-scene statistics", docs/detector-experiments.md).
//! `scripts/mscn_study.py` is the independent NumPy definition these must match.
//!
//! A frame with almost no texture (a view of flat sky over untextured road, a blank wall, a
//! covered lens) has no MSCN law to measure: its statistics are extreme whatever the weather.
//! Such a frame carries no evidence here ([`MscnExtractor::features`] gives `None` when under
//! [`MIN_TEXTURED`] of its pixels have a local spread of [`TEXTURE_SPREAD`] grey levels); the
//! score, which reads content and level, still judges it. The direction branch scores it 0, the
//! least unusual, so it is not neutral there: its p-value is 1 and the branch's S falls on it
//! as on the most ordinary clear frame (about 1.7 a frame), never rises.

use crate::detail::{halve, luma_at};
use crate::frame::Pixels;
use crate::preprocess::Preprocessor;

/// Statistics per scale ([`statistics`]), and scales (the frame, then its 2x2 halving).
pub const PER_SCALE: usize = 15;
pub const FEATURES: usize = 2 * PER_SCALE;

/// BRISQUE's local window: a Gaussian of sigma 7/6 pixels, cut at 4 pixels (scipy's
/// `gaussian_filter` with `truncate=3`).
const SIGMA: f64 = 7.0 / 6.0;
const RADIUS: usize = 4;

/// Added to the local spread before dividing (luma in 0..255), so flat areas do not blow up.
const STABILISER: f64 = 1.0;

/// The ln spread of an empty side of the neighbour products (no product of that sign).
const EMPTY_SIDE: f64 = -14.0;

/// A pixel is textured when its local spread is at least this many grey levels (0..255).
pub const TEXTURE_SPREAD: f64 = 4.0;
/// The share of textured pixels (at the frame's full size) below which a frame carries no
/// evidence. The clear fit drives' 0.1th percentile is 0.196 and flat views sit at 0.067
/// (session 38).
pub const MIN_TEXTURED: f64 = 0.15;

/// The smallest frame side: its halving must still have neighbours.
pub const MIN_SIDE: u32 = 4;

/// Computes the [`FEATURES`] MSCN statistics of frames at one size, reusing its buffers.
pub struct MscnExtractor {
    width: usize,
    height: usize,
    luma: Preprocessor,
    buf: Vec<f32>,
}

/// A size the statistics cannot be taken at.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("MSCN statistics at {width}x{height}: each side must be at least {MIN_SIDE} pixels so that the frame's halving keeps neighbours")]
pub struct MscnSizeError {
    pub width: u32,
    pub height: u32,
}

impl MscnExtractor {
    /// Frames are area-resized to `width` x `height` (the fit drives' own size) first.
    pub fn new(width: u32, height: u32) -> Result<Self, MscnSizeError> {
        if width < MIN_SIDE || height < MIN_SIDE {
            return Err(MscnSizeError { width, height });
        }
        Ok(Self {
            width: width as usize,
            height: height as usize,
            luma: luma_at(width, height),
            buf: vec![],
        })
    }

    /// The frame's statistics: [`statistics`] of its MSCN field, then of its 2x2 halving's;
    /// `None` for a frame with too little texture to measure (the module's doc).
    pub fn features(&mut self, px: Pixels<'_>) -> Option<Vec<f64>> {
        let (w, h) = (self.width, self.height);
        self.buf.resize(w * h, 0.0);
        self.luma.run_into(px, &mut self.buf);
        let y: Vec<f64> = self.buf.iter().map(|&v| 255.0 * f64::from(v)).collect();
        features_of_luma(&y, w, h)
    }
}

/// [`MscnExtractor::features`] of a luma image in 0..255, row by row (`w * h` values).
fn features_of_luma(y: &[f64], w: usize, h: usize) -> Option<Vec<f64>> {
    debug_assert_eq!(y.len(), w * h);
    let (field, textured) = mscn(y, w, h);
    if textured < MIN_TEXTURED {
        return None;
    }
    let mut out = statistics(&field, w, h).to_vec();
    let (half, hw, hh) = halve(y, w, h);
    out.extend(statistics(&mscn(&half, hw, hh).0, hw, hh));
    Some(out)
}

/// The MSCN field (y - mu) / (sigma + 1), mu and sigma the local Gaussian mean and spread, and
/// the share of its pixels whose spread is at least [`TEXTURE_SPREAD`].
fn mscn(y: &[f64], w: usize, h: usize) -> (Vec<f64>, f64) {
    let squares: Vec<f64> = y.iter().map(|v| v * v).collect();
    let (mu, mu2) = (blur(y, w, h), blur(&squares, w, h));
    let mut textured = 0usize;
    let field = y
        .iter()
        .zip(mu.iter().zip(&mu2))
        .map(|(v, (m, m2))| {
            let sigma = (m2 - m * m).abs().sqrt();
            textured += usize::from(sigma >= TEXTURE_SPREAD);
            (v - m) / (sigma + STABILISER)
        })
        .collect();
    (field, textured as f64 / y.len() as f64)
}

/// Separable Gaussian blur with edges replicated (scipy's mode `nearest`). Each pass runs
/// over contiguous rows, so the compiler vectorises it (the frame's main cost here).
fn blur(g: &[f64], w: usize, h: usize) -> Vec<f64> {
    let mut k = [0.0; 2 * RADIUS + 1];
    for (i, k) in k.iter_mut().enumerate() {
        let d = i as f64 - RADIUS as f64;
        *k = (-0.5 * (d / SIGMA).powi(2)).exp();
    }
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    // Along rows, through a padded copy of each row.
    let mut rows = vec![0.0; w * h];
    let mut padded = vec![0.0; w + 2 * RADIUS];
    for (row, out) in g.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
        padded[..RADIUS].fill(row[0]);
        padded[RADIUS..RADIUS + w].copy_from_slice(row);
        padded[RADIUS + w..].fill(row[w - 1]);
        for (x, o) in out.iter_mut().enumerate() {
            *o = padded[x..x + k.len()]
                .iter()
                .zip(&k)
                .map(|(v, k)| v * k)
                .sum();
        }
    }
    // Along columns: each output row a weighted sum of whole rows.
    let mut out = vec![0.0; w * h];
    for (y, o) in out.chunks_exact_mut(w).enumerate() {
        for (i, k) in k.iter().enumerate() {
            let src = (y + i).saturating_sub(RADIUS).min(h - 1);
            for (a, v) in o.iter_mut().zip(&rows[src * w..(src + 1) * w]) {
                *a += k * v;
            }
        }
    }
    out
}

/// One scale's [`PER_SCALE`] statistics: ln E[x²]; (E|x|)² / E[x²], the generalised Gaussian's
/// shape; the ln kurtosis; then for the neighbour products along four directions (right, down,
/// down-right, down-left) their mean and the ln spread (root mean square) of their negative and
/// of their positive values, the two sides of the asymmetric generalised Gaussian they follow.
fn statistics(x: &[f64], w: usize, h: usize) -> [f64; PER_SCALE] {
    let n = x.len() as f64;
    let x2 = x.iter().map(|v| v * v).sum::<f64>() / n;
    let abs = x.iter().map(|v| v.abs()).sum::<f64>() / n;
    let x4 = x.iter().map(|v| v.powi(4)).sum::<f64>() / n;
    let mut out = [0.0; PER_SCALE];
    out[0] = (x2 + 1e-9).ln();
    out[1] = abs * abs / (x2 + 1e-9);
    out[2] = (x4 / (x2 * x2 + 1e-12) + 1e-9).ln();
    // (dx, dy) to the neighbour: right, down, down-right, down-left.
    let shifts: [(isize, usize); 4] = [(1, 0), (0, 1), (1, 1), (-1, 1)];
    for (d, (dx, dy)) in shifts.into_iter().enumerate() {
        // Sum of the products; sum of squares and count of the negative, then positive ones.
        // Branch-free: adding 0.0 leaves a sum as it was.
        let [mut sum, mut neg, mut n_neg, mut pos, mut n_pos] = [0.0f64; 5];
        for y in 0..h - dy {
            let (a, b) = (&x[y * w..(y + 1) * w], &x[(y + dy) * w..(y + dy + 1) * w]);
            let (a, b) = match dx {
                1 => (&a[..w - 1], &b[1..]),
                0 => (a, b),
                _ => (&a[1..], &b[..w - 1]),
            };
            for (a, b) in a.iter().zip(b) {
                let p = a * b;
                let (is_neg, is_pos) = (f64::from(u8::from(p < 0.0)), f64::from(u8::from(p > 0.0)));
                sum += p;
                neg += is_neg * p * p;
                n_neg += is_neg;
                pos += is_pos * p * p;
                n_pos += is_pos;
            }
        }
        let count = ((h - dy) * (w - dx.unsigned_abs())) as f64;
        let side = |s: f64, n: f64| {
            if n == 0.0 {
                EMPTY_SIDE
            } else {
                ((s / n).sqrt() + 1e-6).ln()
            }
        };
        out[3 + 3 * d] = sum / count;
        out[4 + 3 * d] = side(neg, n_neg);
        out[5 + 3 * d] = side(pos, n_pos);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formula image both sides compute (scripts/mscn_study.py's `features` on
    /// `np.fromfunction`): smooth gradients, a checker of blocks and a fine ripple.
    fn luma(w: usize, h: usize) -> Vec<f64> {
        let mut y = Vec::with_capacity(w * h);
        for r in 0..h {
            for c in 0..w {
                let (r, c) = (r as f64, c as f64);
                let block = if ((c / 20.0).floor() + (r / 15.0).floor()) % 2.0 == 0.0 {
                    60.0
                } else {
                    0.0
                };
                y.push(40.0 + 0.5 * c + 0.3 * r + block + 10.0 * (0.9 * c + 0.4 * r).sin());
            }
        }
        y
    }

    /// Matches scripts/mscn_study.py on the formula image (values printed by the script's
    /// `features` of the same luma, float64 both sides).
    #[test]
    fn matches_the_numpy_definition() {
        let got = features_of_luma(&luma(160, 120), 160, 120).expect("a textured image");
        let want = NUMPY;
        assert_eq!(got.len(), FEATURES);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() < 1e-9,
                "statistic {i}: {g} against numpy's {w}"
            );
        }
    }

    /// Uniform noise in -amp/2..amp/2 from a fixed seed.
    fn noise(n: usize, amp: f64) -> Vec<f64> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * amp
            })
            .collect()
    }

    fn distance(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Noise decorrelates neighbours; a blur correlates them.
    #[test]
    fn noise_and_blur_move_the_statistics_their_own_way() {
        let (w, h) = (64, 48);
        let clean = luma(w, h);
        let noisy: Vec<f64> = clean
            .iter()
            .zip(noise(w * h, 40.0))
            .map(|(v, n)| v + n)
            .collect();
        let blurred = blur(&noisy, w, h);
        let f = |y: &[f64]| features_of_luma(y, w, h).expect("textured");
        let (c, n, b) = (f(&clean), f(&noisy), f(&blurred));
        // The mean of horizontal neighbour products: a correlation.
        assert!(n[3] < c[3], "noise decorrelates: {} vs {}", n[3], c[3]);
        assert!(b[3] > n[3] + 0.05, "blur correlates: {} vs {}", b[3], n[3]);
    }

    /// MSCN divides by the local spread: on a textured scene (local spread well above the one
    /// grey level added to it) halving the contrast moves the statistics far less than noise of
    /// a tenth of the texture's amplitude, which is what makes them blind to level and contrast.
    #[test]
    fn a_contrast_change_moves_them_less_than_noise() {
        let (w, h) = (160, 120);
        let textured: Vec<f64> = luma(w, h)
            .iter()
            .zip(noise(w * h, 60.0))
            .map(|(v, n)| v + n)
            .collect();
        let darker: Vec<f64> = textured.iter().map(|v| 0.5 * v + 10.0).collect();
        let blurred = blur(&textured, w, h);
        let noisy: Vec<f64> = blurred
            .iter()
            .zip(noise(w * h, 6.0))
            .map(|(v, n)| v + n)
            .collect();
        let f = |y: &[f64]| features_of_luma(y, w, h).expect("textured");
        let by_contrast = distance(&f(&textured), &f(&darker));
        let by_noise = distance(&f(&blurred), &f(&noisy));
        assert!(
            by_contrast < 0.5 * by_noise,
            "contrast {by_contrast} against noise {by_noise}"
        );
    }

    /// Flat sky over flat road with one sharp horizon: too little texture to measure; the
    /// same view with the formula image's ripple on the road is measured.
    #[test]
    fn a_view_without_texture_carries_no_evidence() {
        let (w, h) = (160, 120);
        let flat: Vec<f64> = (0..w * h)
            .map(|i| if i / w < h / 3 { 200.0 } else { 40.0 })
            .collect();
        assert_eq!(features_of_luma(&flat, w, h), None);
        let road: Vec<f64> = flat
            .iter()
            .zip(luma(w, h))
            .enumerate()
            .map(|(i, (f, r))| if i / w < h / 3 { *f } else { r })
            .collect();
        assert!(features_of_luma(&road, w, h).is_some());
    }

    #[test]
    fn too_small_a_size_is_refused() {
        assert!(MscnExtractor::new(3, 120).is_err());
        assert!(MscnExtractor::new(160, 120).is_ok());
    }

    /// scripts/mscn_study.py's `statistics(mscn(y)) + statistics(mscn(halve(y)))` of the
    /// formula image, printed by NumPy in float64.
    #[rustfmt::skip]
    const NUMPY: [f64; FEATURES] = [-1.3651873316830139, 0.7750559291800786, 0.5314186394203712, 0.14400065929629788, -1.5431768677736737, -1.2497970809542622, 0.17513908209583443, -1.3099898576192726, -1.1671254508920648, 0.03325050840680834, -1.3988354101603655, -1.560588478479779, 0.12317449706264266, -1.236603135760242, -1.257414135707815, -1.008824521371855, 0.7647611016206275, 0.5683053794728825, 0.05140113824354886, -1.0491836395925815, -1.0683392080489391, 0.21034552841394613, -1.506392011099769, -0.8235065707326833, -0.11816701407078187, -0.8460869312863928, -1.4819176566386987, 0.1077363487346808, -1.2510871045116327, -0.9392569287230168];
}
