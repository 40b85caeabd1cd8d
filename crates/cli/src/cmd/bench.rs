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
    #[arg(long, default_value_t = 640)]
    width: u32,
    #[arg(long, default_value_t = 480)]
    height: u32,
    #[arg(long, default_value = "rgb8")]
    encoding: String,
    #[arg(long, default_value_t = 300)]
    frames: usize,
}

fn line(p: &Percentiles) -> String {
    format!(
        "p50 {:7.3} ms  p90 {:7.3} ms  p99 {:7.3} ms  max {:7.3} ms",
        p.p50, p.p90, p.p99, p.max
    )
}

pub fn run(a: &Args) -> Result<()> {
    let det = a.detector.load()?;
    let (input, model, backend) = (
        det.bundle().manifest.input.clone(),
        det.model_id().to_string(),
        det.backend(),
    );
    let l = vae_ood_tools::bench::stage_latency(det, a.width, a.height, &a.encoding, a.frames)?;
    println!(
        "bench: {} frames {}x{} {} -> {}x{} input, model {model}, backend {backend} x{} thread(s)",
        a.frames, a.width, a.height, a.encoding, input.width, input.height, a.detector.threads
    );
    println!("  decode      {}", line(&l.decode));
    println!("  preprocess  {}", line(&l.preprocess));
    println!("  inference   {}", line(&l.inference));
    println!("  total       {}", line(&l.total));
    Ok(())
}

#[derive(clap::Args)]
pub struct EncodersArgs {
    /// Bundles; the first is the baseline.
    #[arg(required = true)]
    bundles: Vec<PathBuf>,
    #[arg(long, default_value_t = 500)]
    frames: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

pub fn encoders(a: &EncodersArgs) -> Result<()> {
    let opts = BackendOptions {
        threads: a.threads,
        ..Default::default()
    };
    let r = vae_ood_tools::compress::bench::encoder_latency(&a.bundles, a.frames, 20, opts)?;
    println!("{:>9} {:>9} {:>9}  bundle", "p50 ms", "p99 ms", "speed-up");
    for l in &r {
        println!(
            "{:9.3} {:9.3} {:8.2}x  {}",
            l.p50_ms,
            l.p99_ms,
            l.speedup_p50,
            l.bundle.display()
        );
    }
    Ok(())
}
