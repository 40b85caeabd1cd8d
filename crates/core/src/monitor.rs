//! The per-frame monitor: frame in, verdict out. Used unchanged by the ROS node and by the
//! offline tools, so a frame gets the same score and state wherever it is processed.
//!
//! Fail-safe by construction: every state except `Ok` reports out-of-distribution, and
//! anything that goes wrong with a frame (rejected, stale, non-finite output, model error)
//! puts the monitor in `Fault` for that frame.

use crate::detection::relative::Baseline;
use crate::detection::startup::StartupSection;
use crate::detection::{Calibration, DetectionError, PipelineParams, SequentialDetector, Step};
use crate::detector::{Detector, StreamFrame, StreamId};
use crate::frame::{self, FrameData, Pixels};
use image::RgbImage;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use crate::detector::{Fault, Scored};

/// The monitor's state after a frame. Only `Ok` means in-distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MonitorState {
    /// No frame scored yet: reports OOD.
    Starting,
    /// The last frame was scored and judged in-distribution.
    Ok,
    /// The last frame was scored and judged out-of-distribution.
    Ood,
    /// The last frame could not be scored (rejected, stale, model error): reports OOD.
    Fault,
}

impl MonitorState {
    /// The verdict a consumer (the gate, a twist_mux lock) acts on: true = not safe to trust.
    pub fn is_ood(self) -> bool {
        self != Self::Ok
    }

    /// The verdict of several detectors on one camera: OK only when every one is OK, else the
    /// most severe state among them (FAULT, then OOD, then STARTING). No detector: STARTING.
    pub fn combine(states: impl IntoIterator<Item = Self>) -> Self {
        let rank = |s: &Self| match s {
            Self::Ok => 0,
            Self::Starting => 1,
            Self::Ood => 2,
            Self::Fault => 3,
        };
        states
            .into_iter()
            .fold(None, |worst: Option<Self>, s| match worst {
                Some(w) if rank(&w) >= rank(&s) => Some(w),
                _ => Some(s),
            })
            .unwrap_or(Self::Starting)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "STARTING",
            Self::Ok => "OK",
            Self::Ood => "OOD",
            Self::Fault => "FAULT",
        }
    }
}

/// A scored frame as the monitor judged it: its score, and its branches' KL (flow).
struct Judged {
    score: f64,
    /// The frame's weakest direction, for a direction branch.
    direction: Option<f64>,
    /// The posterior's step into this frame, for a change branch (`None`: not measured).
    change: Option<f64>,
    branch_kl: Option<[f64; 2]>,
    tail_scores: Option<[f64; 2]>,
}

/// Decision parameters.
#[derive(Debug, Clone, Copy)]
pub struct MonitorConfig {
    /// Per-frame decision, used when the bundle has no calibration section: a frame is OOD
    /// when its score exceeds this.
    pub score_threshold: f64,
    /// Frames older than this (receive time minus stamp) are rejected; `None` disables the check.
    pub max_frame_age: Option<Duration>,
    /// How a calibrated monitor leaves OOD.
    pub recovery: Recovery,
    /// Overrides the bundle's tuned `cusum_threshold` (calibrated bundles only).
    pub cusum_threshold: Option<f64>,
    /// Multiplies the bundle's tuned `cusum_threshold` (not an override): the joint scale of
    /// several detectors run together (`vae-ood joint-threshold`), so that their combined
    /// verdict keeps the one drive-level promise each threshold makes alone (SAFETY.md).
    pub threshold_scale: f64,
    /// A frozen camera: a frame whose posterior equals the previous frame's bit for bit is a
    /// repeat; more than this many repeats in a row fault (`Fault::Frozen`) until a different
    /// frame arrives. A real sensor's noise makes exact repeats of the model input
    /// practically impossible. `None` disables the check.
    pub max_repeated_frames: Option<u32>,
    /// A slow stream: fewer frames than this (Hz) stamped in the last second fault
    /// (`Fault::SlowStream`), judged once the stream's stamps span a second. By the camera's
    /// stamps, so arrival jitter does not count; frames without a stamp are not judged.
    /// `None` disables the check.
    pub min_rate: Option<f64>,
    /// Flow detectors: also apply the reference design's per-branch rule (the bundle's
    /// `calibration.branch_thresholds`): a frame whose KL in either branch is over its
    /// threshold is OOD, whatever the sequential test says. Off by default: the rule has no
    /// false-alarm guarantee (SAFETY.md).
    pub branch_rule: bool,
    /// Calibrated bundles with a drive-relative branch (`calibration.relative`): run it beside
    /// the pooled statistic, the two sharing the false-alarm budget as the bundle's split says.
    /// Off: without it (the pooled statistic at its own threshold, beside any direction
    /// branch).
    pub relative_branch: bool,
    /// Calibrated bundles with a direction branch (`calibration.direction`): run it beside the
    /// pooled statistic, the pooled threshold at its share. Off: without it, the pooled
    /// threshold back at its value before the split (`pooled_threshold_alone`) unless a
    /// drive-relative branch runs (whose split was made against the raised one); beside a
    /// running change branch, back only to its value before the change branch's split.
    pub direction_branch: bool,
    /// Calibrated bundles with a change branch (`calibration.change`): run it beside the
    /// pooled statistic. Off: without it, every other threshold as it is (the pooled one keeps
    /// the share it gave up: fewer alarms, never more). The start-up phase does not lower the
    /// change branch's threshold, so turning it off leaves the phase as certified.
    pub change_branch: bool,
    /// Calibrated bundles with a start-up phase (`calibration.startup`): after a stream's first
    /// frames, every threshold at its lower cruise share. Off: every threshold as calibrated for
    /// the whole stream (slower first alarms after the start-up, never earlier ones). An
    /// absolute `cusum_threshold` turns it off too (the operator's number is the one in force),
    /// and so does turning off a branch the bundle has (`relative_branch`, `direction_branch`):
    /// the phase was certified with every branch running.
    pub startup_phase: bool,
    /// Every branch's S is held at or under this many times its threshold in force
    /// ([`SequentialDetector::set_ceiling`], [`crate::detection::ceiling_is_valid`]): it changes
    /// no first alarm, and bounds how long OOD outlasts the evidence. `None` (the library's
    /// default, and what threshold tuning assumes): unbounded. The node's default is
    /// [`DEFAULT_CUSUM_CEILING`].
    pub cusum_ceiling: Option<f64>,
}

/// The node's and `vae-ood eval`'s default [`MonitorConfig::cusum_ceiling`]: S at most twice
/// its threshold, so that after a shift it falls back under the threshold after about one
/// threshold's worth of clear frames at the shipped drift of 1 (thresholds of 14 to 36 in force;
/// a drive-relative branch's raised pooled threshold after its hold is larger) and under the
/// recovery level after about 1.5 (docs/detector-experiments.md, session 39).
pub const DEFAULT_CUSUM_CEILING: f64 = 2.0;

/// The node's default for [`MonitorConfig::max_repeated_frames`]: half a second at 30 Hz.
pub const DEFAULT_MAX_REPEATED_FRAMES: u32 = 15;

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            score_threshold: f64::INFINITY,
            max_frame_age: None,
            recovery: Recovery::Auto {
                frames: 10,
                level: DEFAULT_RECOVERY_LEVEL,
            },
            cusum_threshold: None,
            threshold_scale: 1.0,
            max_repeated_frames: Some(DEFAULT_MAX_REPEATED_FRAMES),
            min_rate: None,
            branch_rule: false,
            relative_branch: true,
            direction_branch: true,
            change_branch: true,
            startup_phase: true,
            cusum_ceiling: None,
        }
    }
}

impl MonitorConfig {
    /// The checks the node's and the CLI's parameters make, for every other caller of the
    /// library: a value outside them would weaken the verdict silently (a scale under 1, a
    /// recovery after 0 frames, a NaN threshold that no score exceeds).
    pub fn validate(&self) -> Result<(), DetectionError> {
        let invalid = |param, reason: String| Err(DetectionError::InvalidParam { param, reason });
        if self.score_threshold.is_nan() || self.score_threshold < 0.0 {
            return invalid(
                "score_threshold",
                format!("must be >= 0, got {}", self.score_threshold),
            );
        }
        if let Some(t) = self.cusum_threshold.filter(|t| t.is_nan() || *t < 0.0) {
            return invalid("cusum_threshold", format!("must be >= 0, got {t}"));
        }
        if !THRESHOLD_SCALE_RANGE.contains(&self.threshold_scale) {
            return invalid(
                "threshold_scale",
                format!(
                    "must be in {THRESHOLD_SCALE_RANGE:?}, got {}",
                    self.threshold_scale
                ),
            );
        }
        if let Recovery::Auto { frames, level } = self.recovery {
            if frames == 0 {
                return invalid("recovery_frames", "must be at least 1".into());
            }
            if !RECOVERY_LEVEL_RANGE.contains(&level) {
                return invalid(
                    "recovery_level",
                    format!("must be in {RECOVERY_LEVEL_RANGE:?}, got {level}"),
                );
            }
        }
        crate::detection::check_ceiling(self.cusum_ceiling)?;
        if let Some(r) = self.min_rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
            return invalid(
                "min_rate",
                format!("must be finite and > 0 (None: off), got {r}"),
            );
        }
        Ok(())
    }
}

