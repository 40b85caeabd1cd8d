//! `vae-ood train`: its arguments, and the architecture and outcome it prints.

use anyhow::Result;
use std::path::PathBuf;
use vae_ood_core::flow::FlowSpec;
use vae_ood_core::preprocess::Filter;
use vae_ood_tools::train::{self, ArchOverrides, Distill, Preset, RunOptions, TrainConfig};

/// Train a β-VAE detector on driving data (image folders or rosbag2 bags), write the full VAE,
/// the ONNX encoder in a detector bundle, metrics and a loss curve. Calibrate the bundle with
/// `vae-ood calibrate` before deploying it.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Training drives (image folders or bags); repeat the flag or list several.
    #[arg(long, num_args = 1.., required = true)]
    pub train: Vec<PathBuf>,
    /// Validation drives for early stopping, disjoint from the training drives.
    #[arg(long, num_args = 1.., required = true)]
    pub val: Vec<PathBuf>,
    /// Output directory: bundle, vae.bpk, training.json, metrics, loss.png, checkpoint/.
    #[arg(long)]
    pub out: PathBuf,
    /// Which detector: `image` (the β-VAE on single frames) or `flow` (the optical-flow VAE on
    /// stacks of Farnebäck flow between consecutive frames, two branches).
    #[arg(long, value_enum, default_value_t = DetectorKind::Image)]
    pub detector: DetectorKind,
    /// Preset: small (default image detector), paper (224x224, the paper's sizes), tiny, flow
    /// (default flow detector).
    #[arg(long)]
    pub preset: Option<String>,
    /// Override the preset's latent size.
    #[arg(long)]
    pub latents: Option<usize>,
    /// Override the preset's conv widths, e.g. 32,32,16,16.
    #[arg(long, value_delimiter = ',')]
    pub conv: Option<Vec<usize>>,
    /// Override the preset's dense widths, e.g. 256,128.
    #[arg(long, value_delimiter = ',')]
    pub dense: Option<Vec<usize>>,
    /// Override the input size, WIDTHxHEIGHT.
    #[arg(long, value_parser = crate::common::parse_size)]
    pub input: Option<(usize, usize)>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Initial learning rate (Adam); decays along a cosine to --lr-min.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 1e-5)]
    pub lr_min: f64,
    /// Weight of the KL term.
    #[arg(long)]
    pub beta: Option<f64>,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// Write a checkpoint every N epochs (and at the end).
    #[arg(long, default_value_t = 1)]
    pub checkpoint_every: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Use every n-th frame of each drive (neighbouring frames are nearly identical).
    #[arg(long, default_value_t = 2)]
    pub frame_stride: usize,
    /// Resampling filter from camera frame to encoder input: area (box average) or bilinear.
    #[arg(long, default_value = "area")]
    pub filter: Filter,
    /// Continue the run whose checkpoint is in OUT/checkpoint (same arguments).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many epochs in total, checkpointed, as if interrupted; continue with
    /// --resume (time-boxed training).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Distil from this teacher (a `vae-ood train` output directory): the paper's student loss.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Weight of the teacher's reconstruction in the distillation loss (the paper's a).
    #[arg(long, default_value_t = 0.7)]
    pub kd_alpha: f64,
    /// Weight of matching the teacher's (mu, logvar), 0 to leave the latent space free.
    #[arg(long, default_value_t = 0.0)]
    pub kd_latent: f64,
    /// Bundle name (default bvae-PRESET).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectorKind {
    Image,
    Flow,
}

impl TrainArgs {
    pub fn config(&self) -> Result<TrainConfig> {
        let name = self.preset.clone().unwrap_or_else(|| {
            match self.detector {
                DetectorKind::Image => "small",
                DetectorKind::Flow => "flow",
            }
            .into()
        });
        let preset = Preset::named(&name)?;
        let arch = preset.arch_with(&ArchOverrides {
            latents: self.latents,
            conv: self.conv.clone(),
            dense: self.dense.clone(),
            input: self.input,
        });
        Ok(TrainConfig {
            preset: name,
            arch,
            beta: self.beta.unwrap_or(preset.beta),
            epochs: self.epochs.unwrap_or(preset.epochs),
            batch_size: self.batch_size.unwrap_or(preset.batch_size),
            lr: self.lr.unwrap_or(preset.lr),
            lr_min: self.lr_min,
            patience: self.patience,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            frame_stride: self.frame_stride,
            filter: self.filter,
            train: self.train.clone(),
            val: self.val.clone(),
            distill: self.teacher.as_ref().map(|t| Distill {
                teacher: t.clone(),
                alpha: self.kd_alpha,
                latent_weight: self.kd_latent,
            }),
            flow: (self.detector == DetectorKind::Flow).then_some(FlowSpec::REFERENCE),
        })
    }

    pub fn options(&self) -> RunOptions {
        RunOptions {
            resume: self.resume,
            stop_after: self.stop_after,
            quiet: self.quiet,
            name: self.name.clone(),
        }
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let config = args.config()?;
    let outcome = train::train(&config, &args.out, &args.options())?;
    let s = &outcome.state;
    let costs = config.arch.layer_costs();
    println!("{:<10} {:>10} {:>12}", "layer", "params", "MACs/frame");
    for c in &costs {
        println!("{:<10} {:>10} {:>12}", c.name, c.params, c.macs);
    }
    println!(
        "{:<10} {:>10} {:>12}",
        "encoder",
        costs.iter().map(|c| c.params).sum::<usize>(),
        costs.iter().map(|c| c.macs).sum::<usize>()
    );
    match &outcome.bundle {
        Some(dir) => println!(
            "trained {} epochs in {:.0} s; best validation loss {:.2} at epoch {}\nbundle {} (uncalibrated: run `vae-ood calibrate --bundle {} ...` next)",
            s.history.len(),
            outcome.seconds,
            s.best_val_loss,
            s.best_epoch.unwrap_or(0),
            dir.display(),
            dir.display()
        ),
        None => println!(
            "stopped after {} epochs (checkpointed); continue with the same arguments plus --resume",
            s.history.len()
        ),
    }
    Ok(())
}
