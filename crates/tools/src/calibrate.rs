//! `vae-ood calibrate`: builds a bundle's calibration section from drives (image folders or
//! rosbag2 bags).
//!
//! Roles are disjoint by drive (a folder may serve one role only): calibration drives give the
//! conformal scores, in-distribution tuning
//! drives set `cusum_threshold` for the target false-alarm rate, validation OOD drives choose
//! k, window and decay by the least detection delay. Unless latents are given, they are ranked
//! on the calibration and tuning drives (in-distribution only).
//!
//! With the Mahalanobis score, a further role: fit drives (in-distribution, disjoint from the
//! rest) give the reference Gaussian (without them, the bundle's own reference is kept); the
//! score then has no latents to select, so only window and decay are searched.
//!
//! The threshold is set on whole tuning drives ([`vae_ood_core::detection::tuning::drive_threshold`]):
//! certifying r false alarms per frame on drives of L frames takes at least 1/(r L) - 1 of them;
//! with fewer, the threshold is their largest S and the bundle records the weaker bound.

use crate::drives::{for_each_frame, frame_interval_ns, frames_in, map_drive};
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use vae_ood_core::bundle::{
    BranchThresholds, Bundle, CalibrationData, CalibrationSection, DetectorSpec, RelativeSection,
    CHANGE_FORMAT_VERSION, DIRECTION_FORMAT_VERSION, MSCN_FORMAT_VERSION, RELATIVE_FORMAT_VERSION,
};
use vae_ood_core::detail::DetailSpec;
use vae_ood_core::detection::change::{self, ChangeSection};
use vae_ood_core::detection::direction::{self, DirectionMeter, DirectionSection, MscnReference};
use vae_ood_core::detection::relative::{self, BaselineParams};
use vae_ood_core::detection::selection::{top_k, Rank};
use vae_ood_core::detection::tuning::{self, search, Candidate, Drive, Grid};
use vae_ood_core::detection::{Calibration, PipelineParams};
use vae_ood_core::detector::Detector;
use vae_ood_core::flow::ResidualStatistic;
use vae_ood_core::flow_detector::FlowDetector;
use vae_ood_core::mixture::{self, Component};
use vae_ood_core::mscn::MscnExtractor;
use vae_ood_core::score::{features, GivenMotion, Reference, ScoreError, ScoreSpec};

/// A drive argument: a folder, and for OOD drives the first OOD frame (`DIR:ONSET`, default 0).
#[derive(Debug, Clone)]
pub struct DriveArg {
    pub path: PathBuf,
    pub onset: usize,
}

impl std::str::FromStr for DriveArg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.rsplit_once(':') {
            Some((p, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => Ok(Self {
                path: p.into(),
                onset: n
                    .parse()
                    .map_err(|e| Error::Input(format!("{s}: onset {n}: {e}")))?,
            }),
            _ => Ok(Self {
                path: s.into(),
                onset: 0,
            }),
        }
    }
}

/// Which nonconformity score to calibrate (see [`vae_ood_core::score`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreKind {
    /// The paper's: KL of the selected latents.
    #[default]
    Kl,
    /// Mahalanobis distance of (mu, logvar) from a Gaussian fitted on the fit drives.
    Mahalanobis,
}

impl std::str::FromStr for ScoreKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kl" => Ok(Self::Kl),
            "mahalanobis" => Ok(Self::Mahalanobis),
            _ => Err(Error::Input(format!(
                "unknown score '{s}' (expected kl or mahalanobis)"
            ))),
        }
    }
}

impl ScoreKind {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kl => "kl",
            Self::Mahalanobis => "mahalanobis",
        }
    }
}

/// Which tail of a separate extra part counts (`--separate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tails {
    /// Both: a Gaussian's squared Mahalanobis distance.
    Both,
    /// Above the mean only (one feature: the motion residual).
    Upper,
}

impl std::str::FromStr for Tails {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "both" => Ok(Self::Both),
            "upper" => Ok(Self::Upper),
            _ => Err(Error::Input(format!(
                "unknown tails '{s}' (expected both or upper)"
            ))),
        }
    }
}

impl Tails {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Upper => "upper",
        }
    }
}

/// How a fitted reference is split into parts (`--parts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Flow detectors: the horizontal branch's posterior, the vertical branch's, and the
    /// motion residual if the reference has it ([`FlowDetector::branch_parts`]).
    Branches,
}

impl std::str::FromStr for Parts {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "branches" => Ok(Self::Branches),
            _ => Err(Error::Input(format!(
                "unknown parts '{s}' (expected branches)"
            ))),
        }
    }
}

impl Parts {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Branches => "branches",
        }
    }
}