/// Counts consecutive frames whose posterior repeats the previous frame's exactly.
#[derive(Debug, Default)]
struct Repeats {
    last: Option<(Vec<f32>, Vec<f32>)>,
    count: u32,
}

impl Repeats {
    /// Records one scored frame's posterior; returns how many repeats in a row it ends.
    fn observe(&mut self, mu: &[f32], logvar: &[f32]) -> u32 {
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        match &mut self.last {
            Some((m, l)) if same(m, mu) && same(l, logvar) => self.count += 1,
            // Reuses the buffers: this runs on every frame.
            last => {
                let (m, l) = last.get_or_insert_with(Default::default);
                m.clear();
                m.extend_from_slice(mu);
                l.clear();
                l.extend_from_slice(logvar);
                self.count = 0;
            }
        }
        self.count
    }
}

/// The stream's recent stamps, for its frame rate: how many frames were stamped in the last
/// second. A stamp more than a second back (a restarted camera or bag) starts the count
/// again; a repeated or slightly out-of-order stamp is not counted (a resent frame is not a
/// second frame).
#[derive(Debug, Default)]
struct StreamRate {
    stamps: VecDeque<i64>,
    first: Option<i64>,
}

impl StreamRate {
    const WINDOW_NS: i64 = 1_000_000_000;

    /// Records one frame's stamp; returns the frames stamped in the second up to the newest
    /// stamp, once the stream's stamps span a whole second (None before, and for a frame
    /// without a stamp).
    fn observe(&mut self, stamp_ns: Option<i64>) -> Option<usize> {
        let t = stamp_ns?;
        match self.stamps.back() {
            Some(&last) if t < last - Self::WINDOW_NS => {
                self.stamps.clear();
                self.first = None;
            }
            Some(&last) if t <= last => return self.judged(last),
            _ => {}
        }
        self.first.get_or_insert(t);
        self.stamps.push_back(t);
        while self
            .stamps
            .front()
            .is_some_and(|&s| s <= t - Self::WINDOW_NS)
        {
            self.stamps.pop_front();
        }
        self.judged(t)
    }

    fn judged(&self, newest: i64) -> Option<usize> {
        let first = self.first?;
        (newest - first >= Self::WINDOW_NS).then_some(self.stamps.len())
    }
}

/// Leaving OOD (calibrated bundles): automatically once S is at or under `level` times the
/// threshold for `frames` consecutive scored frames, or only by an explicit [`Monitor::reset`].
///
/// `level` below 1 is hysteresis: S that hovers at the threshold would otherwise leave OOD and
/// enter it again, each entry a new alarm for whatever the verdict gates (seen on clear drives,
/// docs/detector-experiments.md "E130 under a fresh gate"). Entering OOD does not depend on
/// `level`, so a lower level never delays an alarm and never adds one: it only keeps OOD
/// longer once entered (the fail-safe direction; SAFETY.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recovery {
    Auto { frames: u32, level: f64 },
    Manual,
}

/// The range of [`MonitorConfig::min_rate`] as a parameter (Hz): 0 disables the check.
pub const MIN_RATE_RANGE: std::ops::RangeInclusive<f64> = 0.0..=10_000.0;

/// The range of [`MonitorConfig::threshold_scale`]: a scale under 1 would loosen the
/// threshold below what its tuning drives certify.
pub const THRESHOLD_SCALE_RANGE: std::ops::RangeInclusive<f64> = 1.0..=100.0;

/// The node's default for [`Recovery::Auto`]'s `level`: S must fall to half the threshold.
pub const DEFAULT_RECOVERY_LEVEL: f64 = 0.5;

/// The range of [`Recovery::Auto`]'s `level`: 1 is no hysteresis; the lower bound keeps a
/// level S can reach (with no decay, S may never return to exactly 0).
pub const RECOVERY_LEVEL_RANGE: std::ops::RangeInclusive<f64> = 0.01..=1.0;

/// The sequential part of a calibrated monitor: the pooled statistic, the drive-relative one
/// when the bundle has it, and the latched verdict that faults do not change.
struct Sequential {
    detector: SequentialDetector,
    /// The pooled branch's threshold before the relative branch's share is taken from it (the
    /// bundle's, scaled or overridden; set at run time by [`Monitor::set_cusum_threshold`]).
    pooled_threshold: f64,
    relative: Option<RelativeBranch>,
    /// The direction branch ([`crate::detection::direction`]), when the bundle has one.
    direction: Option<DirectionBranch>,
    /// The change branch ([`crate::detection::change`]), when the bundle has one.
    change: Option<ChangeBranch>,
    /// The start-up phase, when the bundle has one and it runs (its floor scaled as the
    /// thresholds are).
    startup: Option<StartupSection>,
    /// Scored frames since the stream (re)started: where it is in the start-up phase.
    scored: u64,
    /// The state before any fault: STARTING, OK or OOD.
    latched: MonitorState,
    good_streak: u32,
}

/// The drive-relative branch of a stream ([`crate::detection::relative`]).
struct RelativeBranch {
    baseline: Baseline,
    detector: SequentialDetector,
    /// Its threshold before the start-up phase lowers it.
    threshold: f64,
    /// The pooled threshold's multiplier once the baseline exists.
    pooled_scale: f64,
}

/// The direction branch of a stream: its pipeline, and the stream's own past when the branch
/// scores against it.
struct DirectionBranch {
    detector: SequentialDetector,
    /// Its threshold before the start-up phase lowers it.
    threshold: f64,
    baseline: Option<Baseline>,
}

impl DirectionBranch {
    /// The branch's step for a frame's weakest direction; `None` while its baseline fills.
    fn step(&mut self, weakest: f64) -> Option<Step> {
        let x = match &mut self.baseline {
            Some(b) => b.push(weakest)?,
            None => weakest,
        };
        Some(self.detector.step(x))
    }
}

/// The change branch of a stream: where its steps start from, and its pipeline at its one
/// threshold (the start-up phase does not lower it).
struct ChangeBranch {
    meter: crate::detection::change::ChangeMeter,
    detector: SequentialDetector,
}

/// One scored frame through the sequential part: the pooled step, the relative one (once the
/// stream has a baseline), and how near the verdict is to alarm.
struct Judgement {
    pooled: Step,
    relative: Option<Step>,
    direction: Option<Step>,
    change: Option<Step>,
    /// max over the running branches of S / its threshold in force: above 1 exactly when one
    /// alarms (once the pooled window is full).
    ratio: f64,
}

/// Whether scoring several frames in one call beats scoring them one by one on a backend, as
/// measured (`vae-ood bench --cameras N`, docs/performance.md): on a GPU a batch of 4 costs
/// about half as much per frame; on the CPU tract's batched plans are 15-30 % slower than
/// single frames.
pub fn batching_pays(backend: &str) -> bool {
    backend.starts_with("cuda")
}

/// The detector, even if a thread panicked while holding it (its state is per call).
fn lock(d: &SharedDetector) -> MutexGuard<'_, Box<dyn Detector>> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// A branch's detector over its conformal `scores`, with the configured ceiling on its S.
fn branch_detector(
    scores: &[f64],
    params: PipelineParams,
    config: &MonitorConfig,
) -> Result<SequentialDetector, DetectionError> {
    let mut d = SequentialDetector::new(Calibration::new(scores.to_vec())?, params)?;
    d.set_ceiling(config.cusum_ceiling)?;
    Ok(d)
}

