//! The detail channel: how much fine structure a frame holds, octave by octave.
//!
//! The encoder sees a small area-filtered frame, and that filter averages away most of what
//! sensor noise and motion blur do to an image (docs/detector-experiments.md). The detail
//! features measure exactly what it removes: the mean absolute Laplacian of the frame's luma
//! at its fitted resolution and at each 2x2 halving, as logarithms. Natural images have a
//! falling spectrum, so the ratios between octaves are stable from scene to scene; noise
//! raises the finest octave against the coarser ones and blur lowers it. The Mahalanobis
//! score weighs them jointly with the posterior ([`crate::score::Reference`]), so how much
//! each octave may vary is learnt from the fit drives, not set by hand.

use crate::frame::Pixels;
use crate::preprocess::{
    ChannelOrder, Filter, InputSpec, Layout, Normalize, Preprocessor, ResizeMode,
};
use serde::{Deserialize, Serialize};

/// Where the detail features are measured (the manifest's `score.detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailSpec {
    /// Frames are area-resized to this size first (the fit drives' own size, so that they
    /// are measured as recorded; a camera of another size is measured at this one).
    pub width: u32,
    pub height: u32,
    /// Number of octaves: the finest is the frame at `width` x `height`, each next one a 2x2
    /// halving of the previous.
    pub octaves: u32,
    /// The finest octave is also measured on each cell of a `grid` x `grid` split of the frame
    /// (row by row), after the octaves: a local loss of detail (a smudged or wet lens, a
    /// partial occlusion) barely moves the whole frame's mean. 1: the whole frame only (every
    /// bundle before session 19).
    #[serde(default = "whole_frame", skip_serializing_if = "is_whole_frame")]
    pub grid: u32,
    /// The cells' features in increasing order rather than by position: how uneven the detail
    /// is across the frame, not where it lies, so that another layout (a new map's
    /// intersections) does not look new where a local loss still does (session 19).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sorted_cells: bool,
    /// After the octaves and cells, how the finest octave's detail is spread over four
    /// directions (0, 45, 90 and 135 degrees): `ln D_theta - mean ln D` for the first three,
    /// `D_theta` the mean absolute difference between neighbours along theta. A motion blur
    /// removes the detail along its own direction only, whichever direction that is, while a
    /// scene's balance of directions varies little; the absolute octaves confuse a blurred frame
    /// with a plain scene (session 34). false: every bundle before session 34.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub directions: bool,
}

/// The directional features' count: four directions, less one because they sum to zero.
pub const DIRECTION_FEATURES: usize = 3;

fn whole_frame() -> u32 {
    1
}

fn is_whole_frame(g: &u32) -> bool {
    *g == 1
}

/// Smallest octave side the Laplacian is taken on (it needs an interior).
const MIN_SIDE: u32 = 3;

/// A detail spec whose coarsest octave has no interior.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("score.detail: {octaves} octaves of {width}x{height} in a {grid}x{grid} grid leave an octave or a cell smaller than {MIN_SIDE}x{MIN_SIDE}: use fewer octaves, a coarser grid or a larger size")]
pub struct DetailError {
    pub octaves: u32,
    pub width: u32,
    pub height: u32,
    pub grid: u32,
}
/// Energy floor before the logarithm: a flat frame gives a large negative, finite feature.
const FLOOR: f64 = 1e-6;

impl DetailSpec {
    /// The default channel at a given frame size: three octaves.
    pub fn at(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            octaves: 3,
            grid: 1,
            sorted_cells: false,
            directions: false,
        }
    }

    /// How many features it gives: one per octave, then one per grid cell (grid > 1), then
    /// [`DIRECTION_FEATURES`] with `directions`.
    pub fn features(&self) -> usize {
        let cells = if self.grid > 1 {
            self.grid * self.grid
        } else {
            0
        };
        let directions = if self.directions {
            DIRECTION_FEATURES
        } else {
            0
        };
        (self.octaves + cells) as usize + directions
    }

    /// Checks that every octave keeps an interior.
    pub fn validate(&self) -> Result<(), DetailError> {
        let shrink = 1u32
            .checked_shl(self.octaves.saturating_sub(1))
            .unwrap_or(0);
        if self.octaves == 0
            || shrink == 0
            || self.width / shrink < MIN_SIDE
            || self.height / shrink < MIN_SIDE
            || self.grid == 0
            || self.width / self.grid < MIN_SIDE
            || self.height / self.grid < MIN_SIDE
        {
            return Err(DetailError {
                octaves: self.octaves,
                width: self.width,
                height: self.height,
                grid: self.grid,
            });
        }
        Ok(())
    }
}

