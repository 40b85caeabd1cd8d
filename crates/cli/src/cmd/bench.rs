//! `vae-ood bench` and `vae-ood bench-encoders`: latency figures from one process.

use crate::common::DetectorArgs;
use anyhow::Result;
use std::path::PathBuf;
use vae_ood_core::encoder::BackendOptions;
use vae_ood_core::stats::Percentiles;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// Frame width in pixels (1..=16384).
    #[arg(long, default_value_t = 640, value_parser = clap::value_parser!(u32).range(1..=16384))]
    width: u32,
    /// Frame height in pixels (1..=16384).
    #[arg(long, default_value_t = 480, value_parser = clap::value_parser!(u32).range(1..=16384))]
    height: u32,
    /// Raw encodings to time, comma-separated (rgb8, bgr8, rgba8, bgra8, mono8, mono16).
    #[arg(long, default_value = "rgb8", value_delimiter = ',')]
    encoding: Vec<String>,
    #[arg(long, default_value_t = 300)]
    frames: usize,
    /// Also time N cameras on one detector (N >= 2, rgb8 frames): one frame of each scored in
    /// one batched call against one by one, in the same run, --frames ticks.
    #[arg(long, value_name = "N")]
    cameras: Option<usize>,
}

fn line(p: &Percentiles) -> String {
    format!(
        "p50 {:7.3} ms  p90 {:7.3} ms  p99 {:7.3} ms  max {:7.3} ms",
        p.p50, p.p90, p.p99, p.max
    )
}

/// A way and its baseline, timed in the same run, and the ratio of their p50s.
fn compare(new: (&str, &Percentiles), base: (&str, &Percentiles), what: &str, per: &str) {
    println!("  {} {}", new.0, line(new.1));
    println!("  {} {}", base.0, line(base.1));
    println!(
        "  {what}: p50 {:.3} ms against {:.3} ms{per}: {:.2}x faster",
        new.1.p50,
        base.1.p50,
        base.1.p50 / new.1.p50
    );
}

pub fn run(a: &Args) -> Result<()> {
    if let Some(n) = a.cameras {
        let l = vae_ood_tools::bench::cameras_latency(
            a.detector.load()?,
            a.width,
            a.height,
            n,
            a.frames,
        )?;
        println!(
            "bench: {n} cameras, {} ticks of one {}x{} rgb8 frame each, {} thread(s)",
            a.frames, a.width, a.height, a.detector.threads
        );
        compare(
            ("batched    ", &l.batched),
            ("one by one ", &l.one_by_one),
            "batching",
            " per tick",
        );
    }
    let mut det = Some(a.detector.load()?);
    if let Some(d) = &det {
        let bundle = d.bundle();
        if let Some(l) =
            vae_ood_tools::bench::direction_latency(bundle, a.width, a.height, a.frames)?
        {
            println!(
                "bench: detail channel + direction branch, {} frames {}x{} rgb8",
                a.frames, a.width, a.height
            );
            compare(
                ("one luma pass", &l.shared),
                ("two passes   ", &l.separate),
                "sharing the luma",
                "",
            );
        }
    }
    for encoding in &a.encoding {
        let d = match det.take() {
            Some(d) => d,
            None => a.detector.load()?,
        };
        let flow = !d.bundle().manifest.detector.is_image();
        let (input, model, backend) = (
            d.bundle().manifest.input.clone(),
            d.model_id().to_string(),
            format!("{} on {}", d.backend(), d.device()),
        );
        let l = vae_ood_tools::bench::stage_latency(d, a.width, a.height, encoding, a.frames)?;
        println!(
            "bench: {} frames {}x{} {encoding} -> {}x{} input, model {model}, backend {backend} x{} thread(s)",
            a.frames, a.width, a.height, input.width, input.height, a.detector.threads
        );
        println!("  decode      {}", line(&l.decode));
        // The flow detector's preprocessing is the frame's preparation and the optical flow.
        let pre = if flow { "prep + flow" } else { "preprocess" };
        println!("  {pre:<11} {}", line(&l.preprocess));
        println!("  inference   {}", line(&l.inference));
        println!("  total       {}", line(&l.total));
        if flow {
            continue; // the fused image path's baseline means nothing for flow
        }
        println!(
            "  decode + preprocess: p50 {:.3} ms, baseline (decode to RGB, reference filter) {:.3} ms: {:.1}x faster",
            l.prepare.p50,
            l.prepare_baseline.p50,
            l.prepare_baseline.p50 / l.prepare.p50
        );
        #[cfg(any(feature = "cuda", feature = "cuda13"))]
        if backend.starts_with("cuda") {
            device_preprocess(a, encoding, &input, l.total.p50)?;
        }
    }
    Ok(())
}

