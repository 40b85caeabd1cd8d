//! Dense optical flow between two greyscale frames, by Farnebäck's polynomial expansion
//! ("Two-Frame Motion Estimation Based on Polynomial Expansion", SCIA 2003), computed the way
//! OpenCV's `calcOpticalFlowFarneback` computes it (box-filtered window, its pyramid, blur,
//! resampling and border rules), so that a detector trained on OpenCV's flow (the paper
//! authors' optical-flow detector) sees the same fields here. Written in Rust rather than bound
//! to OpenCV: the core stays free of C++ dependencies and a cold build stays short;
//! `test/test_flow_parity.py` checks it against OpenCV on real frame pairs.

use crate::frame::Pixels;

/// A single-channel frame, row-major, grey levels as f32 (0..=255 for 8-bit input).
#[derive(Debug, Clone, PartialEq)]
pub struct Gray {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// A dense flow field: per pixel (dx, dy), row-major, interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Flow {
    pub fn zeros(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0.0; width * height * 2],
        }
    }
}

/// `calcOpticalFlowFarneback`'s parameters (flags 0: box window, no initial flow).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FarnebackParams {
    /// Image scale between pyramid levels (< 1).
    pub pyr_scale: f64,
    /// Pyramid levels above the original (OpenCV's `levels`, which also counts the original:
    /// 1 computes the flow at `pyr_scale`, then refines it at full size).
    pub levels: usize,
    /// Averaging window (odd).
    pub winsize: usize,
    pub iterations: usize,
    /// Pixel neighbourhood of the polynomial expansion: 5 or 7.
    pub poly_n: usize,
    /// Gaussian sigma of the expansion's weights.
    pub poly_sigma: f64,
}

impl FarnebackParams {
    /// The paper authors' parameters (RTCSA 2022 `safe_ml`).
    pub const REFERENCE: Self = Self {
        pyr_scale: 0.5,
        levels: 1,
        winsize: 15,
        iterations: 1,
        poly_n: 5,
        poly_sigma: 1.1,
    };

    pub fn validate(&self) -> Result<(), FlowError> {
        let bad = |what: String| Err(FlowError::Param(what));
        if !(self.pyr_scale > 0.0 && self.pyr_scale < 1.0) {
            return bad(format!("pyr_scale {} must be in (0, 1)", self.pyr_scale));
        }
        if self.levels > 16 {
            return bad(format!("levels {} is more than 16", self.levels));
        }
        if self.winsize < 3 || self.winsize > 101 || self.winsize.is_multiple_of(2) {
            return bad(format!("winsize {} must be odd, 3..=101", self.winsize));
        }
        if !(1..=100).contains(&self.iterations) {
            return bad(format!("iterations {} must be 1..=100", self.iterations));
        }
        if self.poly_n != 5 && self.poly_n != 7 {
            return bad(format!("poly_n {} must be 5 or 7", self.poly_n));
        }
        if !(self.poly_sigma > 0.0 && self.poly_sigma <= 10.0) {
            return bad(format!("poly_sigma {} must be in (0, 10]", self.poly_sigma));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlowError {
    #[error("optical flow parameter: {0}")]
    Param(String),
    #[error("optical flow needs two frames of one size, got {0}x{1} and {2}x{3}")]
    SizeMismatch(usize, usize, usize, usize),
    #[error("optical flow needs frames of at least 8x8 pixels, got {0}x{1}")]
    TooSmall(usize, usize),
}

/// The reference design's input to the flow (the paper authors' detector): a frame in grey
/// levels, resized to `width` x `height`, centre-cropped to `crop` and equalised with CLAHE.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowInput {
    pub width: usize,
    pub height: usize,
    pub crop_width: usize,
    pub crop_height: usize,
    pub clahe_clip: f64,
    pub clahe_tiles: (usize, usize),
}

impl FlowInput {
    /// 120x160 (H x W), cropped to 113x152, CLAHE clip 2 on 8x8 tiles.
    pub const REFERENCE: Self = Self {
        width: 160,
        height: 120,
        crop_width: 152,
        crop_height: 113,
        clahe_clip: 2.0,
        clahe_tiles: (8, 8),
    };

    /// The flow input of a frame, read in place (a raw message buffer or a decoded image): BT.601
    /// luma as OpenCV's `cvtColor` computes it for 8-bit frames (its vectorised path: fixed
    /// point, 15 bits; mono frames give their own level), a bilinear resize when the frame is not
    /// already `width` x `height` (OpenCV's 8-bit resize rounds in fixed point: up to one grey
    /// level apart), the centre crop, then CLAHE.
    pub fn prepare(&self, px: Pixels<'_>) -> Gray {
        let (width, height) = (px.width() as usize, px.height() as usize);
        let bpp = px.encoding().bytes_per_pixel();
        let [r, g, b] = px.rgb_offsets();
        let grey: Vec<u8> = (0..height)
            .flat_map(|y| px.row(y).chunks_exact(bpp))
            .map(|p| {
                let y = p[r] as u32 * 9798 + p[g] as u32 * 19235 + p[b] as u32 * 3735 + (1 << 14);
                (y >> 15) as u8
            })
            .collect();
        let grey = if (width, height) == (self.width, self.height) {
            grey
        } else {
            let f: Vec<f32> = grey.iter().map(|&v| v as f32).collect();
            resize_linear(&f, width, height, 1, self.width, self.height)
                .into_iter()
                .map(crate::clahe::saturate_u8)
                .collect()
        };
        let (x0, y0) = (
            (self.width - self.crop_width) / 2,
            (self.height - self.crop_height) / 2,
        );
        let crop: Vec<u8> = (y0..y0 + self.crop_height)
            .flat_map(|y| grey[y * self.width + x0..y * self.width + x0 + self.crop_width].to_vec())
            .collect();
        let eq = crate::clahe::clahe(
            &crop,
            self.crop_width,
            self.crop_height,
            self.clahe_clip,
            self.clahe_tiles,
        );
        Gray {
            width: self.crop_width,
            height: self.crop_height,
            data: eq.into_iter().map(f32::from).collect(),
        }
    }
}

/// The stacked motion history the flow detector's encoder reads: the last `depth` flow fields,
/// oldest first, their horizontal components (`dx`) and vertical ones (`dy`) each as `depth`
/// channels of `height` x `width` (the two encoder branches' inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct Stacked {
    pub depth: usize,
    pub width: usize,
    pub height: usize,
    pub dx: Vec<f32>,
    pub dy: Vec<f32>,
    /// The mean over the stack's frame pairs of [`residual_statistic`] (by default
    /// [`motion_residual`]): how much of the change between frames the flow does not explain.
    pub residual: f64,
    /// How far the scene moved: ln([`MOTION_FLOOR`] + the mean absolute horizontal flow), and
    /// the same of the vertical flow, each over every pixel of the stack's fields. The residual
    /// grows with the motion (one pyramid level tracks large displacements poorly, so a sharp
    /// turn leaves more unexplained); a score can judge the residual given the motion
    /// ([`crate::score::Reference::residual_given_motion`]).
    pub motion: [f64; 2],
    /// The newest frame's detail lost against the stream's own past
    /// ([`crate::detail_lost::DetailHistory`]): blur the flow cannot show. 0 unless the
    /// stack measures it ([`FlowStack::measure_detail_lost`]).
    pub detail_lost: f64,
}

/// Added to the mean absolute flow, in pixels, before the logarithm of [`Stacked::motion`]:
/// keeps a still scene finite and makes sub-pixel jitter count as no motion.
pub const MOTION_FLOOR: f64 = 0.1;

impl Flow {
    /// The mean absolute horizontal and vertical flow over the field, in pixels.
    pub fn mean_abs(&self) -> [f64; 2] {
        let n = (self.data.len() / 2).max(1) as f64;
        let (mut u, mut v) = (0.0, 0.0);
        for d in self.data.chunks_exact(2) {
            u += f64::from(d[0].abs());
            v += f64::from(d[1].abs());
        }
        [u / n, v / n]
    }
}

/// One stream's motion history: the last prepared frame and the last `depth` flow fields. Flow
/// is never computed across a gap: a stamp that goes back, or advances by more than
/// `max_gap_ns`, restarts the history (the detector warms up again over `depth` + 1 frames). A
/// frame stamped the same as the last and showing the same picture is that frame sent again (a
/// republished message): it adds no motion and gets the stack of the frame it repeats, so it is
/// scored again as an image detector scores a resend. Another picture under the same stamp
/// restarts the history, as a gap does.
#[derive(Debug, Clone)]
pub struct FlowStack {
    pub input: FlowInput,
    pub params: FarnebackParams,
    pub depth: usize,
    pub max_gap_ns: i64,
    /// How each frame pair's residual map is summarised.
    pub residual: ResidualStatistic,
    prev: Option<(Gray, Option<i64>)>,
    /// The last `depth` fields, each with its pair's residual ([`residual_statistic`]).
    flows: std::collections::VecDeque<(Flow, f64)>,
    /// The prepared frames' detail since the last reset, when measured
    /// ([`Self::measure_detail_lost`]).
    detail: Option<crate::detail_lost::DetailHistory>,
    /// The last stack's [`Stacked::detail_lost`], for a repeated frame.
    last_detail_lost: f64,
}

impl FlowStack {
    /// The reference design's history: 6 fields.
    pub const REFERENCE_DEPTH: usize = 6;

