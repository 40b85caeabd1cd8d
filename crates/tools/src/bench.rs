//! `vae-ood bench`: per-stage latency of the node's pipeline on synthetic raw camera frames,
//! in one process (decode, preprocess, inference, total), and the baseline the fused
//! decode + preprocess path is measured against in the same run: decoding to an RGB image,
//! then [`vae_ood_core::preprocess::reference`].

use crate::{Error, Result};
use std::time::{Duration, Instant};
use vae_ood_core::detector::Detector;
use vae_ood_core::frame::{decode, Encoding, FrameData, RawImage};
use vae_ood_core::monitor::{BatchItem, Fault, Monitor, MonitorConfig};
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
    let data = frames_of(width, height, bpp);
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

/// 16 deterministic frames with structure (gradients + a moving bar), not constant images.
fn frames_of(width: u32, height: u32, bpp: u32) -> Vec<Vec<u8>> {
    let step = width * bpp;
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
    (0..16).map(make).collect()
}

/// One tick of several cameras (one frame each, all waiting) on one shared detector, wall
/// time in milliseconds: scored in one batched call, and one by one.
#[derive(Debug, Clone)]
pub struct CamerasLatency {
    pub cameras: usize,
    pub batched: Percentiles,
    pub one_by_one: Percentiles,
}

/// Times `ticks` ticks of `cameras` rgb8 frames through monitors sharing one detector, batched
/// ([`Monitor::process_batched`]) and one by one, interleaved in the same run (the order
/// alternates each tick, so neither side always finds the caches warm).
pub fn cameras_latency(
    detector: Box<dyn Detector>,
    width: u32,
    height: u32,
    cameras: usize,
    ticks: usize,
) -> Result<CamerasLatency> {
    if cameras < 2 || ticks == 0 {
        return Err(Error::Input(
            "--cameras must be at least 2 and --frames at least 1".into(),
        ));
    }
    let data = frames_of(width, height, 3);
    let first = Monitor::new(detector, MonitorConfig::default())?;
    let shared = first.shared_detector().clone();
    let mut monitors = vec![first];
    for _ in 1..cameras {
        monitors.push(Monitor::on_shared(
            shared.clone(),
            MonitorConfig::default(),
        )?);
    }
    let (mut batched, mut single) = (vec![], vec![]);
    for i in 0..ticks + WARM_UP {
        let frames: Vec<FrameData<'_>> = (0..cameras)
            .map(|c| {
                FrameData::Raw(RawImage {
                    width,
                    height,
                    encoding: "rgb8",
                    is_bigendian: false,
                    step: width * 3,
                    data: &data[(i + 5 * c) % data.len()],
                })
            })
            .collect();
        let (batch, alone) = (Monitor::process_batched, Monitor::process_one_by_one);
        let (b, s) = if i % 2 == 0 {
            let b = tick(&mut monitors, &frames, batch);
            (b, tick(&mut monitors, &frames, alone))
        } else {
            let s = tick(&mut monitors, &frames, alone);
            (tick(&mut monitors, &frames, batch), s)
        };
        if i >= WARM_UP {
            batched.push(b.as_secs_f64() * 1e3);
            single.push(s.as_secs_f64() * 1e3);
        }
    }
    let p = |v: Vec<f64>| percentiles(v).expect("at least one timed tick");
    Ok(CamerasLatency {
        cameras,
        batched: p(batched),
        one_by_one: p(single),
    })
}

/// One tick through `process`: [`Monitor::process_batched`] or
/// [`Monitor::process_one_by_one`], built the same way so that only the scoring differs.
fn tick(
    monitors: &mut [Monitor],
    frames: &[FrameData<'_>],
    process: fn(&mut [BatchItem<'_, '_>]) -> Vec<vae_ood_core::monitor::FrameVerdict>,
) -> Duration {
    let t = Instant::now();
    let mut items: Vec<BatchItem<'_, '_>> = monitors
        .iter_mut()
        .zip(frames)
        .map(|(monitor, frame)| BatchItem {
            monitor,
            frame,
            age: None,
            stamp_ns: None,
        })
        .collect();
    std::hint::black_box(process(&mut items));
    t.elapsed()
}

/// The score's detail channel and the direction branch on the same frames, p50 milliseconds
/// per frame: from one luma pass (the detector's path), and each converting the frame itself
/// (the baseline, as before session 36), interleaved in one run.
#[derive(Debug, Clone)]
pub struct DirectionLatency {
    pub shared: Percentiles,
    pub separate: Percentiles,
}

/// [`DirectionLatency`] of a bundle with a detail channel and a direction branch at the same
/// size; `None` for any other bundle.
pub fn direction_latency(
    bundle: &vae_ood_core::bundle::Bundle,
    width: u32,
    height: u32,
    frames: usize,
) -> Result<Option<DirectionLatency>> {
    use vae_ood_core::frame::Pixels;
    let m = &bundle.manifest;
    let (Some(mut detail), Some(d)) = (
        m.score.detail_extractor(),
        m.calibration.as_ref().and_then(|c| c.direction.as_ref()),
    ) else {
        return Ok(None);
    };
    let mut meter = d.meter();
    if !meter.shares_luma_with(&detail) {
        return Ok(None);
    }
    let data = frames_of(width, height, 3);
    let (mut shared, mut separate) = (vec![], vec![]);
    for i in 0..frames.max(1) + WARM_UP {
        let px = Pixels::from_raw(&RawImage {
            width,
            height,
            encoding: "rgb8",
            is_bigendian: false,
            step: width * 3,
            data: &data[i % data.len()],
        })
        .map_err(|e| Error::Input(e.to_string()))?;
        let t = Instant::now();
        let (f, means) = detail.features_and_direction_means(px);
        std::hint::black_box((f, meter.from_means(means)));
        let one = t.elapsed();
        let t = Instant::now();
        std::hint::black_box((detail.features(px), meter.measure(px)));
        let two = t.elapsed();
        if i >= WARM_UP {
            shared.push(one.as_secs_f64() * 1e3);
            separate.push(two.as_secs_f64() * 1e3);
        }
    }
    let p = |v: Vec<f64>| percentiles(v).expect("at least one timed frame");
    Ok(Some(DirectionLatency {
        shared: p(shared),
        separate: p(separate),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vae_ood_core::bundle::Bundle;

    fn bundle(name: &str) -> Bundle {
        Bundle::load(format!(
            "{}/../../models/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// Times only bundles whose weakest-direction branch shares the detail channel's size;
    /// says nothing about speed.
    #[test]
    fn the_luma_comparison_runs_where_the_bundle_has_both_parts() {
        // models/compressed's branch measures the MSCN statistics (session 38), which need
        // more than the direction means; as a weakest-direction branch (sessions 35-37) it
        // shares the luma pass.
        let shipped = bundle("compressed");
        assert!(direction_latency(&shipped, 64, 48, 3).unwrap().is_none());
        let mut weakest = shipped.clone();
        let d = weakest
            .manifest
            .calibration
            .as_mut()
            .and_then(|c| c.direction.as_mut())
            .expect("models/compressed has a direction branch");
        d.mscn = None;
        let l = direction_latency(&weakest, 64, 48, 3)
            .unwrap()
            .expect("a detail channel and a weakest-direction branch at 160x120");
        assert!(l.shared.p50 > 0.0 && l.separate.p50 > 0.0);
        assert!(direction_latency(&bundle("default"), 64, 48, 3)
            .unwrap()
            .is_none());
    }
}