impl Sequential {
    /// The calibrated pipeline of a bundle, from S = 0; `None` for an uncalibrated bundle.
    fn fresh(
        detector: &dyn Detector,
        config: &MonitorConfig,
    ) -> Result<Option<Self>, DetectionError> {
        let Some(c) = &detector.bundle().manifest.calibration else {
            return Ok(None);
        };
        let mut params = c.pipeline.clone();
        // Without its direction branch the pooled statistic has the branch's share back, unless
        // a drive-relative branch runs: its split was made against the raised threshold (with
        // one drive fewer allowed), and nothing was tuned for it beside the lower one. A change
        // branch that runs keeps its own share: the pooled threshold then goes back only to its
        // value before the change branch's split (its share was taken after the direction's).
        let relative_runs = c.relative.is_some() && config.relative_branch;
        let change_runs = c.change.is_some() && config.change_branch;
        if let (Some(d), false, false) = (&c.direction, config.direction_branch, relative_runs) {
            params.cusum_threshold = match (&c.change, change_runs) {
                (Some(ch), true) => ch.pooled_threshold_before,
                _ => d.pooled_threshold_alone,
            };
        }
        match config.cusum_threshold {
            Some(t) => params.cusum_threshold = t,
            None => params.cusum_threshold *= config.threshold_scale,
        }
        let relative = match (&c.relative, config.relative_branch) {
            (Some(r), true) => {
                let mut p = c.pipeline.clone();
                p.cusum_threshold = r.cusum_threshold * config.threshold_scale;
                Some(RelativeBranch {
                    threshold: p.cusum_threshold,
                    baseline: Baseline::new(r.baseline),
                    detector: branch_detector(&r.scores, p, config)?,
                    pooled_scale: r.pooled_scale,
                })
            }
            _ => None,
        };
        // Its threshold scales with the pooled one's scale (a joint scale tightens both); an
        // absolute pooled threshold set by the operator leaves it as calibrated.
        let direction = match (&c.direction, config.direction_branch) {
            (Some(d), true) => {
                let mut p = d.pipeline.clone();
                p.cusum_threshold *= config.threshold_scale;
                Some(DirectionBranch {
                    threshold: p.cusum_threshold,
                    detector: branch_detector(&d.scores, p, config)?,
                    baseline: d.baseline.map(Baseline::new),
                })
            }
            _ => None,
        };
        let change = match (&c.change, config.change_branch) {
            (Some(ch), true) => {
                let mut p = ch.pipeline.clone();
                p.cusum_threshold *= config.threshold_scale;
                Some(ChangeBranch {
                    meter: ch.meter(),
                    detector: branch_detector(&ch.scores, p, config)?,
                })
            }
            _ => None,
        };
        // The phase was certified with every branch of the bundle running at its calibrated
        // threshold: with a branch turned off (or the operator's threshold) it is not.
        let as_certified = relative.is_some() == c.relative.is_some()
            && direction.is_some() == c.direction.is_some()
            && config.cusum_threshold.is_none();
        let startup = c
            .startup
            .filter(|_| config.startup_phase && as_certified)
            .map(|s| StartupSection {
                floor: s.floor * config.threshold_scale,
                ..s
            });
        let pooled_threshold = params.cusum_threshold;
        let detector = branch_detector(&c.scores, params, config)?;
        Ok(Some(Sequential {
            detector,
            pooled_threshold,
            relative,
            direction,
            change,
            startup,
            scored: 0,
            latched: MonitorState::Starting,
            good_streak: 0,
        }))
    }

    /// The pooled threshold in force: [`Self::pooled_calibrated`] as the start-up phase puts it.
    fn pooled_in_force(&self) -> f64 {
        self.phase(self.pooled_calibrated())
    }

    /// The pooled threshold before the start-up phase: its own during the relative branch's
    /// hold and without a relative branch, its share after the hold.
    fn pooled_calibrated(&self) -> f64 {
        match &self.relative {
            Some(r) if !r.baseline.holding() => self.pooled_threshold * r.pooled_scale,
            _ => self.pooled_threshold,
        }
    }

    /// The start-up phase's gentle end, at the stream's first frame after it: every branch's S
    /// falls as its threshold does ([`StartupSection::end_ratio`]), so that a start's evidence
    /// keeps its alarm ratio and cannot alarm by the fall alone (as certified).
    fn end_startup(&mut self) {
        let Some(s) = self.startup.filter(|s| s.frames == self.scored) else {
            return;
        };
        let pooled = s.end_ratio(self.pooled_calibrated());
        self.detector.scale_cusum(pooled);
        if let Some(r) = &mut self.relative {
            r.detector.scale_cusum(s.end_ratio(r.threshold));
        }
        if let Some(d) = &mut self.direction {
            d.detector.scale_cusum(s.end_ratio(d.threshold));
        }
    }

    /// A calibrated threshold as the start-up phase puts it in force at this frame.
    fn phase(&self, calibrated: f64) -> f64 {
        self.startup
            .map_or(calibrated, |s| s.threshold(calibrated, self.scored))
    }

    /// Puts the relative and direction branches' thresholds in force for this frame.
    fn apply_branch_thresholds(&mut self) {
        if let Some(t) = self.relative.as_ref().map(|r| self.phase(r.threshold)) {
            if let Some(r) = &mut self.relative {
                r.detector.set_cusum_threshold(t);
            }
        }
        if let Some(t) = self.direction.as_ref().map(|d| self.phase(d.threshold)) {
            if let Some(d) = &mut self.direction {
                d.detector.set_cusum_threshold(t);
            }
        }
    }

    /// Puts the pooled threshold in force into the pooled detector.
    fn apply_pooled_threshold(&mut self) {
        let in_force = self.pooled_in_force();
        self.detector.set_cusum_threshold(in_force);
    }

    fn set_pooled_threshold(&mut self, t: f64) {
        self.pooled_threshold = t;
        self.apply_pooled_threshold();
    }

    /// Feeds one finite score (and the frame's weakest direction and posterior step, when
    /// measured) to every branch.
    fn step(&mut self, score: f64, weakest: Option<f64>, change: Option<f64>) -> Judgement {
        // The hold covers exactly the frames with no relative score (as `relative::split`
        // simulates it): the threshold is chosen before this frame joins the baseline.
        self.apply_pooled_threshold();
        self.apply_branch_thresholds();
        self.end_startup();
        self.scored += 1;
        let relative = self.relative.as_mut().and_then(|r| {
            let x = r.baseline.push(score)?;
            Some(r.detector.step(x))
        });
        let direction = self
            .direction
            .as_mut()
            .zip(weakest.filter(|x| x.is_finite()))
            .and_then(|(d, x)| d.step(x));
        let change = self
            .change
            .as_mut()
            .zip(change.filter(|x| x.is_finite()))
            .map(|(c, x)| c.detector.step(x));
        let pooled = self.detector.step(score);
        let ratio = [relative, direction, change]
            .iter()
            .flatten()
            .map(|st| st.cusum / st.threshold)
            .fold(pooled.cusum / pooled.threshold, f64::max);
        let alarm = |b: Option<Step>| b.is_some_and(|st| st.alarm);
        Judgement {
            pooled: Step {
                alarm: pooled.alarm || alarm(relative) || alarm(direction) || alarm(change),
                ..pooled
            },
            relative,
            direction,
            change,
            ratio,
        }
    }

    /// The operator's reset: zeroes every statistic, and the relative and direction branches
    /// start new baselines from the next frame (with the relative one's start-up hold): the
    /// operator has accepted the scene as it is now, which a baseline from before may not
    /// describe. The start-up phase starts again too, as the relative branch's hold does: the
    /// statistics start from zero as at a stream's start, and what follows a reset (a robot
    /// put down again, the next drive of a replay) is judged as a start was certified.
    fn reset_cusum(&mut self) {
        self.scored = 0;
        self.detector.reset_cusum();
        // A branch measured against a baseline forgets its p-values too: they were taken
        // against the baseline it drops.
        if let Some(r) = &mut self.relative {
            r.detector.restart();
            r.baseline = Baseline::new(*r.baseline.params());
        }
        if let Some(d) = &mut self.direction {
            match &mut d.baseline {
                Some(b) => {
                    d.detector.restart();
                    *b = Baseline::new(*b.params());
                }
                None => d.detector.reset_cusum(),
            }
        }
        if let Some(c) = &mut self.change {
            c.detector.reset_cusum();
        }
        self.apply_pooled_threshold();
    }

    fn next(&mut self, j: &Judgement, recovery: Recovery) -> MonitorState {
        let step = &j.pooled;
        self.latched = match self.latched {
            MonitorState::Starting | MonitorState::Ok | MonitorState::Fault
                if !step.window_full =>
            {
                MonitorState::Starting
            }
            MonitorState::Starting | MonitorState::Ok | MonitorState::Fault => {
                if step.alarm {
                    self.good_streak = 0;
                    MonitorState::Ood
                } else {
                    MonitorState::Ok
                }
            }
            MonitorState::Ood => match recovery {
                Recovery::Manual => MonitorState::Ood,
                Recovery::Auto { frames, level } => {
                    // Against the thresholds in force (they may be set at run time).
                    let calm = !step.alarm && j.ratio <= level;
                    self.good_streak = if calm { self.good_streak + 1 } else { 0 };
                    if self.good_streak >= frames {
                        self.good_streak = 0;
                        MonitorState::Ok
                    } else {
                        MonitorState::Ood
                    }
                }
            },
        };
        self.latched
    }
}

/// A frame's age on arrival: the node's clock minus the frame's stamp, which is negative
/// (`Ahead`) when the stamp is later than the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameAge {
    Old(Duration),
    Ahead(Duration),
}

impl From<Duration> for FrameAge {
    fn from(age: Duration) -> Self {
        Self::Old(age)
    }
}

/// Time spent per stage for one frame.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTimes {
    /// Checking a raw frame's fields (it is then read in place), or decoding a compressed one.
    pub decode: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
}

