//! `vae-ood calibrate --startup-frames N|auto`: the start-up phase of a calibrated bundle
//! ([`vae_ood_core::detection::startup`]), measured by running the bundle's own monitor (every
//! branch, S unbounded, the phase off) over the tuning drives, so that the phase is certified
//! on exactly what the node computes.

use crate::eval;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use vae_ood_core::bundle::{Bundle, GENTLE_STARTUP_FORMAT_VERSION};
use vae_ood_core::detection::startup::{self, BranchStep, StartupSection, Trace, Weighed};
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

/// Which branches a calibrated bundle runs beside the pooled one: the layout of each frame in a
/// [`Trace`], and the floor's count. A change branch is not in the traces (the phase does not
/// lower its threshold) but counts for the floor and the budget.
#[derive(Debug, Clone, Copy)]
struct Branches {
    relative: bool,
    direction: bool,
    change: bool,
}

impl Branches {
    fn of(c: &vae_ood_core::bundle::CalibrationSection) -> Self {
        Self {
            relative: c.relative.is_some(),
            direction: c.direction.is_some(),
            change: c.change.is_some(),
        }
    }

    /// A scored frame's branches as the monitor ran them: each one's S and the threshold it
    /// had in force (the phase off: the calibrated one, the pooled one's share after the
    /// relative branch's hold), `None` without a step. Read from the record, never rebuilt:
    /// session 43's first certification rebuilt when the pooled share starts, got it wrong,
    /// and certified the teacher's phase against thresholds the monitor never runs at.
    fn frame(&self, f: &eval::FrameRecord) -> Vec<Option<BranchStep>> {
        let step = |s: Option<f64>, t: Option<f64>| {
            s.zip(t).map(|(s, threshold)| BranchStep { s, threshold })
        };
        let mut branches = vec![step(f.cusum, f.threshold)];
        if self.relative {
            branches.push(step(f.relative_cusum, f.relative_threshold));
        }
        if self.direction {
            branches.push(step(f.direction_cusum, f.direction_threshold));
        }
        branches
    }

    /// The branches that run: the floor's count.
    fn count(&self) -> usize {
        1 + usize::from(self.relative) + usize::from(self.direction) + usize::from(self.change)
    }
}

/// Every calibrated threshold, each once: those the traces hold and the bundle's `own`, so that
/// one no tuning drive reached (a hold longer than every drive, a branch that never stepped) is
/// still compared. What `auto` compares between lengths.
fn thresholds(traces: &[Trace], own: &[f64]) -> Vec<f64> {
    let mut all: Vec<f64> = traces
        .iter()
        .flatten()
        .flatten()
        .flatten()
        .map(|st| st.threshold)
        .chain(own.iter().copied())
        .collect();
    all.sort_by(f64::total_cmp);
    all.dedup();
    all
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
    let branches = Branches::of(&c);
    let mut traces: Vec<Trace> = vec![vec![]; drives.len()];
    for f in records.iter().filter(|f| f.alarm_ratio.is_some()) {
        traces[f.input].push(branches.frame(f));
    }
    // A change branch's threshold, the largest S of the tuning drives, alarms on none of them
    // and is not lowered by the phase, so its share, one drive, is not in the traces: the phase
    // may spend one drive fewer. That holds where the monitor measures the steps calibration
    // did (consecutive frames at one rate); checked, not assumed.
    if let Some(f) = records.iter().find(|f| {
        f.change_cusum
            .zip(f.change_threshold)
            .is_some_and(|(s, t)| s > t)
    }) {
        return Err(Error::Input(format!(
            "tuning drive {} alarms through its change branch at frame {}, though its threshold is the largest S of the tuning drives: its frames are not at one rate (stamps with gaps?); calibrate on drives recorded at the camera's rate",
            drives[f.input].display(),
            f.index
        )));
    }
    let allowed = guarantee
        .drives_over()
        .saturating_sub(usize::from(branches.change));
    let floor = startup::floor(branches.count(), c.target_false_alarm_rate);
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
                &thresholds(&traces, &c.startup_thresholds()),
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

    /// Each frame's branches come from the record's own thresholds, in the bundle's layout,
    /// and `auto` compares every threshold once, the traces' and the bundle's.
    #[test]
    fn frames_read_the_thresholds_the_monitor_had_in_force() {
        let record = |cusum: f64, threshold: f64| eval::FrameRecord {
            cusum: Some(cusum),
            threshold: Some(threshold),
            alarm_ratio: Some(0.1),
            direction_cusum: Some(2.0),
            direction_threshold: Some(5.0),
            ..eval::report::tests::fr(0, false, vae_ood_core::monitor::MonitorState::Ok)
        };
        let b = Branches {
            relative: true,
            direction: true,
            change: false,
        };
        let step = |s, threshold| Some(BranchStep { s, threshold });
        assert_eq!(
            b.frame(&record(1.0, 40.0)),
            vec![step(1.0, 40.0), None, step(2.0, 5.0)]
        );
        assert_eq!(b.count(), 3);
        // A change branch counts for the floor, not in a frame's layout.
        let with_change = Branches { change: true, ..b };
        assert_eq!(with_change.count(), 4);
        assert_eq!(with_change.frame(&record(1.0, 40.0)).len(), 3);
        let only_pooled = Branches {
            relative: false,
            direction: false,
            change: false,
        };
        assert_eq!(only_pooled.frame(&record(1.0, 10.0)), vec![step(1.0, 10.0)]);
        let traces = vec![
            vec![b.frame(&record(1.0, 10.0)), b.frame(&record(3.0, 40.0))],
            vec![b.frame(&record(0.5, 10.0))],
        ];
        assert_eq!(thresholds(&traces, &[10.0, 40.0]), vec![5.0, 10.0, 40.0]);
        // A share no tuning drive reached (its hold outlasts them) is compared all the same.
        assert_eq!(
            thresholds(&traces[1..], &[10.0, 40.0, 5.0]),
            vec![5.0, 10.0, 40.0]
        );
    }
}
