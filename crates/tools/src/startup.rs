//! `vae-ood calibrate --startup-frames N|auto`: the start-up phase of a calibrated bundle
//! ([`vae_ood_core::detection::startup`]), measured by running the bundle's own monitor (every
//! branch, S unbounded, the phase off) over the tuning drives, so that the phase is certified
//! on exactly what the node computes.

use crate::eval;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use vae_ood_core::bundle::{Bundle, GENTLE_STARTUP_FORMAT_VERSION};
use vae_ood_core::detection::startup::{self, StartupSection, Trace, Weighed};
use vae_ood_core::encoder::BackendOptions;
use vae_ood_core::monitor::MonitorConfig;

/// How long the start-up phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupFrames {
    /// This many scored frames.
    Fixed(u64),
    /// Session 43's rule ([`startup::shortest`]) over [`AUTO_CANDIDATES`].
    Auto,
}

/// The lengths `--startup-frames auto` weighs: 1 to 20 seconds at 15 frames a second.
pub const AUTO_CANDIDATES: std::ops::RangeInclusive<usize> = 1..=20;
const AUTO_STEP: usize = 15;

impl std::str::FromStr for StartupFrames {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            n => match n.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Self::Fixed(n)),
                _ => Err(format!(
                    "expected a number of frames (at least 1) or 'auto', got '{s}'"
                )),
            },
        }
    }
}

/// What `add_startup` certified: the section written, and with `auto` every length it weighed.
#[derive(Debug, Clone)]
pub struct Certified {
    pub section: StartupSection,
    pub weighed: Vec<Weighed>,
}

/// Adds a start-up phase to the calibrated bundle in `dir` (written again in place) from its
/// clear tuning `drives`, and returns it. `progress` is told of each frame processed.
pub fn add_startup(
    dir: &Path,
    drives: &[PathBuf],
    frames: StartupFrames,
    backend: BackendOptions,
    progress: &dyn Fn(usize),
) -> Result<Certified> {
    if frames == StartupFrames::Fixed(0) {
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
    // Per drive, each scored frame's branches as the phase counts them: S and the calibrated
    // threshold in force (the pooled one takes its share once the relative branch's hold ends,
    // the frames where that branch has a step).
    let relative = c
        .relative
        .as_ref()
        .map(|r| (r.cusum_threshold, r.pooled_scale));
    let direction = c.direction.as_ref().map(|d| d.pipeline.cusum_threshold);
    let pooled = c.pipeline.cusum_threshold;
    let mut traces: Vec<Trace> = vec![vec![]; drives.len()];
    for f in records.iter().filter(|f| f.alarm_ratio.is_some()) {
        let share = match (relative, f.relative_cusum) {
            (Some((_, scale)), Some(_)) => scale,
            _ => 1.0,
        };
        let mut branches = vec![f.cusum.map(|s| (s, pooled * share))];
        if let Some((t, _)) = relative {
            branches.push(f.relative_cusum.map(|s| (s, t)));
        }
        if let Some(t) = direction {
            branches.push(f.direction_cusum.map(|s| (s, t)));
        }
        traces[f.input].push(branches);
    }
    let allowed = guarantee.drives_over();
    let branches = 1 + usize::from(relative.is_some()) + usize::from(direction.is_some());
    let floor = startup::floor(branches, c.target_false_alarm_rate);
    let (frames, weighed) = match frames {
        StartupFrames::Fixed(n) => (n as usize, vec![]),
        StartupFrames::Auto => {
            let candidates: Vec<usize> = AUTO_CANDIDATES.map(|k| k * AUTO_STEP).collect();
            let calibrated: Vec<f64> = [Some(pooled), relative.map(|r| r.0), direction]
                .into_iter()
                .flatten()
                .collect();
            startup::shortest(&traces, &candidates, allowed, floor, &calibrated)
                .ok_or_else(|| Error::Input("no start-up length to weigh".into()))?
        }
    };
    let (cruise_scale, alarmed) = startup::certify(&traces, frames, allowed, floor);
    let section = StartupSection {
        frames: frames as u64,
        cruise_scale,
        floor,
        tuning_drives_alarmed: alarmed,
        tuning_drives_allowed: allowed,
    };
    let mut manifest = bundle.manifest.clone();
    manifest.format_version = manifest.format_version.max(GENTLE_STARTUP_FORMAT_VERSION);
    manifest.calibration = Some(vae_ood_core::bundle::CalibrationSection {
        startup: Some(section),
        ..c
    });
    let encoder_path = dir.join(&manifest.encoder.path);
    let encoder = std::fs::read(&encoder_path).map_err(Error::read(encoder_path))?;
    Bundle::write(dir, manifest, &encoder)?;
    Ok(Certified { section, weighed })
}