/// The outcome for one frame.
#[derive(Debug, Clone)]
pub struct FrameVerdict {
    pub state: MonitorState,
    /// Present when the frame was scored.
    pub score: Option<f64>,
    pub fault: Option<Fault>,
    pub timing: StageTimes,
    /// p-value, log M and S of the pooled statistic, for calibrated monitors and scored frames.
    /// Its `alarm` is the sequential verdict's: either branch over its threshold.
    pub step: Option<Step>,
    /// The drive-relative branch's step, once the stream has a baseline (bundles with
    /// `calibration.relative`).
    pub relative: Option<Step>,
    /// The direction branch's step (bundles with `calibration.direction`).
    pub direction: Option<Step>,
    /// The change branch's step, for frames it measured (bundles with `calibration.change`).
    pub change: Option<Step>,
    /// max over the running branches of S / its threshold in force (calibrated monitors): the
    /// sequential verdict as one number, above 1 exactly when it alarms.
    pub alarm_ratio: Option<f64>,
    /// Flow detectors' scored frames: the KL of each branch (horizontal, vertical), the
    /// reference design's per-branch scores.
    pub branch_kl: Option<[f64; 2]>,
    /// The score's two parts as tail scores (posterior, extra features), when it is their
    /// larger ([`crate::detector::Scored::tail_scores`]).
    pub tail_scores: Option<[f64; 2]>,
    /// Whether the reference design's per-branch rule fires on this frame (flow bundles with
    /// `calibration.branch_thresholds`); it decides the state only with
    /// [`MonitorConfig::branch_rule`].
    pub branch_ood: Option<bool>,
}

impl FrameVerdict {
    /// A verdict without a score: a fault, a warm-up, or a state combined from others.
    pub fn unscored(state: MonitorState, fault: Option<Fault>, timing: StageTimes) -> Self {
        Self {
            state,
            score: None,
            fault,
            timing,
            step: None,
            relative: None,
            direction: None,
            change: None,
            alarm_ratio: None,
            branch_kl: None,
            tail_scores: None,
            branch_ood: None,
        }
    }

    pub fn is_ood(&self) -> bool {
        self.state.is_ood()
    }
}

/// Running totals for diagnostics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub frames: u64,
    pub scored: u64,
    pub ood: u64,
    /// Faults by kind (see [`Fault::kind`]).
    pub faults: BTreeMap<String, u64>,
    /// Frames a detector with history took to warm up (no score, not a fault).
    pub warming_up: u64,
}

impl Counters {
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// A detector shared by the monitors of several streams (cameras), each with its own stream in
/// it, so that their frames can be scored in one batched call ([`Monitor::process_together`]).
pub type SharedDetector = Arc<Mutex<Box<dyn Detector>>>;

/// One frame for [`Monitor::process_together`]: as for [`Monitor::process_at`].
pub struct BatchItem<'m, 'f> {
    pub monitor: &'m mut Monitor,
    pub frame: &'f FrameData<'f>,
    pub age: Option<FrameAge>,
    pub stamp_ns: Option<i64>,
}

pub struct Monitor {
    detector: SharedDetector,
    /// The monitor's one stream in its detector.
    stream: StreamId,
    config: MonitorConfig,
    state: MonitorState,
    counters: Counters,
    sequential: Option<Sequential>,
    repeats: Repeats,
    rate: StreamRate,
    /// The detector has two branches (flow): verdicts carry their KL.
    branches: bool,
    branch_thresholds: Option<crate::bundle::BranchThresholds>,
}

impl Monitor {
    /// A calibrated bundle (one with a calibration section) gets the sequential pipeline;
    /// otherwise the per-frame `score_threshold` decides.
    pub fn new(detector: Box<dyn Detector>, config: MonitorConfig) -> Result<Self, DetectionError> {
        Self::on_shared(Arc::new(Mutex::new(detector)), config)
    }

    /// A monitor of a new stream of a detector that other monitors may share.
    pub fn on_shared(
        detector: SharedDetector,
        config: MonitorConfig,
    ) -> Result<Self, DetectionError> {
        config.validate()?;
        let (stream, sequential, branches, branch_thresholds) = {
            let mut d = lock(&detector);
            let m = &d.bundle().manifest;
            let branches = matches!(m.detector, crate::bundle::DetectorSpec::Flow(_));
            let thresholds = m.calibration.as_ref().and_then(|c| c.branch_thresholds);
            if config.branch_rule && thresholds.is_none() {
                return Err(DetectionError::InvalidParam {
                    param: "branch_rule",
                    reason: "needs a flow bundle with calibration.branch_thresholds: calibrate it again with this version's `vae-ood calibrate`, or turn the rule off".into(),
                });
            }
            // Nothing reads the branch's statistic without the branch. A detector's monitors
            // share the meter: the last one opened sets it (the node's monitors all have the
            // node's `direction_branch`).
            let has_branch = m
                .calibration
                .as_ref()
                .is_some_and(|c| c.direction.is_some());
            if !config.direction_branch {
                d.measure_no_direction();
            } else if has_branch {
                d.measure_direction(None);
            }
            (
                d.open_stream(),
                Sequential::fresh(d.as_ref(), &config)?,
                branches,
                thresholds,
            )
        };
        Ok(Self {
            detector,
            stream,
            config,
            state: MonitorState::Starting,
            counters: Counters::default(),
            sequential,
            repeats: Repeats::default(),
            rate: StreamRate::default(),
            branches,
            branch_thresholds,
        })
    }

    /// Starts over as a new monitor would (STARTING, S = 0, warm-up and the detector's stream
    /// state cleared), keeping the loaded detector and the counts. For a stream that resumes
    /// after a pause (a lifecycle node reactivated): evidence from before the pause must not
    /// carry over, and neither may a latched verdict.
    pub fn restart(&mut self) -> Result<MonitorState, DetectionError> {
        // A threshold set at run time survives the restart, and so does the start-up phase
        // it turned off; the phase itself starts again with the stream.
        let kept = self
            .sequential
            .as_ref()
            .map(|s| (s.pooled_threshold, s.startup.is_none()));
        {
            let mut d = lock(&self.detector);
            self.sequential = Sequential::fresh(d.as_ref(), &self.config)?;
            d.reset_stream(self.stream);
        }
        if let (Some((t, off)), Some(s)) = (kept, &mut self.sequential) {
            if off {
                s.startup = None;
            }
            s.set_pooled_threshold(t);
        }
        self.repeats = Repeats::default();
        self.rate = StreamRate::default();
        self.state = MonitorState::Starting;
        Ok(self.state)
    }

    /// The flow bundle's per-branch thresholds (the reference design's rule), if it has them.
    pub fn branch_thresholds(&self) -> Option<crate::bundle::BranchThresholds> {
        self.branch_thresholds
    }

    /// True when verdicts come from the calibrated sequential pipeline.
    pub fn is_calibrated(&self) -> bool {
        self.sequential.is_some()
    }

    /// The pipeline parameters in force (calibrated monitors).
    pub fn pipeline(&self) -> Option<&PipelineParams> {
        self.sequential.as_ref().map(|s| s.detector.params())
    }

    /// Sets the pooled statistic's threshold (its own, before any share the relative branch
    /// takes of the budget). The operator's number is the one in force: it turns the start-up
    /// phase off, as `MonitorConfig::cusum_threshold` does.
    pub fn set_cusum_threshold(&mut self, t: f64) {
        if let Some(s) = &mut self.sequential {
            s.startup = None;
            s.set_pooled_threshold(t);
            s.apply_branch_thresholds();
        }
    }

    /// The relative branch's threshold and the pooled scale while it runs, when it does.
    pub fn relative_split(&self) -> Option<(f64, f64)> {
        let r = self.sequential.as_ref()?.relative.as_ref()?;
        Some((r.detector.params().cusum_threshold, r.pooled_scale))
    }

    /// The start-up phase in force (its floor scaled as the thresholds are), when it runs.
    pub fn startup(&self) -> Option<StartupSection> {
        self.sequential.as_ref()?.startup
    }

    /// The start-up phase's cruise thresholds in words ([`StartupSection::describe_cruise`]),
    /// judged on the thresholds as this monitor runs them (scaled as its floor is), when it
    /// runs one.
    pub fn describe_cruise(&self) -> Option<String> {
        let s = self.sequential.as_ref()?;
        let calibrated = crate::detection::startup::calibrated_thresholds(
            s.pooled_threshold,
            s.relative.as_ref().map(|r| (r.threshold, r.pooled_scale)),
            s.direction.as_ref().map(|d| d.threshold),
        );
        Some(s.startup?.describe_cruise(&calibrated))
    }

    /// The change branch's threshold in force, when it runs.
    pub fn change_threshold(&self) -> Option<f64> {
        let c = self.sequential.as_ref()?.change.as_ref()?;
        Some(c.detector.params().cusum_threshold)
    }

    /// The direction branch's threshold in force, when it runs.
    pub fn direction_threshold(&self) -> Option<f64> {
        let d = self.sequential.as_ref()?.direction.as_ref()?;
        Some(d.detector.params().cusum_threshold)
    }

    /// The operator's reset: zeroes S and leaves OOD (to OK, or STARTING while the window is
    /// still filling); a drive-relative branch starts a new baseline. Returns the new state. A
    /// per-frame monitor has nothing to reset.
    pub fn reset(&mut self) -> MonitorState {
        if let Some(s) = &mut self.sequential {
            s.reset_cusum();
            s.good_streak = 0;
            if s.latched == MonitorState::Ood {
                s.latched = MonitorState::Ok;
            }
            // Only an alarm is cleared: FAULT stays, and so does STARTING (a window still
            // filling, or a detector warming up again after a gap, has not scored this scene).
            if self.state == MonitorState::Ood {
                self.state = s.latched;
            }
        }
        self.state
    }

