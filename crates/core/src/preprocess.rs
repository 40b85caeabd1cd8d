//! Turns a decoded RGB frame into the detector's input tensor, exactly as the bundle's input
//! spec says. The node, the offline tools and training all call [`preprocess`], so a detector
//! sees the same numbers in the field as it saw when it was trained and calibrated.

use crate::frame::Pixels;
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// How a frame becomes the encoder's input. Stored in the bundle manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Model input width and height in pixels.
    pub width: u32,
    pub height: u32,
    /// Channel order of the model input: `rgb`, `bgr` (3 channels) or `gray` (1 channel,
    /// ITU-R BT.601 luma).
    #[serde(default)]
    pub channel_order: ChannelOrder,
    /// Tensor layout: `nchw` (PyTorch, ONNX default) or `nhwc`.
    #[serde(default)]
    pub layout: Layout,
    /// Per-channel normalisation applied after scaling pixels to [0, 1].
    #[serde(default)]
    pub normalize: Normalize,
    /// `stretch` the whole frame to the input size, or `center_crop` the largest centred
    /// region with the input's aspect ratio first.
    #[serde(default)]
    pub resize: ResizeMode,
    /// Resampling filter: `bilinear` (half-pixel centres, as PyTorch `align_corners=False` and
    /// OpenCV `INTER_LINEAR`) or `area` (box filter over the covered source area, as OpenCV
    /// `INTER_AREA` when downscaling).
    #[serde(default)]
    pub filter: Filter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
    Gray,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    #[default]
    Stretch,
    CenterCrop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    #[default]
    Bilinear,
    Area,
}

impl std::str::FromStr for Filter {
    type Err = InputSpecError;
    fn from_str(s: &str) -> Result<Self, InputSpecError> {
        match s {
            "area" => Ok(Self::Area),
            "bilinear" => Ok(Self::Bilinear),
            _ => Err(InputSpecError(format!(
                "unknown filter '{s}' (expected area or bilinear)"
            ))),
        }
    }
}

/// `value = (pixel / 255 - mean[c]) / std[c]`, channels in the model's channel order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Default for Normalize {
    /// Plain [0, 1] scaling, what a BCE-trained VAE expects.
    fn default() -> Self {
        Self {
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        }
    }
}

/// Says which field of an input spec is unusable and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InputSpecError(pub String);

impl InputSpec {
    pub fn channels(&self) -> usize {
        match self.channel_order {
            ChannelOrder::Gray => 1,
            ChannelOrder::Rgb | ChannelOrder::Bgr => 3,
        }
    }

    /// The input tensor shape, batch of one.
    pub fn shape(&self) -> [usize; 4] {
        let (c, h, w) = (self.channels(), self.height as usize, self.width as usize);
        match self.layout {
            Layout::Nchw => [1, c, h, w],
            Layout::Nhwc => [1, h, w, c],
        }
    }

    /// Checks the spec is usable; the message says which field is wrong.
    pub fn validate(&self) -> Result<(), InputSpecError> {
        if self.width == 0 || self.height == 0 {
            return Err(InputSpecError(format!(
                "input size {}x{} must be positive",
                self.width, self.height
            )));
        }
        let c = self.channels();
        // A 1-channel spec may give one value or three (the same for each channel).
        for (name, v) in [("mean", &self.normalize.mean), ("std", &self.normalize.std)] {
            if v.len() != c && !(c == 1 && v.len() == 3) {
                return Err(InputSpecError(format!(
                    "normalize.{name} has {} values, the input has {c} channel(s)",
                    v.len()
                )));
            }
        }
        if self
            .normalize
            .std
            .iter()
            .any(|s| !s.is_finite() || *s == 0.0)
        {
            return Err(InputSpecError(
                "normalize.std values must be finite and non-zero".into(),
            ));
        }
        Ok(())
    }
}

/// Preprocesses one frame into a tensor of [`InputSpec::shape`], flattened row-major.
///
/// For one-off frames (training sets, files); a stream of frames goes through a
/// [`Preprocessor`], which keeps its resampling plan and buffers from frame to frame.
pub fn preprocess(img: &RgbImage, spec: &InputSpec) -> Vec<f32> {
    Preprocessor::new(spec.clone()).run(img.into())
}

