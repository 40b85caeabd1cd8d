//! `vae-ood compress`: the paper's design methodology as one resumable sweep.
//!
//! From a trained teacher (its full VAE), build candidates by structured and unstructured
//! pruning, pruning followed by distillation fine-tuning ([`super::finetune`]), students
//! distilled from scratch, and quantisation ([`super::quantize`]); recalibrate every candidate
//! exactly as the teacher is recalibrated; evaluate each on held-out test drives; then measure
//! every encoder's latency in one interleaved run ([`super::bench`]) and select the fastest
//! within the AUROC budget ([`super::select`]).
//!
//! Calibration and evaluation are the library functions behind `vae-ood calibrate` and
//! `vae-ood eval` ([`crate::calibrate`], [`crate::eval`]), called with typed options; each
//! candidate records the equivalent `vae-ood calibrate` flags. Each candidate's result is
//! written (atomically) as soon as it is known; a rerun skips finished candidates, so an
//! interrupted sweep resumes where it stopped. Latency is always measured afresh, for all
//! candidates together, because only latencies from one run are comparable.

use super::bench::encoder_latency;
use super::finetune::{self, FinetuneOptions, Teacher, Weights};
use super::prune::{self, Layer};
use super::quantize::{quantize, Precision};
use super::select::{pareto_front, select, Candidate, Verdict};
use crate::calibrate::{self, DriveArg, ScoreKind};
use crate::eval::{self, report::Outcome};
use crate::onnx_gen::{encoder_onnx, read_encoder, EncoderArch, GraphNames, Named};
use crate::train::data::FrameSet;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vae_ood_core::bundle::Bundle;
use vae_ood_core::detail::DetailSpec;
use vae_ood_core::encoder::{BackendKind, BackendOptions};
use vae_ood_core::fsutil::write_atomic;
use vae_ood_core::monitor::MonitorConfig;
use vae_ood_core::score::{GivenMotion, ScoreSpec};

/// How much of the design space to sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    /// About 30 candidates, under an hour on a 2-core CPU.
    Quick,
    /// Every layer at 10..90 %, more fine-tuning, quantised students and students distilled
    /// from scratch: several hours.
    Full,
}

impl std::str::FromStr for Budget {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Self::Quick),
            "full" => Ok(Self::Full),
            _ => Err(Error::Input(format!(
                "unknown budget '{s}' (expected quick or full)"
            ))),
        }
    }
}

/// How a student distilled from scratch gets its sequential test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudentPipeline {
    /// Its own window and decay, chosen by the calibration grid (its latent space is its own).
    Own,
    /// The teacher's window and decay, as pruned candidates get: a drop-in whose threshold is
    /// derived again. Meaningful when the score refits its reference per candidate
    /// (Mahalanobis), so the score is a distance in each encoder's own latent space.
    Teacher,
}

impl std::str::FromStr for StudentPipeline {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "own" => Ok(Self::Own),
            "teacher" => Ok(Self::Teacher),
            _ => Err(Error::Input(format!(
                "unknown student pipeline '{s}' (expected own or teacher)"
            ))),
        }
    }
}

/// What a candidate is made of. Steps apply in order: structured pruning (layer, fraction),
/// unstructured sparsity, fine-tuning, quantisation; or a student distilled from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub technique: String,
    #[serde(default)]
    pub structured: Vec<(String, f64)>,
    #[serde(default)]
    pub sparsity: Option<f64>,
    #[serde(default)]
    pub finetune: bool,
    /// Conv widths of a student trained from scratch with the paper's distillation loss.
    #[serde(default)]
    pub student_conv: Option<Vec<usize>>,
    #[serde(default)]
    pub precision: Option<Precision>,
}

impl Spec {
    fn new(technique: &str) -> Self {
        Spec {
            name: String::new(),
            technique: technique.into(),
            structured: vec![],
            sparsity: None,
            finetune: false,
            student_conv: None,
            precision: None,
        }
    }

    fn named(mut self) -> Self {
        let mut parts: Vec<String> = self
            .structured
            .iter()
            .map(|(l, f)| format!("{l}-{}", (f * 1000.0).round() / 10.0))
            .collect();
        if let Some(s) = self.sparsity {
            parts.push(format!("l1-{}", (s * 1000.0).round() / 10.0));
        }
        if let Some(c) = &self.student_conv {
            parts.push(format!(
                "student-{}",
                c.iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            ));
        }
        if self.finetune {
            parts.push("ft".into());
        }
        if let Some(p) = self.precision {
            parts.push(p.to_string());
        }
        self.name = if parts.is_empty() {
            "teacher".into()
        } else {
            parts.join("+")
        };
        self
    }
}