/// A preprocessor to BT.601 luma in [0, 1], area-resized to `width` x `height`.
pub(crate) fn luma_at(width: u32, height: u32) -> Preprocessor {
    Preprocessor::new(InputSpec {
        width,
        height,
        channel_order: ChannelOrder::Gray,
        layout: Layout::Nchw,
        normalize: Normalize {
            mean: vec![0.0],
            std: vec![1.0],
        },
        resize: ResizeMode::Stretch,
        filter: Filter::Area,
    })
}

/// Computes [`DetailSpec`] features frame after frame, reusing its buffers.
pub struct DetailExtractor {
    spec: DetailSpec,
    luma: Preprocessor,
    buf: Vec<f32>,
}

impl DetailExtractor {
    pub fn new(spec: DetailSpec) -> Self {
        Self {
            luma: luma_at(spec.width, spec.height),
            spec,
            buf: vec![],
        }
    }

    pub fn spec(&self) -> &DetailSpec {
        &self.spec
    }

    /// The frame's `D_theta` at the spec's size (the finest octave), for 0, 45, 90 and 135
    /// degrees ([`crate::detection::direction`] scores them).
    pub fn direction_means(&mut self, px: Pixels<'_>) -> [f64; 4] {
        let g = self.luma(px);
        direction_means(&g, self.spec.width as usize, self.spec.height as usize)
    }

    /// [`Self::features`] and [`Self::direction_means`] from one conversion to luma: the
    /// direction branch measures at the detail channel's size, and the conversion (an area
    /// filter from the camera's resolution) is most of either's cost.
    pub fn features_and_direction_means(&mut self, px: Pixels<'_>) -> (Vec<f64>, [f64; 4]) {
        let g = self.luma(px);
        let means = direction_means(&g, self.spec.width as usize, self.spec.height as usize);
        (self.features_of(g), means)
    }

    /// The frame as luma in [0, 1] at the spec's size, row by row.
    fn luma(&mut self, px: Pixels<'_>) -> Vec<f64> {
        let (w, h) = (self.spec.width as usize, self.spec.height as usize);
        self.buf.resize(w * h, 0.0);
        self.luma.run_into(px, &mut self.buf);
        self.buf.iter().map(|&v| f64::from(v)).collect()
    }

    /// `ln E_k` for each octave k, `E_k` the mean absolute 4-neighbour Laplacian of the luma
    /// (in [0, 1]) over the octave's interior; then, with a grid, the same at the finest octave
    /// over each cell's interior pixels; then, with `directions`, the finest octave's
    /// [`direction_balance`].
    pub fn features(&mut self, px: Pixels<'_>) -> Vec<f64> {
        let g = self.luma(px);
        self.features_of(g)
    }

    /// [`Self::features`] of a frame already converted by [`Self::luma`].
    fn features_of(&self, mut g: Vec<f64>) -> Vec<f64> {
        let (mut w, mut h) = (self.spec.width as usize, self.spec.height as usize);
        let mut out = Vec::with_capacity(self.spec.features());
        let directions = self.spec.directions.then(|| direction_balance(&g, w, h));
        let mut cells = vec![];
        for k in 0..self.spec.octaves {
            if k > 0 {
                (g, w, h) = halve(&g, w, h);
            }
            // The grid's cells come from the same pass as the finest octave.
            let grid = if k == 0 { self.spec.grid as usize } else { 1 };
            let (whole, c) = laplacian_energy(&g, w, h, grid);
            if k == 0 {
                cells = c;
            }
            out.push(whole.max(FLOOR).ln());
        }
        if self.spec.sorted_cells {
            cells.sort_by(f64::total_cmp);
        }
        out.extend(cells.iter().map(|e| e.max(FLOOR).ln()));
        out.extend(directions.into_iter().flatten());
        out
    }
}

