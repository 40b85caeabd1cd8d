//! How much fine detail a stream's frame has lost against the same stream's own recent past:
//! the flow detector's view of blur (motion blur, defocus, a smeared lens, haze). A single
//! frame's detail says little, since scenes differ in texture (a brick wall against an empty
//! floor), but a drop against the frames 4 to 8 s earlier is a change of the camera's
//! view rather than of the scene. The baseline is older than the change it has to see, so a
//! blur that sets in is compared with clear frames for as long as the baseline stays older
//! than its onset (docs/detector-experiments.md, "The detail a stream has lost").

use crate::flow::Gray;
use std::collections::VecDeque;

/// The baseline: the frames from `BASELINE_NEAR` to `BASELINE_FAR - 1` frames before the
/// current one (60 frames, 4 to 8 s back at 15 frames/s). Older than the alarm needs (a blur
/// is compared with clear frames for its first 60 frames at least, while half the baseline
/// is clear for 90), young enough that a stream measures it 5 s after it starts.
pub const BASELINE_NEAR: usize = 60;
pub const BASELINE_FAR: usize = 120;
/// Baseline frames needed before a loss is measured; until then the loss is 0 (none seen).
pub const BASELINE_MIN: usize = 20;

/// ln of the mean absolute difference between horizontal neighbours, and the same between
/// vertical neighbours, of a prepared frame: its fine detail in each direction. A blur along
/// one direction removes that direction's detail and leaves the other's.
pub fn detail_energy(g: &Gray) -> [f64; 2] {
    let (w, h) = (g.width, g.height);
    let (mut sx, mut sy) = (0.0f64, 0.0f64);
    for y in 0..h {
        let row = &g.data[y * w..(y + 1) * w];
        sx += row
            .windows(2)
            .map(|p| f64::from((p[1] - p[0]).abs()))
            .sum::<f64>();
        if y + 1 < h {
            let next = &g.data[(y + 1) * w..(y + 2) * w];
            sy += row
                .iter()
                .zip(next)
                .map(|(a, b)| f64::from((b - a).abs()))
                .sum::<f64>();
        }
    }
    let nx = (h * w.saturating_sub(1)).max(1) as f64;
    let ny = (w * h.saturating_sub(1)).max(1) as f64;
    // A flat frame (a covered lens) keeps a finite value: 1e-3 grey levels is no detail.
    [(sx / nx + 1e-3).ln(), (sy / ny + 1e-3).ln()]
}

/// One stream's detail over its last [`BASELINE_FAR`] frames.
#[derive(Debug, Clone, Default)]
pub struct DetailHistory {
    /// [`detail_energy`] of each frame, oldest first, the current one last.
    energy: VecDeque<[f64; 2]>,
}

impl DetailHistory {
    /// Forgets the past (a reset, or a gap in the stream).
    pub fn reset(&mut self) {
        self.energy.clear();
    }

    /// Adds a prepared frame and returns the detail it has lost: the larger over the two
    /// directions of (the baseline's median detail - the frame's), in ln units (0.7 is half the
    /// detail gone); 0 while fewer than [`BASELINE_MIN`] baseline frames are there.
    pub fn push(&mut self, frame: &Gray) -> f64 {
        if self.energy.len() == BASELINE_FAR {
            self.energy.pop_front();
        }
        let now = detail_energy(frame);
        self.energy.push_back(now);
        // Ages BASELINE_NEAR.. of the frames before this one: indices 0..=len - 1 - NEAR.
        let Some(end) = self.energy.len().checked_sub(BASELINE_NEAR) else {
            return 0.0;
        };
        if end < BASELINE_MIN {
            return 0.0;
        }
        (0..2)
            .map(|d| {
                let mut base: Vec<f64> = self.energy.iter().take(end).map(|e| e[d]).collect();
                base.sort_by(f64::total_cmp);
                let m = base.len() / 2;
                let median = if base.len() % 2 == 1 {
                    base[m]
                } else {
                    0.5 * (base[m - 1] + base[m])
                };
                median - now[d]
            })
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured frame: vertical stripes (horizontal detail) plus a weaker horizontal pattern.
    fn stripes(blur: usize) -> Gray {
        let (w, h): (usize, usize) = (40, 30);
        let raw: Vec<f32> = (0..h)
            .flat_map(|y| (0..w).map(move |x| ((x % 4) * 50 + (y % 6) * 10) as f32))
            .collect();
        // A horizontal box blur of `blur` pixels, as the generator's motion blur.
        let data = (0..h)
            .flat_map(|y| {
                let raw = &raw;
                (0..w).map(move |x| {
                    let lo = x.saturating_sub(blur / 2);
                    let hi = (lo + blur.max(1)).min(w);
                    raw[y * w + lo..y * w + hi].iter().sum::<f32>() / (hi - lo) as f32
                })
            })
            .collect();
        Gray {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn no_loss_is_measured_before_the_baseline_exists() {
        let mut h = DetailHistory::default();
        let blurred = stripes(8);
        for _ in 0..BASELINE_NEAR + BASELINE_MIN - 1 {
            assert_eq!(h.push(&stripes(1)), 0.0);
        }
        // The first frame with BASELINE_MIN baseline frames sees the loss.
        assert!(h.push(&blurred) > 0.5);
    }

    #[test]
    fn a_horizontal_blur_loses_horizontal_detail_and_the_loss_fades_as_the_baseline_fills() {
        let mut h = DetailHistory::default();
        for _ in 0..BASELINE_FAR {
            assert!(
                h.push(&stripes(1)).abs() < 1e-12,
                "a steady scene loses nothing"
            );
        }
        let lost = h.push(&stripes(8));
        let [ex, _] = detail_energy(&stripes(1));
        let [bx, _] = detail_energy(&stripes(8));
        assert!((lost - (ex - bx)).abs() < 1e-9, "{lost} vs {}", ex - bx);
        assert!(lost > 0.5, "{lost}");
        // Once the blur is older than the baseline's near edge and fills most of it, it is
        // the baseline: a drive-relative measure sees changes, not states (SAFETY.md).
        let mut last = lost;
        for _ in 0..BASELINE_FAR {
            last = h.push(&stripes(8));
        }
        assert!(last.abs() < 1e-12, "{last}");
        // Sharper than the baseline is not a loss.
        assert!(h.push(&stripes(1)) <= 1e-12);
    }

    #[test]
    fn reset_forgets_the_baseline() {
        let mut h = DetailHistory::default();
        for _ in 0..BASELINE_FAR {
            h.push(&stripes(1));
        }
        h.reset();
        assert_eq!(h.push(&stripes(8)), 0.0);
    }

    #[test]
    fn a_flat_frame_stays_finite() {
        let flat = Gray {
            width: 8,
            height: 8,
            data: vec![7.0; 64],
        };
        assert!(detail_energy(&flat).iter().all(|v| v.is_finite()));
    }
}
