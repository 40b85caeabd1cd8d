//! `vae-ood compress`: the compression sweep's arguments and its summary table.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use vae_ood_tools::compress::finetune::FinetuneOptions;
use vae_ood_tools::compress::sweep::{self, Budget, Options, StudentPipeline};

#[derive(Debug, Args)]
pub struct CompressArgs {
    /// The teacher: a `vae-ood train` output directory, or a bundle that ships its full VAE
    /// (vae.bpk and training.json), as models/default does
    #[arg(long, default_value = "models/default")]
    pub teacher: PathBuf,
    /// Output directory: candidates/<name>/ (bundles, evaluations, result.json), report.json,
    /// report.html and plots. Rerunning with the same OUT resumes the sweep
    #[arg(long)]
    pub out: PathBuf,
    /// quick (about 30 candidates, under an hour on 2 cores) or full (hours)
    #[arg(long, default_value = "quick")]
    pub budget: Budget,
    /// Evaluate only these candidates of the plan (plus the teacher), e.g. conv0-75+ft
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    /// Drives every candidate refits a Mahalanobis reference on (as `vae-ood calibrate --fit`;
    /// needed when the teacher uses the Mahalanobis score)
    #[arg(long, num_args = 1..)]
    pub fit: Vec<String>,
    /// Calibration drives for every candidate (as `vae-ood calibrate --cal`)
    #[arg(long, num_args = 1.., required = true)]
    pub cal: Vec<String>,
    /// Tuning drives (as `vae-ood calibrate --tune-id`); also the held-out frames for loss
    #[arg(long, num_args = 1.., required = true)]
    pub tune_id: Vec<String>,
    /// Validation OOD drives DIR[:ONSET] (as `vae-ood calibrate --val-ood`)
    #[arg(long, num_args = 1..)]
    pub val_ood: Vec<String>,
    /// Selection inputs (as `vae-ood eval --input`, PATH=TYPE): validation drives of every OOD
    /// type; the AUROC budget is checked on these. Without them the test inputs decide, which
    /// is tuning to the test set (a warning says so)
    #[arg(long, num_args = 1..)]
    pub select: Vec<String>,
    /// Held-out test inputs (as `vae-ood eval --input`, PATH=TYPE), labelled by --label-topic:
    /// reported, and deciding only when --select is not given
    #[arg(long, num_args = 1.., required = true)]
    pub test: Vec<String>,
    #[arg(long, default_value = "/ood_label")]
    pub label_topic: String,
    /// Largest AUROC drop (absolute, CUSUM statistic) allowed in any OOD partition
    #[arg(long, default_value_t = 0.02)]
    pub auroc_drop: f64,
    /// Latency limit for the selected encoder (p50, ms)
    #[arg(long, default_value_t = f64::INFINITY)]
    pub deadline_ms: f64,
    /// Timed encodes per candidate in the common latency run
    #[arg(long, default_value_t = 300)]
    pub bench_frames: usize,
    /// Fine-tuning frames; by default the teacher's own training drives (training.json)
    #[arg(long, num_args = 1..)]
    pub finetune_drives: Option<Vec<PathBuf>>,
    /// Fine-tuning epochs (default: 8 quick, 15 full)
    #[arg(long)]
    pub finetune_epochs: Option<usize>,
    #[arg(long, default_value_t = 1e-3)]
    pub finetune_lr: f64,
    /// Students distilled from scratch: own (their calibration chooses their window and decay)
    /// or teacher (they keep the teacher's, as pruned candidates do, and only the threshold is
    /// derived again: a drop-in replacement)
    #[arg(long, default_value = "own")]
    pub student_pipeline: StudentPipeline,
    /// Backend every candidate is scored and timed on: tract (CPU), cuda (NVIDIA GPU; a build
    /// with the `cuda` feature) or auto
    #[arg(long, default_value = "tract")]
    pub backend: vae_ood_core::encoder::BackendKind,
    #[arg(long)]
    pub quiet: bool,
}

impl CompressArgs {
    pub fn options(&self) -> Options {
        let epochs = self.finetune_epochs.unwrap_or(match self.budget {
            Budget::Quick => 8,
            Budget::Full => 15,
        });
        Options {
            teacher: self.teacher.clone(),
            out: self.out.clone(),
            budget: self.budget,
            only: self.only.clone(),
            finetune: FinetuneOptions {
                epochs,
                lr: self.finetune_lr,
                ..Default::default()
            },
            finetune_drives: self.finetune_drives.clone(),
            student_pipeline: self.student_pipeline,
            fit: self.fit.clone(),
            cal: self.cal.clone(),
            tune_id: self.tune_id.clone(),
            val_ood: self.val_ood.clone(),
            select: self.select.clone(),
            test: self.test.clone(),
            label_topic: self.label_topic.clone(),
            auroc_drop: self.auroc_drop,
            deadline_ms: self.deadline_ms,
            bench_frames: self.bench_frames,
            backend: self.backend,
            quiet: self.quiet,
        }
    }
}

pub fn run(args: &CompressArgs) -> Result<()> {
    if args.select.is_empty() {
        eprintln!("warning: no --select inputs: the AUROC budget is checked on the --test inputs, so they choose the student as well as judge it");
    }
    let r = sweep::run(&args.options())?;
    println!(
        "{:<28} {:>9} {:>8} {:>9}  CUSUM AUROC per partition  verdict",
        "candidate", "p50 ms", "speed-up", "MACs"
    );
    for row in &r.rows {
        let a: Vec<String> = row
            .result
            .auroc_cusum
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        println!(
            "{:<28} {:9.3} {:7.2}x {:9}  {}  {}",
            row.result.spec.name,
            row.p50_ms,
            row.speedup,
            row.result.macs,
            a.join(", "),
            row.verdict
        );
    }
    match &r.selected {
        Some(s) => println!(
            "selected {s}: calibrated bundle in {}",
            args.out
                .join("candidates")
                .join(s)
                .join("calibrated")
                .display()
        ),
        None => println!("no candidate within the AUROC budget and deadline"),
    }
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}