    pub fn new(input: FlowInput, params: FarnebackParams, depth: usize, max_gap_ns: i64) -> Self {
        Self {
            input,
            params,
            depth: depth.max(1),
            max_gap_ns,
            residual: ResidualStatistic::Mean,
            prev: None,
            flows: Default::default(),
            detail: None,
            last_detail_lost: 0.0,
        }
    }

    /// The same history, summarising each pair's residual by `residual`.
    pub fn with_residual(mut self, residual: ResidualStatistic) -> Self {
        self.residual = residual;
        self
    }

    /// Measures [`Stacked::detail_lost`] from the next frame on (else it stays 0).
    pub fn measure_detail_lost(&mut self, on: bool) {
        if on != self.detail.is_some() {
            self.detail = on.then(Default::default);
        }
    }

    /// Forgets the history (a reset, or a gap).
    pub fn reset(&mut self) {
        self.prev = None;
        self.flows.clear();
        self.last_detail_lost = 0.0;
        if let Some(d) = &mut self.detail {
            d.reset();
        }
    }

    /// Fields still needed before [`Self::push`] returns a stack.
    pub fn warming_up(&self) -> usize {
        self.depth - self.flows.len()
    }

    /// Adds a frame stamped `stamp_ns`; the stack once `depth` fields are there. Unstamped
    /// frames (an image folder) are taken as consecutive; the next stamped frame is checked
    /// against the last stamp seen, so an unstamped frame never hides a gap.
    pub fn push(
        &mut self,
        px: Pixels<'_>,
        stamp_ns: Option<i64>,
    ) -> Result<Option<Stacked>, FlowError> {
        let last = self.prev.as_ref().and_then(|(_, stamp)| *stamp);
        let frame = self.input.prepare(px);
        if let (Some(last), Some(now)) = (last, stamp_ns) {
            let step = now.saturating_sub(last);
            let resent = step == 0 && self.prev.as_ref().is_some_and(|(g, _)| *g == frame);
            if resent {
                return Ok(self.stack(self.last_detail_lost));
            }
            // Another picture under the last stamp is a stamp source that stopped, not a
            // resend: no motion can be measured across it.
            if step <= 0 || step > self.max_gap_ns {
                self.reset();
            }
        }
        let detail_lost = self.detail.as_mut().map_or(0.0, |d| d.push(&frame));
        self.last_detail_lost = detail_lost;
        if let Some((prev, _)) = &self.prev {
            let f = farneback(prev, &frame, &self.params)?;
            let r = residual_statistic(prev, &frame, &f, self.residual);
            if self.flows.len() == self.depth {
                self.flows.pop_front();
            }
            self.flows.push_back((f, r));
        }
        self.prev = Some((frame, stamp_ns.or(last)));
        Ok(self.stack(detail_lost))
    }

    /// The stack of the last `depth` fields; None while warming up.
    fn stack(&self, detail_lost: f64) -> Option<Stacked> {
        if self.flows.len() < self.depth {
            return None;
        }
        let (w, h) = (self.flows[0].0.width, self.flows[0].0.height);
        let mut dx = Vec::with_capacity(self.depth * w * h);
        let mut dy = Vec::with_capacity(self.depth * w * h);
        for (f, _) in &self.flows {
            dx.extend(f.data.iter().step_by(2));
            dy.extend(f.data.iter().skip(1).step_by(2));
        }
        let residual = self.flows.iter().map(|(_, r)| r).sum::<f64>() / self.depth as f64;
        let mut motion = [0.0; 2];
        for (f, _) in &self.flows {
            let m = f.mean_abs();
            motion[0] += m[0];
            motion[1] += m[1];
        }
        let motion = motion.map(|m| (MOTION_FLOOR + m / self.depth as f64).ln());
        Some(Stacked {
            depth: self.depth,
            width: w,
            height: h,
            dx,
            dy,
            residual,
            motion,
            detail_lost,
        })
    }
}

/// The flow detector as a bundle describes it (`detector: {kind: flow, ...}` in the manifest):
/// how frames become the encoder's input. Training, calibration, evaluation and the node all
/// go through [`FlowSpec::stack`] and [`FlowSpec::encoder_input`], so there is one
/// preprocessing path (the reference code computed flow at another size in training than at
/// run time).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Grey frame, resize, crop and CLAHE before the flow.
    pub input: FlowInput,
    pub farneback: FarnebackParams,
    /// Flow fields in the stack: the encoder reads `depth` horizontal then `depth` vertical
    /// channels.
    pub depth: usize,
    /// A stamp step longer than this (or one that goes back) restarts the stack, so flow is
    /// never computed across a gap in the stream; a repeated stamp with the same picture is the
    /// same frame again, with another picture a restart.
    pub max_gap_ms: f64,
    /// Flow in pixels maps to the encoder's [0, 1] as 0.5 + flow / (2 * flow_range), clamped:
    /// BCE reconstruction needs targets in [0, 1], and Farnebäck with one pyramid level does
    /// not resolve motion much beyond its window anyway.
    pub flow_range: f64,
    /// How a frame pair's motion residual is summarised (absent: `mean`, as before session 23).
    #[serde(default, skip_serializing_if = "ResidualStatistic::is_mean")]
    pub residual: ResidualStatistic,
}

/// The flow detector's two branches, in channel and latent order.
pub const BRANCHES: [&str; 2] = ["horizontal", "vertical"];

impl FlowSpec {
    /// The reference design: its input, Farnebäck parameters and 6-field stack; a gap of more
    /// than 250 ms (about 3 frames at 15 Hz) restarts it; flow in +-8 px.
    pub const REFERENCE: Self = Self {
        input: FlowInput::REFERENCE,
        farneback: FarnebackParams::REFERENCE,
        depth: FlowStack::REFERENCE_DEPTH,
        max_gap_ms: 250.0,
        flow_range: 8.0,
        residual: ResidualStatistic::Mean,
    };