/// Resamples, converts and normalises frames for one input spec in a single pass over the
/// source bytes, read in place (a raw message buffer of any accepted encoding, or a decoded
/// image).
///
/// The filter is separable and linear, so it runs vertically first: each output row is a
/// weighted sum of whole source rows (one multiply-add per source byte, which vectorises),
/// and the horizontal pass and the channel selection then run on `height` accumulated rows
/// only. The result equals [`reference::preprocess`] up to float rounding (tested: within
/// 1e-5 of the [0, 1] pixel scale).
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: InputSpec,
    plan: Option<Plan>,
    /// `height` accumulated rows of the crop's bytes.
    rows: Vec<f32>,
    /// Integer sums of equally weighted source rows.
    sums: Vec<u16>,
}

/// The resampling plan for one source size.
#[derive(Debug, Clone)]
struct Plan {
    source: (u32, u32),
    /// First cropped column, in pixels.
    crop_x: usize,
    crop_w: usize,
    x: Vec<Tap>,
    y: Vec<Tap>,
}

impl Preprocessor {
    pub fn new(spec: InputSpec) -> Self {
        Self {
            spec,
            plan: None,
            rows: vec![],
            sums: vec![],
        }
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// The input tensor for one frame. Frames of zero size give a zero tensor; the frame
    /// checks reject them before they get here.
    pub fn run(&mut self, px: Pixels<'_>) -> Vec<f32> {
        let mut out = vec![0f32; self.spec.shape().iter().product()];
        self.run_into(px, &mut out);
        out
    }

    /// As [`Self::run`], into a tensor of [`InputSpec::shape`] (flattened).
    ///
    /// # Panics
    /// If `out` is not of the input's size.
    pub fn run_into(&mut self, px: Pixels<'_>, out: &mut [f32]) {
        assert_eq!(out.len(), self.spec.shape().iter().product::<usize>());
        if px.width() == 0 || px.height() == 0 {
            out.fill(0.0);
            return;
        }
        let spec = &self.spec;
        let plan = match &self.plan {
            Some(p) if p.source == (px.width(), px.height()) => p,
            _ => self.plan.insert(Plan::new(px.width(), px.height(), spec)),
        };
        let buffers = (&mut self.rows, &mut self.sums);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { resample_avx2(plan, spec, buffers, px, out) };
            return;
        }
        resample(plan, spec, buffers, px, out);
    }
}

/// [`resample`] compiled for AVX2: the same operations in the same order (so the same
/// results), on vectors twice as wide as x86-64's baseline SSE2. aarch64 (Jetson) has NEON in
/// its baseline and needs no such copy.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resample_avx2(
    plan: &Plan,
    spec: &InputSpec,
    buffers: (&mut Vec<f32>, &mut Vec<u16>),
    px: Pixels<'_>,
    out: &mut [f32],
) {
    resample(plan, spec, buffers, px, out)
}

/// The two passes of [`Preprocessor::run_into`] for one frame and its plan.
#[inline(always)]
fn resample(
    plan: &Plan,
    spec: &InputSpec,
    (rows, sums): (&mut Vec<f32>, &mut Vec<u16>),
    px: Pixels<'_>,
    out: &mut [f32],
) {
    let bpp = px.encoding().bytes_per_pixel();
    let (dw, dh) = (spec.width as usize, spec.height as usize);
    let row_len = plan.crop_w * bpp;
    let x0 = plan.crop_x * bpp;

    // Vertical pass: each output row is a weighted sum of whole source rows. Runs of rows
    // with the same weight (the inside of an area filter's box) are summed as integers
    // first and multiplied once: a downscale by 7.5 then costs three float passes per
    // output row instead of eight or nine.
    rows.resize(dh * row_len, 0.0);
    sums.resize(row_len, 0);
    for (tap, acc) in plan.y.iter().zip(rows.chunks_exact_mut(row_len)) {
        let row = |k: usize| &px.row(tap.start + k)[x0..][..row_len];
        let mut k = 0;
        while k < tap.weights.len() {
            let w = tap.weights[k];
            // u16 holds the sum of up to 257 rows of u8.
            let run = tap.weights[k..]
                .iter()
                .take(257)
                .take_while(|&&v| v == w)
                .count();
            if run == 1 {
                add_scaled(acc, row(k).iter().map(|&s| f32::from(s)), w, k == 0);
            } else {
                sums.iter_mut()
                    .zip(row(k))
                    .for_each(|(t, &s)| *t = u16::from(s));
                for j in k + 1..k + run {
                    sums.iter_mut()
                        .zip(row(j))
                        .for_each(|(t, &s)| *t += u16::from(s));
                }
                add_scaled(acc, sums.iter().map(|&s| f32::from(s)), w, k == 0);
            }
            k += run;
        }
    }

    // Horizontal pass, channel selection and normalisation, written in the model's layout.
    let [r, g, b] = px.rgb_offsets();
    let c = spec.channels();
    let (scale, bias) = normalisation(spec);
    for (y, acc) in rows.chunks_exact(row_len).enumerate() {
        for (x, tap) in plan.x.iter().enumerate() {
            let mut rgb = [0f32; 3];
            let pixels = acc[tap.start * bpp..].chunks_exact(bpp);
            for (&w, p) in tap.weights.iter().zip(pixels) {
                rgb[0] += w * p[r];
                rgb[1] += w * p[g];
                rgb[2] += w * p[b];
            }
            let values = ordered(rgb, spec.channel_order);
            let i = y * dw + x;
            for ch in 0..c {
                let idx = match spec.layout {
                    Layout::Nchw => ch * dh * dw + i,
                    Layout::Nhwc => i * c + ch,
                };
                out[idx] = values[ch] * scale[ch] + bias[ch];
            }
        }
    }
}