pub struct Options {
    pub score: ScoreKind,
    /// In-distribution drives the Mahalanobis reference is fitted on.
    pub fit: Vec<DriveArg>,
    /// The detail channel of a reference fitted on `fit` (none: the posterior alone).
    pub detail: Option<DetailSpec>,
    /// Flow detectors: a reference fitted on `fit` adds the stack's motion residual.
    pub motion_residual: bool,
    /// How the motion residual is summarised (`None`: the bundle's own; `mean` before it had
    /// one).
    pub residual_statistic: Option<ResidualStatistic>,
    /// The motion residual is judged given the stack's motion (with `separate` upper), as
    /// this says: its excess over what clear frames with that motion leave
    /// ([`vae_ood_core::score::Reference::residual_given_motion`]).
    pub residual_given_motion: Option<GivenMotion>,
    /// Flow detectors: beside the motion residual (with `separate` upper), the detail each
    /// frame lost against the stream's past ([`vae_ood_core::detail_lost`]), scored apart
    /// ([`vae_ood_core::score::Separate::detail_lost`]).
    pub detail_lost: bool,
    /// The extra features (`detail` or `motion_residual`) get a Gaussian of their own, and the
    /// score is the larger of the two parts' tail scores ([`vae_ood_core::score::Separate`]).
    pub separate: Option<Tails>,
    /// The reference is fitted in parts, each scored by its own tail; `separate` then gives
    /// the extra features' tails ([`vae_ood_core::score::Part`]).
    pub parts: Option<Parts>,
    /// Gaussians in a reference fitted on `fit`: 1, or a mixture of that many.
    pub components: usize,
    pub cal: Vec<DriveArg>,
    pub tune_id: Vec<DriveArg>,
    pub val_ood: Vec<DriveArg>,
    /// Explicit latents; otherwise ranked on the calibration drives and k searched.
    pub latents: Option<Vec<usize>>,
    /// How latents are ranked when not given explicitly.
    pub rank: Rank,
    pub grid: Grid,
    pub epsilon_grid: usize,
    pub false_alarm_rate: f64,
    /// The camera the drives come from, recorded in the bundle (`calibration.camera`).
    pub camera: Option<String>,
    /// Adds the drive-relative branch with this baseline (`calibration.relative`).
    pub relative: Option<BaselineParams>,
    /// Adds the direction branch (`calibration.direction`).
    pub direction: Option<DirectionOptions>,
    /// Adds the change branch (`calibration.change`), its steps' Gaussian fitted on these clear
    /// drives (empty: the score's `fit` drives).
    pub change: Option<Vec<PathBuf>>,
    pub quiet: bool,
}

/// How the direction branch measures its statistic (`calibration.direction`).
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionOptions {
    /// Frames are measured at this size (luma).
    pub width: u32,
    pub height: u32,
    /// Added to every `D_theta` before the logarithm.
    pub floor: f64,
    /// Scores the statistic against the stream's own past.
    pub baseline: Option<BaselineParams>,
    /// Measures the MSCN statistics instead of the weakest direction (`floor` and `baseline`
    /// then do not apply).
    pub mscn: Option<MscnOptions>,
}

/// The branch on natural-scene statistics (`calibration.direction.mscn`).
#[derive(Debug, Clone, PartialEq)]
pub struct MscnOptions {
    /// Clear drives the statistics' mixture is fitted on (disjoint from the calibration, tuning
    /// and validation drives; the score's fit drives may repeat).
    pub fit: Vec<PathBuf>,
    /// The mixture's components.
    pub components: usize,
    /// A mixture fitted before (another bundle's `calibration.direction.mscn`), taken as it is
    /// instead of fitting one: the statistics read the frame, not the encoder, so detectors on
    /// the same camera can share it. `fit` is then empty. The caller checks that it was fitted
    /// at this branch's size (`vae-ood calibrate --mscn-from` does), and its fit drives are the
    /// other bundle's, which the role checks here cannot see.
    pub reuse: Option<MscnReference>,
}

impl DirectionOptions {
    /// Session 35's second form at a size: floored at one grey level, against the median of 60
    /// frames at least 60 old.
    pub fn at(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            floor: direction::GREY_LEVEL,
            baseline: Some(BaselineParams::new(60, 60)),
            mscn: None,
        }
    }
}

/// The defaults of `vae-ood calibrate`, as its flags spell them (also what the compression
/// sweep calibrates candidates with).
pub mod defaults {
    pub const K: &str = "5,10,15,20,30";
    /// Window 1 uses each p-value once (the conformal e-detector); longer windows reuse them.
    pub const WINDOWS: &str = "1,5,10,20";
    pub const DECAYS: &str = "0,0.5,1,2,4";
    /// 0.1 false alarms per 1000 in-distribution frames.
    pub const FALSE_ALARM_RATE: f64 = 0.0001;
}

impl Options {
    /// The defaults for given drive roles (KL score, quiet ranking, the default grid).
    pub fn with_drives(cal: Vec<DriveArg>, tune_id: Vec<DriveArg>, val_ood: Vec<DriveArg>) -> Self {
        Self {
            score: ScoreKind::Kl,
            fit: vec![],
            detail: None,
            motion_residual: false,
            residual_statistic: None,
            residual_given_motion: None,
            detail_lost: false,
            separate: None,
            parts: None,
            components: 1,
            cal,
            tune_id,
            val_ood,
            latents: None,
            rank: Rank::Quiet,
            grid: Grid {
                k: list(defaults::K),
                window: list(defaults::WINDOWS),
                decay: list(defaults::DECAYS),
            },
            epsilon_grid: vae_ood_core::detection::default_grid(),
            false_alarm_rate: defaults::FALSE_ALARM_RATE,
            camera: None,
            relative: None,
            direction: None,
            change: None,
            quiet: true,
        }
    }
}