    /// Checks the spec is usable; the error names the field and its range.
    pub fn validate(&self) -> Result<(), FlowError> {
        self.farneback.validate()?;
        let i = &self.input;
        if i.crop_width > i.width
            || i.crop_height > i.height
            || i.crop_width < 8
            || i.crop_height < 8
        {
            return Err(FlowError::Param(format!(
                "input: crop {}x{} must be at least 8x8 and fit the {}x{} frame",
                i.crop_width, i.crop_height, i.width, i.height
            )));
        }
        if !(i.clahe_clip > 0.0 && i.clahe_clip.is_finite())
            || i.clahe_tiles.0 == 0
            || i.clahe_tiles.1 == 0
            || i.clahe_tiles.0 > i.crop_width
            || i.clahe_tiles.1 > i.crop_height
        {
            return Err(FlowError::Param(format!(
                "input: CLAHE clip {} must be positive and its {:?} tiles fit the crop",
                i.clahe_clip, i.clahe_tiles
            )));
        }
        if !(1..=64).contains(&self.depth) {
            return Err(FlowError::Param(format!(
                "depth {} must be 1..=64",
                self.depth
            )));
        }
        if !(self.max_gap_ms > 0.0 && self.max_gap_ms.is_finite()) {
            return Err(FlowError::Param(format!(
                "max_gap_ms {} must be positive",
                self.max_gap_ms
            )));
        }
        if !(self.flow_range > 0.0 && self.flow_range.is_finite()) {
            return Err(FlowError::Param(format!(
                "flow_range {} must be positive",
                self.flow_range
            )));
        }
        Ok(())
    }

    /// The encoder's input shape: [1, 2 * depth, crop height, crop width].
    pub fn encoder_shape(&self) -> [usize; 4] {
        [
            1,
            2 * self.depth,
            self.input.crop_height,
            self.input.crop_width,
        ]
    }

    /// A fresh history for one stream.
    pub fn stack(&self) -> FlowStack {
        FlowStack::new(
            self.input,
            self.farneback,
            self.depth,
            (self.max_gap_ms * 1e6) as i64,
        )
        .with_residual(self.residual)
    }

    /// The encoder's input for one stack: the horizontal fields, then the vertical ones,
    /// mapped to [0, 1].
    pub fn encoder_input(&self, s: &Stacked) -> Vec<f32> {
        let k = (0.5 / self.flow_range) as f32;
        s.dx.iter()
            .chain(&s.dy)
            .map(|&f| (0.5 + f * k).clamp(0.0, 1.0))
            .collect()
    }

    /// The latents of each branch (the encoder's first half horizontal, second vertical).
    pub fn branch_latents(count: usize) -> [std::ops::Range<usize>; 2] {
        [0..count / 2, count / 2..count]
    }
}

/// Floor of a residual statistic before the logarithm (identical frames).
const RESIDUAL_FLOOR: f64 = 1e-6;

/// How a frame pair's residual map (the absolute difference between a frame and the next one
/// sampled where the flow says each pixel went) becomes one number (docs/detector-experiments.md,
/// "Fine unexplained change").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidualStatistic {
    /// The map's mean ([`motion_residual`]; session 16).
    #[default]
    Mean,
    /// Its 99th percentile: the few pixels the flow explains worst.
    P99,
    /// The mean of the map minus its own 3x3 median, clipped at zero: change narrower than three
    /// pixels (snowflakes, raindrops, dead pixels, sensor noise), which no motion a dense flow
    /// window describes can explain, while a clear scene's misregistered edges are wider and
    /// cancel. A whitened, low-contrast scene lowers the mean; it does not hide the specks here.
    Fine,
    /// `p99` over the 99th percentile of the first frame's gradient magnitude (grey levels per
    /// pixel, at least 1): the residual in pixels of misregistration rather than grey levels.
    /// A scene with more or stronger edges leaves more residual for the same flow error; on
    /// clear drives `p99` sits below its fit mean on every small_loop frame and above it on
    /// most loop_empty frames (docs/detector-experiments.md, "Which part raises the flow
    /// detector's alarms"). This divides the scene's contrast out; specks are still far more
    /// residual than gradient. Studied in session 25 (fewer alarms, not adopted: see there).
    P99Relative,
}

impl ResidualStatistic {
    /// Every statistic, in the order tools report them.
    pub const ALL: [Self; 4] = [Self::Mean, Self::P99, Self::Fine, Self::P99Relative];

    /// The name in bundles and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::P99 => "p99",
            Self::Fine => "fine",
            Self::P99Relative => "p99_relative",
        }
    }

    pub fn is_mean(&self) -> bool {
        *self == Self::Mean
    }
}

impl std::str::FromStr for ResidualStatistic {
    type Err = FlowError;
    fn from_str(s: &str) -> Result<Self, FlowError> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|r| r.name()).collect();
                FlowError::Param(format!(
                    "unknown residual statistic {s:?}: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// The residual map of a frame pair in grey levels, and which pixels count: those whose
/// target (where `flow` says the pixel went, sampled bilinearly in `next`) lies inside the frame.
fn residual_map(prev: &Gray, next: &Gray, flow: &Flow) -> (Vec<f32>, Vec<bool>) {
    let (w, h) = (prev.width, prev.height);
    let mut map = vec![0.0f32; w * h];
    let mut inside = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let tx = x as f32 + flow.data[2 * i];
            let ty = y as f32 + flow.data[2 * i + 1];
            if !(tx >= 0.0 && ty >= 0.0 && tx <= (w - 1) as f32 && ty <= (h - 1) as f32) {
                continue;
            }
            let (x0, y0) = (tx.floor() as usize, ty.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = (tx - x0 as f32, ty - y0 as f32);
            let at = |xx: usize, yy: usize| next.data[yy * w + xx];
            let v = (at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx) * (1.0 - fy)
                + (at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx) * fy;
            map[i] = (prev.data[i] - v).abs();
            inside[i] = true;
        }
    }
    (map, inside)
}

/// The motion residual of a frame pair: ln of the mean absolute difference, in [0, 1] grey
/// levels, between `prev` and `next` sampled where `flow` says each pixel went (bilinear), over
/// the pixels whose target lies inside the frame. Motion the flow explains (driving, a shaking
/// camera) leaves little; what appears or changes from one frame to the next (raindrops,
/// snowflakes, sensor noise, flicker) is left over, and a dense flow field smooths it away, so
/// the flow detector's score reads it beside the posterior (docs/detector-experiments.md,
/// "The motion residual").
pub fn motion_residual(prev: &Gray, next: &Gray, flow: &Flow) -> f64 {
    residual_statistic(prev, next, flow, ResidualStatistic::Mean)
}

/// ln of `statistic` over a frame pair's residual map in [0, 1] grey levels (pixels whose target
/// is inside only).
pub fn residual_statistic(
    prev: &Gray,
    next: &Gray,
    flow: &Flow,
    statistic: ResidualStatistic,
) -> f64 {
    let (map, inside) = residual_map(prev, next, flow);
    let counted = || at_inside(&map, &inside);
    let n = inside.iter().filter(|&&i| i).count();
    let value = if n == 0 {
        0.0
    } else {
        match statistic {
            ResidualStatistic::Mean => counted().map(f64::from).sum::<f64>() / n as f64 / 255.0,
            ResidualStatistic::P99 => {
                let mut v: Vec<f32> = counted().collect();
                percentile(&mut v, 0.99) / 255.0
            }
            ResidualStatistic::P99Relative => {
                let mut v: Vec<f32> = counted().collect();
                let mut g: Vec<f32> = at_inside(&gradient_magnitude(prev), &inside).collect();
                percentile(&mut v, 0.99) / percentile(&mut g, 0.99).max(MIN_CONTRAST)
            }
            ResidualStatistic::Fine => {
                let med = median3x3(&map, prev.width, prev.height);
                map.iter()
                    .zip(&med)
                    .zip(&inside)
                    .filter(|(_, &i)| i)
                    .map(|((&v, &m), _)| f64::from((v - m).max(0.0)))
                    .sum::<f64>()
                    / n as f64
                    / 255.0
            }
        }
    };
    (value + RESIDUAL_FLOOR).ln()
}

/// The values of a per-pixel map at the pixels whose flow target is inside the frame.
fn at_inside<'a>(values: &'a [f32], inside: &'a [bool]) -> impl Iterator<Item = f32> + 'a {
    values
        .iter()
        .zip(inside)
        .filter(|(_, &i)| i)
        .map(|(&v, _)| v)
}

/// Floor of [`ResidualStatistic::P99Relative`]'s divisor, in grey levels per pixel: a flat
/// frame has no edges to misregister, and its residual is then counted in grey levels.
const MIN_CONTRAST: f64 = 1.0;

/// Gradient magnitude by central differences (one-sided at the border), grey levels per pixel.
fn gradient_magnitude(g: &Gray) -> Vec<f32> {
    let (w, h) = (g.width, g.height);
    let at = |x: usize, y: usize| g.data[y * w + x];
    let diff = |a: f32, b: f32, span: usize| (b - a) / span.max(1) as f32;
    let mut out = vec![0.0f32; w * h];
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            let (x0, x1) = (x.saturating_sub(1), (x + 1).min(w - 1));
            let gx = diff(at(x0, y), at(x1, y), x1 - x0);
            let gy = diff(at(x, y0), at(x, y1), y1 - y0);
            out[y * w + x] = gx.hypot(gy);
        }
    }
    out
}