/// The candidates of a budget for a teacher of architecture `arch`, the teacher first.
pub fn plan(arch: &EncoderArch, budget: Budget) -> Vec<Spec> {
    let full = budget == Budget::Full;
    let fractions: Vec<f64> = if full {
        (1..10).map(|i| i as f64 / 10.0).collect()
    } else {
        vec![0.25, 0.5, 0.75]
    };
    let layers: Vec<String> = (0..arch.conv.len())
        .map(|i| format!("conv{i}"))
        .chain((0..arch.dense.len()).map(|i| format!("fc{i}")))
        .collect();
    let mut specs = vec![Spec::new("teacher").named()];
    if arch.groups > 1 {
        return plan_branches(arch, budget, specs);
    }
    for l in &layers {
        for &f in &fractions {
            let mut s = Spec::new("structured pruning");
            s.structured = vec![(l.clone(), f)];
            specs.push(s.named());
        }
    }
    let sparsities: &[f64] = if full {
        &[0.1, 0.3, 0.5, 0.7, 0.9]
    } else {
        &[0.5, 0.9]
    };
    for &sp in sparsities {
        let mut s = Spec::new("unstructured pruning");
        s.sparsity = Some(sp);
        specs.push(s.named());
    }
    // Students shaped by the sweep: the early convolutions hold the arithmetic.
    let mut shapes: Vec<Vec<(String, f64)>> = vec![
        vec![("conv0".into(), 0.5)],
        vec![("conv0".into(), 0.625)],
        vec![("conv0".into(), 0.75)],
        vec![("conv0".into(), 0.5), ("conv1".into(), 0.25)],
        vec![("conv0".into(), 0.625), ("conv1".into(), 0.25)],
    ];
    if full {
        shapes.push(vec![("conv0".into(), 0.875)]);
        shapes.push(vec![("conv0".into(), 0.75), ("conv1".into(), 0.25)]);
        shapes.push(vec![("conv0".into(), 0.75), ("conv1".into(), 0.5)]);
        shapes.push(vec![("conv0".into(), 0.875), ("conv1".into(), 0.5)]);
    }
    let mut distilled = vec![];
    for st in shapes {
        let mut s = Spec::new("pruning + distillation fine-tuning");
        s.structured = st;
        s.finetune = true;
        distilled.push(s.named());
    }
    specs.extend(distilled.iter().cloned());
    push_quantised(
        &mut specs,
        &distilled,
        full,
        "pruning + distillation + quantisation",
    );
    if full {
        let c = &arch.conv;
        for first in [c[0] / 4, c[0] / 8] {
            let mut s = Spec::new("student distilled from scratch");
            let mut conv = c.clone();
            conv[0] = first.max(1);
            s.student_conv = Some(conv);
            specs.push(s.named());
        }
    }
    specs
}

/// The plan for a multi-branch teacher (the flow detector), which structured pruning does not
/// handle yet (every branch must keep one width): students distilled from scratch with
/// narrower convolutions (the paper's distillation; the widths pruning would have chosen
/// are where the arithmetic is: the first convolutions), unstructured pruning and quantisation,
/// and in the full budget the students quantised.
fn plan_branches(arch: &EncoderArch, budget: Budget, mut specs: Vec<Spec>) -> Vec<Spec> {
    let full = budget == Budget::Full;
    let even = |w: usize| (w / 2).max(arch.groups).next_multiple_of(arch.groups);
    let c = &arch.conv;
    let mut students = vec![
        // conv0 halved; every conv halved; conv0 quartered and the rest halved.
        std::iter::once(even(c[0]))
            .chain(c[1..].iter().copied())
            .collect::<Vec<_>>(),
        c.iter().map(|&w| even(w)).collect(),
        std::iter::once(even(even(c[0])))
            .chain(c[1..].iter().map(|&w| even(w)))
            .collect(),
    ];
    students.dedup();
    let mut distilled = vec![];
    for conv in students {
        let mut s = Spec::new("student distilled from scratch");
        s.student_conv = Some(conv);
        distilled.push(s.named());
    }
    specs.extend(distilled.iter().cloned());
    for sp in if full {
        &[0.3, 0.5, 0.7][..]
    } else {
        &[0.5][..]
    } {
        let mut s = Spec::new("unstructured pruning");
        s.sparsity = Some(*sp);
        specs.push(s.named());
    }
    push_quantised(&mut specs, &distilled, full, "distillation + quantisation");
    specs
}

/// Each precision on the teacher, and with `full` on every distilled student (`technique`
/// names what those candidates combine).
fn push_quantised(specs: &mut Vec<Spec>, distilled: &[Spec], full: bool, technique: &str) {
    for p in [
        Precision::Fp16,
        Precision::Int8Dynamic,
        Precision::Int8Static,
    ] {
        let mut s = Spec::new("quantisation");
        s.precision = Some(p);
        specs.push(s.named());
        if full {
            for d in distilled {
                let mut q = d.clone();
                q.technique = technique.into();
                q.precision = Some(p);
                specs.push(q.named());
            }
        }
    }
}

/// Everything a sweep needs.
pub struct Options {
    /// The teacher: a `vae-ood train` output or a bundle shipping `vae.bpk` + `training.json`.
    pub teacher: PathBuf,
    pub out: PathBuf,
    pub budget: Budget,
    /// Only these candidates (by name) of the budget's plan, when given.
    pub only: Option<Vec<String>>,
    pub finetune: FinetuneOptions,
    /// Frames for fine-tuning; the teacher's training drives when None.
    pub finetune_drives: Option<Vec<PathBuf>>,
    /// Whether students distilled from scratch keep the teacher's window and decay.
    pub student_pipeline: StudentPipeline,
    /// Arguments for `vae-ood calibrate`: --fit (Mahalanobis teachers), --cal, --tune-id,
    /// --val-ood (DIR[:ONSET]).
    pub fit: Vec<String>,
    pub cal: Vec<String>,
    pub tune_id: Vec<String>,
    pub val_ood: Vec<String>,
    /// Selection inputs (PATH=TYPE, validation drives of every OOD type): the AUROC budget is
    /// checked on these. Without them it is checked on the test inputs, which then decide as
    /// well as report (kept for old reports; give --select).
    pub select: Vec<String>,
    /// Test inputs for `vae-ood eval --input` (PATH=TYPE), labelled by `label_topic`: reported.
    pub test: Vec<String>,
    pub label_topic: String,
    pub auroc_drop: f64,
    pub deadline_ms: f64,
    pub bench_frames: usize,
    /// Where candidates are scored and timed: the sweep picks the leanest detector for this
    /// backend (the paper's methodology on the CPU or the GPU).
    pub backend: BackendKind,
    pub quiet: bool,
}

