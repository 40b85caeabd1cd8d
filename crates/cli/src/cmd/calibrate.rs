//! `vae-ood calibrate`: a calibrated bundle from drives, and the choice it made.

use crate::common::DetectorArgs;
use anyhow::{Context, Result};
use std::path::PathBuf;
use vae_ood_core::detail::DetailSpec;
use vae_ood_core::detection::direction::MscnReference;
use vae_ood_core::detection::relative::BaselineParams;
use vae_ood_core::detection::selection::Rank;
use vae_ood_core::detection::tuning::Grid;
use vae_ood_core::flow::ResidualStatistic;
use vae_ood_core::score::GivenMotion;
use vae_ood_tools::calibrate::{
    calibrate, defaults, DirectionOptions, DriveArg, MscnOptions, Options, Parts, ScoreKind, Tails,
};
use vae_ood_tools::startup::{add_startup, StartupFrames};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// Output bundle directory.
    #[arg(long)]
    out: PathBuf,
    /// Nonconformity score: kl (the paper's: KL of selected latents) or mahalanobis
    /// (distance of (mu, logvar) from a Gaussian fitted on the --fit drives).
    #[arg(long, default_value = "kl")]
    score: ScoreKind,
    /// In-distribution drives to fit the Mahalanobis reference on (--score mahalanobis; without
    /// them the bundle's own reference is kept).
    #[arg(long = "fit", num_args = 1..)]
    fit: Vec<DriveArg>,
    /// Add the detail channel to the fitted reference (--fit): the log Laplacian energy of the
    /// frame's luma per octave, measured at WIDTHxHEIGHT (the fit drives' frame size), so that
    /// noise and blur, which the encoder's small input averages away, move the score.
    #[arg(long, value_parser = crate::common::parse_size, value_name = "WIDTHxHEIGHT")]
    detail: Option<(usize, usize)>,
    /// With --detail: also measure the finest octave on each cell of an NxN grid of the frame
    /// (N x N more features), so that a local loss of detail (a smudged or wet lens, a partial
    /// occlusion) moves the score as well as a global one. 1: the whole frame only.
    #[arg(long, default_value_t = 1, requires = "detail", value_parser = clap::value_parser!(u32).range(1..=16))]
    detail_grid: u32,
    /// With --detail-grid: give the cells' features in increasing order instead of by position
    /// (how uneven the detail is, not where), so that a new scene layout does not look new.
    #[arg(long, requires = "detail_grid")]
    detail_sorted_cells: bool,
    /// With --detail: also measure how the finest octave's detail is spread over four
    /// directions (3 more features), so that a motion blur, which removes detail along its own
    /// direction only, moves the score even where the frame's total detail stays in range.
    #[arg(long, requires = "detail")]
    detail_directions: bool,
    /// Flow bundles: add the stack's motion residual to the fitted reference (--fit): how much
    /// of the change between consecutive frames the flow does not explain (raindrops,
    /// snowflakes, sensor noise), which the dense flow field smooths away.
    #[arg(long)]
    motion_residual: bool,
    /// With --motion-residual: how each frame pair's residual map is summarised: mean, p99 (its
    /// 99th percentile), fine (the mean of the map minus its 3x3 median: change narrower than
    /// three pixels, which no motion explains) or p99_relative (p99 over the 99th percentile of
    /// the frame's gradient magnitude: the scene's contrast divided out). Default: the bundle's
    /// own (mean before session 23).
    #[arg(long, requires = "motion_residual", value_name = "STATISTIC")]
    residual_statistic: Option<ResidualStatistic>,
    /// With --motion-residual --separate upper: judge the residual given the stack's motion
    /// (its mean absolute horizontal and vertical flow), as its excess over what clear fit
    /// frames with that motion leave, so that a sharp turn's larger residual is not counted as
    /// a shift. `motion` (the default): given both motions; `turn`: the residual and the
    /// vertical motion, each given the horizontal motion alone, so that shaking is not
    /// explained away; `apart`: the residual given both motions and, with a tail of its own,
    /// the vertical motion given the horizontal (docs/detector-experiments.md, "The residual
    /// given the motion" and the sections after it).
    #[arg(long, requires = "motion_residual", value_name = "GIVEN", num_args = 0..=1, default_missing_value = "motion")]
    residual_given_motion: Option<GivenMotion>,
    /// Flow bundles, with --motion-residual --separate upper: score beside the residual the
    /// detail each frame lost against the same drive's frames 60 to 119 frames earlier (blur,
    /// defocus, a smeared lens), upper tail only (docs/detector-experiments.md, "The detail a
    /// stream has lost").
    #[arg(long, requires = "motion_residual")]
    detail_lost: bool,
    /// Score the extra features (--detail or --motion-residual) by a Gaussian of their own and
    /// take the larger of the two parts' tail scores over the fit frames, instead of one
    /// distance over all features (where the posterior's many features dilute a few extra ones).
    /// `--separate upper` counts only the upper tail of a one-feature extra part (the motion
    /// residual: more change left over than usual is a shift, less is not).
    #[arg(long, value_name = "TAILS", num_args = 0..=1, default_missing_value = "both")]
    separate: Option<Tails>,
    /// Flow bundles: fit the reference in parts, `branches`: the horizontal branch's posterior,
    /// the vertical branch's and the motion residual (with --motion-residual; its tails as
    /// --separate says) each get a Gaussian, and the score is the largest part's tail score:
    /// a per-branch score under one sequential test.
    #[arg(long, value_name = "PARTS")]
    parts: Option<Parts>,
    /// Gaussians in the fitted reference (--fit): 1, or a mixture of that many fitted by EM
    /// (seeded), so that scene kinds the clear drives hold each get a component; the score is
    /// then twice the mixture's negative log-likelihood, shifted to be >= 0.
    #[arg(long, default_value_t = 1)]
    components: usize,
    /// In-distribution calibration drives (conformal scores, latent ranking).
    #[arg(long = "cal", required = true, num_args = 1..)]
    cal: Vec<DriveArg>,
    /// In-distribution tuning drives (CUSUM threshold: a quantile of their largest S, one value
    /// per drive, so give many; see --false-alarm-rate).
    #[arg(long = "tune-id", required = true, num_args = 1..)]
    tune_id: Vec<DriveArg>,
    /// Validation OOD drives as DIR or DIR:ONSET (first OOD frame; default 0).
    #[arg(long = "val-ood", num_args = 1..)]
    val_ood: Vec<DriveArg>,
    /// Explicit latent indices (comma-separated) instead of ranking.
    #[arg(long, value_delimiter = ',')]
    latents: Option<Vec<usize>>,
    /// Latent ranking: quiet (lowest in-distribution KL first) or variance (the reference
    /// implementation's rule).
    #[arg(long, default_value = "quiet")]
    rank: Rank,
    /// Candidate numbers of latents.
    #[arg(long, value_delimiter = ',', default_value = defaults::K)]
    k: Vec<usize>,
    /// Candidate martingale windows.
    #[arg(long, value_delimiter = ',', default_value = defaults::WINDOWS)]
    windows: Vec<usize>,
    /// Candidate CUSUM decays.
    #[arg(long, value_delimiter = ',', default_value = defaults::DECAYS, allow_negative_numbers = true)]
    decays: Vec<f64>,
    /// Target false alarms per in-distribution frame. Certified by the tuning drives when there
    /// are at least 1/(rate x drive length) - 1 of them (16 drives of 600 frames for 1e-4).
    #[arg(long, default_value_t = defaults::FALSE_ALARM_RATE)]
    false_alarm_rate: f64,
    #[arg(long, default_value_t = vae_ood_core::detection::default_grid())]
    epsilon_grid: usize,
    /// The camera the drives come from (e.g. front), recorded in the bundle: a node watching
    /// another camera (its `camera` parameter) warns that the guarantee does not carry over.
    #[arg(long, value_name = "NAME")]
    camera: Option<String>,
    /// Adds the drive-relative branch: each frame's score against the median of the same
    /// drive's scores over WINDOW frames at least GAP frames old, with its own p-values and
    /// threshold, sharing the false-alarm budget with the pooled statistic (docs/bundle.md,
    /// `calibration.relative`). HOLD (default WINDOW): the stream's first frames during which the
    /// pooled statistic keeps its own threshold.
    #[arg(long, value_name = "WINDOW,GAP[,HOLD]", value_parser = parse_baseline)]
    relative: Option<BaselineParams>,
    /// Adds the direction branch (image bundles): each frame's weakest direction, how far the
    /// least detailed of four neighbour directions falls below their mean at WIDTHxHEIGHT (a
    /// motion blur's mark), against the stream's own past (--direction-baseline), with its own
    /// p-values, CUSUM and threshold; it takes one tuning drive's share of the pooled
    /// threshold's budget (docs/bundle.md, `calibration.direction`).
    #[arg(long, value_parser = crate::common::parse_size, value_name = "WIDTHxHEIGHT")]
    direction_branch: Option<(usize, usize)>,
    /// With --direction-branch: added to each direction's detail (luma in [0, 1]) before the
    /// logarithm, so that a view with almost no detail is not read as a blur. Default: one grey
    /// level, 1/255.
    #[arg(long, requires = "direction_branch", value_name = "LUMA")]
    direction_floor: Option<f64>,
    /// With --direction-branch: the statistic against the median of the stream's WINDOW values
    /// at least GAP frames old (a place's own anisotropy is its baseline; a blur is a change).
    #[arg(long, requires = "direction_branch", value_name = "WINDOW,GAP", value_parser = parse_baseline, default_value = "60,60")]
    direction_baseline: BaselineParams,
    /// With --direction-branch: the branch's per-frame statistic. `weakest`: the weakest
    /// direction (above). `mscn`: 30 natural-scene statistics of the frame's mean-subtracted
    /// contrast-normalised luma (BRISQUE's), scored by a Gaussian mixture fitted on the clear
    /// --mscn-fit drives; they see noise, rain, snow and blur whatever the scene shows
    /// (docs/detector-experiments.md, session 38). --direction-floor and --direction-baseline do
    /// not apply to it.
    #[arg(
        long,
        requires = "direction_branch",
        value_enum,
        default_value = "weakest"
    )]
    direction_statistic: Statistic,
    /// With --direction-statistic mscn: clear drives (bags or image folders) the statistics'
    /// mixture is fitted on, disjoint from the calibration, tuning and validation drives (the
    /// score's --fit drives may repeat).
    #[arg(long = "mscn-fit", num_args = 1.., value_name = "DRIVE", requires = "direction_branch")]
    mscn_fit: Vec<PathBuf>,
    /// With --direction-statistic mscn: the mixture's components (default 16).
    #[arg(long, value_name = "K", requires = "direction_branch")]
    mscn_components: Option<usize>,
    /// With --direction-statistic mscn: take the fitted MSCN mixture of this bundle's direction
    /// branch (at the same WIDTHxHEIGHT) instead of fitting one. The statistics read the frame,
    /// not the encoder, so a teacher and its student on one camera can share one mixture.
    #[arg(long = "mscn-from", value_name = "BUNDLE", requires = "direction_branch", conflicts_with_all = ["mscn_fit", "mscn_components"])]
    mscn_from: Option<PathBuf>,
    /// Adds the change branch (image bundles): how far the posterior's mean moved since the
    /// frame before, scored by one Gaussian over clear drives' steps, with its own conformal
    /// p-values, CUSUM and threshold and one tuning drive's share of the pooled threshold's
    /// budget; it sees what changes between frames (flickering dirt, drops, interference), not
    /// a steady change (docs/bundle.md, `calibration.change`).
    #[arg(long)]
    change_branch: bool,
    /// With --change-branch: clear drives the steps' Gaussian is fitted on (default: the
    /// score's --fit drives).
    #[arg(long = "change-fit", num_args = 1.., value_name = "DRIVE", requires = "change_branch")]
    change_fit: Vec<PathBuf>,
    /// Adds a start-up phase: a stream's first N scored frames judged at the calibrated
    /// thresholds, later ones at a lower share of them, chosen on the tuning drives so that
    /// both phases together keep the thresholds' promise (docs/bundle.md, `calibration.startup`).
    /// `auto` weighs 15, 30, ..., 300 frames and takes the shortest whose cruise thresholds are
    /// those of 300. Runs the calibrated bundle over the tuning drives once more.
    #[arg(long, value_name = "N|auto")]
    startup_frames: Option<StartupFrames>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Statistic {
    Weakest,
    Mscn,
}

