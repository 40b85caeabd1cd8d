//! Encoder latency of several bundles measured in one run, interleaved frame by frame so that
//! machine load and clock changes hit every candidate alike: ratios against the first bundle
//! (the teacher) are what compression reports.

use vae_ood_core::encoder::{self, BackendOptions};

use std::path::PathBuf;
use std::time::Instant;
use vae_ood_core::bundle::Bundle;

/// Latency of one encoder, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncoderLatency {
    pub bundle: PathBuf,
    /// The backend that ran it, and on which device ("tract on cpu", "cuda on NVIDIA ...").
    pub backend: String,
    /// Frames per encoder call (`bench-encoders --batch`); the latencies are per call.
    pub batch: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The first bundle's p50 over this one's: above 1 means faster.
    pub speedup_p50: f64,
    /// Multiply-accumulates per frame, as the backend counts them (None where it cannot).
    pub macs: Option<u64>,
}

/// The input every encoder benchmark feeds a bundle's encoder: structured, deterministic, in
/// [0, 1] (`scripts/bench_ort.py` builds the same for onnxruntime).
pub fn bench_input(bundle: &Bundle) -> Vec<f32> {
    let n: usize = bundle.manifest.encoder_input_shape().iter().product();
    (0..n).map(|i| ((i * 37) % 101) as f32 / 100.0).collect()
}

/// Runs `frames` encodes of each bundle's encoder (after `warmup` untimed ones), round-robin.
pub fn encoder_latency(
    bundles: &[PathBuf],
    frames: usize,
    warmup: usize,
    opts: BackendOptions,
) -> Result<Vec<EncoderLatency>, crate::Error> {
    let runs: Vec<(PathBuf, BackendOptions)> = bundles.iter().map(|b| (b.clone(), opts)).collect();
    encoder_latency_on(&runs, frames, warmup, 1)
}

/// [`encoder_latency`] for (bundle, backend) pairs: the same bundle on the CPU and the GPU in
/// one interleaved run, ratios against the first pair. Each timed call encodes `batch` frames
/// (one [`vae_ood_core::encoder::Encoder::encode_batch`]: several cameras' frames at once).
pub fn encoder_latency_on(
    runs: &[(PathBuf, BackendOptions)],
    frames: usize,
    warmup: usize,
    batch: usize,
) -> Result<Vec<EncoderLatency>, crate::Error> {
    if runs.is_empty() || frames == 0 || batch == 0 {
        return Err(crate::Error::Drive(
            "give at least one bundle and one frame".into(),
        ));
    }
    let mut encoders = vec![];
    let mut inputs = vec![];
    for (b, opts) in runs {
        let bundle = Bundle::load(b).map_err(|e| crate::Error::Drive(e.to_string()))?;
        inputs.push(bench_input(&bundle));
        encoders.push(encoder::load(&bundle, *opts)?);
    }
    let backends: Vec<String> = encoders
        .iter()
        .map(|e| format!("{} on {}", e.backend(), e.device()))
        .collect();
    let macs: Vec<Option<u64>> = encoders.iter().map(|e| e.multiply_accumulates()).collect();
    let mut times = vec![vec![]; runs.len()];
    for round in 0..warmup + frames {
        for (k, enc) in encoders.iter_mut().enumerate() {
            let frames = vec![inputs[k].as_slice(); batch];
            let t = Instant::now();
            enc.encode_batch(&frames)?;
            if round >= warmup {
                times[k].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let stats: Vec<(f64, f64)> = times
        .into_iter()
        .map(|t| {
            let p = vae_ood_core::stats::percentiles(t).expect("frames >= 1");
            (p.p50, p.p99)
        })
        .collect();
    Ok(runs
        .iter()
        .zip(&stats)
        .zip(macs)
        .zip(backends)
        .map(|((((b, _), &(p50, p99)), macs), backend)| EncoderLatency {
            bundle: b.clone(),
            backend,
            batch,
            p50_ms: p50,
            p99_ms: p99,
            speedup_p50: stats[0].0 / p50,
            macs,
        })
        .collect())
}
