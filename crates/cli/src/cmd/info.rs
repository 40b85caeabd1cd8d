//! `vae-ood info` and `vae-ood gen-seeded`: a bundle's summary; a seeded placeholder bundle.

use anyhow::Result;
use std::path::PathBuf;
use vae_ood_core::encoder::BackendOptions;

#[derive(clap::Args)]
pub struct Args {
    #[arg(default_value = "models/default")]
    bundle: PathBuf,
}

pub fn run(a: &Args) -> Result<()> {
    let det = vae_ood_core::detector::load(&a.bundle, BackendOptions::default())?;
    let m = &det.bundle().manifest;
    println!("bundle      {}", a.bundle.display());
    println!("model id    {}", det.model_id());
    println!("name        {}", m.name);
    println!("trained     {}", m.provenance.trained);
    println!("detector    {}", m.detector.kind());
    if let vae_ood_core::bundle::DetectorSpec::Flow(f) = &m.detector {
        println!(
            "flow        {}x{} grey, crop {}x{}, CLAHE clip {} on {:?} tiles; Farnebäck {:?}; stack of {} fields, restart after a {} ms gap, +-{} px",
            f.input.width, f.input.height, f.input.crop_width, f.input.crop_height,
            f.input.clahe_clip, f.input.clahe_tiles, f.farneback, f.depth, f.max_gap_ms, f.flow_range
        );
    }
    println!(
        "encoder     {} (sha256 {})",
        m.encoder.path, m.encoder.sha256
    );
    let i = &m.input;
    println!(
        "input       {}x{} {:?} {:?}, resize {:?} {:?}",
        i.width, i.height, i.channel_order, i.layout, i.resize, i.filter
    );
    let l = &m.latents;
    println!(
        "latents     {} selected of {}: {:?}",
        l.selected.len(),
        l.count,
        l.selected
    );
    println!("score       {}", m.score.describe());
    match &m.calibration {
        None => println!("calibration none: per-frame score_threshold"),
        Some(c) => {
            let p = &c.pipeline;
            println!(
                "calibration window {}, decay {}, cusum_threshold {:.4} (target {} false alarms per frame)",
                p.window, p.decay, p.cusum_threshold, c.target_false_alarm_rate
            );
            if let Some(r) = &c.relative {
                println!("relative    {}", r.describe());
            }
        }
    }
    println!("created by  {}", m.provenance.created_by);
    if !m.provenance.trained {
        println!("WARNING     untrained placeholder detector: its verdicts are not meaningful");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct GenSeededArgs {
    #[arg(long)]
    out: PathBuf,
    /// Architecture preset: tiny, small or paper (image detector), or flow (the optical-flow
    /// detector).
    #[arg(long, default_value = "tiny")]
    preset: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value = "seeded-bvae")]
    name: String,
    /// Name the ONNX outputs "0" and "1" (as PyTorch exports do) and address them by index.
    #[arg(long)]
    numeric_outputs: bool,
}

pub fn gen_seeded(a: &GenSeededArgs) -> Result<()> {
    let b = vae_ood_tools::onnx_gen::write_seeded_bundle(
        &a.out,
        &a.preset,
        a.seed,
        &a.name,
        a.numeric_outputs,
    )?;
    println!("wrote {} (model id {})", a.out.display(), b.model_id);
    Ok(())
}