/// The `q` quantile of `v` (linear between order statistics, as NumPy's default); `v` is
/// reordered.
fn percentile(v: &mut [f32], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, &mut a, above) = v.select_nth_unstable_by(lo, f32::total_cmp);
    let b = above.iter().copied().fold(f32::INFINITY, f32::min);
    let frac = pos - lo as f64;
    if frac == 0.0 || above.is_empty() {
        f64::from(a)
    } else {
        f64::from(a) + frac * (f64::from(b) - f64::from(a))
    }
}

/// The 3x3 median of a map, its border replicated (OpenCV's `medianBlur` with ksize 3).
///
/// Each column's three values are sorted once per row; the median of the 3x3 block is then the
/// median of the largest of the three columns' minima, the median of their middles and the
/// smallest of their maxima (a standard identity), so a pixel costs a few comparisons.
fn median3x3(map: &[f32], w: usize, h: usize) -> Vec<f32> {
    let med3 = |a: f32, b: f32, c: f32| a.min(b).max(a.max(b).min(c));
    let mut out = vec![0.0f32; w * h];
    let (mut lo, mut mid, mut hi) = (vec![0.0f32; w], vec![0.0f32; w], vec![0.0f32; w]);
    for y in 0..h {
        // The rows above and below, replicated at the border.
        let [a, b, c] =
            [y.saturating_sub(1), y, (y + 1).min(h - 1)].map(|r| &map[r * w..(r + 1) * w]);
        for x in 0..w {
            let (p, q, r) = (a[x], b[x], c[x]);
            lo[x] = p.min(q).min(r);
            hi[x] = p.max(q).max(r);
            mid[x] = med3(p, q, r);
        }
        for x in 0..w {
            let (l, r) = (x.saturating_sub(1), (x + 1).min(w - 1));
            out[y * w + x] = med3(
                lo[l].max(lo[x]).max(lo[r]),
                med3(mid[l], mid[x], mid[r]),
                hi[l].min(hi[x]).min(hi[r]),
            );
        }
    }
    out
}

/// OpenCV's `cvRound`: nearest integer, ties to even.
fn cv_round(v: f64) -> i64 {
    v.round_ties_even() as i64
}

/// The flow from `prev` to `next`.
pub fn farneback(prev: &Gray, next: &Gray, p: &FarnebackParams) -> Result<Flow, FlowError> {
    p.validate()?;
    if (prev.width, prev.height) != (next.width, next.height) {
        return Err(FlowError::SizeMismatch(
            prev.width,
            prev.height,
            next.width,
            next.height,
        ));
    }
    if prev.width < 8 || prev.height < 8 {
        return Err(FlowError::TooSmall(prev.width, prev.height));
    }
    // Levels whose image stays at least 32 pixels on each side (OpenCV's min_size).
    let mut levels = 0;
    let mut scale = 1.0;
    while levels < p.levels {
        scale *= p.pyr_scale;
        if (prev.width as f64) * scale < 32.0 || (prev.height as f64) * scale < 32.0 {
            break;
        }
        levels += 1;
    }
    let mut prev_flow: Option<Flow> = None;
    for k in (0..=levels).rev() {
        let scale = p.pyr_scale.powi(k as i32);
        let sigma = (1.0 / scale - 1.0) * 0.5;
        let smooth = ((cv_round(sigma * 5.0) | 1) as usize).max(3);
        let width = cv_round(prev.width as f64 * scale) as usize;
        let height = cv_round(prev.height as f64 * scale) as usize;
        let mut flow = match &prev_flow {
            None => Flow::zeros(width, height),
            Some(f) => {
                let mut up = resize_linear(&f.data, f.width, f.height, 2, width, height);
                let s = (1.0 / p.pyr_scale) as f32;
                up.iter_mut().for_each(|v| *v *= s);
                Flow {
                    width,
                    height,
                    data: up,
                }
            }
        };
        let expand = |img: &Gray| {
            let blurred = gaussian_blur(img, smooth, sigma);
            let small = resize_linear(&blurred, img.width, img.height, 1, width, height);
            poly_exp(&small, width, height, p.poly_n, p.poly_sigma)
        };
        let (r0, r1) = (expand(prev), expand(next));
        let mut m = vec![0f32; width * height * 5];
        update_matrices(&r0, &r1, &flow, &mut m, 0, height);
        for i in 0..p.iterations {
            update_flow_blur(&r0, &r1, &mut flow, &mut m, p.winsize, i + 1 < p.iterations);
        }
        prev_flow = Some(flow);
    }
    Ok(prev_flow.expect("level 0 always runs"))
}

/// OpenCV's `getGaussianKernel(n, sigma, CV_32F)`: its fixed small kernels when sigma <= 0.
fn gaussian_kernel(n: usize, sigma: f64) -> Vec<f32> {
    const SMALL: [&[f32]; 4] = [
        &[1.0],
        &[0.25, 0.5, 0.25],
        &[0.0625, 0.25, 0.375, 0.25, 0.0625],
        &[
            0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125,
        ],
    ];
    if n % 2 == 1 && n <= 7 && sigma <= 0.0 {
        return SMALL[n / 2].to_vec();
    }
    let sigma = if sigma > 0.0 {
        sigma
    } else {
        ((n as f64 - 1.0) * 0.5 - 1.0) * 0.3 + 0.8
    };
    let scale = -0.5 / (sigma * sigma);
    let c = (n as f64 - 1.0) * 0.5;
    let k: Vec<f64> = (0..n)
        .map(|i| {
            let x = i as f64 - c;
            (scale * x * x).exp()
        })
        .collect();
    let sum: f64 = k.iter().sum();
    k.iter().map(|v| (v / sum) as f32).collect()
}

/// OpenCV's default border (BORDER_REFLECT_101): ... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...
pub(crate) fn reflect101(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let mut i = i;
    while i < 0 || i >= n {
        i = if i < 0 { -i } else { 2 * n - 2 - i };
    }
    i as usize
}