/// Preprocessing on the GPU (the kernel of `vae_ood_core::device_preprocess`) against the CPU
/// path on the same frames in the same run, and what it would save of a frame's total: the
/// decision figure of issue 17 (kept only if it lowers the per-frame p50 by 10 % or more).
#[cfg(any(feature = "cuda", feature = "cuda13"))]
fn device_preprocess(
    a: &Args,
    encoding: &str,
    spec: &vae_ood_core::preprocess::InputSpec,
    total_p50: f64,
) -> Result<()> {
    use vae_ood_core::frame::{Encoding, Pixels, RawImage};
    let bpp = Encoding::parse(encoding)?.bytes_per_pixel();
    let step = a.width as usize * bpp;
    let data: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            (0..a.height as usize * step)
                .map(|k| ((k / step + (k % step) / bpp + 7 * i) % 256) as u8)
                .collect()
        })
        .collect();
    let raws: Vec<RawImage> = data
        .iter()
        .map(|d| RawImage {
            width: a.width,
            height: a.height,
            encoding,
            is_bigendian: false,
            step: step as u32,
            data: d,
        })
        .collect();
    let frames = raws
        .iter()
        .map(Pixels::from_raw)
        .collect::<Result<Vec<_>, _>>()?;
    let c = vae_ood_core::device_preprocess::compare_with_cpu(spec, &frames, a.frames)?;
    println!("  device preprocess (our CUDA kernel), same frames, same run:");
    println!("    upload            {}", line(&c.upload));
    println!("    kernel + download {}", line(&c.kernel_and_download));
    println!("    device total      {}", line(&c.device_total));
    println!("    CPU preprocess    {}", line(&c.cpu_total));
    let saved = c.cpu_total.p50 - c.device_total.p50;
    println!(
        "    largest difference from the CPU path {:.2e}; saves {saved:.3} ms p50 per frame = {:.1} % of the frame's total p50 {total_p50:.3} ms (kept at >= 10 %)",
        c.largest_difference,
        100.0 * saved / total_p50
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct EncodersArgs {
    /// Bundles; the first is the baseline.
    #[arg(required = true)]
    bundles: Vec<PathBuf>,
    #[arg(long, default_value_t = 500)]
    frames: usize,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Backends to run every bundle on, interleaved in one run (e.g. tract,cuda: the GPU
    /// against the CPU); ratios are against the first bundle on the first backend.
    #[arg(long, value_delimiter = ',', default_value = "tract")]
    backend: Vec<vae_ood_core::encoder::BackendKind>,
    /// Also measure the roofline: the MACs per second of a large single-precision matrix
    /// product (SIZE x SIZE by SIZE x SIZE) through tract's kernels, with the same threads.
    #[arg(long, value_name = "SIZE", num_args = 0..=1, default_missing_value = "1024",
          value_parser = clap::value_parser!(u16).range(16..=8192))]
    roofline: Option<u16>,
    /// Frames per encoder call: a batch of this many frames (several cameras) in one call;
    /// latencies are per call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    batch: u16,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also time every node of each encoder's optimised tract graph over this many runs and
    /// print where the time goes, grouped by op.
    #[arg(long, value_name = "RUNS")]
    profile: Option<usize>,
}

