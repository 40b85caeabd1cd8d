//! `vae-ood joint-threshold`: the node's `threshold_scale` for detectors run together.

use anyhow::{Context, Result};
use std::path::PathBuf;
use vae_ood_core::detection::tuning::drives_needed;
use vae_ood_core::encoder::{BackendKind, BackendOptions};
use vae_ood_tools::calibrate::defaults;
use vae_ood_tools::drives::count_frames;
use vae_ood_tools::eval;
use vae_ood_tools::joint::{joint_threshold, Options};

#[derive(clap::Args)]
pub struct Args {
    /// Calibrated detector bundles the node runs together (its `model_bundles`); two or more.
    #[arg(long = "bundle", required = true, num_args = 1..)]
    bundles: Vec<PathBuf>,
    /// Clear in-distribution tuning drives (image folders or rosbag2 bags), disjoint from the
    /// bundles' calibration drives: one value per drive, so give many (see --false-alarm-rate).
    #[arg(long = "tune-id", required = true, num_args = 1..)]
    tune_id: Vec<PathBuf>,
    /// Target false alarms per in-distribution frame of the combined verdict, as
    /// `vae-ood calibrate --false-alarm-rate`.
    #[arg(long, default_value_t = defaults::FALSE_ALARM_RATE)]
    false_alarm_rate: f64,
    /// Inference backend, as for the other commands: tract, cuda, cuda-fp16 or auto.
    #[arg(long, default_value = "tract")]
    backend: BackendKind,
    /// Image topic (needed when a bag has several).
    #[arg(long)]
    topic: Option<String>,
    /// Frame rate assumed for image folders.
    #[arg(long, default_value_t = eval::DEFAULT_FOLDER_FPS)]
    fps: f64,
    /// Also write the result (every drive's largest S per detector) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: &Args) -> Result<()> {
    let opts = Options {
        bundles: a.bundles.clone(),
        backend: BackendOptions {
            kind: a.backend,
            threads: 1,
        },
        drives: a.tune_id.clone(),
        topic: a.topic.clone(),
        folder_fps: a.fps,
        false_alarm_rate: a.false_alarm_rate,
    };
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let drives: Vec<&std::path::Path> = a.tune_id.iter().map(PathBuf::as_path).collect();
        let frames = count_frames(&drives, a.topic.as_deref()) * a.bundles.len();
        indicatif::ProgressBar::new(frames as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "scoring {pos}/{len} frames [{bar:30}] {per_sec} {eta}",
        )?
        .progress_chars("=> "),
    );
    let j = joint_threshold(&opts, &|n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let k = j.drives.len();
    for d in &j.detectors {
        println!(
            "{} ({}): threshold {:.4}, {} of {k} tuning drives over it",
            d.bundle, d.model_id, d.threshold, d.drives_over
        );
    }
    println!(
        "together at their own thresholds: {} of {k} tuning drives alarm",
        j.drives_over_any
    );
    let g = &j.guarantee;
    println!(
        "joint scale {:.4}: an in-distribution stretch of {} frames raises an alarm of any of these detectors with probability <= {:.4}, if drives are exchangeable with the {k} tuning drives",
        j.scale, g.frames_per_drive, g.per_drive_false_alarm
    );
    for d in &j.detectors {
        println!("  {}: joint threshold {:.4}", d.bundle, d.joint_threshold);
    }
    if !g.target_met {
        eprintln!(
            "warning: {k} tuning drives cannot certify {} false alarms per frame on {}-frame drives; give at least {} (the scale is their largest)",
            a.false_alarm_rate,
            g.frames_per_drive,
            drives_needed(a.false_alarm_rate, g.frames_per_drive)
        );
    }
    // Rounded up, so that the value given to the node is never looser than the scale.
    let up = |x: f64| (x * 1e4).ceil() / 1e4;
    let scale = up(j.scale);
    println!(
        "set the node's threshold_scale to {scale:.4} (config/monitor.yaml), or vae-ood eval --threshold-scale {scale:.4}"
    );
    for (keep, d) in j.detectors.iter().enumerate() {
        match d.others_scale_when_kept {
            Some(s) => {
                let scales: Vec<String> = (0..j.detectors.len())
                    .map(|i| if i == keep { "1.0".into() } else { format!("{:.4}", up(s)) })
                    .collect();
                println!(
                    "or split unequally, {} at its own threshold: the node's threshold_scales [{}] (the others' thresholds x {:.4}), the same promise",
                    d.bundle,
                    scales.join(", "),
                    up(s)
                );
            }
            None => println!(
                "{} cannot keep its own threshold beside the others: alone it alarms on more tuning drives than the promise allows",
                d.bundle
            ),
        }
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&j).expect("the result serialises");
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
