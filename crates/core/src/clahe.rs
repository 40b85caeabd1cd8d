//! Contrast-limited adaptive histogram equalisation of an 8-bit greyscale frame, as OpenCV's
//! `createCLAHE(clip, (tx, ty)).apply` computes it: per-tile histograms clipped at
//! `clip * tile area / 256` with the excess redistributed, tile lookup tables blended
//! bilinearly. The optical-flow detector's reference preprocessing equalises every frame this
//! way; `test/test_flow_parity.py` checks it against OpenCV.

use crate::flow::reflect101;

/// Equalises `img` (`width` x `height`, row-major) with `tiles` = (columns, rows) of tiles.
pub fn clahe(img: &[u8], width: usize, height: usize, clip: f64, tiles: (usize, usize)) -> Vec<u8> {
    let (tx, ty) = tiles;
    assert!(tx >= 1 && ty >= 1 && img.len() == width * height && width > 0 && height > 0);
    // A frame that does not split evenly is extended right and down (BORDER_REFLECT_101) for
    // the histograms only, by OpenCV's rule: tiles - (size % tiles) on both sides, even on a
    // side that did split evenly (a whole extra tile there).
    let (ew, eh) = if width.is_multiple_of(tx) && height.is_multiple_of(ty) {
        (width, height)
    } else {
        (width + tx - width % tx, height + ty - height % ty)
    };
    let at = |x: usize, y: usize| {
        img[reflect101(y as isize, height) * width + reflect101(x as isize, width)]
    };
    let (tw, th) = (ew / tx, eh / ty);
    let area = tw * th;
    let lut_scale = 255.0f32 / area as f32;
    let limit = if clip > 0.0 {
        ((clip * area as f64 / 256.0) as usize).max(1)
    } else {
        0
    };
    let mut luts = vec![[0u8; 256]; tx * ty];
    for (k, lut) in luts.iter_mut().enumerate() {
        let (cx, cy) = (k % tx, k / tx);
        let mut hist = [0usize; 256];
        for y in cy * th..(cy + 1) * th {
            for x in cx * tw..(cx + 1) * tw {
                hist[at(x, y) as usize] += 1;
            }
        }
        if limit > 0 {
            let mut clipped = 0;
            for h in hist.iter_mut() {
                if *h > limit {
                    clipped += *h - limit;
                    *h = limit;
                }
            }
            let batch = clipped / 256;
            let mut residual = clipped - batch * 256;
            hist.iter_mut().for_each(|h| *h += batch);
            if let Some(step) = 256usize.checked_div(residual) {
                let step = step.max(1);
                let mut i = 0;
                while i < 256 && residual > 0 {
                    hist[i] += 1;
                    i += step;
                    residual -= 1;
                }
            }
        }
        let mut sum = 0usize;
        for (i, h) in hist.iter().enumerate() {
            sum += h;
            lut[i] = saturate_u8(sum as f32 * lut_scale);
        }
    }
    // Blend the four nearest tiles' tables, weights from the pixel's position between centres.
    let taps = |n: usize, size: usize, tiles: usize| -> Vec<(usize, usize, f32)> {
        let inv = 1.0f32 / size as f32;
        (0..n)
            .map(|i| {
                let f = i as f32 * inv - 0.5;
                let t1 = f.floor() as isize;
                let a = f - t1 as f32;
                let t2 = (t1 + 1).min(tiles as isize - 1) as usize;
                (t1.max(0) as usize, t2, a)
            })
            .collect()
    };
    let xs = taps(width, tw, tx);
    let ys = taps(height, th, ty);
    let mut out = vec![0u8; width * height];
    for (y, &(ty1, ty2, ya)) in ys.iter().enumerate() {
        let ya1 = 1.0 - ya;
        for (x, &(tx1, tx2, xa)) in xs.iter().enumerate() {
            let v = img[y * width + x] as usize;
            let xa1 = 1.0 - xa;
            let (p1, p2) = (&luts[ty1 * tx..], &luts[ty2 * tx..]);
            let res = (p1[tx1][v] as f32 * xa1 + p1[tx2][v] as f32 * xa) * ya1
                + (p2[tx1][v] as f32 * xa1 + p2[tx2][v] as f32 * xa) * ya;
            out[y * width + x] = saturate_u8(res);
        }
    }
    out
}

/// OpenCV's `saturate_cast<uchar>(float)`: round half to even, clamp to 0..=255.
pub(crate) fn saturate_u8(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_frame_stays_flat_and_contrast_is_stretched() {
        let flat = vec![100u8; 64 * 48];
        let out = clahe(&flat, 64, 48, 2.0, (8, 8));
        assert!(out.iter().all(|&v| v == out[0]));
        // A low-contrast pattern (grey levels 100..=115) is spread over a wider range.
        let low: Vec<u8> = (0..64 * 48).map(|i| 100 + ((i * 7) % 16) as u8).collect();
        let out = clahe(&low, 64, 48, 2.0, (8, 8));
        let (lo, hi) = (out.iter().min().unwrap(), out.iter().max().unwrap());
        assert!(hi - lo > 15, "{lo}..{hi}");
    }

    #[test]
    fn frames_that_do_not_split_evenly_are_handled() {
        let img: Vec<u8> = (0..152 * 113).map(|i| (i * 7 % 251) as u8).collect();
        let out = clahe(&img, 152, 113, 2.0, (8, 8));
        assert_eq!(out.len(), img.len());
    }
}