impl Plan {
    fn new(width: u32, height: u32, spec: &InputSpec) -> Self {
        let (crop_x, crop_y, crop_w, crop_h) = crop_region(width, height, spec);
        Self {
            source: (width, height),
            crop_x: crop_x as usize,
            crop_w: crop_w as usize,
            // Columns relative to the crop (the vertical pass keeps only its bytes), rows
            // absolute.
            x: axis_weights(0, crop_w as usize, spec.width as usize, spec.filter),
            y: axis_weights(
                crop_y as usize,
                crop_h as usize,
                spec.height as usize,
                spec.filter,
            ),
        }
    }
}

/// `acc = w * values` (`first`) or `acc += w * values`, element by element.
fn add_scaled(acc: &mut [f32], values: impl Iterator<Item = f32>, w: f32, first: bool) {
    if first {
        acc.iter_mut().zip(values).for_each(|(a, v)| *a = w * v);
    } else {
        acc.iter_mut().zip(values).for_each(|(a, v)| *a += w * v);
    }
}

/// `value * scale + bias` per model channel, equal to `(value / 255 - mean) / std`.
pub(crate) fn normalisation(spec: &InputSpec) -> ([f32; 3], [f32; 3]) {
    let c = spec.channels();
    let (mut scale, mut bias) = ([0f32; 3], [0f32; 3]);
    for ch in 0..c {
        let k = if spec.normalize.mean.len() == c {
            ch
        } else {
            0
        };
        let (m, s) = (spec.normalize.mean[k], spec.normalize.std[k]);
        scale[ch] = 1.0 / (255.0 * s);
        bias[ch] = -m / s;
    }
    (scale, bias)
}

/// RGB values in the model's channel order (gray: ITU-R BT.601 luma first).
fn ordered(p: [f32; 3], order: ChannelOrder) -> [f32; 3] {
    match order {
        ChannelOrder::Rgb => p,
        ChannelOrder::Bgr => [p[2], p[1], p[0]],
        ChannelOrder::Gray => [0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2], 0.0, 0.0],
    }
}

/// The straightforward implementation (decoded RGB, horizontal then vertical pass, one pixel
/// at a time) that [`Preprocessor`] is checked against, and the baseline `vae-ood bench`
/// measures it against. Not for production use: it is several times slower.
pub mod reference {
    use super::*;