/// A comma-separated default list, as clap parses the flag.
fn list<T: std::str::FromStr>(s: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    s.split(',')
        .map(|v| v.parse().expect("the defaults parse"))
        .collect()
}

/// A target rate of false alarms per frame that tuning drives can certify (`vae-ood calibrate`
/// and `vae-ood joint-threshold`): zero would need infinitely many drives, and 1 or more
/// certifies nothing.
pub(crate) fn check_false_alarm_rate(rate: f64) -> Result<()> {
    if !(rate > 0.0 && rate < 1.0) {
        return Err(Error::Input(format!(
            "--false-alarm-rate must be in (0, 1) false alarms per frame, got {rate}"
        )));
    }
    Ok(())
}

/// Fails, before any frame is scored, on roles the drives' lengths make impossible: an OOD
/// onset past a validation drive's end, or a martingale window no tuning drive can fill.
fn check_lengths(args: &[&DriveArg], lengths: &[usize], opts: &Options) -> Result<()> {
    let val_from = opts.fit.len() + opts.cal.len() + opts.tune_id.len();
    for (d, &n) in args.iter().zip(lengths).skip(val_from) {
        if d.onset >= n {
            return Err(Error::Input(format!(
                "validation drive {}: onset {} is past its last frame ({n} frames)",
                d.path.display(),
                d.onset
            )));
        }
    }
    let tune = &lengths[opts.fit.len() + opts.cal.len()..val_from];
    let longest = tune.iter().copied().max().unwrap_or(0);
    if let Some(&w) = opts.grid.window.iter().find(|&&w| w > longest) {
        return Err(Error::Input(format!(
            "--windows {w}: longer than every tuning drive (the longest has {longest} frames), so no tuning frame would fill it"
        )));
    }
    Ok(())
}

/// The drive-relative branch for the chosen pipeline: conformal scores from the calibration
/// drives (each against its own past), a threshold from whole tuning drives as the pooled
/// one's, and the split of the false-alarm budget ([`relative::split`]) between it and the
/// pooled threshold in `pipeline`, with at most `allowed` tuning drives alarmed.
fn relative_section(
    baseline: BaselineParams,
    pipeline: &PipelineParams,
    allowed: usize,
    cal: &[Drive],
    tune: &[Drive],
    selected: &[usize],
    opts: &Options,
) -> Result<RelativeSection> {
    let relative_of = |scores: &[Vec<f64>]| -> Vec<Vec<f64>> {
        scores
            .iter()
            .map(|s| relative::relative_scores(s, baseline))
            .collect()
    };
    let (cal_scores, tuning) = (scores_of(cal, selected), scores_of(tune, selected));
    let (rel_cal_scores, rel_tuning) = (relative_of(&cal_scores), relative_of(&tuning));
    let pooled = Calibration::new(cal_scores.concat())?;
    let scores = rel_cal_scores.concat();
    let rel_cal = Calibration::new(scores.clone())?;
    let (threshold, _) =
        tuning::drive_threshold(&rel_cal, pipeline, &rel_tuning, opts.false_alarm_rate)?;
    let split = relative::split(
        &pooled,
        pipeline,
        allowed,
        &rel_cal,
        threshold,
        baseline.hold(),
        &tuning,
        &rel_tuning,
    );
    Ok(RelativeSection {
        baseline,
        cusum_threshold: threshold * split.relative_scale,
        pooled_scale: split.pooled_scale,
        tuning_drives_alarmed: split.drives_alarmed,
        tuning_drives_allowed: split.drives_allowed,
        scores,
    })
}

/// The direction branch ([`direction`]): conformal scores from the calibration drives'
/// weakest directions, the branch's threshold and the pooled one's after the split, both from
/// whole tuning drives. `pipeline` takes the pooled threshold after the split.
fn direction_section(
    o: &DirectionOptions,
    mscn: Option<MscnReference>,
    pipeline: &mut PipelineParams,
    (cal, cal_weakest): (&[Drive], &[Vec<Option<f64>>]),
    (tune, tune_weakest): (&[Drive], &[Vec<Option<f64>>]),
    selected: &[usize],
    opts: &Options,
) -> Result<DirectionSection> {
    let measured = |drives: &[Vec<Option<f64>>]| -> Result<Vec<Vec<f64>>> {
        drives
            .iter()
            .map(|d| d.iter().copied().collect::<Option<Vec<f64>>>())
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Input("the direction branch's statistic was not measured on a frame (an internal error: please report it)".into()))
    };
    // Against each drive's own past, as a stream sees it, when the branch has a baseline.
    let statistic = |drives: Vec<Vec<f64>>| -> Vec<Vec<f64>> {
        match o.baseline {
            Some(b) => drives
                .iter()
                .map(|d| relative::relative_scores(d, b))
                .collect(),
            None => drives,
        }
    };
    let (cal_d, tune_d) = (
        statistic(measured(cal_weakest)?),
        statistic(measured(tune_weakest)?),
    );
    let scores = cal_d.concat();
    let (params, alone) = take_share(
        "direction",
        (direction::WINDOW, direction::DECAY),
        (&scores, &tune_d),
        pipeline,
        (cal, tune),
        selected,
        opts,
    )?;
    Ok(DirectionSection {
        width: o.width,
        height: o.height,
        floor: if mscn.is_some() { 0.0 } else { o.floor },
        baseline: o.baseline,
        mscn,
        pipeline: params,
        pooled_threshold_alone: alone,
        tuning_drives: tune.len(),
        scores,
    })
}