pub fn encoders(a: &EncodersArgs) -> Result<()> {
    let runs: Vec<(PathBuf, BackendOptions)> = a
        .bundles
        .iter()
        .flat_map(|b| {
            a.backend.iter().map(|&kind| {
                let opts = BackendOptions {
                    kind,
                    threads: a.threads.into(),
                };
                (b.clone(), opts)
            })
        })
        .collect();
    let r =
        vae_ood_tools::compress::bench::encoder_latency_on(&runs, a.frames, 20, a.batch.into())?;
    let peak = match a.roofline {
        Some(size) => Some(
            vae_ood_core::encoder::gemm_peak(size.into(), a.threads.into(), 5)
                .map_err(|e| anyhow::anyhow!("roofline GEMM failed: {e:#}"))?,
        ),
        None => None,
    };
    let gmacs = |l: &vae_ood_tools::compress::bench::EncoderLatency| {
        l.macs
            .map(|m| (m * l.batch as u64) as f64 / (l.p50_ms * 1e-3) / 1e9)
    };
    if a.json {
        let rows: Vec<_> = r
            .iter()
            .map(|l| serde_json::json!({"latency": l, "gmacs_per_s": gmacs(l)}))
            .collect();
        let out = serde_json::json!({
            "threads": a.threads,
            "frames": a.frames,
            "batch": a.batch,
            "profile": if cfg!(debug_assertions) { "dev" } else { "release" },
            "peak_gmacs_per_s": peak.map(|p| p / 1e9),
            "encoders": rows,
        });
        println!("{out}");
        return Ok(());
    }
    if let Some(p) = peak {
        println!(
            "roofline: {:.1} GMAC/s ({}x{} f32 GEMM through tract, {} thread(s), best of 5)",
            p / 1e9,
            a.roofline.unwrap_or(0),
            a.roofline.unwrap_or(0),
            a.threads
        );
    }
    if a.batch > 1 {
        println!("latency per call of {} frames (one batched run)", a.batch);
    }
    println!(
        "{:>9} {:>9} {:>9} {:>8} {:>8} {:>7}  bundle (backend on device)",
        "p50 ms", "p99 ms", "speed-up", "MMACs", "GMAC/s", "% peak"
    );
    for l in &r {
        let g = gmacs(l);
        println!(
            "{:9.3} {:9.3} {:8.2}x {:>8} {:>8} {:>7}  {} ({})",
            l.p50_ms,
            l.p99_ms,
            l.speedup_p50,
            l.macs
                .map_or("-".into(), |m| format!("{:.1}", m as f64 / 1e6)),
            g.map_or("-".into(), |g| format!("{g:.1}")),
            match (g, peak) {
                (Some(g), Some(p)) => format!("{:.0}%", 100.0 * g * 1e9 / p),
                _ => "-".into(),
            },
            l.bundle.display(),
            l.backend
        );
    }
    if let Some(runs) = a.profile {
        for b in &a.bundles {
            profile(b, a.threads.into(), runs)?;
        }
    }
    Ok(())
}

/// Prints the share of each op kind in one encoder's time, largest first.
fn profile(bundle: &std::path::Path, threads: usize, runs: usize) -> Result<()> {
    let b = vae_ood_core::bundle::Bundle::load(bundle)?;
    let mut enc = vae_ood_core::encoder::TractEncoder::load(&b, threads)?;
    let x = vae_ood_tools::compress::bench::bench_input(&b);
    enc.profile(&x, 20)?;
    let nodes = enc.profile(&x, runs.max(1))?;
    let mut by_op = std::collections::BTreeMap::<String, (f64, usize)>::new();
    for t in &nodes {
        let e = by_op.entry(t.op.clone()).or_default();
        e.0 += t.seconds;
        e.1 += 1;
    }
    let total: f64 = nodes.iter().map(|t| t.seconds).sum();
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    println!(
        "profile of {} ({} runs, {:.3} ms per run in ops):",
        bundle.display(),
        runs.max(1),
        1e3 * total / runs.max(1) as f64
    );
    for (op, (secs, count)) in ops {
        println!(
            "  {:>5.1}%  {:8.3} ms  {count:>3} node(s)  {op}",
            100.0 * secs / total,
            1e3 * secs / runs.max(1) as f64
        );
    }
    let mut nodes = nodes;
    nodes.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    println!("  slowest nodes:");
    for t in nodes.iter().take(6) {
        println!(
            "  {:>5.1}%  {:8.3} ms  {} ({})",
            100.0 * t.seconds / total,
            1e3 * t.seconds / runs.max(1) as f64,
            t.name,
            t.op
        );
    }
    Ok(())
}
