//! `vae-ood eval`: a detector on labelled drives; the report's summary on the terminal.

use crate::common::DetectorArgs;
use anyhow::{bail, Result};
use std::path::PathBuf;
use vae_ood_core::monitor::{self, MonitorConfig, Recovery};
use vae_ood_tools::eval::report::{Outcome, Report};
use vae_ood_tools::eval::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// Output directory for report.json and frames.csv.
    #[arg(long)]
    out: PathBuf,
    /// In-distribution inputs (every frame ID).
    #[arg(long, num_args = 1..)]
    id: Vec<PathBuf>,
    /// OOD inputs as PATH or PATH=TYPE (every frame OOD; TYPE defaults to the file name).
    #[arg(long, num_args = 1..)]
    ood: Vec<String>,
    /// Inputs labelled by --labels ranges or by --label-topic, as PATH or PATH=TYPE (the OOD
    /// type of their label-topic OOD frames).
    #[arg(long, num_args = 1..)]
    input: Vec<String>,
    /// CSV with header `start,end,type`: header-stamp ranges in seconds that are OOD.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// std_msgs/Bool topic in the bags (true = OOD) labelling the --input bags.
    #[arg(long)]
    label_topic: Option<String>,
    /// Image topic (needed when a bag has several).
    #[arg(long)]
    topic: Option<String>,
    /// Frame rate assumed for image folders.
    #[arg(long, default_value_t = eval::DEFAULT_FOLDER_FPS)]
    fps: f64,
    /// Per-frame threshold for uncalibrated bundles.
    #[arg(long, default_value_t = f64::INFINITY, value_parser = crate::common::parse_score_threshold)]
    score_threshold: f64,
    /// Override the bundle's CUSUM threshold (>= 0; inf: never).
    #[arg(long, value_parser = crate::common::parse_score_threshold)]
    cusum_threshold: Option<f64>,
    /// Multiply the bundle's own CUSUM threshold (1..=100), as the node's `threshold_scale`:
    /// the joint scale of detectors run together (`vae-ood joint-threshold`).
    #[arg(long, default_value_t = 1.0, value_parser = parse_threshold_scale)]
    threshold_scale: f64,
    /// Consecutive frames under the threshold before an automatic recovery (1..=100000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    recovery_frames: u32,
    /// Hysteresis of automatic recovery: S must fall to this share of the threshold, as the
    /// node's `recovery_level` (0.01..=1; 1 = none).
    #[arg(long, default_value_t = monitor::DEFAULT_RECOVERY_LEVEL, value_parser = parse_recovery_level)]
    recovery_level: f64,
    /// Every branch's S is held at or under this many of its thresholds, as the node's
    /// `cusum_ceiling` (over 1, at most 1000; 0: unbounded). It changes no first alarm; it bounds how long
    /// OOD outlasts the evidence.
    #[arg(long, default_value_t = monitor::DEFAULT_CUSUM_CEILING, value_parser = parse_ceiling)]
    cusum_ceiling: f64,
    /// Exact repeats of the previous frame's posterior in a row before the camera counts as
    /// frozen (a fault), as the node's parameter; 0 disables.
    #[arg(long, default_value_t = vae_ood_core::monitor::DEFAULT_MAX_REPEATED_FRAMES)]
    max_repeated_frames: u32,
    /// Fewer frames than this (Hz) stamped in the last second fault the verdict (a slow
    /// stream: frames lost before the monitor), as the node's `min_rate`; 0 disables
    #[arg(long, default_value_t = 0.0, value_parser = parse_min_rate)]
    min_rate: f64,
    /// Flow bundles: verdicts also alarm by the reference design's per-branch rule (the
    /// bundle's calibration.branch_thresholds), as the node's `branch_rule` parameter. The
    /// rule's own figures are reported either way.
    #[arg(long)]
    branch_rule: bool,
    /// Bundles with a drive-relative branch: run without it (the pooled statistic at its own
    /// threshold), as the node's `relative_branch: false`.
    #[arg(long)]
    no_relative: bool,
    /// Bundles with a direction branch: run without it (the pooled threshold back at its value
    /// before the split, unless a drive-relative branch runs), as the node's
    /// `direction_branch: false`.
    #[arg(long)]
    no_direction: bool,
    /// Bundles with a change branch: run without it (the node's `change_branch: false`).
    #[arg(long)]
    no_change: bool,
    /// Bundles with a start-up phase: hold every threshold as calibrated for the whole drive,
    /// as the node's `startup_phase: false`.
    #[arg(long)]
    no_startup_phase: bool,
    #[arg(long)]
    quiet: bool,
}

fn parse_threshold_scale(s: &str) -> Result<f64> {
    let why = "under 1 would loosen the certified threshold";
    crate::common::parse_in_range(s, &monitor::THRESHOLD_SCALE_RANGE, why)
}

fn parse_min_rate(s: &str) -> Result<f64> {
    crate::common::parse_in_range(s, &monitor::MIN_RATE_RANGE, "0 disables the check")
}

fn parse_ceiling(s: &str) -> Result<f64> {
    let v: f64 = s.parse().map_err(|e| anyhow::anyhow!("'{s}': {e}"))?;
    anyhow::ensure!(
        v == 0.0 || vae_ood_core::detection::ceiling_is_valid(v),
        "{v} is not 0 (unbounded) or over 1 and at most {} thresholds (exactly 1 would hold S at the threshold: no alarm)",
        vae_ood_core::detection::MAX_CEILING
    );
    Ok(v)
}

fn parse_recovery_level(s: &str) -> Result<f64> {
    crate::common::parse_in_range(s, &monitor::RECOVERY_LEVEL_RANGE, "1 = no hysteresis")
}