/// One evaluated candidate (latency comes later, from the common run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateResult {
    pub spec: Spec,
    pub arch: EncoderArch,
    pub params: usize,
    pub macs: usize,
    pub onnx_bytes: u64,
    /// The calibrated candidate bundle.
    pub bundle: PathBuf,
    /// AUROC per OOD partition of the per-frame score and of the CUSUM statistic.
    pub auroc_score: BTreeMap<String, f64>,
    pub auroc_cusum: BTreeMap<String, f64>,
    /// The same on the selection inputs (empty when the sweep had none).
    #[serde(default)]
    pub select_auroc_score: BTreeMap<String, f64>,
    #[serde(default)]
    pub select_auroc_cusum: BTreeMap<String, f64>,
    /// Teacher's VAE loss with this encoder on the held-out tuning drives (f32 candidates).
    pub heldout_loss: Option<f64>,
    /// Mean squared (mu, logvar) distance to the teacher on the held-out drives.
    pub posterior_distance: Option<f64>,
    /// Peak resident memory of the sweep's process while evaluating this candidate, MiB (the
    /// high-water mark is reset before each evaluation).
    pub peak_memory_mib: Option<f64>,
    /// The `vae-ood calibrate` arguments it was calibrated with (bundle paths left out).
    #[serde(default)]
    pub calibration: Vec<String>,
    /// How it was fine-tuned (None: not fine-tuned) and the training distance per epoch.
    pub finetune: Option<FinetuneOptions>,
    pub finetune_history: Vec<f64>,
    pub seconds: f64,
}

/// A candidate in the final table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    #[serde(flatten)]
    pub result: CandidateResult,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Teacher p50 over this one's, from the same run.
    pub speedup: f64,
    pub verdict: String,
    pub pareto: bool,
    /// Parameters and multiply-accumulates per layer.
    pub layers: Vec<vae_ood_core::arch::LayerCost>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub teacher: PathBuf,
    pub budget: Budget,
    pub auroc_drop: f64,
    pub deadline_ms: f64,
    pub bench_frames: usize,
    /// The backend candidates were scored and timed on (reports before it: tract).
    #[serde(default)]
    pub backend: BackendKind,
    /// The data every candidate was calibrated and evaluated on, as given.
    pub cal: Vec<String>,
    pub tune_id: Vec<String>,
    pub val_ood: Vec<String>,
    /// Inputs the AUROC budget was checked on (empty: the test inputs).
    #[serde(default)]
    pub select: Vec<String>,
    pub test: Vec<String>,
    pub label_topic: String,
    pub rows: Vec<Row>,
    /// Name of the selected candidate, if any qualifies.
    pub selected: Option<String>,
    pub plots: Vec<String>,
}

/// Range checks before any candidate is built: a sweep takes hours, and a bad budget must not
/// surface at its end (or, as NaN, switch the AUROC budget off).
pub fn check_options(opts: &Options) -> Result<(), crate::Error> {
    let bad = |what: String| Err(Error::Input(what));
    if !(0.0..=1.0).contains(&opts.auroc_drop) {
        return bad(format!(
            "--auroc-drop is {}; expected an AUROC difference in 0..=1",
            opts.auroc_drop
        ));
    }
    // inf (the default) is no deadline; NaN would switch it off silently.
    if opts.deadline_ms.is_nan() || opts.deadline_ms <= 0.0 {
        return bad(format!(
            "--deadline-ms is {}; expected a positive number of milliseconds (inf: none)",
            opts.deadline_ms
        ));
    }
    if opts.bench_frames == 0 {
        return bad("--bench-frames must be at least 1".into());
    }
    if opts.finetune.epochs == 0 {
        return bad(
            "--finetune-epochs must be at least 1 (\"+ft\" candidates would equal the others)"
                .into(),
        );
    }
    if !(opts.finetune.lr.is_finite() && opts.finetune.lr > 0.0 && opts.finetune.lr <= 1.0) {
        return bad(format!(
            "--finetune-lr is {}; expected a learning rate in (0, 1]",
            opts.finetune.lr
        ));
    }
    Ok(())
}

const RESULT_FILE: &str = "result.json";
/// At most about this many held-out frames for the loss diagnostic.
const HELDOUT_FRAMES: usize = 5000;

