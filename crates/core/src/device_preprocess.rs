//! Preprocessing on an NVIDIA GPU (issue 17): the raw frame goes to the device in one copy and
//! a kernel resamples, converts and normalises it there, one thread per output pixel, so that
//! only the encoder's input (a few KB) comes back instead of the CPU reading the whole frame.
//!
//! The arithmetic is [`crate::preprocess::Preprocessor`]'s (the same separable taps, channel
//! order and normalisation) summed in another order: each output pixel sums its rows of
//! horizontally filtered taps. [`reference`] is that kernel's loop in Rust, checked against the
//! CPU path on every build (no GPU needed), and the kernel against it on a GPU. [`KERNEL`]
//! compiles with NVRTC (tested wherever libnvrtc loads, a PyPI wheel is enough).
//!
//! Whether it pays is measured, not assumed (`vae-ood bench --backend cuda` times both paths):
//! see docs/gpu.md for the figure and the decision.

use crate::frame::Pixels;
use crate::preprocess::{
    axis_weights, crop_region, normalisation, ChannelOrder, InputSpec, Layout,
};

/// The CUDA C source of the preprocessing kernel (`vae_ood_preprocess`).
pub const KERNEL: &str = r#"
extern "C" __global__ void vae_ood_preprocess(
    const unsigned char* src, int step, int bpp, int r_off, int g_off, int b_off, int crop_x,
    const int* x_start, const int* x_len, const int* x_offset, const float* x_weights,
    const int* y_start, const int* y_len, const int* y_offset, const float* y_weights,
    int width, int height, int channels, int order, int nhwc,
    float s0, float s1, float s2, float b0, float b1, float b2,
    float* out)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= width * height) return;
    int x = i % width, y = i / width;
    const int xs = crop_x + x_start[x], xl = x_len[x], xo = x_offset[x];
    float r = 0.0f, g = 0.0f, b = 0.0f;
    for (int j = 0; j < y_len[y]; j++) {
        const unsigned char* p = src + (size_t)(y_start[y] + j) * step + (size_t)xs * bpp;
        float rr = 0.0f, gg = 0.0f, bb = 0.0f;
        for (int k = 0; k < xl; k++, p += bpp) {
            float w = x_weights[xo + k];
            rr = __fmaf_rn(w, (float)p[r_off], rr);
            gg = __fmaf_rn(w, (float)p[g_off], gg);
            bb = __fmaf_rn(w, (float)p[b_off], bb);
        }
        float w = y_weights[y_offset[y] + j];
        r = __fmaf_rn(w, rr, r);
        g = __fmaf_rn(w, gg, g);
        b = __fmaf_rn(w, bb, b);
    }
    float v[3];
    if (order == 1) { v[0] = b; v[1] = g; v[2] = r; }
    else if (order == 2) { v[0] = 0.299f * r + 0.587f * g + 0.114f * b; v[1] = 0.0f; v[2] = 0.0f; }
    else { v[0] = r; v[1] = g; v[2] = b; }
    float s[3] = {s0, s1, s2}, o[3] = {b0, b1, b2};
    for (int c = 0; c < channels; c++) {
        int idx = nhwc ? i * channels + c : c * width * height + i;
        out[idx] = v[c] * s[c] + o[c];
    }
}
"#;

/// The kernel's name in [`KERNEL`].
pub const KERNEL_NAME: &str = "vae_ood_preprocess";

/// The resampling taps of one source size, as the flat tables the kernel reads: per output
/// column (row), its first source column (row), its number of taps and where its weights start.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatTaps {
    pub source: (u32, u32),
    /// First cropped column: `x_start` is relative to it, `y_start` absolute.
    pub crop_x: i32,
    pub x_start: Vec<i32>,
    pub x_len: Vec<i32>,
    pub x_offset: Vec<i32>,
    pub x_weights: Vec<f32>,
    pub y_start: Vec<i32>,
    pub y_len: Vec<i32>,
    pub y_offset: Vec<i32>,
    pub y_weights: Vec<f32>,
}