pub fn run(a: &Args) -> Result<()> {
    let inputs = eval::labelled_inputs(
        &a.id,
        &a.ood,
        &a.input,
        a.labels.as_deref(),
        a.label_topic.as_deref(),
    )?;
    let opts = Options {
        bundle: a.detector.bundle.clone(),
        backend: a.detector.backend_options(),
        monitor: MonitorConfig {
            score_threshold: a.score_threshold,
            max_frame_age: None,
            recovery: Recovery::Auto {
                frames: a.recovery_frames,
                level: a.recovery_level,
            },
            cusum_threshold: a.cusum_threshold,
            threshold_scale: a.threshold_scale,
            max_repeated_frames: (a.max_repeated_frames > 0).then_some(a.max_repeated_frames),
            min_rate: (a.min_rate > 0.0).then_some(a.min_rate),
            branch_rule: a.branch_rule,
            relative_branch: !a.no_relative,
            direction_branch: !a.no_direction,
            change_branch: !a.no_change,
            startup_phase: !a.no_startup_phase,
            cusum_ceiling: (a.cusum_ceiling > 0.0).then_some(a.cusum_ceiling),
        },
        topic: a.topic.clone(),
        folder_fps: a.fps,
    };
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(eval::count_frames(&inputs, a.topic.as_deref()) as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "evaluating {pos}/{len} frames [{bar:30}] {per_sec} {eta}",
        )?
        .progress_chars("=> "),
    );
    let report = eval::evaluate(&inputs, &opts, &a.out, &|n| bar.inc(n as u64))?.report;
    bar.finish_and_clear();
    print_report(&report, &a.out);
    // An input that gave no frame at all is an error (exit 1); damage after some frames is a
    // partial result (exit 2).
    if let Some(bad) = report
        .inputs
        .iter()
        .find(|i| i.error.is_some() && i.frames == 0)
    {
        bail!("{}", bad.error.as_deref().unwrap_or("input failed"));
    }
    if report.partial {
        std::process::exit(2);
    }
    Ok(())
}

/// `vae-ood report`: eval outputs (shards) merged into one report.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// `vae-ood eval` output directories (report.json and frames.csv), in input order.
    #[arg(required = true)]
    shards: Vec<std::path::PathBuf>,
    /// Output directory for the merged report.json, frames.csv, report.html and plots.
    #[arg(long)]
    out: std::path::PathBuf,
}

pub fn report(a: &ReportArgs) -> Result<()> {
    let (mut report, frames) = eval::merge::merge(&a.shards)?;
    eval::write_outputs(&a.out, &mut report, &frames)?;
    print_report(&report, &a.out);
    for s in &report.shards {
        println!(
            "  shard {}: {} frames, {:.1} frames/s, peak memory {}",
            s.dir,
            s.frames,
            s.throughput_fps,
            s.peak_memory_mib
                .map_or("n/a".into(), |m| format!("{m:.0} MiB"))
        );
    }
    Ok(())
}

fn print_report(r: &Report, out: &std::path::Path) {
    println!(
        "model {}  frames {} (scored {}, faulted {}, warming up {})  {:.1} frames/s  peak memory {:.0} MiB",
        r.model_id,
        r.frames,
        r.scored,
        r.faulted,
        r.warming_up,
        r.throughput_fps,
        r.peak_memory_mib.unwrap_or(f64::NAN)
    );
    for i in &r.inputs {
        println!(
            "  input {}: {} frames{}",
            i.path,
            i.frames,
            i.error
                .as_ref()
                .map(|e| format!("  PARTIAL: {e}"))
                .unwrap_or_default()
        );
    }
    for (name, table) in [("score", &r.score_metrics), ("cusum", &r.cusum_metrics)] {
        for (ty, o) in table {
            match o {
                Outcome::Ok(m) => println!("  {name:5} {ty:<16} AUROC {:.4}  AUPR-in {:.4}  AUPR-out {:.4}  FPR@95TPR {:.4}  (OOD {}, ID {})", m.auroc, m.aupr_in, m.aupr_out, m.fpr_at_95_tpr, m.n_ood, m.n_id),
                Outcome::Unavailable { error } => println!("  {name:5} {ty:<16} unavailable: {error}"),
            }
        }
    }
    if let Some(s) = &r.sequential {
        println!(
            "  sequential: {} OOD segment(s), {} detected, {} missed, mean delay {} frames ({} s); {} false alarm(s) in {} ID frames = {:.2} per 1000 frames{}, on {} of {} inputs with ID frames",
            s.segments.len(), s.detected, s.missed,
            s.mean_delay_frames.map_or("n/a".into(), |d| format!("{d:.1}")),
            s.mean_delay_s.map_or("n/a".into(), |d| format!("{d:.2}")),
            s.false_alarms, s.id_frames, s.false_alarms_per_1000_id_frames,
            s.false_alarms_per_hour.map_or(String::new(), |h| format!(", {h:.1} per hour")),
            s.inputs_with_false_alarm, s.id_inputs
        );
    }
    if let Some(p) = &r.promise {
        println!(
            "  promise: a {}-frame clear stretch alarms with probability <= {:.4}: {:.2} inputs with a false alarm expected here, {} seen; P(>= {}) under the promise {:.3}",
            p.frames_per_drive, p.per_drive, p.expected, p.seen, p.seen, p.tail
        );
    }
    for (stage, p) in &r.latency_ms {
        println!(
            "  latency {stage:<10} p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3} ms",
            p.p50, p.p90, p.p99, p.max
        );
    }
    if let Some(e) = &r.plot_error {
        println!("  plots: {e}");
    }
    println!(
        "wrote {0}/report.html, report.json, frames.csv and {1} plot(s)",
        out.display(),
        r.plots.len()
    );
}