/// Runs (or resumes) the sweep and writes `report.json`, `report.html` and plots to `out`.
pub fn run(opts: &Options) -> Result<Report, crate::Error> {
    check_options(opts)?;
    let teacher = Teacher::load(&opts.teacher)?;
    let tbundle = Bundle::load(&opts.teacher).map_err(|e| Error::Input(e.to_string()))?;
    if !tbundle.manifest.score.is_kl() && opts.fit.is_empty() {
        return Err(Error::Input(format!(
            "{}: the teacher's score has a fitted reference ({}), which every candidate \
             refits on its own posteriors: give --fit drives (as `vae-ood calibrate --fit`)",
            opts.teacher.display(),
            tbundle.manifest.score.describe()
        )));
    }
    let spec_in = tbundle.manifest.input.clone();
    let arch = teacher.arch().clone();
    let tweights = finetune::teacher_weights(&teacher);
    let mut ft_opts = opts.finetune.clone();
    // The teacher's scored latents weigh most in fine-tuning (see FinetuneOptions).
    if tbundle.manifest.calibration.is_some() {
        ft_opts.selected = tbundle.manifest.latents.selected.clone();
    }
    let mut specs = plan(&arch, opts.budget);
    if let Some(only) = &opts.only {
        for n in only {
            if !specs.iter().any(|s| &s.name == n) {
                return Err(Error::Input(format!(
                    "--only {n}: no such candidate in the {:?} plan ({})",
                    opts.budget,
                    specs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        specs.retain(|s| s.name == "teacher" || only.contains(&s.name));
    }
    // Folders of DIR[:ONSET] drive arguments, as `vae-ood calibrate` reads them.
    let paths_of = |drives: &[String]| -> Result<Vec<PathBuf>, crate::Error> {
        drives
            .iter()
            .map(|d| d.parse::<DriveArg>().map(|a| a.path))
            .collect()
    };
    let flow = teacher.state.config.flow.clone();
    let frames_of = |paths: &[PathBuf], stride: usize| -> Result<FrameSet, crate::Error> {
        load_frames(paths, &spec_in, flow.as_ref(), stride)
    };
    let say = |m: String| {
        if !opts.quiet {
            eprintln!("{m}");
        }
    };
    // The held-out loss is a diagnostic: every frame of many tuning drives would cost memory
    // in proportion (78 drives of 600 frames: 2.3 GB), so take at most about 5,000 of them.
    let heldout = {
        let paths = paths_of(&opts.tune_id)?;
        let total = crate::drives::count_frames(
            &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
            None,
        );
        // The same memory for any detector: a flow stack is 17 image frames.
        let per_frame = tbundle
            .manifest
            .encoder_input_shape()
            .iter()
            .product::<usize>();
        let budget = (HELDOUT_FRAMES * 3 * 64 * 64 / per_frame).max(100);
        frames_of(&paths, total.div_ceil(budget).max(1))?
    };
    let calib_frames = frames_of(&paths_of(&opts.cal)?, 10)?;
    let calib: Vec<Vec<f32>> = (0..calib_frames.len())
        .map(|i| calib_frames.gather(&[i]))
        .collect();
    std::fs::create_dir_all(&opts.out).map_err(Error::write(&opts.out))?;

    let ctx = Context {
        opts,
        teacher: &teacher,
        tbundle: &tbundle,
        tweights: &tweights,
        ft_opts: &ft_opts,
        heldout: &heldout,
        calib: &calib,
    };
    let mut ft_frames: Option<FrameSet> = None;
    let mut results = vec![];
    for spec in &specs {
        let dir = opts.out.join("candidates").join(&spec.name);
        let done = dir.join(RESULT_FILE);
        let finetune = spec.finetune.then(|| ft_opts.clone());
        let plan = calibration_plan(&tbundle, spec, opts.student_pipeline);
        let calibration = calibration_args(opts, &plan);
        let before = std::fs::read_to_string(&done)
            .ok()
            .and_then(|t| serde_json::from_str::<CandidateResult>(&t).ok())
            .filter(|r| &r.spec == spec && r.finetune == finetune);
        let t0 = Instant::now();
        let built = match before {
            Some(r) if r.calibration == calibration => {
                say(format!("{}: done before, kept", spec.name));
                results.push(r);
                continue;
            }
            // Built before, calibrated differently: keep the encoder, calibrate again.
            Some(r) if dir.join("bundle").join("encoder.onnx").is_file() => {
                say(format!("{}: built before, recalibrating", spec.name));
                Built::from(r)
            }
            _ => {
                say(format!("{}: building", spec.name));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).map_err(Error::write(&dir))?;
                ctx.build(spec, &dir, &mut ft_frames)?
            }
        };
        let r = ctx.evaluate(spec, &dir, built, &plan, t0)?;
        write_atomic(&done, &serde_json::to_vec_pretty(&r).expect("serialisable"))?;
        say(format!(
            "{}: CUSUM AUROC {:?} ({:.0} s)",
            spec.name,
            r.auroc_cusum
                .iter()
                .map(|(k, v)| format!("{k} {v:.3}"))
                .collect::<Vec<_>>(),
            r.seconds
        ));
        results.push(r);
    }

    // 3. Latency of every encoder in one interleaved run, the teacher first.
    say(format!(
        "measuring encoder latency of {} candidates in one run",
        results.len()
    ));
    let lat = encoder_latency(
        &results.iter().map(|r| r.bundle.clone()).collect::<Vec<_>>(),
        opts.bench_frames,
        opts.bench_frames / 10 + 5,
        BackendOptions {
            kind: opts.backend,
            threads: 1,
        },
    )?;
    let cands: Vec<Candidate> = results
        .iter()
        .zip(&lat)
        .map(|(r, l)| Candidate {
            name: r.spec.name.clone(),
            auroc: if opts.select.is_empty() {
                r.auroc_cusum.clone()
            } else {
                r.select_auroc_cusum.clone()
            },
            latency_ms: l.p50_ms,
        })
        .collect();
    // The teacher is a candidate too: when nothing faster keeps the AUROC, it stays.
    let (best, verdicts) = select(&cands[0], &cands, opts.auroc_drop, opts.deadline_ms);
    let front = pareto_front(&cands);
    let rows: Vec<Row> = results
        .into_iter()
        .zip(lat)
        .enumerate()
        .map(|(i, (r, l))| Row {
            verdict: verdict_text(&verdicts[i], opts.deadline_ms),
            pareto: front.contains(&i),
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            speedup: l.speedup_p50,
            layers: r.arch.layer_costs(),
            result: r,
        })
        .collect();
    let mut report = Report {
        teacher: opts.teacher.clone(),
        budget: opts.budget,
        auroc_drop: opts.auroc_drop,
        deadline_ms: opts.deadline_ms,
        bench_frames: opts.bench_frames,
        backend: opts.backend,
        cal: opts.cal.clone(),
        tune_id: opts.tune_id.clone(),
        val_ood: opts.val_ood.clone(),
        select: opts.select.clone(),
        test: opts.test.clone(),
        label_topic: opts.label_topic.clone(),
        selected: best.map(|i| rows[i].result.spec.name.clone()),
        rows,
        plots: vec![],
    };
    report.plots = super::report::plots(&report, &opts.out)?;
    write_atomic(
        &opts.out.join("report.json"),
        &serde_json::to_vec_pretty(&report).expect("serialisable"),
    )?;
    std::fs::write(opts.out.join("report.html"), super::report::html(&report))
        .map_err(Error::write(opts.out.join("report.html")))?;
    Ok(report)
}

/// What the sweep shares while building and evaluating candidates.
struct Context<'a> {
    opts: &'a Options,
    teacher: &'a Teacher,
    tbundle: &'a Bundle,
    tweights: &'a Weights,
    ft_opts: &'a FinetuneOptions,
    heldout: &'a FrameSet,
    calib: &'a [Vec<f32>],
}

/// A built candidate encoder (in `dir/bundle`), before calibration.
struct Built {
    arch: EncoderArch,
    onnx_bytes: u64,
    heldout_loss: Option<f64>,
    posterior_distance: Option<f64>,
    history: Vec<f64>,
}

impl From<CandidateResult> for Built {
    fn from(r: CandidateResult) -> Self {
        Built {
            arch: r.arch,
            onnx_bytes: r.onnx_bytes,
            heldout_loss: r.heldout_loss,
            posterior_distance: r.posterior_distance,
            history: r.finetune_history,
        }
    }
}

/// Calibration of a candidate. Candidates derived from a calibrated teacher keep its latents,
/// martingale window and CUSUM decay: only the conformal scores and the CUSUM threshold are
/// derived again, so the compressed detector is a drop-in replacement of the teacher. A
/// student trained from scratch has its own latent space and is calibrated from scratch, unless
/// the sweep asks for drop-ins ([`StudentPipeline::Teacher`]): then it keeps the teacher's
/// window and decay (never its selected latents, which index another latent space). A
/// teacher with the Mahalanobis score passes it on: each candidate refits the reference on the
/// fit drives, since its posteriors are its own.
struct CalibrationPlan {
    mahalanobis: bool,
    /// The teacher's detail channel, refitted with each candidate's reference.
    detail: Option<DetailSpec>,
    /// The teacher's motion residual (flow detectors), likewise.
    motion_residual: bool,
    /// The teacher judges its motion residual given the stack's motion, likewise.
    residual_given_motion: Option<GivenMotion>,
    /// The teacher scores the detail lost beside the residual, likewise.
    detail_lost: bool,
    /// The teacher scores those extra features apart (`--separate`), with these tails.
    separate: Option<calibrate::Tails>,
    /// The teacher's reference is in parts (`--parts`).
    parts: Option<calibrate::Parts>,
    /// The teacher reference's Gaussians (1, or a mixture's components), refitted likewise.
    components: usize,
    latents: Option<Vec<usize>>,
    window_decay: Option<(usize, f64)>,
    /// The teacher's camera: a student calibrated on the same drives is for the same camera.
    camera: Option<String>,
}

fn calibration_plan(t: &Bundle, spec: &Spec, students: StudentPipeline) -> CalibrationPlan {
    let mahalanobis = !t.manifest.score.is_kl();
    let inherited = match (&t.manifest.calibration, &spec.student_conv) {
        (Some(c), None) => Some(c),
        _ => None,
    };
    let pipeline = match (&t.manifest.calibration, students) {
        (Some(c), StudentPipeline::Teacher) => Some(c),
        _ => inherited,
    };
    CalibrationPlan {
        mahalanobis,
        detail: t.manifest.score.detail().copied(),
        motion_residual: t.manifest.score.motion_residual(),
        residual_given_motion: t.manifest.score.given_motion(),
        detail_lost: t.manifest.score.detail_lost(),
        separate: match &t.manifest.score {
            ScoreSpec::Mahalanobis(r) => {
                let residual = r.parts.iter().find(|p| p.name == "motion_residual");
                r.separate
                    .as_ref()
                    .map(|s| s.upper_only)
                    .or(residual.map(|p| p.upper_only))
                    .map(|upper| match upper {
                        true => calibrate::Tails::Upper,
                        false => calibrate::Tails::Both,
                    })
            }
            ScoreSpec::Kl => None,
        },
        parts: match &t.manifest.score {
            ScoreSpec::Mahalanobis(r) if !r.parts.is_empty() => Some(calibrate::Parts::Branches),
            _ => None,
        },
        components: match &t.manifest.score {
            ScoreSpec::Mahalanobis(r) => r.components(),
            ScoreSpec::Kl => 1,
        },
        latents: inherited
            .filter(|_| !mahalanobis)
            .map(|_| t.manifest.latents.selected.clone()),
        window_decay: pipeline.map(|c| (c.pipeline.window, c.pipeline.decay)),
        camera: t
            .manifest
            .calibration
            .as_ref()
            .and_then(|c| c.camera.clone()),
    }
}

/// The plan as `vae-ood calibrate` flags: the candidate's record of how it was calibrated (a
/// user can rerun it by hand), and what a resumed sweep compares.
fn calibration_args(opts: &Options, plan: &CalibrationPlan) -> Vec<String> {
    let mut args: Vec<String> = vec!["--cal".into()];
    args.extend(opts.cal.iter().cloned());
    args.push("--tune-id".into());
    args.extend(opts.tune_id.iter().cloned());
    if plan.mahalanobis {
        args.extend(["--score".into(), "mahalanobis".into(), "--fit".into()]);
        args.extend(opts.fit.iter().cloned());
        if let Some(d) = plan.detail {
            args.extend(["--detail".into(), format!("{}x{}", d.width, d.height)]);
            if d.grid > 1 {
                args.extend(["--detail-grid".into(), d.grid.to_string()]);
                if d.sorted_cells {
                    args.push("--detail-sorted-cells".into());
                }
            }
            if d.directions {
                args.push("--detail-directions".into());
            }
        }
        if plan.motion_residual {
            args.push("--motion-residual".into());
        }
        if let Some(g) = plan.residual_given_motion {
            args.extend(["--residual-given-motion".into(), g.as_str().into()]);
        }
        if plan.detail_lost {
            args.push("--detail-lost".into());
        }
        if let Some(t) = plan.separate {
            args.extend(["--separate".into(), t.as_str().into()]);
        }
        if let Some(p) = plan.parts {
            args.extend(["--parts".into(), p.as_str().into()]);
        }
        if plan.components != 1 {
            args.extend(["--components".into(), plan.components.to_string()]);
        }
    }
    if let Some(l) = &plan.latents {
        let l: Vec<String> = l.iter().map(|i| i.to_string()).collect();
        args.extend(["--latents".into(), l.join(",")]);
    }
    if let Some((window, decay)) = plan.window_decay {
        args.extend([
            "--windows".into(),
            window.to_string(),
            "--decays".into(),
            decay.to_string(),
        ]);
    }
    if !opts.val_ood.is_empty() {
        args.push("--val-ood".into());
        args.extend(opts.val_ood.iter().cloned());
    }
    args
}

/// The plan as the options of [`calibrate::calibrate`] (the defaults of `vae-ood calibrate`
/// otherwise).
fn calibration_options(opts: &Options, plan: &CalibrationPlan) -> Result<calibrate::Options> {
    let drives = |v: &[String]| -> Result<Vec<DriveArg>> { v.iter().map(|d| d.parse()).collect() };
    let mut c = calibrate::Options::with_drives(
        drives(&opts.cal)?,
        drives(&opts.tune_id)?,
        drives(&opts.val_ood)?,
    );
    if plan.mahalanobis {
        c.score = ScoreKind::Mahalanobis;
        c.fit = drives(&opts.fit)?;
        c.detail = plan.detail;
        c.motion_residual = plan.motion_residual;
        c.residual_given_motion = plan.residual_given_motion;
        c.detail_lost = plan.detail_lost;
        c.separate = plan.separate;
        c.parts = plan.parts;
        c.components = plan.components;
    }
    c.latents = plan.latents.clone();
    c.camera = plan.camera.clone();
    if let Some((window, decay)) = plan.window_decay {
        c.grid.window = vec![window];
        c.grid.decay = vec![decay];
    }
    Ok(c)
}

impl Context<'_> {
    /// Builds the candidate's encoder and writes it as an uncalibrated bundle in `dir/bundle`.
    fn build(
        &self,
        spec: &Spec,
        dir: &Path,
        ft_frames: &mut Option<FrameSet>,
    ) -> Result<Built, crate::Error> {
        let (opts, teacher) = (self.opts, self.teacher);
        let (mut arch, mut w): (EncoderArch, Weights) = match &spec.student_conv {
            Some(conv) => student_from_scratch(opts, teacher, conv, dir)?,
            None => (teacher.arch().clone(), self.tweights.clone()),
        };
        for (layer, f) in &spec.structured {
            let layer: Layer = layer.parse()?;
            let keep = prune::kept_units(&w, &arch, layer, *f)?;
            (arch, w) = prune::prune_structured(&w, &arch, layer, &keep)?;
        }
        if let Some(s) = spec.sparsity {
            prune::prune_global_l1(&mut w, &arch, s)?;
        }
        let mut history = vec![];
        if spec.finetune {
            if ft_frames.is_none() {
                let drives = opts
                    .finetune_drives
                    .clone()
                    .unwrap_or_else(|| teacher.state.config.train.clone());
                if !opts.quiet {
                    eprintln!("loading {} fine-tuning drives", drives.len());
                }
                let spec_in = &self.tbundle.manifest.input;
                let flow = teacher.state.config.flow.as_ref();
                *ft_frames = Some(load_frames(&drives, spec_in, flow, teacher.state.config.frame_stride)
                    .map_err(|e| Error::Drive(format!("fine-tuning frames: {e} (the teacher's training drives: `make train-data`, or give --finetune-drives)")))?);
            }
            let frames = ft_frames.as_ref().expect("loaded");
            let name = spec.name.clone();
            let (fw, h) = finetune::finetune(teacher, &arch, &w, frames, self.ft_opts, &|e, d| {
                if !opts.quiet {
                    eprintln!("{name}: fine-tuning epoch {e}, posterior distance {d:.5}");
                }
            })?;
            w = fw;
            history = h;
        }
        let (heldout_loss, posterior_distance) = if spec.precision.is_none() {
            (
                Some(finetune::heldout_loss(teacher, &arch, &w, self.heldout)?),
                Some(finetune::posterior_distance(
                    teacher,
                    &arch,
                    &w,
                    self.heldout,
                )?),
            )
        } else {
            (None, None)
        };
        let doc = format!("{} of {}", spec.name, self.tbundle.manifest.name);
        let mut onnx = encoder_onnx(&arch, &mut Named(w), &GraphNames::default(), &doc)?;
        if let Some(p) = spec.precision {
            onnx = quantize(&onnx, p, self.calib)?;
        }
        write_bundle(self.tbundle, &dir.join("bundle"), &onnx, spec, &arch)?;
        Ok(Built {
            arch,
            onnx_bytes: onnx.len() as u64,
            heldout_loss,
            posterior_distance,
            history,
        })
    }

    /// Calibrates `dir/bundle` into `dir/calibrated` and evaluates it into `dir/eval`, as
    /// `vae-ood calibrate` and `vae-ood eval` would.
    fn evaluate(
        &self,
        spec: &Spec,
        dir: &Path,
        b: Built,
        plan: &CalibrationPlan,
        t0: Instant,
    ) -> Result<CandidateResult> {
        let opts = self.opts;
        let (raw, cal, ev) = (dir.join("bundle"), dir.join("calibrated"), dir.join("eval"));
        let backend = BackendOptions {
            kind: opts.backend,
            ..BackendOptions::default()
        };
        let mut det = vae_ood_core::detector::load(&raw, backend)?;
        calibrate::calibrate(&raw, &cal, det.as_mut(), &calibration_options(opts, plan)?)?;
        drop(det);
        let eval_opts = eval::Options {
            bundle: cal.clone(),
            backend,
            monitor: MonitorConfig::default(),
            topic: None,
            folder_fps: eval::DEFAULT_FOLDER_FPS,
        };
        // Per OOD partition, the AUROC of the score and of the sequential statistic.
        let run_eval = |inputs: &[String], out: &Path| -> Result<[BTreeMap<String, f64>; 2]> {
            let inputs = eval::labelled_inputs(&[], &[], inputs, None, Some(&opts.label_topic))?;
            let report = eval::evaluate(&inputs, &eval_opts, out, &|_| {})?.report;
            if let Some(bad) = report.inputs.iter().find(|i| i.error.is_some()) {
                return Err(Error::Drive(format!(
                    "evaluating {}: {}",
                    spec.name,
                    bad.error.as_deref().unwrap_or("input failed")
                )));
            }
            let aurocs = |table: &BTreeMap<String, Outcome>| -> BTreeMap<String, f64> {
                table
                    .iter()
                    .filter(|(k, _)| k.as_str() != "all")
                    .filter_map(|(k, o)| match o {
                        Outcome::Ok(m) => Some((k.clone(), m.auroc)),
                        Outcome::Unavailable { .. } => None,
                    })
                    .collect()
            };
            Ok([aurocs(&report.score_metrics), aurocs(&report.cusum_metrics)])
        };
        let [select_auroc_score, select_auroc_cusum] = if opts.select.is_empty() {
            Default::default()
        } else {
            run_eval(&opts.select, &dir.join("eval_select"))?
        };
        reset_peak_memory();
        let [auroc_score, auroc_cusum] = run_eval(&opts.test, &ev)?;
        let peak_memory_mib = eval::peak_memory_mib();
        let costs = b.arch.layer_costs();
        Ok(CandidateResult {
            spec: spec.clone(),
            params: costs.iter().map(|c| c.params).sum(),
            macs: costs.iter().map(|c| c.macs).sum(),
            arch: b.arch,
            onnx_bytes: b.onnx_bytes,
            bundle: cal,
            auroc_score,
            auroc_cusum,
            select_auroc_score,
            select_auroc_cusum,
            heldout_loss: b.heldout_loss,
            posterior_distance: b.posterior_distance,
            peak_memory_mib,
            calibration: calibration_args(opts, plan),
            finetune: spec.finetune.then(|| self.ft_opts.clone()),
            finetune_history: b.history,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

fn verdict_text(v: &Verdict, deadline: f64) -> String {
    match v {
        Verdict::Selected => "selected".into(),
        Verdict::Eligible => "eligible".into(),
        Verdict::AurocDrop(k, d) => format!("AUROC drop {d:.3} on {k}"),
        Verdict::Missing(k) => format!("no {k} result"),
        Verdict::TooSlow => format!("slower than {deadline} ms"),
    }
}

/// Resets this process's peak resident memory (Linux `clear_refs`), so that the next
/// reading is the peak of what follows.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The encoder inputs of `drives`: frames through the bundle's input spec, or flow stacks
/// through the flow detector's own stack.
fn load_frames(
    drives: &[PathBuf],
    spec_in: &vae_ood_core::preprocess::InputSpec,
    flow: Option<&vae_ood_core::flow::FlowSpec>,
    stride: usize,
) -> Result<FrameSet, crate::Error> {
    match flow {
        None => FrameSet::load(drives, spec_in, stride, &|| {}),
        Some(f) => FrameSet::load_flow(drives, f, stride, &|| {}),
    }
}

/// An uncalibrated candidate bundle with the teacher's input spec and provenance.
fn write_bundle(
    t: &Bundle,
    dir: &Path,
    onnx: &[u8],
    spec: &Spec,
    arch: &EncoderArch,
) -> Result<Bundle, crate::Error> {
    let m = &t.manifest;
    let mut manifest = super::derived_manifest(
        m,
        format!("{}-{}", m.name, spec.name),
        format!("{} ({}) of {}", spec.name, spec.technique, m.name),
        format!("vae-ood compress (candidate {})", spec.name),
        Some((arch, &format!("{} of {}", spec.technique, m.name))),
    );
    manifest.latents.count = arch.latents;
    manifest.latents.selected = (0..arch.latents).collect();
    manifest.encoder.path = "encoder.onnx".into();
    Bundle::write(dir, manifest, onnx).map_err(|e| Error::Input(e.to_string()))
}

/// A student of the teacher's shape but `conv` widths, trained from scratch with the paper's
/// distillation loss for half the teacher's epochs.
fn student_from_scratch(
    opts: &Options,
    teacher: &Teacher,
    conv: &[usize],
    dir: &Path,
) -> Result<(EncoderArch, Weights), crate::Error> {
    let mut config = teacher.state.config.clone();
    config.arch.conv = conv.to_vec();
    config.epochs = (config.epochs / 2).max(1);
    config.distill = Some(crate::train::Distill {
        teacher: opts.teacher.clone(),
        alpha: 0.7,
        latent_weight: 0.0,
    });
    let out = dir.join("student");
    let run = crate::train::RunOptions {
        quiet: opts.quiet,
        ..Default::default()
    };
    crate::train::train(&config, &out, &run)?;
    let bytes =
        std::fs::read(out.join("encoder.onnx")).map_err(Error::read(out.join("encoder.onnx")))?;
    read_encoder(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_branch_teacher_gets_students_not_structured_pruning() {
        let arch = EncoderArch::flow(6);
        for budget in [Budget::Quick, Budget::Full] {
            let specs = plan(&arch, budget);
            assert_eq!(specs[0].name, "teacher");
            assert!(specs.iter().all(|s| s.structured.is_empty()), "{budget:?}");
            let students: Vec<&Vec<usize>> = specs
                .iter()
                .filter_map(|s| s.student_conv.as_ref())
                .collect();
            assert!(students.len() >= 3, "{students:?}");
            // Every width splits into the two branches, and each student is narrower.
            for conv in &students {
                assert!(conv.iter().all(|w| w % 2 == 0 && *w >= 2), "{conv:?}");
                assert!(conv.iter().zip(&arch.conv).all(|(s, t)| s <= t) && **conv != arch.conv);
            }
        }
        // The image teacher's plan is unchanged: structured pruning first.
        assert!(!plan(&EncoderArch::small(), Budget::Quick)[1]
            .structured
            .is_empty());
    }

    #[test]
    fn a_drop_in_student_keeps_the_teachers_window_and_decay_only_when_asked() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/flow");
        let t = Bundle::load(&dir).unwrap();
        let c = t.manifest.calibration.as_ref().unwrap();
        let teachers = Some((c.pipeline.window, c.pipeline.decay));
        let arch = EncoderArch::flow(6);
        let specs = plan(&arch, Budget::Quick);
        let student = specs.iter().find(|s| s.student_conv.is_some()).unwrap();
        let own = calibration_plan(&t, student, StudentPipeline::Own);
        let drop_in = calibration_plan(&t, student, StudentPipeline::Teacher);
        assert_eq!(own.window_decay, None);
        assert_eq!(drop_in.window_decay, teachers);
        // The teacher's selected latents index its own latent space: never passed on.
        assert!(drop_in.latents.is_none());
        // Candidates derived from the teacher keep its pipeline either way.
        for students in [StudentPipeline::Own, StudentPipeline::Teacher] {
            assert_eq!(
                calibration_plan(&t, &specs[0], students).window_decay,
                teachers
            );
        }
    }
}