impl FlatTaps {
    pub fn new(width: u32, height: u32, spec: &InputSpec) -> Self {
        let (crop_x, crop_y, crop_w, crop_h) = crop_region(width, height, spec);
        let flat = |taps: Vec<crate::preprocess::Tap>| {
            let (mut start, mut len, mut offset, mut weights) = (vec![], vec![], vec![], vec![]);
            for t in taps {
                start.push(t.start as i32);
                len.push(t.weights.len() as i32);
                offset.push(weights.len() as i32);
                weights.extend(t.weights);
            }
            (start, len, offset, weights)
        };
        let (x_start, x_len, x_offset, x_weights) = flat(axis_weights(
            0,
            crop_w as usize,
            spec.width as usize,
            spec.filter,
        ));
        let (y_start, y_len, y_offset, y_weights) = flat(axis_weights(
            crop_y as usize,
            crop_h as usize,
            spec.height as usize,
            spec.filter,
        ));
        Self {
            source: (width, height),
            crop_x: crop_x as i32,
            x_start,
            x_len,
            x_offset,
            x_weights,
            y_start,
            y_len,
            y_offset,
            y_weights,
        }
    }
}

/// The kernel's scalar parameters for one frame encoding and input spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelParams {
    pub bpp: i32,
    pub rgb_offsets: [i32; 3],
    pub channels: i32,
    /// 0 RGB, 1 BGR, 2 grey.
    pub order: i32,
    pub nhwc: i32,
    pub scale: [f32; 3],
    pub bias: [f32; 3],
}

impl KernelParams {
    pub fn new(px: &Pixels<'_>, spec: &InputSpec) -> Self {
        let (scale, bias) = normalisation(spec);
        Self {
            bpp: px.encoding().bytes_per_pixel() as i32,
            rgb_offsets: px.rgb_offsets().map(|o| o as i32),
            channels: spec.channels() as i32,
            order: match spec.channel_order {
                ChannelOrder::Rgb => 0,
                ChannelOrder::Bgr => 1,
                ChannelOrder::Gray => 2,
            },
            nhwc: i32::from(spec.layout == Layout::Nhwc),
            scale,
            bias,
        }
    }
}

/// The kernel's computation in Rust, thread by thread in the same order (fused multiply-adds
/// included): the CPU reference of what the GPU computes.
pub fn reference(px: Pixels<'_>, spec: &InputSpec) -> Vec<f32> {
    let taps = FlatTaps::new(px.width(), px.height(), spec);
    let k = KernelParams::new(&px, spec);
    let (data, step) = px.rows_with_step();
    let (w, h) = (spec.width as usize, spec.height as usize);
    let c = k.channels as usize;
    let mut out = vec![0f32; w * h * c];
    let [ro, go, bo] = k.rgb_offsets.map(|o| o as usize);
    let bpp = k.bpp as usize;
    for i in 0..w * h {
        let (x, y) = (i % w, i / w);
        let xs = (taps.crop_x + taps.x_start[x]) as usize;
        let (xl, xo) = (taps.x_len[x] as usize, taps.x_offset[x] as usize);
        let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
        for j in 0..taps.y_len[y] as usize {
            let row = (taps.y_start[y] as usize + j) * step + xs * bpp;
            let (mut rr, mut gg, mut bb) = (0f32, 0f32, 0f32);
            for q in 0..xl {
                let wx = taps.x_weights[xo + q];
                let p = &data[row + q * bpp..];
                rr = wx.mul_add(f32::from(p[ro]), rr);
                gg = wx.mul_add(f32::from(p[go]), gg);
                bb = wx.mul_add(f32::from(p[bo]), bb);
            }
            let wy = taps.y_weights[taps.y_offset[y] as usize + j];
            r = wy.mul_add(rr, r);
            g = wy.mul_add(gg, g);
            b = wy.mul_add(bb, b);
        }
        let v = match k.order {
            1 => [b, g, r],
            2 => [0.299 * r + 0.587 * g + 0.114 * b, 0.0, 0.0],
            _ => [r, g, b],
        };
        for (ch, value) in v.iter().enumerate().take(c) {
            let idx = if k.nhwc == 1 {
                i * c + ch
            } else {
                ch * w * h + i
            };
            out[idx] = value * k.scale[ch] + k.bias[ch];
        }
    }
    out
}

#[cfg(feature = "gpu")]
pub use self::gpu::{
    compare_with_cpu, DeviceComparison, DevicePreprocessError, DevicePreprocessor, DeviceTiming,
};