/// `ln D_theta - mean ln D` for theta = 0, 45 and 90 degrees (the fourth, 135, is minus their
/// sum), `D_theta` the mean absolute difference between a pixel and its neighbour along theta,
/// the diagonals' divided by sqrt 2 (their neighbours are that much further apart).
fn direction_balance(g: &[f64], w: usize, h: usize) -> [f64; DIRECTION_FEATURES] {
    if w < 2 || h < 2 {
        return [0.0; DIRECTION_FEATURES];
    }
    let l = direction_means(g, w, h).map(|d| d.max(FLOOR).ln());
    let mean = l.iter().sum::<f64>() / 4.0;
    [l[0] - mean, l[1] - mean, l[2] - mean]
}

/// `D_theta` for theta = 0, 45, 90 and 135 degrees: the mean absolute difference between a
/// pixel and its neighbour along theta, the diagonals' divided by sqrt 2. Zero for an image
/// narrower or lower than 2 pixels.
fn direction_means(g: &[f64], w: usize, h: usize) -> [f64; 4] {
    if w < 2 || h < 2 {
        return [0.0; 4];
    }
    let mut d = [0.0f64; 4];
    for y in 0..h {
        let row = &g[y * w..(y + 1) * w];
        for x in 1..w {
            d[0] += (row[x] - row[x - 1]).abs();
        }
        if y + 1 < h {
            let next = &g[(y + 1) * w..(y + 2) * w];
            for x in 0..w {
                d[2] += (next[x] - row[x]).abs();
            }
            for x in 1..w {
                d[1] += (next[x] - row[x - 1]).abs();
                d[3] += (next[x - 1] - row[x]).abs();
            }
        }
    }
    let diag = ((w - 1) * (h - 1)) as f64 * std::f64::consts::SQRT_2;
    [
        d[0] / ((w - 1) * h) as f64,
        d[1] / diag,
        d[2] / (w * (h - 1)) as f64,
        d[3] / diag,
    ]
}

/// Mean absolute 4-neighbour Laplacian over the interior of a `w` x `h` image and, with
/// `grid` > 1, over the interior pixels of each cell of a `grid` x `grid` split, row by row
/// (cells at least 3x3, so each has interior; no cells for `grid` 1).
fn laplacian_energy(g: &[f64], w: usize, h: usize, grid: usize) -> (f64, Vec<f64>) {
    let cells = if grid > 1 { grid * grid } else { 0 };
    if w < 3 || h < 3 {
        return (0.0, vec![0.0; cells]);
    }
    let mut sum = 0.0;
    let (mut cell_sum, mut cell_n) = (vec![0.0; cells], vec![0usize; cells]);
    for y in 1..h - 1 {
        let (up, row, down) = (
            &g[(y - 1) * w..y * w],
            &g[y * w..(y + 1) * w],
            &g[(y + 1) * w..(y + 2) * w],
        );
        let cy = y * grid / h;
        for x in 1..w - 1 {
            let a = (4.0 * row[x] - up[x] - down[x] - row[x - 1] - row[x + 1]).abs();
            sum += a;
            if cells > 0 {
                let c = cy * grid + x * grid / w;
                cell_sum[c] += a;
                cell_n[c] += 1;
            }
        }
    }
    let per_cell = cell_sum
        .iter()
        .zip(cell_n)
        .map(|(s, n)| s / n.max(1) as f64)
        .collect();
    (sum / ((w - 2) * (h - 2)) as f64, per_cell)
}