fn parse_baseline(s: &str) -> std::result::Result<BaselineParams, String> {
    let bad = || format!("expected WINDOW,GAP[,HOLD] in frames (e.g. 60,300), got '{s}'");
    let n: Vec<usize> = s
        .split(',')
        .map(|v| v.trim().parse().map_err(|_| bad()))
        .collect::<std::result::Result<_, _>>()?;
    let p = match n[..] {
        [window, gap] => BaselineParams::new(window, gap),
        [window, gap, hold] => BaselineParams {
            hold: Some(hold),
            ..BaselineParams::new(window, gap)
        },
        _ => return Err(bad()),
    };
    p.validate().map_err(|e| e.to_string())?;
    Ok(p)
}

pub fn run(a: Args) -> Result<()> {
    let mut det = a.detector.load()?;
    let tuning: Vec<PathBuf> = a.tune_id.iter().map(|d| d.path.clone()).collect();
    let backend = a.detector.backend_options();
    let opts = Options {
        score: a.score,
        fit: a.fit,
        detail: a
            .detail
            .map(|(w, h)| -> Result<_> {
                let spec = DetailSpec {
                    grid: a.detail_grid,
                    sorted_cells: a.detail_sorted_cells,
                    directions: a.detail_directions,
                    ..DetailSpec::at(w.try_into()?, h.try_into()?)
                };
                spec.validate()?;
                Ok(spec)
            })
            .transpose()?,
        motion_residual: a.motion_residual,
        residual_statistic: a.residual_statistic,
        residual_given_motion: a.residual_given_motion,
        detail_lost: a.detail_lost,
        separate: a.separate,
        parts: a.parts,
        components: a.components,
        cal: a.cal,
        tune_id: a.tune_id,
        val_ood: a.val_ood,
        latents: a.latents,
        rank: a.rank,
        grid: Grid {
            k: a.k,
            window: a.windows,
            decay: a.decays,
        },
        epsilon_grid: a.epsilon_grid,
        false_alarm_rate: a.false_alarm_rate,
        camera: a.camera,
        relative: a.relative,
        direction: a
            .direction_branch
            .map(|(w, h)| -> Result<_> {
                let o = DirectionOptions::at(w.try_into()?, h.try_into()?);
                Ok(match a.direction_statistic {
                    Statistic::Weakest
                        if !a.mscn_fit.is_empty()
                            || a.mscn_components.is_some()
                            || a.mscn_from.is_some() =>
                    {
                        anyhow::bail!("--mscn-fit, --mscn-components and --mscn-from apply to --direction-statistic mscn")
                    }
                    Statistic::Mscn if a.direction_floor.is_some() => {
                        anyhow::bail!("--direction-floor applies to the weakest direction, not to --direction-statistic mscn")
                    }
                    Statistic::Weakest => DirectionOptions {
                        floor: a.direction_floor.unwrap_or(o.floor),
                        baseline: Some(a.direction_baseline),
                        ..o
                    },
                    Statistic::Mscn => DirectionOptions {
                        baseline: None,
                        mscn: Some(MscnOptions {
                            fit: a.mscn_fit.clone(),
                            components: a.mscn_components.unwrap_or(16),
                            reuse: a
                                .mscn_from
                                .as_deref()
                                .map(|b| mscn_of(b, (w, h)))
                                .transpose()?,
                        }),
                        ..o
                    },
                })
            })
            .transpose()?,
        change: a.change_branch.then(|| a.change_fit.clone()),
        quiet: a.quiet,
    };
    let mut o = calibrate(&a.detector.bundle, &a.out, det.as_mut(), &opts)?;
    if let Some(n) = a.startup_frames {
        let bar = if a.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        let certified = add_startup(&a.out, &tuning, n, backend, &|k| bar.inc(k as u64))?;
        bar.finish_and_clear();
        for w in &certified.weighed {
            println!(
                "start-up {:>3} frames: cruise scale {:.4}, {} tuning drives alarm",
                w.frames, w.cruise_scale, w.tuning_drives_alarmed
            );
        }
        o.bundle = vae_ood_core::bundle::Bundle::load(&a.out)?;
    }
    let m = &o.bundle.manifest;
    let c = m.calibration.as_ref().expect("written");
    println!("wrote {} (model id {})", a.out.display(), o.bundle.model_id);
    println!("score             {}", m.score.describe());
    println!("selected latents  {:?}", m.latents.selected);
    println!("window            {}", c.pipeline.window);
    println!("decay             {}", c.pipeline.decay);
    println!(
        "cusum_threshold   {:.4} (target false-alarm rate {} per frame)",
        c.pipeline.cusum_threshold, c.target_false_alarm_rate
    );
    if let Some(cam) = &c.camera {
        println!("camera            {cam} (the drives' camera; nodes on another camera warn)");
    }
    let g = &o.chosen.guarantee;
    println!(
        "guarantee         an in-distribution stretch of {} frames alarms with probability <= {:.4} ({:.3} per 1000 frames), if drives are exchangeable with the {} tuning drives",
        g.frames_per_drive,
        g.per_drive_false_alarm,
        1000.0 * g.per_frame_false_alarm,
        g.drives
    );
    if !g.target_met {
        eprintln!(
            "warning: {} tuning drives cannot certify {} false alarms per frame on {}-frame drives; give at least {} (the threshold is their largest S)",
            g.drives,
            c.target_false_alarm_rate,
            g.frames_per_drive,
            vae_ood_core::detection::tuning::drives_needed(c.target_false_alarm_rate, g.frames_per_drive)
        );
    }
    if let Some(d) = &c.direction {
        println!("direction branch  {}", d.describe());
    }
    if let Some(ch) = &c.change {
        println!("change branch     {}", ch.describe());
    }
    if let Some(r) = &c.relative {
        println!(
            "relative branch   {} ({} of {} tuning drives alarm, {} allowed)",
            r.describe(),
            r.tuning_drives_alarmed,
            g.drives,
            r.tuning_drives_allowed
        );
    }
    if let Some(st) = &c.startup {
        println!(
            "start-up phase    {} frames at these thresholds, then {}; {} of {} tuning drives alarm, {} allowed",
            st.frames,
            st.describe_cruise(&c.startup_thresholds()),
            st.tuning_drives_alarmed,
            g.drives,
            st.tuning_drives_allowed
        );
        if let Some(w) = st.broken_promise() {
            eprintln!("warning: {w}");
        }
    }
    println!(
        "calibration       {} scores from {:?}",
        c.scores.len(),
        c.data.calibration
    );
    if !c.data.validation_ood.is_empty() {
        println!(
            "validation delay  {:.2} frames mean, {} missed",
            o.chosen.mean_delay, o.chosen.missed
        );
        println!("\n  k  window  decay  threshold  mean delay  missed");
        for cand in o.candidates.iter().take(8) {
            println!(
                "{:3}  {:6}  {:5}  {:9.3}  {:10.2}  {:6}",
                cand.k, cand.window, cand.decay, cand.cusum_threshold, cand.mean_delay, cand.missed
            );
        }
    }
    Ok(())
}

/// The MSCN mixture of `bundle`'s direction branch, which must measure frames at `size`.
fn mscn_of(bundle: &std::path::Path, size: (usize, usize)) -> Result<MscnReference> {
    let b = vae_ood_core::bundle::Bundle::load(bundle)?;
    let d = b
        .manifest
        .calibration
        .and_then(|c| c.direction)
        .with_context(|| {
            format!(
                "--mscn-from {}: the bundle has no direction branch (calibration.direction): give a bundle calibrated with --direction-statistic mscn, or fit a mixture with --mscn-fit",
                bundle.display()
            )
        })?;
    let mscn = d.mscn.with_context(|| {
        format!("--mscn-from {}: its direction branch measures the weakest direction, not the MSCN statistics: give a bundle calibrated with --direction-statistic mscn, or fit a mixture with --mscn-fit", bundle.display())
    })?;
    if (d.width as usize, d.height as usize) != size {
        anyhow::bail!(
            "--mscn-from {}: its MSCN mixture was fitted at {}x{}, not the --direction-branch {}x{}",
            bundle.display(),
            d.width,
            d.height,
            size.0,
            size.1
        );
    }
    Ok(mscn)
}
