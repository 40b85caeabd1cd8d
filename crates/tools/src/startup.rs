//! `vae-ood calibrate --startup-frames N`: the start-up phase of a calibrated bundle
//! ([`vae_ood_core::detection::startup`]), measured by running the bundle's own monitor (every
//! branch, S unbounded, the phase off) over the tuning drives, so that the phase is certified
//! on exactly what the node computes.

use crate::eval;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use vae_ood_core::bundle::{Bundle, STARTUP_FORMAT_VERSION};
use vae_ood_core::detection::startup::{self, StartupSection};
use vae_ood_core::encoder::BackendOptions;
use vae_ood_core::monitor::MonitorConfig;

/// Adds a start-up phase of `frames` scored frames to the calibrated bundle in `dir` (written
/// again in place) from its clear tuning `drives`, and returns it. `progress` is told of each
/// frame processed.
pub fn add_startup(
    dir: &Path,
    drives: &[PathBuf],
    frames: u64,
    backend: BackendOptions,
    progress: &dyn Fn(usize),
) -> Result<StartupSection> {
    if frames == 0 {
        return Err(Error::Input(
            "--startup-frames must be at least 1 (leave it out for no start-up phase)".into(),
        ));
    }
    let bundle = Bundle::load(dir)?;
    let c = bundle.manifest.calibration.clone().ok_or_else(|| {
        Error::Input(format!(
            "{} is not calibrated: a start-up phase lowers calibrated thresholds",
            dir.display()
        ))
    })?;
    let guarantee = c.guarantee.clone().ok_or_else(|| {
        Error::Input(format!(
            "{} has no drive-level guarantee to keep: calibrate it again with this version",
            dir.display()
        ))
    })?;
    let opts = eval::Options {
        bundle: dir.to_path_buf(),
        backend,
        // Every branch at its calibrated threshold, S unbounded: as the thresholds were tuned.
        monitor: MonitorConfig {
            startup_phase: false,
            ..MonitorConfig::default()
        },
        topic: None,
        folder_fps: eval::DEFAULT_FOLDER_FPS,
    };
    let records = eval::run_tuning_drives(drives, &opts, progress)?;
    // Per drive, the alarm ratio of each scored frame, in order: what the phase counts.
    let mut ratios = vec![vec![]; drives.len()];
    for f in &records {
        if let Some(r) = f.alarm_ratio {
            ratios[f.input].push(r);
        }
    }
    let allowed = guarantee.drives_over();
    let (cruise_scale, alarmed) = startup::cruise_scale(&ratios, frames as usize, allowed);
    let branches = 1 + usize::from(c.relative.is_some()) + usize::from(c.direction.is_some());
    let section = StartupSection {
        frames,
        cruise_scale,
        floor: startup::floor(branches, c.target_false_alarm_rate),
        tuning_drives_alarmed: alarmed,
        tuning_drives_allowed: allowed,
    };
    let mut manifest = bundle.manifest.clone();
    manifest.format_version = manifest.format_version.max(STARTUP_FORMAT_VERSION);
    manifest.calibration = Some(vae_ood_core::bundle::CalibrationSection {
        startup: Some(section),
        ..c
    });
    let encoder_path = dir.join(&manifest.encoder.path);
    let encoder = std::fs::read(&encoder_path).map_err(Error::read(encoder_path))?;
    Bundle::write(dir, manifest, &encoder)?;
    Ok(section)
}