/// `GaussianBlur(img, Size(n, n), sigma, sigma)`: separable, rows then columns.
fn gaussian_blur(img: &Gray, n: usize, sigma: f64) -> Vec<f32> {
    let k = gaussian_kernel(n, sigma);
    let r = (n / 2) as isize;
    let (w, h) = (img.width, img.height);
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        let row = &img.data[y * w..(y + 1) * w];
        for x in 0..w {
            let mut s = 0f32;
            for (j, kj) in k.iter().enumerate() {
                s += kj * row[reflect101(x as isize + j as isize - r, w)];
            }
            tmp[y * w + x] = s;
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0f32;
            for (j, kj) in k.iter().enumerate() {
                s += kj * tmp[reflect101(y as isize + j as isize - r, h) * w + x];
            }
            out[y * w + x] = s;
        }
    }
    out
}

/// Source index and weight of the next pixel for one destination coordinate (OpenCV's
/// INTER_LINEAR: pixel centres aligned, clamped at the borders).
fn linear_taps(dst: usize, src: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as isize;
            f -= s as f32;
            if s < 0 {
                f = 0.0;
                s = 0;
            }
            if s >= src as isize - 1 {
                f = 0.0;
                s = src as isize - 1;
            }
            let s = s as usize;
            (s, (s + 1).min(src - 1), f)
        })
        .collect()
}

/// `resize(src, Size(dw, dh), INTER_LINEAR)` of an interleaved `ch`-channel float image:
/// horizontal pass, then vertical, in f32 as OpenCV does for float images.
fn resize_linear(src: &[f32], sw: usize, sh: usize, ch: usize, dw: usize, dh: usize) -> Vec<f32> {
    if (sw, sh) == (dw, dh) {
        return src.to_vec();
    }
    let xs = linear_taps(dw, sw);
    let ys = linear_taps(dh, sh);
    let hrow = |y: usize| -> Vec<f32> {
        let row = &src[y * sw * ch..(y + 1) * sw * ch];
        let mut out = vec![0f32; dw * ch];
        for (d, &(s0, s1, f)) in xs.iter().enumerate() {
            for c in 0..ch {
                out[d * ch + c] = row[s0 * ch + c] * (1.0 - f) + row[s1 * ch + c] * f;
            }
        }
        out
    };
    let rows: Vec<Vec<f32>> = (0..sh).map(hrow).collect();
    let mut out = vec![0f32; dw * dh * ch];
    for (d, &(s0, s1, f)) in ys.iter().enumerate() {
        let (a, b) = (&rows[s0], &rows[s1]);
        let o = &mut out[d * dw * ch..(d + 1) * dw * ch];
        for i in 0..dw * ch {
            o[i] = a[i] * (1.0 - f) + b[i] * f;
        }
    }
    out
}

/// The expansion's Gaussian weights g, x g, x^2 g over -n..=n, and the entries of the inverse
/// of its 6x6 moment matrix that the expansion needs (OpenCV's FarnebackPrepareGaussian).
fn prepare_gaussian(n: usize, sigma: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>, [f64; 4]) {
    let ni = n as i64;
    let mut g = vec![0f32; 2 * n + 1];
    let mut s = 0f64;
    for x in -ni..=ni {
        let v = (-(x * x) as f64 / (2.0 * sigma * sigma)).exp() as f32;
        g[(x + ni) as usize] = v;
        s += v as f64;
    }
    let s = 1.0 / s;
    let mut xg = vec![0f32; 2 * n + 1];
    let mut xxg = vec![0f32; 2 * n + 1];
    for x in -ni..=ni {
        let i = (x + ni) as usize;
        g[i] = (g[i] as f64 * s) as f32;
        xg[i] = (x as f64 * g[i] as f64) as f32;
        xxg[i] = ((x * x) as f64 * g[i] as f64) as f32;
    }
    // The moment matrix G has the structure below; its inverse keeps it, so the four entries
    // come from a 3x3 block (rows 0, 3, 4) and three diagonal terms.
    let (mut g00, mut g11, mut g33, mut g55) = (0f64, 0f64, 0f64, 0f64);
    for y in -ni..=ni {
        for x in -ni..=ni {
            let w = g[(y + ni) as usize] as f64 * g[(x + ni) as usize] as f64;
            let (xf, yf) = (x as f64, y as f64);
            g00 += w;
            g11 += w * xf * xf;
            g33 += w * xf * xf * xf * xf;
            g55 += w * xf * xf * yf * yf;
        }
    }
    // G = [[g00,0,0,g11,g11,0],[0,g11,0,0,0,0],[0,0,g11,0,0,0],[g11,0,0,g33,g55,0],
    //      [g11,0,0,g55,g33,0],[0,0,0,0,0,g55]]
    let ig11 = 1.0 / g11;
    let ig55 = 1.0 / g55;
    // Block [[g00, g11, g11], [g11, g33, g55], [g11, g55, g33]]: by symmetry its inverse has
    // a at (0,0), b at (0,1) and (0,2), c on the other diagonal entries, d off them.
    let inv = invert3([[g00, g11, g11], [g11, g33, g55], [g11, g55, g33]]);
    (g, xg, xxg, [ig11, inv[0][1], inv[1][1], ig55])
}

fn invert3(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let c =
        |r0: usize, r1: usize, c0: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    [
        [
            c(1, 2, 1, 2) / det,
            -c(0, 2, 1, 2) / det,
            c(0, 1, 1, 2) / det,
        ],
        [
            -c(1, 2, 0, 2) / det,
            c(0, 2, 0, 2) / det,
            -c(0, 1, 0, 2) / det,
        ],
        [
            c(1, 2, 0, 1) / det,
            -c(0, 2, 0, 1) / det,
            c(0, 1, 0, 1) / det,
        ],
    ]
}

/// The polynomial expansion of every pixel: 5 coefficients (r2..r6 in OpenCV's naming; the
/// constant term is not kept), interleaved.
fn poly_exp(src: &[f32], width: usize, height: usize, n: usize, sigma: f64) -> Vec<f32> {
    let (g, xg, xxg, [ig11, ig03, ig33, ig55]) = prepare_gaussian(n, sigma);
    let (g, xg, xxg) = (&g[n..], &xg[n..], &xxg[n..]);
    let mut dst = vec![0f32; width * height * 5];
    // One row of vertical sums (3 per pixel) with n pixels of border on each side.
    let mut buf = vec![0f32; (width + 2 * n) * 3];
    let off = n * 3;
    for y in 0..height {
        let srow0 = &src[y * width..(y + 1) * width];
        {
            let row = &mut buf[off..off + width * 3];
            for x in 0..width {
                row[x * 3] = srow0[x] * g[0];
                row[x * 3 + 1] = 0.0;
                row[x * 3 + 2] = 0.0;
            }
        }
        for k in 1..=n {
            let (g0, g1, g2) = (g[k], xg[k], xxg[k]);
            let a = &src[y.saturating_sub(k) * width..][..width];
            let b = &src[(y + k).min(height - 1) * width..][..width];
            let row = &mut buf[off..off + width * 3];
            for x in 0..width {
                let p = a[x] + b[x];
                row[x * 3] += g0 * p;
                row[x * 3 + 1] += g1 * (b[x] - a[x]);
                row[x * 3 + 2] += g2 * p;
            }
        }
        // Replicate the first and last pixel's sums into the borders.
        for x in 0..n * 3 {
            buf[off - 1 - x] = buf[off + 2 - x];
            buf[off + width * 3 + x] = buf[off + width * 3 + x - 3];
        }
        let row = |i: isize| buf[(off as isize + i) as usize];
        let drow = &mut dst[y * width * 5..(y + 1) * width * 5];
        for x in 0..width as isize {
            let mut b1 = row(x * 3) as f64 * g[0] as f64;
            let mut b2 = 0f64;
            let mut b3 = row(x * 3 + 1) as f64 * g[0] as f64;
            let mut b4 = 0f64;
            let mut b5 = row(x * 3 + 2) as f64 * g[0] as f64;
            let mut b6 = 0f64;
            for k in 1..=n as isize {
                let ku = k as usize;
                let tg = (row((x + k) * 3) + row((x - k) * 3)) as f64;
                b1 += tg * g[ku] as f64;
                b4 += tg * xxg[ku] as f64;
                b2 += (row((x + k) * 3) - row((x - k) * 3)) as f64 * xg[ku] as f64;
                b3 += (row((x + k) * 3 + 1) + row((x - k) * 3 + 1)) as f64 * g[ku] as f64;
                b6 += (row((x + k) * 3 + 1) - row((x - k) * 3 + 1)) as f64 * xg[ku] as f64;
                b5 += (row((x + k) * 3 + 2) + row((x - k) * 3 + 2)) as f64 * g[ku] as f64;
            }
            let d = &mut drow[x as usize * 5..x as usize * 5 + 5];
            d[1] = (b2 * ig11) as f32;
            d[0] = (b3 * ig11) as f32;
            d[3] = (b1 * ig03 + b4 * ig33) as f32;
            d[2] = (b1 * ig03 + b5 * ig33) as f32;
            d[4] = (b6 * ig55) as f32;
        }
    }
    dst
}