    /// The detector (locked: shared by every monitor on it).
    pub fn detector(&self) -> MutexGuard<'_, Box<dyn Detector>> {
        lock(&self.detector)
    }

    /// The detector, to open more monitors on it ([`Monitor::on_shared`]).
    pub fn shared_detector(&self) -> &SharedDetector {
        &self.detector
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    pub fn set_score_threshold(&mut self, t: f64) {
        self.config.score_threshold = t;
    }

    pub fn state(&self) -> MonitorState {
        self.state
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Processes one frame. `age` is how old the frame is (now minus its stamp), if known.
    pub fn process(&mut self, frame: &FrameData<'_>, age: Option<FrameAge>) -> FrameVerdict {
        self.process_at(frame, age, None)
    }

    /// Processes one frame stamped `stamp_ns` (the camera's stamp): a detector with history
    /// (the flow detector) restarts it when the stamps show a gap in the stream.
    pub fn process_at(
        &mut self,
        frame: &FrameData<'_>,
        age: Option<FrameAge>,
        stamp_ns: Option<i64>,
    ) -> FrameVerdict {
        let mut timing = StageTimes::default();
        let result = self.score(frame, age, stamp_ns, &mut timing);
        self.record(result, timing)
    }

    /// Processes an already decoded frame (image folders, tests).
    pub fn process_image(&mut self, img: &RgbImage) -> FrameVerdict {
        let mut timing = StageTimes::default();
        let result = self.score_pixels(img.into(), None, &mut timing);
        self.record(result, timing)
    }

    /// Records a frame the caller rejected before it reached the monitor (e.g. a message that
    /// could not be deserialised), so it is counted and the verdict fails safe.
    pub fn reject(&mut self, fault: Fault) -> FrameVerdict {
        self.record(Err(fault), StageTimes::default())
    }

    fn score(
        &mut self,
        frame: &FrameData<'_>,
        age: Option<FrameAge>,
        stamp_ns: Option<i64>,
        timing: &mut StageTimes,
    ) -> Result<Judged, Fault> {
        let mut decoded = None;
        let pixels = self.admit(frame, age, &mut decoded, timing)?;
        self.score_pixels(pixels, stamp_ns, timing)
    }

    /// The checks before scoring: the frame's age, then its pixels (a raw frame is only
    /// checked here and read in place by preprocessing; a compressed one is decoded).
    fn admit<'a>(
        &self,
        frame: &FrameData<'a>,
        age: Option<FrameAge>,
        decoded: &'a mut Option<RgbImage>,
        timing: &mut StageTimes,
    ) -> Result<Pixels<'a>, Fault> {
        // The check is symmetric: a stamp far ahead of the clock proves the clocks disagree,
        // and then an old frame could pass as fresh.
        match (age, self.config.max_frame_age) {
            (Some(FrameAge::Old(age)), Some(max)) if age > max => {
                return Err(Fault::Stale { age, max })
            }
            (Some(FrameAge::Ahead(ahead)), Some(max)) if ahead > max => {
                return Err(Fault::AheadOfClock { ahead, max })
            }
            _ => {}
        }
        let t0 = Instant::now();
        let pixels = frame::pixels(frame, decoded)?;
        timing.decode = t0.elapsed();
        Ok(pixels)
    }

    fn score_pixels(
        &mut self,
        pixels: Pixels<'_>,
        stamp_ns: Option<i64>,
        timing: &mut StageTimes,
    ) -> Result<Judged, Fault> {
        let s = lock(&self.detector).score_at(self.stream, pixels, stamp_ns);
        self.judge_posterior(s, stamp_ns, timing)
    }

    /// After scoring: the stage times, the stream's rate and the frozen-camera check on the
    /// posterior. A frame is scored before either check, so a detector with history (flow)
    /// keeps its stack through them.
    fn judge_posterior(
        &mut self,
        scored: Result<Scored, Fault>,
        stamp_ns: Option<i64>,
        timing: &mut StageTimes,
    ) -> Result<Judged, Fault> {
        let frames = self.rate.observe(stamp_ns);
        let slow = frames
            .zip(self.config.min_rate)
            .filter(|&(n, min)| (n as f64) < min);
        let s = match (scored, slow) {
            // A slow stream is the cause when a detector with history keeps restarting its
            // stack (gaps between the few frames): say so, rather than STARTING for ever.
            (Err(Fault::WarmingUp { .. }), Some((frames, min))) => {
                return Err(Fault::SlowStream { frames, min })
            }
            (scored, _) => scored?,
        };
        timing.preprocess = s.preprocess;
        timing.inference = s.inference;
        let repeats = self.repeats.observe(&s.mu, &s.logvar);
        match (slow, self.config.max_repeated_frames) {
            (Some((frames, min)), _) => Err(Fault::SlowStream { frames, min }),
            (None, Some(max)) if repeats > max => Err(Fault::Frozen { repeats, max }),
            _ => Ok(Judged {
                score: s.score,
                direction: s.direction,
                // Measured on frames that reach the sequential test only: a faulted frame
                // neither starts nor ends a step.
                change: self
                    .sequential
                    .as_mut()
                    .and_then(|q| q.change.as_mut())
                    .and_then(|c| c.meter.measure(&s.mu, stamp_ns)),
                branch_kl: self
                    .branches
                    .then(|| crate::flow_detector::FlowDetector::branch_kl(&s.kl)),
                tail_scores: s.tail_scores,
            }),
        }
    }

    /// Processes one frame for each of several monitors (at most one frame per monitor):
    /// frames of several cameras. Those sharing a detector whose backend gains from batches
    /// ([`batching_pays`]) are scored in one batched call ([`Monitor::process_batched`]), the
    /// others one by one. Each verdict is the one [`Monitor::process_at`] would give.
    pub fn process_together(items: &mut [BatchItem<'_, '_>]) -> Vec<FrameVerdict> {
        let pays = items
            .first()
            .is_some_and(|i| batching_pays(i.monitor.detector().backend()));
        if pays {
            Self::process_batched(items)
        } else {
            Self::process_one_by_one(items)
        }
    }

    /// Each item through [`Monitor::process_at`], one call per frame.
    pub fn process_one_by_one(items: &mut [BatchItem<'_, '_>]) -> Vec<FrameVerdict> {
        items
            .iter_mut()
            .map(|i| i.monitor.process_at(i.frame, i.age, i.stamp_ns))
            .collect()
    }

    /// [`Monitor::process_together`], always in one batched call when the monitors share a
    /// detector (on different detectors, one by one).
    pub fn process_batched(items: &mut [BatchItem<'_, '_>]) -> Vec<FrameVerdict> {
        let shared = items.first().map(|i| i.monitor.detector.clone());
        let together = shared.as_ref().is_some_and(|d| {
            items.iter().all(|i| Arc::ptr_eq(d, &i.monitor.detector))
                && items.iter().enumerate().all(|(k, i)| {
                    items[..k]
                        .iter()
                        .all(|j| j.monitor.stream != i.monitor.stream)
                })
        });
        let Some(detector) = shared.filter(|_| together) else {
            return Self::process_one_by_one(items);
        };
        let mut timings = vec![StageTimes::default(); items.len()];
        let mut decoded: Vec<Option<RgbImage>> = (0..items.len()).map(|_| None).collect();
        let admitted: Vec<Result<Pixels<'_>, Fault>> = items
            .iter()
            .zip(decoded.iter_mut())
            .zip(timings.iter_mut())
            .map(|((i, d), t)| i.monitor.admit(i.frame, i.age, d, t))
            .collect();
        let batch: Vec<StreamFrame<'_>> = admitted
            .iter()
            .zip(items.iter())
            .filter_map(|(p, i)| {
                p.as_ref().ok().map(|&pixels| StreamFrame {
                    stream: i.monitor.stream,
                    pixels,
                    stamp_ns: i.stamp_ns,
                })
            })
            .collect();
        let mut scored = if batch.is_empty() {
            vec![]
        } else {
            lock(&detector).score_batch(&batch)
        }
        .into_iter();
        admitted
            .into_iter()
            .zip(items.iter_mut())
            .zip(timings)
            .map(|((p, i), mut timing)| {
                let result = match p {
                    Err(f) => Err(f),
                    Ok(_) => {
                        let s = scored.next().unwrap_or(Err(Fault::Inference(
                            "the detector returned fewer results than frames".into(),
                        )));
                        i.monitor.judge_posterior(s, i.stamp_ns, &mut timing)
                    }
                };
                i.monitor.record(result, timing)
            })
            .collect()
    }

