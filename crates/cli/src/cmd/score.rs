//! `vae-ood score`: one JSON line per image file.

use crate::common::DetectorArgs;
use anyhow::Result;
use std::path::PathBuf;
use vae_ood_core::monitor::MonitorConfig;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// Per-frame decision threshold on the nonconformity score.
    #[arg(long, default_value_t = f64::INFINITY, value_parser = crate::common::parse_score_threshold)]
    score_threshold: f64,
    /// Also print the KL divergence of every latent (and the frame's detail features when the
    /// score uses them).
    #[arg(long)]
    kl: bool,
    /// Image files or directories (scanned in name order).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(a: &Args) -> Result<()> {
    let det = a.detector.load()?;
    let kl = if a.kl { Some(a.detector.load()?) } else { None };
    let files = vae_ood_tools::drives::image_files(&a.paths)?;
    // Files are not a camera stream: the same image twice is not a frozen camera.
    let config = MonitorConfig {
        score_threshold: a.score_threshold,
        max_repeated_frames: None,
        ..Default::default()
    };
    vae_ood_tools::score::score_files(det, config, kl, &files, &mut |r| {
        println!("{}", serde_json::to_string(&r).expect("serialisable"))
    })?;
    Ok(())
}