/// Per pixel, the 2x2 system G and right-hand side h of the displacement estimate given the
/// current flow (OpenCV's FarnebackUpdateMatrices), for rows y0..y1.
fn update_matrices(r0: &[f32], r1: &[f32], flow: &Flow, m: &mut [f32], y0: usize, y1: usize) {
    const BORDER: [f32; 5] = [0.14, 0.14, 0.4472, 0.4472, 0.4472];
    let (width, height) = (flow.width, flow.height);
    let step1 = width * 5;
    for y in y0..y1 {
        for x in 0..width {
            let (dx, dy) = (
                flow.data[(y * width + x) * 2],
                flow.data[(y * width + x) * 2 + 1],
            );
            let mut fx = x as f32 + dx;
            let mut fy = y as f32 + dy;
            let x1 = fx.floor() as isize;
            let y1i = fy.floor() as isize;
            let p0 = &r0[(y * width + x) * 5..(y * width + x) * 5 + 5];
            let (mut r2, mut r3, mut r4, mut r5, mut r6);
            fx -= x1 as f32;
            fy -= y1i as f32;
            if x1 >= 0 && (x1 as usize) < width - 1 && y1i >= 0 && (y1i as usize) < height - 1 {
                let base = y1i as usize * step1 + x1 as usize * 5;
                let a00 = (1.0 - fx) * (1.0 - fy);
                let a01 = fx * (1.0 - fy);
                let a10 = (1.0 - fx) * fy;
                let a11 = fx * fy;
                let at = |i: usize| {
                    a00 * r1[base + i]
                        + a01 * r1[base + 5 + i]
                        + a10 * r1[base + step1 + i]
                        + a11 * r1[base + step1 + 5 + i]
                };
                r2 = at(0);
                r3 = at(1);
                r4 = at(2);
                r5 = at(3);
                r6 = at(4);
                r4 = (p0[2] + r4) * 0.5;
                r5 = (p0[3] + r5) * 0.5;
                r6 = (p0[4] + r6) * 0.25;
            } else {
                r2 = 0.0;
                r3 = 0.0;
                r4 = p0[2];
                r5 = p0[3];
                r6 = p0[4] * 0.5;
            }
            r2 = (p0[0] - r2) * 0.5;
            r3 = (p0[1] - r3) * 0.5;
            r2 += r4 * dy + r6 * dx;
            r3 += r6 * dy + r5 * dx;
            let b = BORDER.len();
            if x < b || x >= width - b || y < b || y >= height - b {
                let scale = (if x < b { BORDER[x] } else { 1.0 })
                    * (if x >= width - b {
                        BORDER[width - x - 1]
                    } else {
                        1.0
                    })
                    * (if y < b { BORDER[y] } else { 1.0 })
                    * (if y >= height - b {
                        BORDER[height - y - 1]
                    } else {
                        1.0
                    });
                r2 *= scale;
                r3 *= scale;
                r4 *= scale;
                r5 *= scale;
                r6 *= scale;
            }
            let o = &mut m[(y * width + x) * 5..(y * width + x) * 5 + 5];
            o[0] = r4 * r4 + r6 * r6;
            o[1] = (r4 + r5) * r6;
            o[2] = r5 * r5 + r6 * r6;
            o[3] = r4 * r2 + r6 * r3;
            o[4] = r6 * r2 + r5 * r3;
        }
    }
}