#[cfg(feature = "gpu")]
mod gpu {
    use super::{FlatTaps, KernelParams, KERNEL, KERNEL_NAME};
    use crate::frame::Pixels;
    use crate::preprocess::{InputSpec, Preprocessor};
    use crate::stats::{percentiles, Percentiles};
    use cudarc::driver::{
        CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
    };
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Where one frame's device preprocessing spent its time.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct DeviceTiming {
        /// The frame's bytes to the device.
        pub upload: Duration,
        /// The kernel and the input tensor back to the host.
        pub kernel_and_download: Duration,
    }

    /// The tap tables of one source size, on the device.
    struct DeviceTaps {
        host: FlatTaps,
        x: [CudaSlice<i32>; 3],
        xw: CudaSlice<f32>,
        y: [CudaSlice<i32>; 3],
        yw: CudaSlice<f32>,
    }

    /// Runs [`KERNEL`] on the first GPU for one input spec.
    pub struct DevicePreprocessor {
        spec: InputSpec,
        stream: Arc<CudaStream>,
        function: CudaFunction,
        taps: Option<DeviceTaps>,
        frame: Option<CudaSlice<u8>>,
        out: CudaSlice<f32>,
    }

    /// A CUDA call of the device preprocessing failed; the GPU path is then unusable here and
    /// the CPU preprocessing (`preprocess::Preprocessor`) is the one to use.
    #[derive(Debug, thiserror::Error)]
    pub enum DevicePreprocessError {
        #[error("device preprocessing: {what}: {source} (use the CPU preprocessing)")]
        Driver {
            what: &'static str,
            source: cudarc::driver::DriverError,
        },
        #[error("device preprocessing: NVRTC cannot compile the kernel: {0} (is libnvrtc of the bound CUDA version on the loader path?)")]
        Nvrtc(#[from] cudarc::nvrtc::CompileError),
    }

    fn e(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> DevicePreprocessError {
        move |source| DevicePreprocessError::Driver { what, source }
    }

    /// One axis's tap tables on the device: (start, len, offset) and the weights.
    fn upload_axis(
        stream: &Arc<CudaStream>,
        tables: [&[i32]; 3],
        weights: &[f32],
    ) -> Result<([CudaSlice<i32>; 3], CudaSlice<f32>), DevicePreprocessError> {
        let up = |v: &[i32]| stream.clone_htod(v).map_err(e("cannot upload the taps"));
        Ok((
            [up(tables[0])?, up(tables[1])?, up(tables[2])?],
            stream
                .clone_htod(weights)
                .map_err(e("cannot upload the taps"))?,
        ))
    }

    impl DevicePreprocessor {
        /// Compiles the kernel with NVRTC for the first GPU and allocates its output.
        pub fn new(spec: InputSpec) -> Result<Self, DevicePreprocessError> {
            let ctx = CudaContext::new(0).map_err(e("no CUDA context"))?;
            let ptx = cudarc::nvrtc::compile_ptx(KERNEL)?;
            let module = ctx.load_module(ptx).map_err(e("cannot load the kernel"))?;
            let function = module
                .load_function(KERNEL_NAME)
                .map_err(e("no kernel function"))?;
            let stream = ctx.default_stream();
            let n: usize = spec.shape().iter().product();
            let out = stream.alloc_zeros::<f32>(n).map_err(e("cannot allocate"))?;
            Ok(Self {
                spec,
                stream,
                function,
                taps: None,
                frame: None,
                out,
            })
        }

        /// The input tensor for one frame, computed on the GPU, into `out` (of the spec's
        /// size).
        pub fn run_into(
            &mut self,
            px: Pixels<'_>,
            out: &mut [f32],
        ) -> Result<DeviceTiming, DevicePreprocessError> {
            let t0 = Instant::now();
            let (data, step) = px.rows_with_step();
            let source = (px.width(), px.height());
            if self.taps.as_ref().is_none_or(|t| t.host.source != source) {
                let host = FlatTaps::new(px.width(), px.height(), &self.spec);
                let (x, xw) = upload_axis(
                    &self.stream,
                    [&host.x_start, &host.x_len, &host.x_offset],
                    &host.x_weights,
                )?;
                let (y, yw) = upload_axis(
                    &self.stream,
                    [&host.y_start, &host.y_len, &host.y_offset],
                    &host.y_weights,
                )?;
                let taps = DeviceTaps { host, x, xw, y, yw };
                self.taps = Some(taps);
            }
            if self.frame.as_ref().is_none_or(|f| f.len() < data.len()) {
                self.frame = Some(
                    self.stream
                        .alloc_zeros::<u8>(data.len())
                        .map_err(e("cannot allocate the frame"))?,
                );
            }
            let frame = self.frame.as_mut().expect("allocated above");
            self.stream
                .memcpy_htod(data, frame)
                .map_err(e("cannot upload the frame"))?;
            self.stream.synchronize().map_err(e("upload"))?;
            let t1 = Instant::now();
            let taps = self.taps.as_ref().expect("planned above");
            let k = KernelParams::new(&px, &self.spec);
            let (step, crop_x) = (step as i32, taps.host.crop_x);
            let (w, h) = (self.spec.width as i32, self.spec.height as i32);
            let [ro, go, bo] = k.rgb_offsets;
            let [s0, s1, s2] = k.scale;
            let [b0, b1, b2] = k.bias;
            let mut launch = self.stream.launch_builder(&self.function);
            launch
                .arg(&*frame)
                .arg(&step)
                .arg(&k.bpp)
                .arg(&ro)
                .arg(&go)
                .arg(&bo)
                .arg(&crop_x);
            for t in &taps.x {
                launch.arg(t);
            }
            launch.arg(&taps.xw);
            for t in &taps.y {
                launch.arg(t);
            }
            launch
                .arg(&taps.yw)
                .arg(&w)
                .arg(&h)
                .arg(&k.channels)
                .arg(&k.order)
                .arg(&k.nhwc)
                .arg(&s0)
                .arg(&s1)
                .arg(&s2)
                .arg(&b0)
                .arg(&b1)
                .arg(&b2)
                .arg(&mut self.out);
            // SAFETY: the arguments match the kernel's signature in order and type; every
            // index the kernel reads lies inside the tables and the frame (FlatTaps checks the
            // taps against the source size, Pixels the rows against the buffer).
            unsafe { launch.launch(LaunchConfig::for_num_elems((w * h) as u32)) }
                .map_err(e("kernel launch"))?;
            self.stream
                .memcpy_dtoh(&self.out, out)
                .map_err(e("cannot download the input"))?;
            self.stream.synchronize().map_err(e("kernel"))?;
            Ok(DeviceTiming {
                upload: t1 - t0,
                kernel_and_download: t1.elapsed(),
            })
        }
    }

    /// The device path against the CPU path on the same frames in the same run (`vae-ood
    /// bench --backend cuda`), latencies in ms. Lives here rather than in the CLI so that every
    /// build of the core with the `gpu` feature (CI's cuda stage, with no GPU) compiles it.
    #[derive(Debug, Clone)]
    pub struct DeviceComparison {
        pub upload: Percentiles,
        pub kernel_and_download: Percentiles,
        pub device_total: Percentiles,
        pub cpu_total: Percentiles,
        /// The largest absolute difference of any input value between the two paths.
        pub largest_difference: f32,
    }

    /// Runs both paths `runs` times over `frames` in turn, after 10 warm-up runs.
    pub fn compare_with_cpu(
        spec: &InputSpec,
        frames: &[Pixels<'_>],
        runs: usize,
    ) -> Result<DeviceComparison, DevicePreprocessError> {
        assert!(
            !frames.is_empty() && runs >= 1,
            "frames and runs must not be empty"
        );
        let mut dev = DevicePreprocessor::new(spec.clone())?;
        let mut cpu = Preprocessor::new(spec.clone());
        let n: usize = spec.shape().iter().product();
        let (mut on_gpu, mut on_cpu) = (vec![0f32; n], vec![0f32; n]);
        let (mut up, mut kern, mut dev_total, mut cpu_total) = (vec![], vec![], vec![], vec![]);
        let mut worst = 0f32;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for i in 0..runs + 10 {
            let px = frames[i % frames.len()];
            let t = Instant::now();
            let timing = dev.run_into(px, &mut on_gpu)?;
            let d = t.elapsed();
            let t = Instant::now();
            cpu.run_into(px, &mut on_cpu);
            let c = t.elapsed();
            worst = on_gpu
                .iter()
                .zip(&on_cpu)
                .fold(worst, |w, (x, y)| w.max((x - y).abs()));
            if i >= 10 {
                up.push(ms(timing.upload));
                kern.push(ms(timing.kernel_and_download));
                dev_total.push(ms(d));
                cpu_total.push(ms(c));
            }
        }
        let p = |v: Vec<f64>| percentiles(v).expect("runs >= 1");
        Ok(DeviceComparison {
            upload: p(up),
            kernel_and_download: p(kern),
            device_total: p(dev_total),
            cpu_total: p(cpu_total),
            largest_difference: worst,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::RawImage;
    use crate::preprocess::{Filter, Normalize, Preprocessor, ResizeMode};

    /// A structured frame: gradients, a bar, per-channel offsets.
    fn frame(w: u32, h: u32, bpp: usize, step: usize) -> Vec<u8> {
        let mut d = vec![0u8; step * h as usize];
        for y in 0..h as usize {
            for x in 0..w as usize {
                for c in 0..bpp {
                    d[y * step + x * bpp + c] =
                        ((x * 3 + y * 5 + c * 71) % 256) as u8 ^ if x % 17 < 4 { 0x5a } else { 0 };
                }
            }
        }
        d
    }

    /// The kernel's order of summation stays within 1e-5 of the CPU path's (pixels in [0, 1],
    /// the tolerance the fused CPU path itself is held to), for every encoding, filter, crop,
    /// channel order and layout.
    #[test]
    fn the_kernels_arithmetic_matches_the_cpu_path() {
        let mut cases = 0;
        for (w, h) in [(640, 480), (160, 120), (333, 201)] {
            for (encoding, bpp) in [("rgb8", 3), ("bgra8", 4), ("mono8", 1), ("mono16", 2)] {
                let step = w as usize * bpp + 5; // padded rows
                let data = frame(w, h, bpp, step);
                let raw = RawImage {
                    width: w,
                    height: h,
                    encoding,
                    is_bigendian: false,
                    step: step as u32,
                    data: &data,
                };
                let px = Pixels::from_raw(&raw).unwrap();
                for filter in [Filter::Area, Filter::Bilinear] {
                    for resize in [ResizeMode::Stretch, ResizeMode::CenterCrop] {
                        for (order, layout) in [
                            (ChannelOrder::Rgb, Layout::Nchw),
                            (ChannelOrder::Bgr, Layout::Nhwc),
                            (ChannelOrder::Gray, Layout::Nchw),
                        ] {
                            let c = if order == ChannelOrder::Gray { 1 } else { 3 };
                            let spec = InputSpec {
                                width: 64,
                                height: 48,
                                channel_order: order,
                                layout,
                                normalize: Normalize {
                                    mean: vec![0.25; c],
                                    std: vec![0.5; c],
                                },
                                resize,
                                filter,
                            };
                            let cpu = Preprocessor::new(spec.clone()).run(px);
                            let kernel = reference(px, &spec);
                            assert_eq!(cpu.len(), kernel.len());
                            // Normalised values are pixel / (255 * std): scale the tolerance.
                            let worst = cpu
                                .iter()
                                .zip(&kernel)
                                .map(|(a, b)| (a - b).abs())
                                .fold(0f32, f32::max);
                            assert!(
                                worst < 1e-5 / 0.5,
                                "{w}x{h} {encoding} {filter:?} {resize:?} {order:?}: {worst}"
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 3 * 4 * 2 * 2 * 3);
    }

    #[test]
    fn the_tap_tables_stay_inside_the_source() {
        let spec = InputSpec {
            width: 64,
            height: 64,
            channel_order: ChannelOrder::Rgb,
            layout: Layout::Nchw,
            normalize: Normalize::default(),
            resize: ResizeMode::CenterCrop,
            filter: Filter::Area,
        };
        let t = FlatTaps::new(640, 480, &spec);
        for x in 0..64 {
            let end = t.crop_x + t.x_start[x] + t.x_len[x];
            assert!(end <= 640 && t.x_len[x] >= 1);
        }
        for y in 0..64 {
            assert!(t.y_start[y] + t.y_len[y] <= 480);
        }
        assert_eq!(t.x_weights.len() as i32, t.x_offset[63] + t.x_len[63]);
    }
}
