//! `vae-ood import`: a bundle from an ONNX encoder trained elsewhere.

use anyhow::Result;
use std::path::PathBuf;
use vae_ood_core::preprocess::{ChannelOrder, Filter, Layout, Normalize, ResizeMode};
use vae_ood_tools::import::{import, ImportOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The encoder: an ONNX file with one image input and mu and logvar outputs.
    onnx: PathBuf,
    /// Bundle directory to write (must not hold a bundle yet).
    #[arg(long)]
    out: PathBuf,
    /// Bundle name [default: the file's stem].
    #[arg(long)]
    name: Option<String>,
    /// The mu output, by name or position [default: found by name, or the first of two].
    #[arg(long)]
    mu: Option<String>,
    /// The logvar output, by name or position [default: found by name, or the second of two].
    #[arg(long)]
    logvar: Option<String>,
    /// Input layout, nchw or nhwc [default: from the input's declared shape, else nchw].
    #[arg(long, value_parser = parse_layout)]
    layout: Option<Layout>,
    /// Input width in pixels, where the input does not declare it.
    #[arg(long)]
    width: Option<u32>,
    /// Input height in pixels, where the input does not declare it.
    #[arg(long)]
    height: Option<u32>,
    /// Channel order the encoder was trained on: rgb, bgr or gray [default: gray for one
    /// channel, else rgb].
    #[arg(long, value_parser = parse_order)]
    channel_order: Option<ChannelOrder>,
    /// Normalisation as MEAN/STD, comma-separated per channel, of pixel / 255 (e.g.
    /// 0.485,0.456,0.406/0.229,0.224,0.225) [default: pixel / 255].
    #[arg(long, value_parser = parse_normalize)]
    normalize: Option<Normalize>,
    /// How frames of another aspect ratio are fitted: stretch or center-crop [default: stretch].
    #[arg(long, value_parser = parse_resize)]
    resize: Option<ResizeMode>,
    /// Resampling filter: area or bilinear [default: area].
    #[arg(long)]
    filter: Option<Filter>,
    /// Latent size, where the outputs do not declare it.
    #[arg(long)]
    latents: Option<usize>,
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    match s.to_ascii_lowercase().as_str() {
        "nchw" => Ok(Layout::Nchw),
        "nhwc" => Ok(Layout::Nhwc),
        _ => Err(format!("unknown layout '{s}' (expected nchw or nhwc)")),
    }
}

fn parse_order(s: &str) -> Result<ChannelOrder, String> {
    match s.to_ascii_lowercase().as_str() {
        "rgb" => Ok(ChannelOrder::Rgb),
        "bgr" => Ok(ChannelOrder::Bgr),
        "gray" | "grey" => Ok(ChannelOrder::Gray),
        _ => Err(format!(
            "unknown channel order '{s}' (expected rgb, bgr or gray)"
        )),
    }
}

fn parse_resize(s: &str) -> Result<ResizeMode, String> {
    match s.to_ascii_lowercase().replace('_', "-").as_str() {
        "stretch" => Ok(ResizeMode::Stretch),
        "center-crop" | "centre-crop" => Ok(ResizeMode::CenterCrop),
        _ => Err(format!(
            "unknown resize '{s}' (expected stretch or center-crop)"
        )),
    }
}

fn parse_normalize(s: &str) -> Result<Normalize, String> {
    let (mean, std) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}': expected MEAN/STD, e.g. 0.5,0.5,0.5/0.5,0.5,0.5"))?;
    let list = |v: &str| -> Result<Vec<f32>, String> {
        v.split(',')
            .map(|x| x.trim().parse::<f32>().map_err(|e| format!("'{x}': {e}")))
            .collect()
    };
    let (mean, std) = (list(mean)?, list(std)?);
    if mean.len() != std.len() || std.iter().any(|&x| x <= 0.0 || !x.is_finite()) {
        return Err(format!("'{s}': as many means as stds, every std positive"));
    }
    Ok(Normalize { mean, std })
}

pub fn run(a: &Args) -> Result<()> {
    let opts = ImportOptions {
        name: a.name.clone(),
        mu: a.mu.clone(),
        logvar: a.logvar.clone(),
        layout: a.layout,
        width: a.width,
        height: a.height,
        channel_order: a.channel_order,
        normalize: a.normalize.clone(),
        resize: a.resize,
        filter: a.filter,
        latents: a.latents,
    };
    let r = import(&a.onnx, &a.out, &opts)?;
    println!(
        "wrote {} (model id {}), checked by a dry run on the bundle's input shape:",
        a.out.display(),
        r.bundle.model_id
    );
    for d in &r.decisions {
        println!("  {d}");
    }
    println!(
        "Fields marked default are guesses the ONNX file cannot confirm: check them against the\n\
         preprocessing the encoder was trained with, and re-import with flags if they differ.\n\
         Next: calibrate it on your own in-distribution drives, e.g.\n  \
         vae-ood calibrate --bundle {} --out {}-calibrated --cal <drives> --tune-id <drives> [--val-ood <drives>]",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