/// 2x2 area halving (an odd last row or column is dropped).
pub(crate) fn halve(g: &[f64], w: usize, h: usize) -> (Vec<f64>, usize, usize) {
    let (hw, hh) = (w / 2, h / 2);
    let mut out = Vec::with_capacity(hw * hh);
    for y in 0..hh {
        let (a, b) = (&g[2 * y * w..], &g[(2 * y + 1) * w..]);
        for x in 0..hw {
            out.push(0.25 * (a[2 * x] + a[2 * x + 1] + b[2 * x] + b[2 * x + 1]));
        }
    }
    (out, hw, hh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};
    use rand::{Rng, SeedableRng};

    /// A smooth scene with edges: gradients plus a few rectangles.
    fn scene() -> RgbImage {
        RgbImage::from_fn(160, 120, |x, y| {
            let base = (x + y) as u8;
            let block = if (x / 20 + y / 15) % 2 == 0 { 60 } else { 0 };
            Rgb([base.saturating_add(block), base / 2 + block, 200 - base / 2])
        })
    }

    fn features(img: &RgbImage) -> Vec<f64> {
        DetailExtractor::new(DetailSpec::at(160, 120)).features(img.into())
    }

    #[test]
    fn noise_raises_the_finest_octave_against_the_next_and_blur_lowers_it() {
        let clean = scene();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut noisy = clean.clone();
        for p in noisy.pixels_mut() {
            for c in &mut p.0 {
                *c = (f64::from(*c) + rng.random_range(-25.0..25.0)).clamp(0.0, 255.0) as u8;
            }
        }
        let blurred = image::imageops::blur(&clean, 2.0);
        let slope = |f: &[f64]| f[0] - f[1];
        let (c, n, b) = (features(&clean), features(&noisy), features(&blurred));
        assert_eq!(c.len(), 3);
        assert!(slope(&n) > slope(&c) + 0.3, "noise: {n:?} against {c:?}");
        assert!(slope(&b) < slope(&c) - 0.3, "blur: {b:?} against {c:?}");
    }

    #[test]
    fn at_its_own_size_the_finest_octave_is_the_luma_of_the_frame_itself() {
        let img = scene();
        let luma: Vec<f64> = img
            .pixels()
            .map(|p| {
                (0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
                    / 255.0
            })
            .collect();
        let want = laplacian_energy(&luma, 160, 120, 1).0.ln();
        assert!(
            (features(&img)[0] - want).abs() < 1e-4,
            "{} against {want}",
            features(&img)[0]
        );
    }

    #[test]
    fn a_local_blur_shows_in_its_cell_and_hardly_in_the_whole_frame() {
        let spec = DetailSpec {
            grid: 3,
            ..DetailSpec::at(160, 120)
        };
        assert_eq!(spec.features(), 12);
        let clean = scene();
        // Blur the top-left cell only (a smudge on the lens there).
        let blurred_patch = image::imageops::blur(
            &image::imageops::crop_imm(&clean, 0, 0, 53, 40).to_image(),
            3.0,
        );
        let mut smudged = clean.clone();
        image::imageops::replace(&mut smudged, &blurred_patch, 0, 0);
        let mut x = DetailExtractor::new(spec);
        let (c, s) = (x.features((&clean).into()), x.features((&smudged).into()));
        assert_eq!((c.len(), s.len()), (12, 12));
        // Octaves first, as without a grid; the smudged cell loses far more than the frame.
        assert_eq!(c[..3], features(&clean)[..]);
        let (cell, whole) = (c[3] - s[3], c[0] - s[0]);
        assert!(
            cell > 0.5 && cell > 3.0 * whole,
            "cell {cell}, whole frame {whole}"
        );
        // Cells away from the smudge keep their detail.
        assert!((c[11] - s[11]).abs() < 1e-9, "{} {}", c[11], s[11]);
        // Sorted, the same values in increasing order: the smudged cell is now the least.
        let mut sorted = DetailExtractor::new(DetailSpec {
            sorted_cells: true,
            ..spec
        });
        let (cs, ss) = (
            sorted.features((&clean).into()),
            sorted.features((&smudged).into()),
        );
        let mut want = s[3..].to_vec();
        want.sort_by(f64::total_cmp);
        assert_eq!(ss[3..], want[..]);
        assert!(cs[3..].windows(2).all(|p| p[0] <= p[1]));
        assert!(ss[3] < cs[3] - 0.5, "{} {}", ss[3], cs[3]);
        assert!(DetailSpec { grid: 0, ..spec }.validate().is_err());
        assert!(DetailSpec { grid: 50, ..spec }.validate().is_err());
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn a_motion_blur_lowers_the_detail_along_its_own_direction() {
        let spec = DetailSpec {
            directions: true,
            ..DetailSpec::at(160, 120)
        };
        assert_eq!(spec.features(), 3 + DIRECTION_FEATURES);
        let mut x = DetailExtractor::new(spec);
        // Texture with detail in every direction: seeded noise, lightly smoothed.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let textured = image::imageops::blur(
            &RgbImage::from_fn(160, 120, |_, _| {
                let v = rng.random_range(0..=255u8);
                Rgb([v, v, v])
            }),
            0.7,
        );
        // A box blur of 9 pixels along one axis, as a camera moving that way would leave.
        let smear = |dx: i64, dy: i64| {
            RgbImage::from_fn(160, 120, |px, py| {
                let mut s = 0u32;
                for k in -4i64..=4 {
                    let qx = (px as i64 + k * dx).clamp(0, 159) as u32;
                    let qy = (py as i64 + k * dy).clamp(0, 119) as u32;
                    s += u32::from(textured.get_pixel(qx, qy)[0]);
                }
                let v = (s / 9) as u8;
                Rgb([v, v, v])
            })
        };
        let c = x.features((&textured).into());
        let (hz, vt) = (
            x.features((&smear(1, 0)).into()),
            x.features((&smear(0, 1)).into()),
        );
        // The octaves are unchanged in layout; the directional features follow them.
        assert_eq!(c[..3], features(&textured)[..]);
        let (c, hz, vt) = (&c[3..], &hz[3..], &vt[3..]);
        // Untouched texture is balanced; each blur leaves its own direction the weakest.
        assert!(c.iter().all(|v| v.abs() < 0.1), "{c:?}");
        assert!(
            hz[0] < -0.5 && hz[0] < hz[2] - 1.0,
            "horizontal blur: {hz:?}"
        );
        assert!(vt[2] < -0.5 && vt[2] < vt[0] - 1.0, "vertical blur: {vt:?}");
    }

    #[test]
    fn one_luma_pass_gives_what_two_give() {
        // The score's detail channel (3x3 grid) and the direction branch at its size, from a
        // frame larger than both, so the area filter does real work.
        let frame = RgbImage::from_fn(640, 480, |x, y| {
            let v = ((x * 7 + y * 13) % 251) as u8;
            Rgb([v, v.wrapping_mul(3), 255 - v])
        });
        let spec = DetailSpec {
            grid: 3,
            ..DetailSpec::at(160, 120)
        };
        let mut x = DetailExtractor::new(spec);
        let (features, means) = x.features_and_direction_means((&frame).into());
        assert_eq!(
            features,
            DetailExtractor::new(spec).features((&frame).into())
        );
        let alone = DetailExtractor::new(DetailSpec::at(160, 120)).direction_means((&frame).into());
        assert_eq!(means, alone);
        assert!(means.iter().all(|d| *d > 0.0), "{means:?}");
    }

    #[test]
    fn a_flat_frame_gives_finite_features_and_tiny_sizes_are_refused() {
        let flat = RgbImage::from_pixel(160, 120, Rgb([90, 90, 90]));
        assert!(features(&flat).iter().all(|v| v.is_finite()));
        let mut directions = DetailExtractor::new(DetailSpec {
            directions: true,
            ..DetailSpec::at(160, 120)
        });
        assert!(directions
            .features((&flat).into())
            .iter()
            .all(|v| v.is_finite()));
        assert!(DetailSpec::at(160, 120).validate().is_ok());
        assert!(DetailSpec::at(8, 8).validate().is_err());
        assert!(DetailSpec {
            octaves: 0,
            ..DetailSpec::at(160, 120)
        }
        .validate()
        .is_err());
        assert!(DetailSpec {
            octaves: 40,
            ..DetailSpec::at(160, 120)
        }
        .validate()
        .is_err());
    }
}
