//! `vae-ood encode`: the encoder on a raw input tensor, for parity tests.

use crate::common::DetectorArgs;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use vae_ood_core::bundle::Bundle;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// File of little-endian f32 values.
    input: PathBuf,
    /// The frame's detail features, comma-separated, for a bundle whose score uses them
    /// (`score.detail`): the input tensor alone no longer holds them.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    detail: Vec<f64>,
}

pub fn run(a: &Args) -> Result<()> {
    let bundle = Bundle::load(&a.detector.bundle)?;
    let mut encoder = vae_ood_core::encoder::load(&bundle, a.detector.backend_options())?;
    let bytes =
        std::fs::read(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let shape = bundle.manifest.encoder_input_shape();
    let want: usize = shape.iter().product();
    if bytes.len() != want * 4 {
        bail!(
            "{} holds {} bytes; the bundle's input {shape:?} needs {want} f32 values ({} bytes)",
            a.input.display(),
            bytes.len(),
            want * 4
        );
    }
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let want_detail = bundle.manifest.score.detail().map_or(0, |d| d.features());
    if a.detail.len() != want_detail {
        bail!(
            "the bundle's score needs {want_detail} detail features (--detail), got {}",
            a.detail.len()
        );
    }
    let post = encoder.encode(&x)?;
    let (kl, score) = bundle
        .manifest
        .score_posterior(&post.mu, &post.logvar, &a.detail);
    println!(
        "{}",
        serde_json::json!({ "mu": post.mu, "logvar": post.logvar, "kl": kl, "score": score, "selected": bundle.manifest.latents.selected })
    );
    Ok(())
}