/// A branch that takes one tuning drive's share of the pooled threshold's budget
/// ([`direction::split`]), from its calibration `scores` and its statistic on each tuning
/// drive: its pipeline (window, decay, its threshold) and the pooled threshold before the
/// share; `pipeline` takes the pooled threshold after it.
fn take_share(
    branch: &'static str,
    (window, decay): (usize, f64),
    (scores, tune_branch): (&[f64], &[Vec<f64>]),
    pipeline: &mut PipelineParams,
    (cal, tune): (&[Drive], &[Drive]),
    selected: &[usize],
    opts: &Options,
) -> Result<(PipelineParams, f64)> {
    let pooled = Calibration::new(scores_of(cal, selected).concat())?;
    let own = Calibration::new(scores.to_vec())?;
    let mut params = PipelineParams {
        window,
        epsilon_grid: pipeline.epsilon_grid,
        decay,
        cusum_threshold: 1.0,
    };
    let floor = (1.0 / opts.false_alarm_rate.max(1e-6)).ln();
    let split = direction::split(
        (&pooled, pipeline),
        &scores_of(tune, selected),
        (&own, &params),
        tune_branch,
        floor,
        branch,
    )?;
    params.cusum_threshold = split.direction;
    let before = pipeline.cusum_threshold;
    pipeline.cusum_threshold = split.pooled;
    Ok((params, before))
}

/// The change branch ([`change`]): one Gaussian over the fit drives' steps, conformal scores
/// from the calibration drives' steps, the branch's threshold and the pooled one's after the
/// split from whole tuning drives (as the direction branch's: [`direction::split`]), and the
/// frame interval of the calibration drives. `pipeline` takes the pooled threshold after the
/// split.
fn change_section(
    fit: &[Vec<Vec<f32>>],
    pipeline: &mut PipelineParams,
    (cal, cal_mu): (&[Drive], &[Vec<Vec<f32>>]),
    (tune, tune_mu): (&[Drive], &[Vec<Vec<f32>>]),
    selected: &[usize],
    opts: &Options,
) -> Result<ChangeSection> {
    let steps: Vec<Vec<f64>> = fit
        .iter()
        .flat_map(|d| d.windows(2).map(|w| change::step(&w[0], &w[1])))
        .collect();
    let flags = mixture::FitFlags {
        components: "--change-branch (one Gaussian)",
        fit: "--change-fit",
    };
    let components = mixture::fit(&steps, 1, 0, flags)?;
    let of = |drives: &[Vec<Vec<f32>>]| -> Vec<Vec<f64>> {
        drives
            .iter()
            .map(|d| change::drive_scores(&components, d))
            .collect()
    };
    let scores = of(cal_mu).concat();
    let (params, before) = take_share(
        "change",
        (change::WINDOW, change::DECAY),
        (&scores, &of(tune_mu)),
        pipeline,
        (cal, tune),
        selected,
        opts,
    )?;
    // The calibration drives' frame interval: the steps' scale.
    let mut intervals = opts
        .cal
        .iter()
        .filter_map(|d| frame_interval_ns(&d.path, crate::eval::DEFAULT_FOLDER_FPS).transpose())
        .collect::<Result<Vec<i64>>>()?;
    intervals.sort_unstable();
    let interval_ns = *intervals.get(intervals.len() / 2).ok_or_else(|| {
        Error::Input("--change-branch: no calibration drive's stamps advance, so the frame interval its steps are measured at is unknown".into())
    })?;
    Ok(ChangeSection {
        interval_ns,
        components,
        pipeline: params,
        pooled_threshold_before: before,
        tuning_drives: tune.len(),
        scores,
    })
}

/// The MSCN statistics' mixture, fitted on every frame of the clear drives `m.fit` with the
/// score's seeded EM ([`mixture::fit`]).
fn fit_mscn(m: &MscnOptions, width: u32, height: u32, quiet: bool) -> Result<Vec<Component>> {
    let mut extractor =
        MscnExtractor::new(width, height).map_err(|e| Error::Input(e.to_string()))?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    let (mut x, mut frames) = (vec![], 0usize);
    for path in &m.fit {
        for_each_frame(path, &mut |img| {
            // Frames without texture carry no evidence and are left out of the fit.
            x.extend(extractor.features(img.into()));
            frames += 1;
            bar.inc(1);
            Ok(())
        })?;
    }
    bar.finish_and_clear();
    if x.is_empty() {
        return Err(Error::Input(format!(
            "the MSCN statistics' mixture: none of the {frames} frames of the --mscn-fit drives has texture enough to measure (flat views carry no evidence); give drives with textured scenes"
        )));
    }
    let flags = mixture::FitFlags {
        components: "--mscn-components",
        fit: "--mscn-fit",
    };
    mixture::fit(&x, m.components, 0, flags)
        .map_err(|e| Error::Input(format!("the MSCN statistics' mixture: {e}")))
}