/// Averages G and h over a `block` x `block` box (borders replicated) and solves for the flow
/// (OpenCV's FarnebackUpdateFlow_Blur); with `update`, recomputes the matrices behind it.
fn update_flow_blur(
    r0: &[f32],
    r1: &[f32],
    flow: &mut Flow,
    m: &mut [f32],
    block: usize,
    update: bool,
) {
    let (width, height) = (flow.width, flow.height);
    let mh = block / 2;
    let min_stripe = ((1usize << 10) / width).max(block);
    let scale = 1.0 / (block * block) as f64;
    let off = (mh + 1) * 5;
    let mut vsum = vec![0f64; (width + mh * 2 + 2) * 5];
    // Row y of the matrices, borrowed only until the next update of `m` below.
    let mrow = |y: usize| y * width * 5..(y + 1) * width * 5;
    {
        let s0 = &m[mrow(0)];
        for x in 0..width * 5 {
            vsum[off + x] = s0[x] as f64 * (mh + 2) as f64;
        }
        for y in 1..mh {
            let s = &m[mrow(y.min(height - 1))];
            for x in 0..width * 5 {
                vsum[off + x] += s[x] as f64;
            }
        }
    }
    let mut y0 = 0usize;
    for y in 0..height {
        let s0 = &m[mrow((y as isize - mh as isize - 1).max(0) as usize)];
        let s1 = &m[mrow((y + mh).min(height - 1))];
        for x in 0..width * 5 {
            vsum[off + x] += s1[x] as f64 - s0[x] as f64;
        }
        for x in 0..(mh + 1) * 5 {
            vsum[off - 1 - x] = vsum[off + 4 - x];
            vsum[off + width * 5 + x] = vsum[off + width * 5 + x - 5];
        }
        let v = |i: isize| vsum[(off as isize + i) as usize];
        let k = (mh + 2) as f64;
        let (mut g11, mut g12, mut g22, mut h1, mut h2) =
            (v(0) * k, v(1) * k, v(2) * k, v(3) * k, v(4) * k);
        for x in 1..mh as isize {
            g11 += v(x * 5);
            g12 += v(x * 5 + 1);
            g22 += v(x * 5 + 2);
            h1 += v(x * 5 + 3);
            h2 += v(x * 5 + 4);
        }
        for x in 0..width as isize {
            let (a, b) = ((x + mh as isize) * 5, (x - mh as isize) * 5 - 5);
            g11 += v(a) - v(b);
            g12 += v(a + 1) - v(b + 1);
            g22 += v(a + 2) - v(b + 2);
            h1 += v(a + 3) - v(b + 3);
            h2 += v(a + 4) - v(b + 4);
            let (g11_, g12_, g22_, h1_, h2_) = (
                g11 * scale,
                g12 * scale,
                g22 * scale,
                h1 * scale,
                h2 * scale,
            );
            let idet = 1.0 / (g11_ * g22_ - g12_ * g12_ + 1e-3);
            let i = (y * width + x as usize) * 2;
            flow.data[i] = ((g11_ * h2_ - g12_ * h1_) * idet) as f32;
            flow.data[i + 1] = ((g22_ * h1_ - g12_ * h2_) * idet) as f32;
        }
        let y1 = if y == height - 1 {
            height
        } else {
            y.saturating_sub(block)
        };
        if update && (y1 == height || y1 >= y0 + min_stripe) {
            update_matrices(r0, r1, flow, m, y0, y1);
            y0 = y1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth pattern shifted by (sx, sy) pixels.
    fn pattern(w: usize, h: usize, sx: f32, sy: f32) -> Gray {
        let data = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32 - sx, (i / w) as f32 - sy);
                128.0
                    + 60.0 * (x * 0.21).sin() * (y * 0.17).cos()
                    + 30.0 * (x * 0.05 + y * 0.08).sin()
            })
            .collect();
        Gray {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn a_known_shift_is_recovered_inside_the_frame() {
        let (a, b) = (pattern(152, 113, 0.0, 0.0), pattern(152, 113, 1.5, -0.75));
        let f = farneback(&a, &b, &FarnebackParams::REFERENCE).unwrap();
        // Away from the borders (where the window leaves the frame) the field is the shift.
        let (mut ex, mut ey, mut n) = (0f64, 0f64, 0);
        for y in 20..93 {
            for x in 20..132 {
                let i = (y * 152 + x) * 2;
                ex += (f.data[i] - 1.5).abs() as f64;
                ey += (f.data[i + 1] + 0.75).abs() as f64;
                n += 1;
            }
        }
        assert!(
            ex / n as f64 <= 0.1 && ey / (n as f64) <= 0.1,
            "{} {}",
            ex / n as f64,
            ey / n as f64
        );
    }

    #[test]
    fn the_moment_inverse_matches_a_direct_inverse() {
        // For n = 5, sigma = 1.1 the known OpenCV values of ig11, ig03, ig33, ig55 satisfy
        // G * invG = I on the 3x3 block: check through the block itself.
        let (_, _, _, [ig11, ig03, ig33, ig55]) = prepare_gaussian(5, 1.1);
        assert!(ig11 > 0.0 && ig33 > 0.0 && ig55 > 0.0 && ig03 < 0.0);
    }

    /// An rgb8 frame of [`pattern`] at 160x120, shifted by `sx` pixels.
    fn rgb(sx: f32) -> image::RgbImage {
        let data = pattern(160, 120, sx, 0.0)
            .data
            .iter()
            .flat_map(|&v| [v as u8; 3])
            .collect();
        image::RgbImage::from_raw(160, 120, data).unwrap()
    }

    #[test]
    fn the_stack_warms_up_keeps_the_newest_fields_and_restarts_after_a_gap() {
        let p = FarnebackParams::REFERENCE;
        let mut s = FlowStack::new(FlowInput::REFERENCE, p, 3, 100_000_000);
        let dt = 66_000_000;
        // depth + 1 frames before the first stack.
        for k in 0..3 {
            assert!(s
                .push((&rgb(k as f32)).into(), Some(k * dt))
                .unwrap()
                .is_none());
        }
        let st = s.push((&rgb(3.0)).into(), Some(3 * dt)).unwrap().unwrap();
        assert_eq!((st.depth, st.width, st.height), (3, 152, 113));
        assert_eq!(st.dx.len(), 3 * 152 * 113);
        // The scene moves right by a pixel a frame: dx is about 1 inside the frame, dy about 0.
        let mid = |v: &[f32], c: usize| v[c * 152 * 113 + 56 * 152 + 76];
        assert!((mid(&st.dx, 2) - 1.0).abs() < 0.3 && mid(&st.dy, 2).abs() < 0.3);
        assert!(s.push((&rgb(4.0)).into(), Some(4 * dt)).unwrap().is_some());
        // A gap longer than max_gap_ns, and a stamp that goes back, restart the history.
        assert!(s.push((&rgb(5.0)).into(), Some(10 * dt)).unwrap().is_none());
        assert_eq!(s.warming_up(), 3);
        s.push((&rgb(6.0)).into(), Some(11 * dt)).unwrap();
        assert!(s.push((&rgb(7.0)).into(), Some(5 * dt)).unwrap().is_none());
        assert_eq!(s.warming_up(), 3);
    }

    #[test]
    fn bad_parameters_and_frames_are_errors() {
        let a = pattern(40, 40, 0.0, 0.0);
        let p = FarnebackParams {
            winsize: 14,
            ..FarnebackParams::REFERENCE
        };
        assert!(matches!(farneback(&a, &a, &p), Err(FlowError::Param(_))));
        let b = pattern(41, 40, 0.0, 0.0);
        assert!(matches!(
            farneback(&a, &b, &FarnebackParams::REFERENCE),
            Err(FlowError::SizeMismatch(..))
        ));
        // Two equal frames: no motion, but in the last row and column, where OpenCV's rule
        // (kept here) has no next pixel to interpolate with.
        let still = farneback(&a, &a, &FarnebackParams::REFERENCE).unwrap();
        for y in 0..30 {
            for x in 0..30 {
                let i = (y * 40 + x) * 2;
                assert!(still.data[i].abs() < 1e-3 && still.data[i + 1].abs() < 1e-3);
            }
        }
    }

    #[test]
    fn the_motion_residual_is_what_the_flow_does_not_explain() {
        let (a, b) = (pattern(152, 113, 0.0, 0.0), pattern(152, 113, 1.5, -0.75));
        let p = FarnebackParams::REFERENCE;
        // The same frame twice: nothing moves, nothing is left (the floor, ln 1e-6).
        let still = motion_residual(&a, &a, &Flow::zeros(152, 113));
        assert!((still - RESIDUAL_FLOOR.ln()).abs() < 1e-9, "{still}");
        // A shift the flow recovers leaves far less than the same pair taken as still.
        let moved = motion_residual(&a, &b, &farneback(&a, &b, &p).unwrap());
        let unexplained = motion_residual(&a, &b, &Flow::zeros(152, 113));
        assert!(moved < unexplained - 1.0, "{moved} {unexplained}");
        // Specks that appear in the second frame only (snowflakes) are left over.
        let mut c = b.clone();
        for i in (0..c.data.len()).step_by(37) {
            c.data[i] = 255.0;
        }
        let specks = motion_residual(&a, &c, &farneback(&a, &c, &p).unwrap());
        assert!(specks > moved + 0.5, "{specks} {moved}");
    }

    #[test]
    fn the_fine_residual_sees_specks_on_a_whitened_scene() {
        let (a, b) = (pattern(152, 113, 0.0, 0.0), pattern(152, 113, 1.5, -0.75));
        let p = FarnebackParams::REFERENCE;
        let stat =
            |x: &Gray, y: &Gray, s| residual_statistic(x, y, &farneback(x, y, &p).unwrap(), s);
        // `mean` is the shipped motion residual, bit for bit.
        let f = farneback(&a, &b, &p).unwrap();
        assert_eq!(
            residual_statistic(&a, &b, &f, ResidualStatistic::Mean),
            motion_residual(&a, &b, &f)
        );
        // Snow as generated: the scene whitened (less contrast), isolated pixels white.
        let whiten = |g: &Gray| Gray {
            data: g.data.iter().map(|v| v * 0.7 + 0.3 * 255.0).collect(),
            ..g.clone()
        };
        let (wa, mut wb) = (whiten(&a), whiten(&b));
        for i in (0..wb.data.len()).step_by(67) {
            wb.data[i] = 255.0;
        }
        let clear = stat(&a, &b, ResidualStatistic::Fine);
        let snow = stat(&wa, &wb, ResidualStatistic::Fine);
        assert!(snow > clear + 0.5, "fine: snow {snow}, clear {clear}");
        // Every statistic is ordered as its definition says: fine <= mean <= ... for one pair.
        let mean = stat(&wa, &wb, ResidualStatistic::Mean);
        let p99 = stat(&wa, &wb, ResidualStatistic::P99);
        assert!(snow <= mean && mean <= p99, "{snow} {mean} {p99}");
    }

    #[test]
    fn the_relative_residual_divides_the_scenes_contrast_out() {
        let (a, b) = (pattern(152, 113, 0.0, 0.0), pattern(152, 113, 1.5, -0.75));
        let f = farneback(&a, &b, &FarnebackParams::REFERENCE).unwrap();
        // The same scene and flow at 40 % of the contrast: `p99` falls by ln 0.4, the relative
        // residual stays (both percentiles scale alike).
        let dim = |g: &Gray| Gray {
            data: g.data.iter().map(|v| 128.0 + 0.4 * (v - 128.0)).collect(),
            ..g.clone()
        };
        let (da, db) = (dim(&a), dim(&b));
        let stat = |x: &Gray, y: &Gray, s| residual_statistic(x, y, &f, s);
        let p99 = stat(&a, &b, ResidualStatistic::P99) - stat(&da, &db, ResidualStatistic::P99);
        assert!((p99 - -(0.4f64.ln())).abs() < 1e-3, "{p99}");
        let rel = stat(&a, &b, ResidualStatistic::P99Relative);
        assert!((rel - stat(&da, &db, ResidualStatistic::P99Relative)).abs() < 1e-4);
        // Specks in the second frame: far more residual than the scene's edges explain.
        let mut c = b.clone();
        for i in (0..c.data.len()).step_by(37) {
            c.data[i] = 255.0;
        }
        let specks = stat(&a, &c, ResidualStatistic::P99Relative);
        assert!(specks > rel + 1.0, "{specks} {rel}");
        // A flat frame: the divisor's floor, one grey level per pixel.
        let flat = Gray {
            data: vec![100.0; 152 * 113],
            ..a.clone()
        };
        let zero = Flow::zeros(152, 113);
        let mut lit = flat.clone();
        lit.data.iter_mut().for_each(|v| *v += 10.0);
        let r = residual_statistic(&flat, &lit, &zero, ResidualStatistic::P99Relative);
        assert!((r - (10.0 + RESIDUAL_FLOOR).ln()).abs() < 1e-6, "{r}");
        assert_eq!(
            "p99_relative".parse::<ResidualStatistic>().unwrap(),
            ResidualStatistic::P99Relative
        );
        assert!("p98"
            .parse::<ResidualStatistic>()
            .unwrap_err()
            .to_string()
            .contains("p99_relative"));
    }

    /// The median of 9 values by a 19-exchange sorting network (Paeth; Devillard's `opt_med9`):
    /// the reference the fast 3x3 median is checked against.
    fn median9(mut p: [f32; 9]) -> f32 {
        let mut sort = |a: usize, b: usize| {
            let (lo, hi) = (p[a].min(p[b]), p[a].max(p[b]));
            p[a] = lo;
            p[b] = hi;
        };
        for (a, b) in [
            (1, 2),
            (4, 5),
            (7, 8),
            (0, 1),
            (3, 4),
            (6, 7),
            (1, 2),
            (4, 5),
            (7, 8),
            (0, 3),
            (5, 8),
            (4, 7),
            (3, 6),
            (1, 4),
            (2, 5),
            (4, 7),
            (4, 2),
            (6, 4),
            (4, 2),
        ] {
            sort(a, b);
        }
        p[4]
    }

    #[test]
    fn percentile_and_median_follow_numpy_and_opencv() {
        let mut v: Vec<f32> = (0..101).rev().map(|i| i as f32).collect();
        assert!((percentile(&mut v, 0.99) - 99.0).abs() < 1e-9);
        let mut v = vec![0.0f32, 10.0];
        assert!((percentile(&mut v, 0.25) - 2.5).abs() < 1e-9);
        // One bright pixel is removed by the 3x3 median; a 3-pixel-wide bar is kept.
        let mut m = vec![0.0f32; 7 * 7];
        m[3 * 7 + 3] = 9.0;
        assert!(median3x3(&m, 7, 7).iter().all(|&v| v == 0.0));
        let bar: Vec<f32> = (0..49)
            .map(|i| if (2..5).contains(&(i % 7)) { 1.0 } else { 0.0 })
            .collect();
        assert_eq!(median3x3(&bar, 7, 7), bar);
        assert_eq!(
            "fine".parse::<ResidualStatistic>(),
            Ok(ResidualStatistic::Fine)
        );
        assert!("median".parse::<ResidualStatistic>().is_err());
        // The sorting network agrees with a full sort on every arrangement tried.
        let mut state = 12345u64;
        for _ in 0..2000 {
            let v: [f32; 9] = std::array::from_fn(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 7) as f32
            });
            let mut sorted = v;
            sorted.sort_by(f32::total_cmp);
            assert_eq!(median9(v), sorted[4], "{v:?}");
        }
        // The fast 3x3 median is the network's on every pixel of a random map, border included.
        let (w, h) = (23, 17);
        let map: Vec<f32> = (0..w * h)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 11) as f32
            })
            .collect();
        let fast = median3x3(&map, w, h);
        for y in 0..h {
            for x in 0..w {
                let at = |dx: isize, dy: isize| {
                    let xx = (x as isize + dx).clamp(0, w as isize - 1) as usize;
                    let yy = (y as isize + dy).clamp(0, h as isize - 1) as usize;
                    map[yy * w + xx]
                };
                let n = [
                    at(-1, -1),
                    at(0, -1),
                    at(1, -1),
                    at(-1, 0),
                    at(0, 0),
                    at(1, 0),
                    at(-1, 1),
                    at(0, 1),
                    at(1, 1),
                ];
                assert_eq!(fast[y * w + x], median9(n), "({x}, {y})");
            }
        }
    }

    #[test]
    fn the_stack_residual_is_the_mean_over_its_pairs() {
        let mut s = FlowStack::new(
            FlowInput::REFERENCE,
            FarnebackParams::REFERENCE,
            2,
            i64::MAX,
        );
        // Still frames then a moving one: the stack's residual rises with the moving pair.
        for _ in 0..2 {
            assert!(s.push((&rgb(0.0)).into(), None).unwrap().is_none());
        }
        let still = s.push((&rgb(0.0)).into(), None).unwrap().unwrap();
        let moving = s.push((&rgb(2.0)).into(), None).unwrap().unwrap();
        // Equal frames leave almost nothing (Farnebäck's last row and column are not quite 0).
        assert!(still.residual < (1e-4f64).ln(), "{}", still.residual);
        assert!(
            moving.residual > still.residual + 1.0,
            "{} {}",
            moving.residual,
            still.residual
        );
        // The motion: none while still (the floor), then horizontal only: a 2 px shift in one of
        // the two pairs, about 1 px on average (Farnebäck recovers less near the borders).
        for m in still.motion {
            assert!((m - MOTION_FLOOR.ln()).abs() < 0.05, "{:?}", still.motion);
        }
        let [h, v] = moving.motion.map(|m| m.exp() - MOTION_FLOOR);
        assert!((0.6..1.1).contains(&h), "{h}");
        assert!(v < 0.1, "{v}");
    }

    #[test]
    fn the_mean_absolute_flow_is_taken_per_component() {
        let f = Flow {
            width: 2,
            height: 1,
            data: vec![1.0, -0.5, -3.0, 0.5],
        };
        assert_eq!(f.mean_abs(), [2.0, 0.5]);
    }
}