    fn record(&mut self, result: Result<Judged, Fault>, timing: StageTimes) -> FrameVerdict {
        self.counters.frames += 1;
        let verdict = match result {
            Ok(Judged {
                score,
                direction,
                change,
                branch_kl,
                tail_scores,
            }) => {
                self.counters.scored += 1;
                let (mut state, judgement) = match &mut self.sequential {
                    Some(seq) => {
                        let j = seq.step(score, direction, change);
                        (seq.next(&j, self.config.recovery), Some(j))
                    }
                    None if score > self.config.score_threshold => (MonitorState::Ood, None),
                    None => (MonitorState::Ok, None),
                };
                let branch_ood = branch_kl
                    .zip(self.branch_thresholds)
                    .map(|(kl, t)| t.exceeded(kl));
                // The reference's rule adds alarms on single frames; it never clears the
                // sequential test's (its latch and S are left as they are).
                if self.config.branch_rule && branch_ood == Some(true) {
                    state = MonitorState::Ood;
                }
                FrameVerdict {
                    state,
                    score: Some(score),
                    fault: None,
                    timing,
                    step: judgement.as_ref().map(|j| j.pooled),
                    relative: judgement.as_ref().and_then(|j| j.relative),
                    direction: judgement.as_ref().and_then(|j| j.direction),
                    change: judgement.as_ref().and_then(|j| j.change),
                    alarm_ratio: judgement.map(|j| j.ratio),
                    branch_kl,
                    tail_scores,
                    branch_ood,
                }
            }
            Err(fault @ Fault::WarmingUp { .. }) => {
                // Not a fault of the frame: the detector's history is filling (S and the
                // latched verdict are left alone, as for a fault).
                self.counters.warming_up += 1;
                FrameVerdict::unscored(MonitorState::Starting, Some(fault), timing)
            }
            Err(fault) => {
                *self.counters.faults.entry(fault.kind()).or_default() += 1;
                // S and the latched verdict are left alone: a fault says nothing about the data.
                FrameVerdict::unscored(MonitorState::Fault, Some(fault), timing)
            }
        };
        if verdict.is_ood() {
            self.counters.ood += 1;
        }
        self.state = verdict.state;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::Step;
    use proptest::prelude::*;

    #[test]
    fn the_stream_rate_counts_the_last_seconds_stamps_once_a_second_has_passed() {
        const MS: i64 = 1_000_000;
        let mut r = StreamRate::default();
        // 15 Hz: judged from the first stamp a second after the stream's first.
        let at_15hz: Vec<Option<usize>> =
            (0..30).map(|k| r.observe(Some(k * 200 * MS / 3))).collect();
        assert!(at_15hz[..15].iter().all(Option::is_none), "{at_15hz:?}");
        assert!(at_15hz[15..].iter().all(|&n| n == Some(15)), "{at_15hz:?}");
        // One frame in three kept: the count falls to 5 within a second.
        let start = 30 * 200 * MS / 3;
        let thinned: Vec<usize> = (0..10)
            .map(|k| r.observe(Some(start + k * 200 * MS)).unwrap())
            .collect();
        assert!(thinned.windows(2).all(|w| w[1] <= w[0]), "{thinned:?}");
        assert_eq!(*thinned.last().unwrap(), 5);
        // A repeated or slightly older stamp is not counted.
        let newest = start + 9 * 200 * MS;
        assert_eq!(r.observe(Some(newest)), Some(5));
        assert_eq!(r.observe(Some(newest - 300 * MS)), Some(5));
        // No stamp: not judged. A stamp more than a second back starts the count again; the
        // second is the one up to the newest stamp, its start left out.
        assert_eq!(r.observe(None), None);
        assert_eq!(r.observe(Some(0)), None);
        assert_eq!(r.observe(Some(500 * MS)), None);
        assert_eq!(r.observe(Some(1_000 * MS)), Some(2));
    }

    #[test]
    fn several_detectors_are_ok_only_when_all_are() {
        use MonitorState::*;
        assert_eq!(MonitorState::combine([Ok, Ok]), Ok);
        assert_eq!(MonitorState::combine([Ok, Starting]), Starting);
        assert_eq!(MonitorState::combine([Starting, Ood, Ok]), Ood);
        assert_eq!(MonitorState::combine([Ood, Fault, Starting]), Fault);
        assert_eq!(MonitorState::combine([]), Starting);
    }

    /// The threshold of [`seq`]'s pipeline.
    const THRESHOLD: f64 = 5.0;

    /// A step with a full window and S = `cusum`, alarming over [`THRESHOLD`].
    /// A pooled step alone, as a monitor without a relative branch judges it.
    fn judged(pooled: Step) -> Judgement {
        Judgement {
            ratio: pooled.cusum / THRESHOLD,
            pooled,
            relative: None,
            direction: None,
            change: None,
        }
    }

    fn at(cusum: f64) -> Judgement {
        judged(Step {
            p_value: 0.5,
            log_martingale: 0.0,
            cusum,
            window_full: true,
            alarm: cusum > THRESHOLD,
            threshold: THRESHOLD,
        })
    }

    fn step(window_full: bool, alarm: bool) -> Judgement {
        judged(Step {
            p_value: 0.5,
            log_martingale: 0.0,
            cusum: if alarm { 10.0 } else { 0.0 },
            window_full,
            alarm,
            threshold: THRESHOLD,
        })
    }

    fn seq() -> Sequential {
        let det = SequentialDetector::new(
            Calibration::new(vec![1.0]).unwrap(),
            PipelineParams {
                cusum_threshold: THRESHOLD,
                ..PipelineParams::default()
            },
        )
        .unwrap();
        pooled_only(det)
    }

    /// The pooled statistic alone, at its detector's threshold, from STARTING.
    fn pooled_only(detector: SequentialDetector) -> Sequential {
        Sequential {
            pooled_threshold: detector.params().cusum_threshold,
            detector,
            relative: None,
            direction: None,
            change: None,
            startup: None,
            scored: 0,
            latched: MonitorState::Starting,
            good_streak: 0,
        }
    }

    #[test]
    fn documented_transitions() {
        let auto = Recovery::Auto {
            frames: 3,
            level: 1.0,
        };
        let mut s = seq();
        assert_eq!(s.next(&step(false, false), auto), MonitorState::Starting);
        assert_eq!(s.next(&step(true, false), auto), MonitorState::Ok);
        assert_eq!(s.next(&step(true, true), auto), MonitorState::Ood);
        // Auto recovery needs 3 consecutive frames without alarm; an alarm restarts the count.
        assert_eq!(s.next(&step(true, false), auto), MonitorState::Ood);
        assert_eq!(s.next(&step(true, false), auto), MonitorState::Ood);
        assert_eq!(s.next(&step(true, true), auto), MonitorState::Ood);
        for _ in 0..2 {
            assert_eq!(s.next(&step(true, false), auto), MonitorState::Ood);
        }
        assert_eq!(s.next(&step(true, false), auto), MonitorState::Ok);
        // Manual recovery never leaves OOD by itself.
        let mut m = seq();
        m.next(&step(true, true), Recovery::Manual);
        for _ in 0..100 {
            assert_eq!(
                m.next(&step(true, false), Recovery::Manual),
                MonitorState::Ood
            );
        }
    }

    proptest! {
        /// Over any sequence of steps: OK only without an alarm on the current frame, never OK
        /// before the window is full, and manual recovery keeps OOD once entered.
        #[test]
        fn invariants(events in prop::collection::vec((any::<bool>(), any::<bool>()), 1..200), manual in any::<bool>()) {
            let recovery = if manual { Recovery::Manual } else { Recovery::Auto { frames: 5, level: 1.0 } };
            let mut s = seq();
            let mut full = false;
            let mut entered_ood = false;
            for (f, alarm) in events {
                full |= f;
                let st = step(full, alarm && full);
                let state = s.next(&st, recovery);
                prop_assert!(state != MonitorState::Fault);
                if state == MonitorState::Ok {
                    prop_assert!(full && !st.pooled.alarm);
                    prop_assert!(!(manual && entered_ood));
                }
                if !full {
                    prop_assert_eq!(state, MonitorState::Starting);
                }
                entered_ood |= state == MonitorState::Ood;
            }
        }

        /// Hysteresis only lengthens OOD: over any path of S, a monitor with a lower recovery
        /// level is OOD on every frame the level-1 monitor is, so it alarms no later and
        /// enters OOD no more often.
        #[test]
        fn a_lower_recovery_level_never_delays_or_adds_an_alarm(
            path in prop::collection::vec(0.0f64..10.0, 1..300),
            level in 0.01f64..=1.0,
            frames in 1u32..8,
        ) {
            let (mut plain, mut hyst) = (seq(), seq());
            let (mut entries_plain, mut entries_hyst) = (0, 0);
            let (mut last_plain, mut last_hyst) = (MonitorState::Starting, MonitorState::Starting);
            for cusum in path {
                let st = at(cusum);
                let a = plain.next(&st, Recovery::Auto { frames, level: 1.0 });
                let b = hyst.next(&st, Recovery::Auto { frames, level });
                if a == MonitorState::Ood {
                    prop_assert_eq!(b, MonitorState::Ood);
                }
                entries_plain += usize::from(a == MonitorState::Ood && last_plain != MonitorState::Ood);
                entries_hyst += usize::from(b == MonitorState::Ood && last_hyst != MonitorState::Ood);
                (last_plain, last_hyst) = (a, b);
            }
            prop_assert!(entries_hyst <= entries_plain);
        }
    }

    /// A branch's pipeline over calibration scores `cal`: `window`, decay 1, a 20-point grid.
    fn pipeline(cal: Vec<f64>, window: usize, threshold: f64) -> SequentialDetector {
        let params = PipelineParams {
            window,
            epsilon_grid: 20,
            decay: 1.0,
            cusum_threshold: threshold,
        };
        SequentialDetector::new(Calibration::new(cal).unwrap(), params).unwrap()
    }

    /// The operator's reset starts the relative branch afresh, p-value window included: after
    /// an alarm on a shift, a reset accepts the shifted scene, and with a window of 3 the
    /// branch stays quiet on it (p-values taken against the dropped baseline would alarm again
    /// as soon as the new baseline exists).
    #[test]
    fn a_reset_empties_the_relative_branchs_window() {
        use crate::detection::relative::BaselineParams;
        let mut s = Sequential {
            detector: pipeline((0..10_000).map(f64::from).collect(), 3, 5.0),
            pooled_threshold: 5.0,
            relative: Some(RelativeBranch {
                baseline: Baseline::new(BaselineParams::new(5, 5)),
                detector: pipeline((-50..50).map(f64::from).collect(), 3, 1.0),
                threshold: 1.0,
                pooled_scale: 1.0,
            }),
            direction: None,
            change: None,
            startup: None,
            scored: 0,
            latched: MonitorState::Starting,
            good_streak: 0,
        };
        for _ in 0..20 {
            assert!(!s.step(50.0, None, None).pooled.alarm);
        }
        assert!(
            (0..10).any(|_| s.step(1000.0, None, None).pooled.alarm),
            "the shift alarms"
        );
        s.reset_cusum();
        for t in 0..40 {
            let j = s.step(1000.0, None, None);
            assert!(
                !j.pooled.alarm,
                "frame {t} after the reset: {:?}",
                j.relative
            );
        }
    }

    /// A pooled statistic at threshold 5 over calibration scores 0..100, and a direction branch
    /// (window 1, decay 1) over `scores` at `threshold`, with `baseline` if given.
    fn with_direction(scores: Vec<f64>, threshold: f64, baseline: Option<Baseline>) -> Sequential {
        Sequential {
            detector: pipeline((0..100).map(f64::from).collect(), 1, 5.0),
            pooled_threshold: 5.0,
            relative: None,
            direction: Some(DirectionBranch {
                threshold,
                detector: pipeline(scores, 1, threshold),
                baseline,
            }),
            change: None,
            startup: None,
            scored: 0,
            latched: MonitorState::Starting,
            good_streak: 0,
        }
    }

    /// The change branch (threshold 8 over calibration steps 0..100) alarms the verdict on
    /// its own, at its one threshold through and after a start-up phase that halves the others;
    /// a frame it did not measure (a gap) leaves its S as it was, and a reset zeroes it.
    #[test]
    fn the_change_branch_alarms_at_its_one_threshold() {
        use crate::detection::change::ChangeSection;
        use crate::mixture::Component;
        let section = ChangeSection {
            interval_ns: 100,
            components: vec![Component {
                weight: 1.0,
                mean: vec![0.0],
                precision: vec![1.0],
                log_det_precision: 0.0,
            }],
            pipeline: PipelineParams {
                window: 1,
                epsilon_grid: 100,
                decay: 1.0,
                cusum_threshold: 8.0,
            },
            pooled_threshold_before: 5.0,
            tuning_drives: 1,
            scores: (0..100).map(f64::from).collect(),
        };
        let mut s = Sequential {
            detector: pipeline((0..100).map(f64::from).collect(), 1, 5.0),
            pooled_threshold: 5.0,
            relative: None,
            direction: None,
            change: Some(ChangeBranch {
                meter: section.meter(),
                detector: pipeline(section.scores.clone(), 1, 8.0),
            }),
            startup: Some(StartupSection {
                frames: 2,
                cruise_scale: 0.5,
                floor: 1.0,
                tuning_drives_alarmed: 0,
                tuning_drives_allowed: 1,
            }),
            scored: 0,
            latched: MonitorState::Starting,
            good_streak: 0,
        };
        // The pooled score ordinary, every step beyond the calibration's: the change branch's
        // S grows by ln of the mixture's bet at p = 1/101, less the drift, each frame.
        let mut first = None;
        for t in 0..60 {
            let j = s.step(50.0, None, Some(1000.0));
            let c = j.change.expect("measured");
            assert_eq!(c.threshold, 8.0, "frame {t}: the phase does not lower it");
            assert!(j.pooled.cusum == 0.0 || j.pooled.cusum < j.pooled.threshold);
            assert_eq!(c.alarm, c.cusum > 8.0, "frame {t}");
            if c.alarm {
                assert!(j.pooled.alarm, "the branch's alarm is the verdict's");
                first.get_or_insert(t);
            }
        }
        let first = first.expect("the change branch alarms");
        assert!(
            first >= 2,
            "not on the first frames: S needs more than one step"
        );
        let before = s.step(50.0, None, Some(1000.0)).change.unwrap().cusum;
        let gap = s.step(50.0, None, None);
        assert!(gap.change.is_none());
        assert_eq!(s.change.as_ref().unwrap().detector.cusum(), before);
        s.reset_cusum();
        assert_eq!(s.change.as_ref().unwrap().detector.cusum(), 0.0);
    }

    /// The start-up phase: the first 4 frames at the calibrated thresholds (pooled 5, direction
    /// 8), later ones at half of them but never under the floor of 3. A shift that gives the
    /// pooled statistic the same evidence every frame alarms at the lower threshold after the
    /// start-up, and not before.
    #[test]
    fn after_the_start_up_every_threshold_falls_to_its_cruise_share() {
        let mut s = with_direction((0..100).map(f64::from).collect(), 8.0, None);
        s.startup = Some(StartupSection {
            frames: 4,
            cruise_scale: 0.5,
            floor: 3.0,
            tuning_drives_alarmed: 0,
            tuning_drives_allowed: 1,
        });
        let in_force = |s: &Sequential| {
            (
                s.detector.params().cusum_threshold,
                s.direction
                    .as_ref()
                    .unwrap()
                    .detector
                    .params()
                    .cusum_threshold,
            )
        };
        for t in 0..4 {
            s.step(50.0, Some(50.0), None);
            assert_eq!(in_force(&s), (5.0, 8.0), "frame {t}");
        }
        s.step(50.0, Some(50.0), None);
        assert_eq!(in_force(&s), (3.0, 4.0), "the pooled 2.5 held at the floor");
        // The same run with and without a start-up phase: 40 frames of the pooled calibration's
        // largest score (S grows by about 0.09 a frame after the drift of 1) take S over the
        // cruise threshold of 2.5 and not over the calibrated 5. As the phase ends (after 2
        // frames) S falls by half with the threshold (the gentle end), then grows as before.
        let run = |startup: bool| {
            let mut s = with_direction((0..100).map(f64::from).collect(), 8.0, None);
            if startup {
                s.startup = Some(StartupSection {
                    frames: 2,
                    cruise_scale: 0.5,
                    floor: 0.0,
                    tuning_drives_alarmed: 0,
                    tuning_drives_allowed: 1,
                });
            }
            (0..40)
                .map(|_| s.step(99.0, None, None))
                .collect::<Vec<_>>()
        };
        let (held_run, lowered_run) = (run(false), run(true));
        let (held, lowered) = (&held_run[39], &lowered_run[39]);
        let carried = held_run[1].pooled.cusum;
        assert!(carried > 0.0);
        assert!(
            (lowered.pooled.cusum - (held.pooled.cusum - 0.5 * carried)).abs() < 1e-9,
            "{} {} {carried}",
            lowered.pooled.cusum,
            held.pooled.cusum
        );
        assert!(
            held.pooled.cusum > 2.5 && held.pooled.cusum < 5.0,
            "{:?}",
            held.pooled
        );
        assert!(!held.pooled.alarm && lowered.pooled.alarm);
        assert!(lowered.ratio > 1.0 && held.ratio < 1.0);
    }

    /// Against the stream's own past, a direction that was always extreme is the stream's
    /// baseline and never alarms; a jump to it alarms once the baseline exists.
    #[test]
    fn the_direction_branch_against_its_baseline_sees_a_change_only() {
        use crate::detection::relative::BaselineParams;
        let fresh = || {
            with_direction(
                (0..100).map(|i| f64::from(i - 50) / 500.0).collect(),
                2.0,
                Some(Baseline::new(BaselineParams::new(5, 5))),
            )
        };
        let mut always = fresh();
        for t in 0..60 {
            let j = always.step(50.0, Some(0.9), None);
            // No step until the baseline's first window is in.
            assert_eq!(j.direction.is_some(), t >= 5, "{t}");
            assert!(!j.pooled.alarm, "{t}");
        }
        let mut jump = fresh();
        let first = (0..60).find(|&t| {
            jump.step(50.0, Some(if t < 20 { 0.2 } else { 0.9 }), None)
                .pooled
                .alarm
        });
        assert!(first.is_some_and(|t| (20..30).contains(&t)), "{first:?}");
    }

    /// A frame whose weakest direction is extreme alarms through the direction branch while
    /// the pooled branch stays quiet; the ratio counts the branch against its own threshold,
    /// and the operator's reset zeroes it.
    #[test]
    fn the_direction_branch_alarms_on_its_own() {
        let mut s = with_direction((0..100).map(|i| f64::from(i) / 400.0).collect(), 8.0, None);
        // Ordinary frames: neither branch moves.
        for _ in 0..20 {
            let j = s.step(50.0, Some(0.1), None);
            assert!(
                !j.pooled.alarm && j.direction.is_some_and(|d| d.cusum < 1.0),
                "{:?}",
                j.pooled
            );
        }
        // A frame without a measured direction leaves the branch as it was.
        assert!(s.step(50.0, None, None).direction.is_none());
        // Every frame's direction beyond every calibration frame's: S grows by ln(bet) - 1
        // a frame until the branch alarms, with the pooled statistic still at 0.
        let mut alarmed = None;
        for t in 0..30 {
            let j = s.step(50.0, Some(0.9), None);
            assert_eq!(j.pooled.cusum, 0.0);
            if j.pooled.alarm {
                assert!(j.ratio > 1.0 && j.direction.unwrap().alarm);
                alarmed = Some(t);
                break;
            }
        }
        assert!(alarmed.is_some_and(|t| t > 0), "{alarmed:?}");
        s.reset_cusum();
        assert_eq!(s.direction.as_ref().unwrap().detector.cusum(), 0.0);
    }

    /// Each step records the threshold it was judged at, frame by frame, with a start-up phase
    /// and a relative hold that outlasts the relative branch's first baseline (as
    /// `models/default`'s 360 frames against its 60): the pooled share starts where
    /// `Baseline::holding` ends, not at that first step. The start-up certification reads these
    /// thresholds (session 43's first certification rebuilt them and took the wrong frame).
    #[test]
    fn each_step_records_the_threshold_in_force() {
        use crate::detection::relative::BaselineParams;
        let cal: Vec<f64> = (0..100).map(f64::from).collect();
        let baseline = BaselineParams {
            window: 5,
            gap: 5,
            hold: Some(20),
        };
        let startup = StartupSection {
            frames: 8,
            cruise_scale: 0.5,
            floor: 1.0,
            tuning_drives_alarmed: 0,
            tuning_drives_allowed: 1,
        };
        let mut s = Sequential {
            detector: pipeline(cal.clone(), 1, THRESHOLD),
            pooled_threshold: THRESHOLD,
            relative: Some(RelativeBranch {
                baseline: Baseline::new(baseline),
                threshold: 8.0,
                detector: pipeline(cal, 1, 8.0),
                pooled_scale: 4.0,
            }),
            direction: None,
            change: None,
            startup: Some(startup),
            scored: 0,
            latched: MonitorState::Starting,
            good_streak: 0,
        };
        let mut reference = Baseline::new(baseline);
        let (mut first_relative, mut first_shared) = (None, None);
        for t in 0..30u64 {
            let shared = !reference.holding();
            reference.push(50.0);
            let j = s.step(50.0, None, None);
            let pooled = if shared { THRESHOLD * 4.0 } else { THRESHOLD };
            assert_eq!(
                j.pooled.threshold,
                startup.threshold(pooled, t),
                "frame {t}"
            );
            if let Some(r) = j.relative {
                assert_eq!(r.threshold, startup.threshold(8.0, t), "frame {t}");
                first_relative.get_or_insert(t);
            }
            if shared {
                first_shared.get_or_insert(t);
            }
        }
        // The case that matters: the relative branch steps well before the share starts.
        assert!(
            first_relative.unwrap() + 5 < first_shared.unwrap(),
            "{first_relative:?} {first_shared:?}"
        );
    }

    /// A stream whose clear frames score low against the pooled calibration: a shift that lifts
    /// them to an ordinary pooled level alarms on the relative branch only; the pooled branch
    /// runs at its own threshold until the baseline exists, then at its share.
    #[test]
    fn the_relative_branch_sees_a_shift_against_the_streams_own_past() {
        use crate::detection::relative::BaselineParams;
        let params = PipelineParams {
            window: 1,
            epsilon_grid: 100,
            decay: 1.0,
            cusum_threshold: THRESHOLD,
        };
        let pooled = Calibration::new((0..100).map(f64::from).collect()).unwrap();
        let relative =
            Calibration::new((0..100).map(|x| f64::from(x) / 10.0 - 5.0).collect()).unwrap();
        let mut s = Sequential {
            detector: SequentialDetector::new(pooled, params.clone()).unwrap(),
            pooled_threshold: THRESHOLD,
            relative: Some(RelativeBranch {
                baseline: Baseline::new(BaselineParams::new(10, 50)),
                threshold: params.cusum_threshold,
                detector: SequentialDetector::new(relative, params).unwrap(),
                pooled_scale: 2.0,
            }),
            direction: None,
            change: None,
            startup: None,
            scored: 0,
            latched: MonitorState::Starting,
            good_streak: 0,
        };
        let auto = Recovery::Auto {
            frames: 3,
            level: 0.5,
        };
        for t in 0..40 {
            let j = s.step(10.0, None, None);
            assert_eq!(j.relative.is_some(), t >= 10, "frame {t}");
            assert_eq!(
                s.detector.params().cusum_threshold,
                if t >= 10 { 10.0 } else { 5.0 }
            );
            assert_eq!(s.next(&j, auto), MonitorState::Ok, "frame {t}");
        }
        // 50 is the pooled calibration's median (p about 0.5, no evidence), but 40 over the
        // stream's own baseline: every relative p-value is the least.
        let mut alarmed = None;
        for t in 0..20 {
            let j = s.step(50.0, None, None);
            assert!(!j.pooled.alarm || j.relative.unwrap().alarm);
            assert_eq!(j.ratio > 1.0, j.pooled.alarm, "frame {t}: {:?}", j.pooled);
            if s.next(&j, auto) == MonitorState::Ood {
                alarmed.get_or_insert(t);
            }
        }
        // Within 20 frames, on the relative branch alone (the pooled S never left 0).
        assert!(alarmed.is_some(), "{alarmed:?}");
        assert_eq!(s.detector.cusum(), 0.0);
        // The operator's reset clears both statistics and starts a new baseline, held again.
        s.reset_cusum();
        assert_eq!(s.detector.cusum(), 0.0);
        assert_eq!(s.relative.as_ref().unwrap().detector.cusum(), 0.0);
        assert_eq!(s.detector.params().cusum_threshold, 5.0);
        for t in 0..10 {
            let j = s.step(50.0, None, None);
            assert!(j.relative.is_none(), "frame {t} after the reset");
        }
        assert!(s
            .step(50.0, None, None)
            .relative
            .is_some_and(|r| r.cusum == 0.0));
    }

    /// The ceiling as the monitor applies it (`MonitorConfig::cusum_ceiling`): after 100
    /// frames of the strongest evidence, the monitor with a ceiling of 2 is back to OK within
    /// (2 - level) x threshold frames plus `frames`, its ratio never over 2; the unbounded one
    /// is still OOD then. Both alarm on the same frame.
    #[test]
    fn a_ceiling_bounds_how_long_ood_outlasts_the_evidence() {
        let run = |ceiling: Option<f64>| {
            let config = MonitorConfig {
                cusum_ceiling: ceiling,
                ..Default::default()
            };
            let params = PipelineParams {
                window: 1,
                epsilon_grid: 20,
                decay: 1.0,
                cusum_threshold: 10.0,
            };
            let cal: Vec<f64> = (0..10_000).map(f64::from).collect();
            let detector = branch_detector(&cal, params, &config).unwrap();
            let mut s = pooled_only(detector);
            let auto = Recovery::Auto {
                frames: 3,
                level: 0.5,
            };
            let (mut first, mut ok_at, mut top) = (None, None, 0.0f64);
            for t in 0..200 {
                let score = if t < 100 { 1e9 } else { 0.0 };
                let j = s.step(score, None, None);
                top = top.max(j.ratio);
                let state = s.next(&j, auto);
                if state == MonitorState::Ood {
                    first.get_or_insert(t);
                } else if t >= 100 && ok_at.is_none() {
                    ok_at = Some(t - 100);
                }
            }
            (first, ok_at, top)
        };
        let (first_held, back, top) = run(Some(2.0));
        let (first_free, never, _) = run(None);
        assert_eq!(first_held, first_free);
        assert!(top <= 2.0 + 1e-12, "{top}");
        assert!(back.is_some_and(|t| t <= 15 + 3), "{back:?}");
        assert_eq!(never, None);
        assert!(MonitorConfig {
            cusum_ceiling: Some(0.5),
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn hysteresis_holds_ood_until_s_falls_to_the_level() {
        let auto = Recovery::Auto {
            frames: 2,
            level: 0.5,
        };
        let mut s = seq(); // threshold 5
        assert_eq!(s.next(&at(1.0), auto), MonitorState::Ok);
        assert_eq!(s.next(&at(6.0), auto), MonitorState::Ood);
        // Under the threshold but over 2.5: no recovery however long.
        for _ in 0..20 {
            assert_eq!(s.next(&at(4.0), auto), MonitorState::Ood);
        }
        assert_eq!(s.next(&at(2.5), auto), MonitorState::Ood);
        assert_eq!(s.next(&at(2.0), auto), MonitorState::Ok);
    }
}
