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
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            n => match n.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Self::Fixed(n)),
                _ => Err(Error::Input(format!(
                    "expected a number of frames (at least 1) or 'auto', got '{s}'"
                ))),
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

/// A bundle's calibrated thresholds as the monitor puts them in force before the start-up phase
/// lowers them, branch by branch (pooled, relative, direction, those the bundle has).
#[derive(Debug, Clone, Copy)]
struct Calibrated {
    pooled: f64,
    /// Threshold, the pooled threshold's multiplier after the hold, and the hold in frames.
    relative: Option<(f64, f64, usize)>,
    direction: Option<f64>,
}

impl Calibrated {
    fn of(c: &vae_ood_core::bundle::CalibrationSection) -> Self {
        Self {
            pooled: c.pipeline.cusum_threshold,
            relative: c
                .relative
                .as_ref()
                .map(|r| (r.cusum_threshold, r.pooled_scale, r.baseline.hold())),
            direction: c.direction.as_ref().map(|d| d.pipeline.cusum_threshold),
        }
    }

    /// The pooled threshold at a stream's scored frame `t` (from 0): its share once the relative
    /// branch's hold is over (`relative::Baseline::holding`, judged before the frame joins the
    /// baseline), its own before. The relative branch's steps start earlier, with its first
    /// baseline: they do not mark the hold's end.
    fn pooled_at(&self, t: usize) -> f64 {
        match self.relative {
            Some((_, share, hold)) if t >= hold => self.pooled * share,
            _ => self.pooled,
        }
    }

    /// Scored frame `t`'s branches: each one's S and calibrated threshold, `None` without a
    /// step.
    fn frame(
        &self,
        t: usize,
        pooled: Option<f64>,
        relative: Option<f64>,
        direction: Option<f64>,
    ) -> Vec<Option<(f64, f64)>> {
        let mut branches = vec![pooled.map(|s| (s, self.pooled_at(t)))];
        if let Some((threshold, _, _)) = self.relative {
            branches.push(relative.map(|s| (s, threshold)));
        }
        if let Some(threshold) = self.direction {
            branches.push(direction.map(|s| (s, threshold)));
        }
        branches
    }

    /// Every calibrated threshold the start-up phase scales, the pooled one both before and
    /// after the hold: what `auto` compares between lengths.
    fn thresholds(&self) -> Vec<f64> {
        [
            Some(self.pooled),
            self.relative.map(|(_, share, _)| self.pooled * share),
            self.relative.map(|r| r.0),
            self.direction,
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The branches that run: the floor's count.
    fn branches(&self) -> usize {
        1 + usize::from(self.relative.is_some()) + usize::from(self.direction.is_some())
    }
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
    // Per drive, each scored frame's branches as the phase counts them.
    let calibrated = Calibrated::of(&c);
    let mut traces: Vec<Trace> = vec![vec![]; drives.len()];
    for f in records.iter().filter(|f| f.alarm_ratio.is_some()) {
        let t = traces[f.input].len();
        traces[f.input].push(calibrated.frame(t, f.cusum, f.relative_cusum, f.direction_cusum));
    }
    let allowed = guarantee.drives_over();
    let branches = calibrated.branches();
    let floor = startup::floor(branches, c.target_false_alarm_rate);
    // The length's certification: `auto` has it from weighing every length.
    let (chosen, weighed) = match frames {
        StartupFrames::Fixed(n) => {
            let (cruise_scale, tuning_drives_alarmed) =
                startup::certify(&traces, n as usize, allowed, floor);
            let chosen = Weighed {
                frames: n as usize,
                cruise_scale,
                tuning_drives_alarmed,
            };
            (chosen, vec![])
        }
        StartupFrames::Auto => {
            let candidates: Vec<usize> = AUTO_CANDIDATES.map(|k| k * AUTO_STEP).collect();
            startup::shortest(
                &traces,
                &candidates,
                allowed,
                floor,
                &calibrated.thresholds(),
            )
            .ok_or_else(|| Error::Input("no start-up length to weigh".into()))?
        }
    };
    let section = StartupSection {
        frames: chosen.frames as u64,
        cruise_scale: chosen.cruise_scale,
        floor,
        tuning_drives_alarmed: chosen.tuning_drives_alarmed,
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

#[cfg(test)]
mod tests {
    use super::*;
    use vae_ood_core::detection::relative::{Baseline, BaselineParams};

    /// The pooled threshold takes its share exactly where the monitor's does: once the
    /// relative branch's hold is over, not when that branch's first step comes (with its first
    /// baseline, after `window` frames). Session 43's first certification took the latter and
    /// certified the teacher's phase against thresholds it never runs at.
    #[test]
    fn the_pooled_share_starts_where_the_monitors_does() {
        let params = BaselineParams {
            window: 3,
            gap: 2,
            hold: Some(8),
        };
        let c = Calibrated {
            pooled: 10.0,
            relative: Some((20.0, 4.0, params.hold())),
            direction: Some(5.0),
        };
        let mut baseline = Baseline::new(params);
        let mut first_step = None;
        for t in 0..12 {
            let shared = !baseline.holding();
            assert_eq!(
                c.pooled_at(t),
                if shared { 40.0 } else { 10.0 },
                "frame {t}"
            );
            if baseline.push(t as f64).is_some() {
                first_step.get_or_insert(t);
            }
        }
        assert_eq!(
            first_step,
            Some(3),
            "the relative branch steps long before the hold ends"
        );
        assert_eq!(
            c.frame(9, Some(1.0), None, Some(2.0)),
            vec![Some((1.0, 40.0)), None, Some((2.0, 5.0))]
        );
        assert_eq!(c.thresholds(), vec![10.0, 40.0, 20.0, 5.0]);
        assert_eq!(c.branches(), 3);
    }
}
