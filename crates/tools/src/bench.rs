//! `vae-ood bench`: per-stage latency of the node's pipeline on synthetic raw camera frames,
//! in one process (decode, preprocess, inference, total), and the baseline the fused
//! decode + preprocess path is measured against in the same run: decoding to an RGB image,
//! then [`vae_ood_core::preprocess::reference`].

use crate::{Error, Result};
use std::time::{Duration, Instant};
use vae_ood_core::detector::Detector;
use vae_ood_core::frame::{decode, Encoding, FrameData, RawImage};
use vae_ood_core::monitor::{Fault, Monitor, MonitorConfig};
use vae_ood_core::preprocess::reference;
use vae_ood_core::stats::{percentiles, Percentiles};

/// Per-stage latency percentiles, milliseconds.
#[derive(Debug, Clone)]
pub struct StageLatency {
    pub decode: Percentiles,
    pub preprocess: Percentiles,
    pub inference: Percentiles,
    pub total: Percentiles,
    /// Decode + preprocess as the node does it (checked frame read in place, fused filter).
    pub prepare: Percentiles,
    /// The same frames through the baseline: full decode to RGB, then the reference filter.
    pub prepare_baseline: Percentiles,
}

/// Frames that warm caches and allocators before timing starts.
const WARM_UP: usize = 10;

/// Times `frames` frames of `width`x`height` in `encoding` through a monitor.
pub fn stage_latency(
    detector: Box<dyn Detector>,
    width: u32,
    height: u32,
    encoding: &str,
    frames: usize,
) -> Result<StageLatency> {
    if frames == 0 {
        return Err(Error::Input("--frames must be at least 1".into()));
    }
    let bpp = Encoding::parse(encoding)
        .map_err(|e| Error::Input(e.to_string()))?
        .bytes_per_pixel() as u32;
    let step = width * bpp;
    // Deterministic frames with structure (gradients + a moving bar), not constant images.
    let make = |i: usize| -> Vec<u8> {
        (0..height * step)
            .map(|k| {
                let (y, x) = (k / step, (k % step) / bpp);
                ((x + y + 7 * i as u32) % 256) as u8
                    ^ if (x / 16 + i as u32).is_multiple_of(8) {
                        0x55
                    } else {
                        0
                    }
            })
            .collect()
    };
    let data: Vec<Vec<u8>> = (0..16).map(make).collect();
    let spec = detector.bundle().manifest.input.clone();
    let mut monitor = Monitor::new(detector, MonitorConfig::default())?;
    let (mut dec, mut pre, mut inf, mut tot) = (vec![], vec![], vec![], vec![]);
    let (mut prep, mut base) = (vec![], vec![]);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for i in 0..frames + WARM_UP {
        let raw = RawImage {
            width,
            height,
            encoding,
            is_bigendian: false,
            step,
            data: &data[i % data.len()],
        };
        let t = Instant::now();
        let v = monitor.process(&FrameData::Raw(raw), None);
        let total = t.elapsed();
        let t = Instant::now();
        let img = decode(&FrameData::Raw(raw)).map_err(|e| Error::Input(e.to_string()))?;
        std::hint::black_box(reference::preprocess(&img, &spec));
        let baseline = t.elapsed();
        match v.fault {
            // The flow detector fills its stack over the first frames (fewer than WARM_UP).
            Some(Fault::WarmingUp { .. }) if i < WARM_UP => {}
            Some(f) => return Err(Error::Drive(format!("benchmark frame faulted: {f}"))),
            None => {}
        }
        if i >= WARM_UP {
            dec.push(ms(v.timing.decode));
            pre.push(ms(v.timing.preprocess));
            inf.push(ms(v.timing.inference));
            tot.push(ms(total));
            prep.push(ms(v.timing.decode + v.timing.preprocess));
            base.push(ms(baseline));
        }
    }
    let p = |v: Vec<f64>| percentiles(v).expect("at least one timed frame");
    Ok(StageLatency {
        decode: p(dec),
        preprocess: p(pre),
        inference: p(inf),
        total: p(tot),
        prepare: p(prep),
        prepare_baseline: p(base),
    })
}