    pub fn preprocess(img: &RgbImage, spec: &InputSpec) -> Vec<f32> {
        let (sw, sh) = img.dimensions();
        let (crop_x, crop_y, crop_w, crop_h) = crop_region(sw, sh, spec);
        let (dw, dh) = (spec.width as usize, spec.height as usize);
        let wx = axis_weights(crop_x as usize, crop_w as usize, dw, spec.filter);
        let wy = axis_weights(crop_y as usize, crop_h as usize, dh, spec.filter);

        let src = img.as_raw();
        let row_stride = sw as usize * 3;
        let (y_lo, y_hi) = (
            wy.first().map_or(0, |t| t.start),
            wy.last().map_or(0, |t| t.start + t.weights.len()),
        );
        let mut tmp = vec![0f32; (y_hi - y_lo) * dw * 3];
        for y in y_lo..y_hi {
            let row = &src[y * row_stride..][..row_stride];
            let out = &mut tmp[(y - y_lo) * dw * 3..][..dw * 3];
            for (x, tap) in wx.iter().enumerate() {
                let mut acc = [0f32; 3];
                for (k, w) in tap.weights.iter().enumerate() {
                    let p = &row[(tap.start + k) * 3..][..3];
                    for c in 0..3 {
                        acc[c] += w * f32::from(p[c]);
                    }
                }
                out[x * 3..][..3].copy_from_slice(&acc);
            }
        }
        let mut rgb = vec![0f32; dh * dw * 3];
        for (y, tap) in wy.iter().enumerate() {
            let out = &mut rgb[y * dw * 3..][..dw * 3];
            for (k, w) in tap.weights.iter().enumerate() {
                let row = &tmp[(tap.start + k - y_lo) * dw * 3..][..dw * 3];
                for (o, v) in out.iter_mut().zip(row) {
                    *o += w * v;
                }
            }
        }
        to_tensor(&rgb, dw, dh, spec)
    }

    /// Pixel values (0..255, RGB interleaved) -> normalised tensor in the model's order and
    /// layout.
    fn to_tensor(rgb: &[f32], w: usize, h: usize, spec: &InputSpec) -> Vec<f32> {
        let c = spec.channels();
        let norm = |ch: usize, v: f32| {
            let (m, s) = if spec.normalize.mean.len() == c {
                (spec.normalize.mean[ch], spec.normalize.std[ch])
            } else {
                (spec.normalize.mean[0], spec.normalize.std[0])
            };
            (v / 255.0 - m) / s
        };
        let mut out = vec![0f32; c * h * w];
        for i in 0..h * w {
            let p = &rgb[i * 3..][..3];
            let values = ordered([p[0], p[1], p[2]], spec.channel_order);
            for (ch, v) in values.iter().take(c).enumerate() {
                let idx = match spec.layout {
                    Layout::Nchw => ch * h * w + i,
                    Layout::Nhwc => i * c + ch,
                };
                out[idx] = norm(ch, *v);
            }
        }
        out
    }
}

/// The source rectangle (x, y, w, h) that is resized to the input.
pub(crate) fn crop_region(sw: u32, sh: u32, spec: &InputSpec) -> (u32, u32, u32, u32) {
    match spec.resize {
        ResizeMode::Stretch => (0, 0, sw, sh),
        ResizeMode::CenterCrop => {
            let (tw, th) = (u64::from(spec.width), u64::from(spec.height));
            let (w, h) = (u64::from(sw), u64::from(sh));
            if w * th > h * tw {
                // Too wide: keep the full height.
                let cw = ((h * tw + th / 2) / th).clamp(1, w);
                (((w - cw) / 2) as u32, 0, cw as u32, sh)
            } else {
                let ch = ((w * th + tw / 2) / tw).clamp(1, h);
                (0, ((h - ch) / 2) as u32, sw, ch as u32)
            }
        }
    }
}

/// Contiguous source taps and their weights for one output pixel.
#[derive(Debug, Clone)]
pub(crate) struct Tap {
    pub start: usize,
    pub weights: Vec<f32>,
}