pub struct Outcome {
    pub bundle: Bundle,
    pub chosen: Candidate,
    pub candidates: Vec<Candidate>,
}

pub fn calibrate(
    bundle_dir: &Path,
    out: &Path,
    det: &mut dyn Detector,
    opts: &Options,
) -> Result<Outcome> {
    let input = |m: String| Err(Error::Input(m));
    check_false_alarm_rate(opts.false_alarm_rate)?;
    if opts.cal.is_empty() || opts.tune_id.is_empty() {
        return input(
            "calibration needs --cal and --tune-id drives (in-distribution, disjoint)".into(),
        );
    }
    opts.grid.validate(opts.epsilon_grid)?;
    let n_latents = det.bundle().manifest.latents.count;
    if opts.grid.k != list::<usize>(defaults::K) {
        if let Some(bad) = opts.grid.k.iter().find(|&&k| k > n_latents) {
            return input(format!(
                "--k {bad}: the encoder has {n_latents} latents; give --k values in 1..={n_latents}"
            ));
        }
    }
    if let Some(l) = &opts.latents {
        let distinct: HashSet<usize> = l.iter().copied().collect();
        if distinct.len() != l.len() || l.is_empty() {
            return input(format!(
                "--latents {l:?}: give distinct latent indices, at least one"
            ));
        }
    }
    match (opts.score, opts.fit.is_empty(), &opts.latents) {
        (ScoreKind::Mahalanobis, true, _) if det.bundle().manifest.score.is_kl() => {
            return input("--score mahalanobis needs --fit drives (in-distribution, disjoint from the others) to fit its reference on, unless the bundle already has one".into())
        }
        (ScoreKind::Mahalanobis, _, Some(_)) => {
            return input("--latents applies to the KL score only: the Mahalanobis score uses every latent".into())
        }
        (ScoreKind::Kl, false, _) => {
            return input("--fit applies to --score mahalanobis only".into())
        }
        _ => {}
    }
    if let Some(d) = &opts.detail {
        if opts.fit.is_empty() {
            return input("--detail adds to a reference being fitted: give --score mahalanobis and --fit drives".into());
        }
        d.validate().map_err(ScoreError::from)?;
    }
    if opts.components != 1 && opts.fit.is_empty() {
        return input("--components applies to a reference being fitted: give --score mahalanobis and --fit drives".into());
    }
    if !(1..=64).contains(&opts.components) {
        return input(format!(
            "--components is {}; expected 1..=64 Gaussians",
            opts.components
        ));
    }
    if opts.separate.is_some() && !(opts.detail.is_some() || opts.motion_residual) {
        return input("--separate scores the extra features apart: give --detail or --motion-residual (and --fit drives)".into());
    }
    let flow = matches!(det.bundle().manifest.detector, DetectorSpec::Flow(_));
    if opts.parts.is_some() {
        if opts.fit.is_empty() {
            return input("--parts splits a reference being fitted: give --score mahalanobis and --fit drives".into());
        }
        if opts.components != 1 || opts.detail.is_some() {
            return input("--parts branches fits one Gaussian per flow branch: it takes neither --components nor --detail".into());
        }
        if !flow {
            return input("--parts branches needs a flow bundle (detector.kind: flow): an image detector has no branches".into());
        }
    }
    if opts.motion_residual && opts.fit.is_empty() {
        return input("--motion-residual adds to a reference being fitted: give --score mahalanobis and --fit drives".into());
    }
    // Both extend the motion residual scored apart, upper tail only.
    let residual_apart =
        opts.motion_residual && opts.separate == Some(Tails::Upper) && opts.parts.is_none();
    for (asked, what) in [
        (
            opts.residual_given_motion.is_some(),
            "--residual-given-motion judges the motion residual scored apart, upper tail only",
        ),
        (
            opts.detail_lost,
            "--detail-lost is scored beside the motion residual",
        ),
    ] {
        if asked && !residual_apart {
            return input(format!(
                "{what}: give --motion-residual --separate upper (not --parts)"
            ));
        }
    }
    if opts.residual_statistic.is_some() && !opts.motion_residual {
        return input("--residual-statistic says how the motion residual is measured: give --motion-residual too".into());
    }
    // The residual's statistic: as told, else the bundle's own.
    let residual = match (&opts.residual_statistic, &det.bundle().manifest.detector) {
        (Some(s), _) => *s,
        (None, DetectorSpec::Flow(f)) => f.residual,
        (None, _) => ResidualStatistic::Mean,
    };
    // A reference being fitted takes the extra features it is told to; one kept, what it has.
    let with_extra = if opts.fit.is_empty() {
        let s = &det.bundle().manifest.score;
        s.detail().is_some() || s.motion_residual()
    } else {
        det.measure_detail(opts.detail);
        if opts.motion_residual
            && !(det.measure_motion_residual(Some(residual), opts.residual_given_motion.is_some())
                && det.measure_detail_lost(opts.detail_lost))
        {
            return input("--motion-residual needs a flow bundle (detector.kind: flow): an image has no motion".into());
        }
        if opts.detail.is_some() && opts.motion_residual {
            return input(
                "--detail describes an image and --motion-residual a flow stack: give one".into(),
            );
        }
        opts.detail.is_some() || opts.motion_residual
    };
    let mut mscn = None;
    if let Some(o) = &opts.direction {
        direction::spec(o.width, o.height)
            .validate()
            .map_err(ScoreError::from)?;
        if !(0.0..=1.0).contains(&o.floor) {
            return input(format!(
                "--direction-floor {}: give a level of luma in [0, 1] (1/255 is one grey level)",
                o.floor
            ));
        }
        if let Some(b) = &o.baseline {
            b.validate()?;
        }
        if let Some(m) = &o.mscn {
            if o.baseline.is_some() {
                return input(
                    "the MSCN statistic is scored as measured: give no baseline with it".into(),
                );
            }
            match (&m.reuse, m.fit.is_empty()) {
                (None, true) => {
                    return input(
                        "the MSCN statistic needs clear drives to fit its mixture on (--mscn-fit), or a bundle's mixture (--mscn-from)"
                            .into(),
                    )
                }
                (Some(_), false) => {
                    return input("--mscn-fit fits the MSCN mixture and --mscn-from takes a fitted one: give one".into())
                }
                (Some(r), true) => r.validate()?,
                (None, false) => {}
            }
        }
        if flow {
            return input("--direction-branch needs an image bundle: the flow detector's input is motion, not a frame's detail".into());
        }
    }
    // Every drive in role order: fit, calibration, tuning, validation.
    let args: Vec<&DriveArg> = opts
        .fit
        .iter()
        .chain(&opts.cal)
        .chain(&opts.tune_id)
        .chain(&opts.val_ood)
        .collect();
    let mscn_fit = opts
        .direction
        .as_ref()
        .and_then(|o| o.mscn.as_ref())
        .map_or(&[][..], |m| &m.fit[..]);
    // Each drive has one role. The fits may share drives (the score's reference, the MSCN
    // mixture and the change branch's Gaussian are different models, and none sets a p-value
    // or a threshold), but none may share one with the calibration, tuning or validation drives.
    let canon = |path: &PathBuf| path.canonicalize().map_err(Error::read(path));
    let canonical = args
        .iter()
        .map(|d| canon(&d.path))
        .collect::<Result<Vec<_>>>()?;
    let mut seen = HashSet::new();
    for (d, c) in args.iter().zip(&canonical) {
        if !seen.insert(c) {
            return input(format!("drive {} is used twice: fit, calibration, tuning and validation drives must be disjoint", d.path.display()));
        }
    }
    // `args` starts with the score's fit drives.
    let score_fit: HashSet<&PathBuf> = canonical[..opts.fit.len()].iter().collect();
    // Another model's fit drives: distinct, and disjoint from every role but the score's fit.
    let check_fit = |paths: &[PathBuf], which: &str| -> Result<()> {
        let mut own = HashSet::new();
        for path in paths {
            let c = canon(path)?;
            if !own.insert(c.clone()) || (seen.contains(&c) && !score_fit.contains(&c)) {
                return Err(Error::Input(format!("drive {} is used twice: the {which} drives must be distinct and disjoint from the calibration, tuning and validation drives (the score's --fit drives may repeat)", path.display())));
            }
        }
        Ok(())
    };
    check_fit(mscn_fit, "MSCN fit")?;
    if let Some(change_fit) = &opts.change {
        if flow {
            return input("--change-branch needs an image bundle: the flow detector's posterior describes motion already".into());
        }
        if change_fit.is_empty() && opts.fit.is_empty() {
            return input("--change-branch needs clear drives to fit the posterior's steps on: give --change-fit drives, or the score's --fit drives".into());
        }
        check_fit(change_fit, "--change-fit")?;
    }
    // Lengths from the drives' indexes, so that impossible roles fail before any scoring.
    let lengths = args
        .iter()
        .map(|d| frames_in(&d.path, None))
        .collect::<Result<Vec<usize>>>()?;
    check_lengths(&args, &lengths, opts)?;
    // The direction branch's meter, once every input is known good (the MSCN fit reads its
    // drives whole).
    if let Some(o) = &opts.direction {
        let meter = match &o.mscn {
            Some(m) => {
                let components = match &m.reuse {
                    Some(r) => r.components.clone(),
                    None => fit_mscn(m, o.width, o.height, opts.quiet)?,
                };
                mscn = Some(MscnReference {
                    components: components.clone(),
                });
                DirectionMeter::mscn(o.width, o.height, components)
                    .map_err(|e| Error::Input(e.to_string()))?
            }
            None => DirectionMeter::new(o.width, o.height, o.floor),
        };
        if !det.measure_direction(Some(meter)) {
            return input("--direction-branch needs an image bundle: this detector measures no frame's detail".into());
        }
    }
    let total = lengths.iter().sum::<usize>();
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("scoring {pos}/{len} frames [{bar:30}] {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    // Per drive (id, onset) and frame: KL per latent, and the posterior's features; apart, the
    // frame's weakest direction when measured, and its mu for a change branch.
    let (mut scored, mut directions, mut mus) = (vec![], vec![], vec![]);
    for d in args {
        let drive = map_drive(det, &d.path, &|| bar.inc(1), |s| {
            let detail: &[f64] = if with_extra { &s.detail } else { &[] };
            (
                (s.kl, features(&s.mu, &s.logvar, detail)),
                (s.direction, s.mu),
            )
        })?;
        let (frames, apart): (Vec<_>, Vec<_>) = drive.frames.into_iter().unzip();
        let (weakest, mu): (Vec<_>, Vec<_>) = apart.into_iter().unzip();
        directions.push(weakest);
        if opts.change.is_some() {
            mus.push(mu);
        }
        let id = format!("{} ({} frames)", d.path.display(), frames.len());
        // The onset counts the drive's frames; scores start after any warm-up frames.
        scored.push((id, d.onset.saturating_sub(drive.first), frames));
    }
    bar.finish_and_clear();
    let fit: Vec<_> = scored.drain(..opts.fit.len()).collect();
    // Flow detectors: the reference design's per-branch thresholds, the largest KL of each
    // branch over the calibration frames (no calibration frame alarms by the rule).
    let branch_thresholds = flow
        .then(|| {
            BranchThresholds::largest(
                scored[..opts.cal.len()]
                    .iter()
                    .flat_map(|(_, _, f)| f.iter().map(|(kl, _)| FlowDetector::branch_kl(kl))),
            )
        })
        .flatten()
        .filter(|t| t.validate().is_ok());
    let score = match opts.score {
        ScoreKind::Kl => ScoreSpec::Kl,
        // Recalibrating a bundle that has a fitted reference keeps it (the fit drives are not
        // needed again, and its scores stay the ones the bundle was chosen with).
        ScoreKind::Mahalanobis if fit.is_empty() => det.bundle().manifest.score.clone(),
        ScoreKind::Mahalanobis => {
            let ids = fit.iter().map(|(id, _, _)| id.clone()).collect();
            let mut features: Vec<Vec<f64>> = fit
                .into_iter()
                .flat_map(|(_, _, f)| f.into_iter().map(|(_, x)| x))
                .collect();
            let posterior = 2 * n_latents;
            // The detail lost, the last feature, gets its own Gaussian after the rest are fitted.
            let lost: Option<Vec<f64>> = opts.detail_lost.then(|| {
                features
                    .iter_mut()
                    .map(|x| x.pop().expect("the detail lost was measured"))
                    .collect()
            });
            let mut r = if let Some(Parts::Branches) = opts.parts {
                let parts = FlowDetector::branch_parts(
                    n_latents,
                    opts.motion_residual,
                    opts.separate == Some(Tails::Upper),
                );
                Reference::fit_parts(&features, &parts, None, ids)?
            } else if let Some(tails) = opts.separate {
                let upper = tails == Tails::Upper;
                Reference::fit_separate(
                    &features,
                    posterior,
                    upper,
                    opts.residual_given_motion,
                    opts.components,
                    opts.detail,
                    ids,
                )?
            } else {
                Reference::fit_mixture(&features, opts.components, opts.detail, ids)?
            };
            if let Some(lost) = lost {
                r.add_detail_lost(&lost)?;
            }
            r.motion_residual = opts.motion_residual;
            ScoreSpec::Mahalanobis(r)
        }
    };
    let mut drives: Vec<Drive> = scored
        .into_iter()
        .map(|(id, onset, frames)| Drive {
            id,
            parts: frames
                .into_iter()
                .map(|(kl, x)| match &score {
                    ScoreSpec::Kl => kl,
                    ScoreSpec::Mahalanobis(r) => vec![r.distance(&x)],
                })
                .collect(),
            onset: Some(onset),
        })
        .collect();
    let val = drives.split_off(opts.cal.len() + opts.tune_id.len());
    let tune = drives.split_off(opts.cal.len());
    let cal = drives;

    let (ranked, selection, grid) = match (&score, &opts.latents) {
        (ScoreSpec::Mahalanobis(_), _) => (
            vec![(0, 0.0)],
            score.describe(),
            Grid {
                k: vec![1],
                ..opts.grid.clone()
            },
        ),
        (ScoreSpec::Kl, Some(l)) => {
            if let Some(bad) = l.iter().find(|&&j| j >= n_latents) {
                return input(format!(
                    "latent {bad} does not exist (the encoder has {n_latents})"
                ));
            }
            let ranked: Vec<(usize, f64)> = l.iter().map(|&j| (j, 0.0)).collect();
            (
                ranked,
                format!("explicit list {l:?}"),
                Grid {
                    k: vec![l.len()],
                    ..opts.grid.clone()
                },
            )
        }
        (ScoreSpec::Kl, None) => {
            // Ranked on every in-distribution drive not used for testing (calibration and tuning).
            let ranked = opts.rank.rank(
                &cal.iter()
                    .chain(&tune)
                    .map(|d| d.parts.clone())
                    .collect::<Vec<_>>(),
            )?;
            let mut g = opts.grid.clone();
            // The default candidates serve every encoder: capped at its latent count (others
            // were checked before scoring).
            g.k.retain(|&k| k <= n_latents);
            if g.k.is_empty() {
                g.k = vec![n_latents];
            }
            (ranked, opts.rank.describe().to_string(), g)
        }
    };

    // Without validation OOD drives there is no delay to minimise: take the grid's first values.
    let grid = if val.is_empty() {
        Grid {
            k: vec![grid.k[0]],
            window: vec![grid.window[0]],
            decay: vec![grid.decay[0]],
        }
    } else {
        grid
    };
    let candidates = search(
        &ranked,
        &cal,
        &tune,
        &val,
        &grid,
        opts.false_alarm_rate,
        opts.epsilon_grid,
    )?;
    let chosen = candidates[0].clone();
    let selected = top_k(&ranked, chosen.k);

    let pipeline = PipelineParams {
        window: chosen.window,
        epsilon_grid: opts.epsilon_grid,
        decay: chosen.decay,
        cusum_threshold: chosen.cusum_threshold,
    };
    let mut pipeline = pipeline;
    // The direction branch first: it takes one tuning drive's share of the pooled threshold's
    // budget by raising that threshold one drive, and the relative branch then splits what the
    // pooled one keeps, with one drive fewer allowed (so all three keep one promise).
    let direction = match &opts.direction {
        Some(o) => {
            // The fit drives' directions are not used; calibration's and tuning's follow.
            let roles = directions.split_off(opts.fit.len());
            Some(direction_section(
                o,
                mscn,
                &mut pipeline,
                (&cal, &roles[..cal.len()]),
                (&tune, &roles[cal.len()..cal.len() + tune.len()]),
                &selected,
                opts,
            )?)
        }
        None => None,
    };
    // The change branch next, one more tuning drive's share, as the direction branch takes it.
    let change = match &opts.change {
        Some(change_fit) => {
            let fit_mus = if change_fit.is_empty() {
                mus[..opts.fit.len()].to_vec()
            } else {
                change_fit
                    .iter()
                    .map(|p| Ok(map_drive(det, p, &|| {}, |s| s.mu)?.frames))
                    .collect::<Result<Vec<_>>>()?
            };
            let roles = &mus[opts.fit.len()..];
            Some(change_section(
                &fit_mus,
                &mut pipeline,
                (&cal, &roles[..cal.len()]),
                (&tune, &roles[cal.len()..cal.len() + tune.len()]),
                &selected,
                opts,
            )?)
        }
        None => None,
    };
    let allowed = chosen
        .guarantee
        .drives_over()
        .saturating_sub(usize::from(direction.is_some()) + usize::from(change.is_some()));
    let relative = opts
        .relative
        .map(|b| relative_section(b, &pipeline, allowed, &cal, &tune, &selected, opts))
        .transpose()?;
    let mut manifest = det.bundle().manifest.clone();
    if relative.is_some() {
        manifest.format_version = manifest.format_version.max(RELATIVE_FORMAT_VERSION);
    }
    if let Some(d) = &direction {
        let needs = match d.mscn {
            Some(_) => MSCN_FORMAT_VERSION,
            None => DIRECTION_FORMAT_VERSION,
        };
        manifest.format_version = manifest.format_version.max(needs);
    }
    if change.is_some() {
        manifest.format_version = manifest.format_version.max(CHANGE_FORMAT_VERSION);
    }
    manifest.latents.selected = match score {
        ScoreSpec::Kl => selected.clone(),
        ScoreSpec::Mahalanobis(_) => (0..n_latents).collect(),
    };
    manifest.score = score;
    if let (true, DetectorSpec::Flow(f)) = (opts.motion_residual, &mut manifest.detector) {
        f.residual = residual;
    }
    manifest.calibration = Some(CalibrationSection {
        pipeline,
        target_false_alarm_rate: opts.false_alarm_rate,
        guarantee: Some(chosen.guarantee.clone()),
        camera: opts.camera.clone(),
        selection,
        data: CalibrationData {
            calibration: cal.iter().map(|d| d.id.clone()).collect(),
            tuning_id: tune.iter().map(|d| d.id.clone()).collect(),
            validation_ood: val
                .iter()
                .map(|d| format!("{} onset {}", d.id, d.onset.unwrap_or(0)))
                .collect(),
        },
        scores: cal.iter().flat_map(|d| d.scores(&selected)).collect(),
        branch_thresholds,
        relative,
        direction,
        change,
        // `vae-ood calibrate --startup-frames` adds it once the bundle exists (it runs the
        // bundle's monitor over the tuning drives: [`crate::startup`]).
        startup: None,
    });
    let encoder_path = bundle_dir.join(&manifest.encoder.path);
    let encoder = std::fs::read(&encoder_path).map_err(Error::read(encoder_path))?;
    let bundle = Bundle::write(out, manifest, &encoder)?;
    Ok(Outcome {
        bundle,
        chosen,
        candidates,
    })
}

/// Each drive's pooled scores over the selected latents, one vector per drive.
fn scores_of(drives: &[Drive], selected: &[usize]) -> Vec<Vec<f64>> {
    drives.iter().map(|d| d.scores(selected)).collect()
}
