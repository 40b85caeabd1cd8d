//! `vae-ood joint-threshold`: one threshold scale for several detectors run together.
//!
//! Each calibrated bundle's threshold promises, alone, that a fresh in-distribution drive
//! alarms with probability at most (K + 1 - r) / (K + 1) (SAFETY.md). The node's verdict is
//! OOD when any of its detectors is, and detectors alarm on different drives, so run together
//! their promises add up. Multiplying every threshold by the joint scale of
//! [`vae_ood_core::detection::tuning::joint_scale`], measured on the same clear tuning drives
//! for every detector, restores one promise for the combined verdict: the node's
//! `threshold_scale` parameter and `vae-ood eval --threshold-scale` take it. The budget may also
//! be split unequally, one detector kept at its own threshold and the others raised further
//! ([`keep_own_scale`]): the node's `threshold_scales` take such a split.

use crate::eval;
use crate::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;
use vae_ood_core::bundle::Bundle;
use vae_ood_core::detection::tuning::{joint_scale, keep_own_scale, ThresholdGuarantee};
use vae_ood_core::encoder::BackendOptions;
use vae_ood_core::monitor::MonitorConfig;

pub struct Options {
    /// Calibrated bundles, as the node runs them together.
    pub bundles: Vec<PathBuf>,
    pub backend: BackendOptions,
    /// Clear in-distribution tuning drives (image folders or bags), disjoint from every
    /// bundle's calibration drives; one value per drive, so give many.
    pub drives: Vec<PathBuf>,
    /// Image topic in bags (found automatically when a bag has one).
    pub topic: Option<String>,
    /// Frame rate assumed for image folders.
    pub folder_fps: f64,
    /// Target false alarms per in-distribution frame, as `vae-ood calibrate --false-alarm-rate`.
    pub false_alarm_rate: f64,
}

/// One detector over the tuning drives.
#[derive(Debug, Clone, Serialize)]
pub struct Detector {
    pub bundle: String,
    pub model_id: String,
    /// The bundle's own `cusum_threshold`.
    pub threshold: f64,
    /// Per tuning drive, its largest S (the sequential statistic), in drive order.
    pub largest: Vec<f64>,
    /// Tuning drives whose largest S exceeds the bundle's own threshold.
    pub drives_over: usize,
    /// `threshold` x the joint scale: what the node enforces with `threshold_scale`.
    pub joint_threshold: f64,
    /// The unequal split that keeps this detector at its own threshold: the other detectors'
    /// common scale ([`keep_own_scale`]); `None` when this detector alone alarms on more
    /// tuning drives than the promise allows. The node's `threshold_scales` take it.
    pub others_scale_when_kept: Option<f64>,
}

/// The joint scale and what it promises.
#[derive(Debug, Clone, Serialize)]
pub struct JointThreshold {
    pub drives: Vec<String>,
    pub detectors: Vec<Detector>,
    /// Tuning drives on which some detector exceeds its own threshold: what running them
    /// together at scale 1 would alarm on.
    pub drives_over_any: usize,
    /// The node's `threshold_scale` for these detectors together.
    pub scale: f64,
    /// The combined verdict's drive-level promise at that scale.
    pub guarantee: ThresholdGuarantee,
}

/// Runs every bundle over every tuning drive (a fresh monitor per drive, alarms off) and
/// computes the joint scale. `progress` is told of each frame processed.
pub fn joint_threshold(opts: &Options, progress: &dyn Fn(usize)) -> Result<JointThreshold> {
    if opts.bundles.len() < 2 {
        return Err(Error::Input(
            "give two or more --bundle: one detector's own threshold already keeps its promise"
                .into(),
        ));
    }
    if opts.drives.is_empty() {
        return Err(Error::Input(
            "give the clear tuning drives (image folders or bags)".into(),
        ));
    }
    crate::calibrate::check_false_alarm_rate(opts.false_alarm_rate)?;
    // Every bundle is checked before any drive is scored.
    let mut own = vec![];
    for path in &opts.bundles {
        let bundle = Bundle::load(path)?;
        let threshold = bundle
            .manifest
            .calibration
            .as_ref()
            .map(|c| c.pipeline.cusum_threshold)
            .ok_or_else(|| {
                Error::Input(format!(
                    "{} is not calibrated, so it has no threshold to scale: run vae-ood calibrate first",
                    path.display()
                ))
            })?;
        own.push((path, bundle.model_id, threshold));
    }
    let mut detectors = vec![];
    let mut frames = usize::MAX;
    for (path, model_id, threshold) in own {
        let eval_opts = eval::Options {
            bundle: path.clone(),
            backend: opts.backend,
            // The bundle's own thresholds (no explicit threshold or scale may stand in for
            // them); alarms change no statistic, and S is unbounded (no ceiling), as the
            // thresholds were tuned.
            monitor: MonitorConfig::default(),
            topic: opts.topic.clone(),
            folder_fps: opts.folder_fps,
        };
        let records = eval::run_tuning_drives(&opts.drives, &eval_opts, progress)?;
        // NaN until a drive's first statistic (f64::max keeps the number).
        let mut largest = vec![f64::NAN; opts.drives.len()];
        let mut counted = vec![0usize; opts.drives.len()];
        // S in units of the pooled threshold: the alarm ratio (every branch against its
        // threshold in force, a start-up phase's cruise share included) times it; S itself for
        // a bundle with one statistic at its own threshold.
        for (f, s) in records.iter().filter_map(|f| {
            f.alarm_ratio
                .map(|r| r * threshold)
                .or(f.cusum)
                .map(|s| (f, s))
        }) {
            largest[f.input] = largest[f.input].max(s);
            counted[f.input] += 1;
        }
        if let Some(i) = counted.iter().position(|&n| n == 0) {
            return Err(Error::Drive(format!(
                "tuning drive {}: no frame gave {} a statistic (too short, or every frame faulted)",
                opts.drives[i].display(),
                path.display()
            )));
        }
        frames = frames.min(counted.into_iter().min().unwrap_or(0));
        detectors.push(Detector {
            bundle: path.display().to_string(),
            model_id,
            threshold,
            drives_over: largest.iter().filter(|&&m| m > threshold).count(),
            largest,
            joint_threshold: f64::NAN,
            others_scale_when_kept: None,
        });
    }
    let largest: Vec<Vec<f64>> = detectors.iter().map(|d| d.largest.clone()).collect();
    let thresholds: Vec<f64> = detectors.iter().map(|d| d.threshold).collect();
    let (scale, guarantee) = joint_scale(&largest, &thresholds, frames, opts.false_alarm_rate)?;
    for (keep, d) in detectors.iter_mut().enumerate() {
        d.joint_threshold = d.threshold * scale;
        d.others_scale_when_kept =
            keep_own_scale(&largest, &thresholds, keep, frames, opts.false_alarm_rate)?;
    }
    let drives_over_any = (0..opts.drives.len())
        .filter(|&i| detectors.iter().any(|d| d.largest[i] > d.threshold))
        .count();
    Ok(JointThreshold {
        drives: opts
            .drives
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        detectors,
        drives_over_any,
        scale,
        guarantee,
    })
}