/// Resampling weights along one axis: `len` source pixels from `offset` onto `out` pixels.
pub(crate) fn axis_weights(offset: usize, len: usize, out: usize, filter: Filter) -> Vec<Tap> {
    let scale = len as f64 / out as f64;
    (0..out)
        .map(|d| match filter {
            Filter::Bilinear => {
                let x = ((d as f64 + 0.5) * scale - 0.5).clamp(0.0, (len - 1) as f64);
                let x0 = x.floor() as usize;
                let frac = (x - x0 as f64) as f32;
                if x0 + 1 < len && frac > 0.0 {
                    Tap {
                        start: offset + x0,
                        weights: vec![1.0 - frac, frac],
                    }
                } else {
                    Tap {
                        start: offset + x0,
                        weights: vec![1.0],
                    }
                }
            }
            Filter::Area => {
                let (a, b) = (d as f64 * scale, (d as f64 + 1.0) * scale);
                let first = a.floor() as usize;
                let last = (b.ceil() as usize).min(len);
                let weights = (first..last)
                    .map(|i| {
                        let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                        (overlap / scale) as f32
                    })
                    .collect();
                Tap {
                    start: offset + first,
                    weights,
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(w: u32, h: u32) -> InputSpec {
        InputSpec {
            width: w,
            height: h,
            channel_order: ChannelOrder::Rgb,
            layout: Layout::Nchw,
            normalize: Normalize::default(),
            resize: ResizeMode::Stretch,
            filter: Filter::Bilinear,
        }
    }

    /// A 1-row grey ramp image with the given values.
    fn row(values: &[u8]) -> RgbImage {
        RgbImage::from_fn(values.len() as u32, 1, |x, _| {
            image::Rgb([values[x as usize]; 3])
        })
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} != {b:?}");
        }
    }

    #[test]
    fn bilinear_upscale_matches_hand_computation() {
        // 2 -> 4 with half-pixel centres: x = (d+0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25.
        let out = preprocess(
            &row(&[0, 255]),
            &InputSpec {
                channel_order: ChannelOrder::Gray,
                normalize: Normalize {
                    mean: vec![0.0],
                    std: vec![1.0],
                },
                ..spec(4, 1)
            },
        );
        close(&out, &[0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn area_downscale_averages_blocks() {
        // 6 -> 2: each output averages three pixels; 6 -> 4: 1.5-pixel boxes.
        let img = row(&[0, 30, 60, 90, 120, 150]);
        let gray = |w| InputSpec {
            channel_order: ChannelOrder::Gray,
            normalize: Normalize {
                mean: vec![0.0],
                std: vec![1.0],
            },
            filter: Filter::Area,
            ..spec(w, 1)
        };
        close(&preprocess(&img, &gray(2)), &[30.0 / 255.0, 120.0 / 255.0]);
        let quarter = [
            (0.0 + 30.0 * 0.5) / 1.5,
            (30.0 * 0.5 + 60.0) / 1.5,
            (90.0 + 120.0 * 0.5) / 1.5,
            (120.0 * 0.5 + 150.0) / 1.5,
        ];
        close(
            &preprocess(&img, &gray(4)),
            &quarter.map(|v: f64| (v / 255.0) as f32),
        );
    }

    #[test]
    fn normalisation_channel_order_and_layout() {
        let img = RgbImage::from_pixel(1, 1, image::Rgb([51, 102, 255]));
        let mut s = spec(1, 1);
        s.normalize = Normalize {
            mean: vec![0.5, 0.5, 0.5],
            std: vec![0.5, 0.25, 1.0],
        };
        close(
            &preprocess(&img, &s),
            &[(0.2 - 0.5) / 0.5, (0.4 - 0.5) / 0.25, 0.5],
        );
        s.channel_order = ChannelOrder::Bgr;
        close(
            &preprocess(&img, &s),
            &[(1.0 - 0.5) / 0.5, (0.4 - 0.5) / 0.25, 0.2 - 0.5],
        );
        s.channel_order = ChannelOrder::Gray;
        s.normalize = Normalize::default();
        close(
            &preprocess(&img, &s),
            &[(0.299 * 51.0 + 0.587 * 102.0 + 0.114 * 255.0) / 255.0],
        );
    }

    #[test]
    fn nhwc_interleaves_channels() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb([x as u8, 10 + x as u8, 20 + x as u8])
        });
        let mut s = spec(2, 1);
        s.normalize = Normalize {
            mean: vec![0.0; 3],
            std: vec![1.0 / 255.0; 3],
        };
        close(&preprocess(&img, &s), &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
        s.layout = Layout::Nhwc;
        close(&preprocess(&img, &s), &[0.0, 10.0, 20.0, 1.0, 11.0, 21.0]);
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        // 4x1 -> 1x1 centre crop takes the middle pixel pair's box (cols 1..3 of a 4x2? no: 1x1
        // aspect from a 4x1 frame is the 1x1 square at column (4-1)/2 = 1).
        let img = row(&[0, 100, 200, 250]);
        let s = InputSpec {
            resize: ResizeMode::CenterCrop,
            filter: Filter::Area,
            channel_order: ChannelOrder::Gray,
            normalize: Normalize {
                mean: vec![0.0],
                std: vec![1.0],
            },
            ..spec(1, 1)
        };
        close(&preprocess(&img, &s), &[100.0 / 255.0]);
        assert_eq!(crop_region(640, 480, &spec(224, 224)), (0, 0, 640, 480));
        let cc = InputSpec {
            resize: ResizeMode::CenterCrop,
            ..spec(224, 224)
        };
        assert_eq!(crop_region(640, 480, &cc), (80, 0, 480, 480));
        assert_eq!(crop_region(480, 640, &cc), (0, 80, 480, 480));
    }

    #[test]
    fn constant_image_stays_constant_under_every_filter() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 100, 50]));
        for filter in [Filter::Bilinear, Filter::Area] {
            for resize in [ResizeMode::Stretch, ResizeMode::CenterCrop] {
                let s = InputSpec {
                    filter,
                    resize,
                    ..spec(16, 9)
                };
                let t = preprocess(&img, &s);
                assert_eq!(t.len(), 3 * 16 * 9);
                for (i, v) in t.iter().enumerate() {
                    let want = [200.0, 100.0, 50.0][i / (16 * 9)] / 255.0;
                    assert!(
                        (v - want).abs() < 1e-5,
                        "{filter:?} {resize:?}: {v} vs {want}"
                    );
                }
            }
        }
    }

    /// The fused path reads every encoding straight from the message bytes (row padding,
    /// alpha, BGR, mono16 of either byte order) and gives the reference's numbers: decode to
    /// RGB, then the straightforward two-pass filter.
    mod fused_matches_reference {
        use super::*;
        use crate::frame::{decode, FrameData, RawImage};
        use proptest::prelude::*;

        const ENCODINGS: [&str; 6] = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"];

        fn any_spec() -> impl Strategy<Value = InputSpec> {
            (
                1u32..40,
                1u32..40,
                0usize..3,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(w, h, order, nhwc, crop, area, norm)| InputSpec {
                    width: w,
                    height: h,
                    channel_order: [ChannelOrder::Rgb, ChannelOrder::Bgr, ChannelOrder::Gray]
                        [order],
                    layout: if nhwc { Layout::Nhwc } else { Layout::Nchw },
                    normalize: if norm {
                        Normalize {
                            mean: vec![0.485, 0.456, 0.406],
                            std: vec![0.229, 0.224, 0.225],
                        }
                    } else {
                        Normalize::default()
                    },
                    resize: if crop {
                        ResizeMode::CenterCrop
                    } else {
                        ResizeMode::Stretch
                    },
                    filter: if area { Filter::Area } else { Filter::Bilinear },
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn on_every_encoding_and_spec(
                spec in any_spec(),
                (w, h) in (1u32..90, 1u32..70),
                enc in 0usize..6,
                padding in 0u32..5,
                big_endian in any::<bool>(),
                seed in any::<u64>(),
            ) {
                let encoding = ENCODINGS[enc];
                let bpp = crate::frame::Encoding::parse(encoding).unwrap().bytes_per_pixel() as u32;
                let step = w * bpp + padding;
                let mut state = seed | 1;
                let data: Vec<u8> = (0..step * h)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 24) as u8
                    })
                    .collect();
                let raw = RawImage { width: w, height: h, encoding, is_bigendian: big_endian, step, data: &data };
                let want = reference::preprocess(&decode(&FrameData::Raw(raw)).unwrap(), &spec);
                let mut pre = Preprocessor::new(spec.clone());
                // The portable kernel gives exactly what the dispatched one (AVX2 here) gives.
                let px = Pixels::from_raw(&raw).unwrap();
                let mut portable = vec![0f32; want.len()];
                resample(&Plan::new(w, h, &spec), &spec, (&mut vec![], &mut vec![]), px, &mut portable);
                prop_assert_eq!(&portable, &pre.run(px));
                // Twice: the second run reuses the plan and buffers.
                for _ in 0..2 {
                    let got = pre.run(Pixels::from_raw(&raw).unwrap());
                    prop_assert_eq!(got.len(), want.len());
                    // Normalised values are (pixel / 255 - mean) / std: scale the tolerance
                    // (1e-5 of the pixel range) by the largest 1 / std.
                    let tol = if spec.normalize.std[0] < 1.0 { 1e-5 / 0.224 } else { 1e-5 };
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        prop_assert!((a - b).abs() <= tol, "value {}: {} vs {}", i, a, b);
                    }
                }
            }
        }
    }

    #[test]
    fn spec_validation_names_the_field() {
        let mut s = spec(0, 4);
        assert!(s.validate().unwrap_err().to_string().contains("size"));
        s = spec(4, 4);
        s.normalize.std = vec![1.0, 0.0, 1.0];
        assert!(s.validate().unwrap_err().to_string().contains("std"));
        s.normalize.std = vec![1.0];
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("normalize.std"));
    }
}
