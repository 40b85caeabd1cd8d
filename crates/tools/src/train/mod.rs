//! `vae-ood train`: trains β-VAE detectors of the paper's family with burn on the CPU.
//!
//! Loss BCE(sum) + β·KL (the paper's), Adam with a cosine learning-rate schedule, early stopping
//! on the validation drives' loss, a checkpoint every few epochs that `--resume` continues from
//! bit for bit, and at the end: the full VAE (encoder and decoder, for distillation and
//! fine-tuning), the ONNX encoder in a detector bundle, metrics CSV/JSON and a loss-curve PNG.
//!
//! Reproducibility: the shuffling and the reparameterisation noise come from our own seeded
//! generator, keyed by epoch, never from the device; a resumed run therefore sees exactly the
//! batches and noise the uninterrupted run would have.

pub mod data;
pub mod model;

use crate::onnx_gen::{encoder_onnx, EncoderArch, GraphNames, Named};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use data::FrameSet;
use indicatif::{ProgressBar, ProgressStyle};
use model::{losses, Vae};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vae_ood_core::bundle::{Bundle, Manifest, OutputRef, Outputs, Provenance};
use vae_ood_core::preprocess::InputSpec;

/// Everything that determines a training run. Stored with checkpoints and the trained model; a
/// resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub preset: String,
    pub arch: EncoderArch,
    /// Weight of the KL term (the paper's β).
    pub beta: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Initial learning rate, decayed along a cosine to `lr_min` over `epochs`.
    pub lr: f64,
    pub lr_min: f64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    /// Use every n-th frame of each drive: neighbouring frames of a 15 fps drive are nearly
    /// identical, so this buys epochs, not information loss.
    pub frame_stride: usize,
    /// Resampling filter from camera frame to encoder input, recorded in the bundle so the node
    /// resizes the same way. `area` averages away detail finer than an input pixel; `bilinear`
    /// (OpenCV's INTER_LINEAR) keeps some of it, aliased.
    #[serde(default = "default_filter")]
    pub filter: vae_ood_core::preprocess::Filter,
    pub train: Vec<PathBuf>,
    pub val: Vec<PathBuf>,
    /// Knowledge distillation from a trained teacher (the paper's students).
    #[serde(default)]
    pub distill: Option<Distill>,
    /// Train the optical-flow detector on these flow stacks (`--detector flow`) instead of
    /// the image detector on frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<vae_ood_core::flow::FlowSpec>,
}

/// Runs recorded before `filter` existed used the area filter.
fn default_filter() -> vae_ood_core::preprocess::Filter {
    vae_ood_core::preprocess::Filter::Area
}

/// The paper's distillation loss: (1 - alpha)(BCE + β·KL) + alpha·BCE(student output, teacher
/// output), plus optionally `latent_weight` times the squared distance between the student's
/// and the teacher's (mu, logvar), which ties the student's latent space (and so its KL
/// score) to the teacher's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distill {
    /// A `vae-ood train` output directory (its `vae.bpk` and `training.json`).
    pub teacher: PathBuf,
    pub alpha: f64,
    pub latent_weight: f64,
}

/// Architecture and optimiser defaults of a preset.
pub struct Preset {
    pub arch: EncoderArch,
    pub beta: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
}

/// What a command line may change of a preset's architecture.
#[derive(Debug, Clone, Default)]
pub struct ArchOverrides {
    pub latents: Option<usize>,
    pub conv: Option<Vec<usize>>,
    pub dense: Option<Vec<usize>>,
    /// (width, height)
    pub input: Option<(usize, usize)>,
}

impl Preset {
    /// The preset `name`, or an error listing the presets.
    pub fn named(name: &str) -> Result<Self, crate::Error> {
        Self::get(name).ok_or_else(|| {
            crate::Error::Input(format!(
                "unknown preset '{name}' (expected {})",
                Self::NAMES
            ))
        })
    }

    /// The preset's architecture with `o` applied.
    pub fn arch_with(&self, o: &ArchOverrides) -> EncoderArch {
        let mut arch = self.arch.clone();
        if let Some(l) = o.latents {
            arch.latents = l;
        }
        if let Some(c) = &o.conv {
            arch.conv = c.clone();
        }
        if let Some(d) = &o.dense {
            arch.dense = d.clone();
        }
        if let Some((w, h)) = o.input {
            arch.input_width = w;
            arch.input_height = h;
        }
        arch
    }
}

impl Preset {
    /// `small` (the default: trains on a 2-core CPU in well under an hour and is the teacher
    /// for compression), `paper` (the paper's 224x224 detector and optimiser), `tiny` (tests).
    pub fn get(name: &str) -> Option<Self> {
        Some(match name {
            "small" => Self {
                arch: EncoderArch::small(),
                beta: 1.4,
                epochs: 30,
                batch_size: 32,
                lr: 1e-3,
            },
            "paper" => Self {
                arch: EncoderArch::paper(),
                beta: 1.4,
                epochs: 100,
                batch_size: 32,
                lr: 1e-5,
            },
            "tiny" => Self {
                arch: EncoderArch::tiny(),
                beta: 1.4,
                epochs: 20,
                batch_size: 32,
                lr: 1e-3,
            },
            // The flow detector's two branches (`--detector flow`).
            "flow" => Self {
                arch: EncoderArch::flow(vae_ood_core::flow::FlowStack::REFERENCE_DEPTH),
                beta: 1.0,
                epochs: 20,
                batch_size: 16,
                lr: 1e-3,
            },
            _ => return None,
        })
    }

    pub const NAMES: &'static str = "small, paper, tiny, flow";
}

impl TrainConfig {
    /// The model input the node will feed this detector: the whole frame stretched to the
    /// encoder's size, RGB in [0, 1] (BCE needs targets in [0, 1], so no normalisation).
    pub fn input_spec(&self) -> InputSpec {
        InputSpec {
            width: self.arch.input_width as u32,
            height: self.arch.input_height as u32,
            channel_order: vae_ood_core::preprocess::ChannelOrder::Rgb,
            layout: vae_ood_core::preprocess::Layout::Nchw,
            normalize: Default::default(),
            resize: vae_ood_core::preprocess::ResizeMode::Stretch,
            filter: self.filter,
        }
    }

    fn lr_at(&self, epoch: usize) -> f64 {
        let t = epoch as f64 / self.epochs.max(1) as f64;
        self.lr_min + 0.5 * (self.lr - self.lr_min) * (1.0 + (std::f64::consts::PI * t).cos())
    }

    fn validate(&self) -> Result<(), crate::Error> {
        if self.train.is_empty() {
            return Err(crate::Error::Train(
                "no training drives: pass --train DRIVE (image folder or bag)".into(),
            ));
        }
        if self.val.is_empty() {
            return Err(crate::Error::Train(
                "no validation drives: pass --val DRIVE (early stopping needs held-out drives)"
                    .into(),
            ));
        }
        if let Some(d) = self.train.iter().find(|d| self.val.contains(d)) {
            return Err(crate::Error::Train(format!(
                "{} is both a training and a validation drive; splits must be disjoint by drive",
                d.display()
            )));
        }
        if self.epochs == 0
            || self.batch_size == 0
            || self.checkpoint_every == 0
            || self.frame_stride == 0
        {
            return Err(crate::Error::Train(
                "epochs, batch size, checkpoint interval and frame stride must be at least 1"
                    .into(),
            ));
        }
        // Finite and bounded: an infinite rate or weight gives NaN losses, which surfaced only
        // epochs later as a missing best.bpk.
        if !(self.lr > 0.0 && self.lr <= 1.0 && self.lr_min >= 0.0 && self.lr_min <= self.lr) {
            return Err(crate::Error::Train(format!(
                "learning rates must satisfy 0 <= lr_min ({}) <= lr ({}), 0 < lr <= 1",
                self.lr_min, self.lr
            )));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(crate::Error::Train(format!(
                "beta must be finite and >= 0, got {}",
                self.beta
            )));
        }
        if let Some(d) = &self.distill {
            if !(0.0..=1.0).contains(&d.alpha)
                || !d.latent_weight.is_finite()
                || d.latent_weight < 0.0
            {
                return Err(crate::Error::Train(format!(
                    "distillation needs 0 <= alpha <= 1 and latent weight >= 0, got {} and {}",
                    d.alpha, d.latent_weight
                )));
            }
        }
        self.arch
            .check_groups()
            .map_err(|e| crate::Error::Train(e.to_string()))?;
        if let Some(f) = &self.flow {
            f.validate()
                .map_err(|e| crate::Error::Train(format!("flow: {e}")))?;
            let want = f.encoder_shape();
            let a = &self.arch;
            if [1, a.input_channels, a.input_height, a.input_width] != want || a.groups != 2 {
                return Err(crate::Error::Train(format!(
                    "the flow detector's encoder reads {want:?} in 2 branches; the architecture has {} channels of {}x{} in {} (use --preset flow)",
                    a.input_channels, a.input_width, a.input_height, a.groups
                )));
            }
        } else if self.arch.groups != 1 {
            return Err(crate::Error::Train(format!(
                "an image detector has one branch; this architecture has {} (the flow preset needs --detector flow)",
                self.arch.groups
            )));
        }
        if self.arch.conv.is_empty() || self.arch.latents == 0 {
            return Err(crate::Error::Train(
                "the architecture needs at least one conv layer and one latent".into(),
            ));
        }
        // Widths of zero make layers of nothing; the bounds keep a typo from allocating the
        // machine away (the paper's largest layer is 2048 wide, its input 224x224).
        let widths = self.arch.conv.iter().chain(&self.arch.dense);
        if widths.clone().any(|&w| w == 0 || w > 8192)
            || self.arch.latents > 4096
            || !(8..=2048).contains(&self.arch.input_width)
            || !(8..=2048).contains(&self.arch.input_height)
        {
            return Err(crate::Error::Train(format!(
                "architecture out of range: conv {:?} and dense {:?} widths must be 1..=8192, \
                 latents 1..=4096 (got {}), input 8..=2048 pixels a side (got {}x{})",
                self.arch.conv,
                self.arch.dense,
                self.arch.latents,
                self.arch.input_width,
                self.arch.input_height
            )));
        }
        Ok(())
    }
}

/// One epoch's losses, per frame (means over frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_bce: f64,
    pub train_kl: f64,
    pub val_loss: f64,
    pub val_bce: f64,
    pub val_kl: f64,
    pub seconds: f64,
}

/// The training run's progress, written with every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub config: TrainConfig,
    pub history: Vec<EpochRecord>,
    pub best_epoch: Option<usize>,
    pub best_val_loss: f64,
    pub finished: bool,
}

/// Options that do not change the result.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from `out/checkpoint` (config must match).
    pub resume: bool,
    /// Stop, as if interrupted, after this many epochs in total (checkpointing first).
    pub stop_after: Option<usize>,
    pub quiet: bool,
    /// Bundle name; defaults to `bvae-<preset>`.
    pub name: Option<String>,
}

/// What a finished (or stopped) run leaves.
pub struct TrainOutcome {
    pub state: TrainState,
    /// The bundle directory (`out`), once training finished.
    pub bundle: Option<PathBuf>,
    pub seconds: f64,
}

const CHECKPOINT: &str = "checkpoint";
/// The trained VAE (encoder and decoder) in burn's burnpack format, and its description.
pub const VAE_FILE: &str = "vae.bpk";
pub const VAE_CONFIG_FILE: &str = "training.json";

/// Trains per `config`, writing everything under `out`.
pub fn train(
    config: &TrainConfig,
    out: &Path,
    opts: &RunOptions,
) -> Result<TrainOutcome, crate::Error> {
    config.validate()?;
    let started = Instant::now();
    let ckpt = out.join(CHECKPOINT);
    std::fs::create_dir_all(&ckpt)
        .map_err(|e| crate::Error::Train(format!("{}: {e}", ckpt.display())))?;
    let io =
        |p: &Path, e: &dyn std::fmt::Display| crate::Error::Train(format!("{}: {e}", p.display()));

    let device = Device::flex().autodiff();
    let mut model = init_model(config, &device);
    let mut optim = AdamConfig::new().init();
    let mut state = TrainState {
        config: config.clone(),
        history: vec![],
        best_epoch: None,
        best_val_loss: f64::INFINITY,
        finished: false,
    };
    let state_path = ckpt.join("state.json");
    if opts.resume {
        let text = std::fs::read_to_string(&state_path).map_err(|e| {
            crate::Error::Train(format!(
                "{}: {e} (nothing to resume: run without --resume)",
                state_path.display()
            ))
        })?;
        state = serde_json::from_str(&text).map_err(|e| io(&state_path, &e))?;
        if state.config != *config {
            return Err(crate::Error::Train(format!(
                "{}: the checkpoint was made with another configuration; resume with the same arguments, or start afresh without --resume\n  checkpoint: {}\n  now:        {}",
                state_path.display(),
                serde_json::to_string(&state.config).unwrap_or_default(),
                serde_json::to_string(config).unwrap_or_default()
            )));
        }
        model = model
            .try_load_file(ckpt.join("model.bpk"))
            .map_err(|e| io(&ckpt.join("model.bpk"), &e))?;
        optim = optim
            .load(ckpt.join("optim.bpk"))
            .map_err(|e| io(&ckpt.join("optim.bpk"), &e))?;
    } else if state_path.exists() {
        return Err(crate::Error::Train(format!(
            "{} holds a checkpoint: continue it with --resume, or choose another --out",
            ckpt.display()
        )));
    }

    let teacher = match &config.distill {
        None => None,
        Some(d) => {
            let (t, ts) = load_vae(&d.teacher, &Device::flex())?;
            let (ta, a) = (&ts.config.arch, &config.arch);
            if (ta.input_channels, ta.input_height, ta.input_width)
                != (a.input_channels, a.input_height, a.input_width)
            {
                return Err(crate::Error::Train(format!(
                    "teacher {} takes {}x{}x{} frames, the student {}x{}x{}: distillation compares their reconstructions, so the input sizes must match",
                    d.teacher.display(), ta.input_width, ta.input_height, ta.input_channels, a.input_width, a.input_height, a.input_channels
                )));
            }
            if d.latent_weight > 0.0 && ta.latents != a.latents {
                return Err(crate::Error::Train(format!(
                    "teacher has {} latents, the student {}: latent matching needs the same number",
                    ta.latents, a.latents
                )));
            }
            Some((t.valid(), ts.config.arch.clone(), d.clone()))
        }
    };

    let spec = config.input_spec();
    let total = data::count_frames(&config.train) + data::count_frames(&config.val);
    let bar = progress(opts.quiet, total, "loading frames");
    let load = |drives: &[PathBuf]| match &config.flow {
        None => FrameSet::load(drives, &spec, config.frame_stride, &|| bar.inc(1)),
        Some(f) => FrameSet::load_flow(drives, f, config.frame_stride, &|| bar.inc(1)),
    };
    let train_set = load(&config.train)?;
    let val_set = load(&config.val)?;
    bar.finish_and_clear();
    if !opts.quiet {
        eprintln!(
            "training on {} frames ({} drives), validating on {} frames ({} drives)",
            train_set.len(),
            config.train.len(),
            val_set.len(),
            config.val.len()
        );
    }
    let val_eps = normal(
        &mut ChaCha8Rng::seed_from_u64(config.seed ^ 0x5641_4c5f_4550_5300),
        val_set.len() * config.arch.latents,
    );

    let batches = train_set.len().div_ceil(config.batch_size) as u64;
    while !state.finished {
        let epoch = state.history.len();
        if epoch >= config.epochs || opts.stop_after.is_some_and(|n| epoch >= n) {
            break;
        }
        let t0 = Instant::now();
        let lr = config.lr_at(epoch);
        let bar = progress(
            opts.quiet,
            batches,
            &format!("epoch {}/{}", epoch + 1, config.epochs),
        );
        let mut rng =
            ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(epoch as u64 * 0x9E37_79B9));
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rng);
        let (mut sum_bce, mut sum_kl) = (0.0, 0.0);
        for idx in order.chunks(config.batch_size) {
            let shape = x_shape(idx.len(), &config.arch);
            let batch = train_set.gather(idx);
            let x = to(&batch, &shape, &device);
            let eps = Tensor::<2>::from_data(
                TensorData::new(
                    normal(&mut rng, idx.len() * config.arch.latents),
                    [idx.len(), config.arch.latents],
                ),
                &device,
            );
            let out = model.forward(x.clone(), eps.clone(), &config.arch);
            let l = losses(&out, x);
            let (bce, kl) = (sum_of(&l.bce), sum_of(&l.kl));
            sum_bce += bce;
            sum_kl += kl;
            let mut loss = l.bce + l.kl.mul_scalar(config.beta);
            if let Some((t, t_arch, d)) = &teacher {
                // The teacher sees the same frames and noise; its outputs are constants here.
                let plain = Device::flex();
                let t_out = t.forward(to(&batch, &shape, &plain), to_dev(&eps, &plain), t_arch);
                let target = burn::tensor::activation::sigmoid(t_out.recon_logits);
                let kd = model::bce_with_logits(out.recon_logits.clone(), to_dev(&target, &device));
                loss = loss.mul_scalar(1.0 - d.alpha) + kd.mul_scalar(d.alpha);
                if d.latent_weight > 0.0 {
                    let dist = model::posterior_distance(
                        &out,
                        to_dev(&t_out.mu, &device),
                        to_dev(&t_out.logvar, &device),
                    );
                    loss = loss + dist.mul_scalar(d.latent_weight);
                }
            }
            let loss = loss.mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.1}",
                (bce + config.beta * kl) / idx.len() as f64
            ));
        }
        bar.finish_and_clear();
        let n = train_set.len() as f64;
        let (val_bce, val_kl) = evaluate(&model.valid(), &val_set, &val_eps, config);
        let rec = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: (sum_bce + config.beta * sum_kl) / n,
            train_bce: sum_bce / n,
            train_kl: sum_kl / n,
            val_loss: val_bce + config.beta * val_kl,
            val_bce,
            val_kl,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if !opts.quiet {
            eprintln!(
                "epoch {:>3}/{}  lr {:.2e}  train {:.2} (bce {:.2}, kl {:.2})  val {:.2}  {:.1} s",
                rec.epoch,
                config.epochs,
                lr,
                rec.train_loss,
                rec.train_bce,
                rec.train_kl,
                rec.val_loss,
                rec.seconds
            );
        }
        if rec.val_loss < state.best_val_loss {
            state.best_val_loss = rec.val_loss;
            state.best_epoch = Some(rec.epoch);
            model
                .clone()
                .save_file(ckpt.join("best.bpk"))
                .map_err(|e| io(&ckpt.join("best.bpk"), &e))?;
        }
        state.history.push(rec);
        let since_best = state.history.len() - state.best_epoch.unwrap_or(0);
        state.finished = state.history.len() >= config.epochs || since_best > config.patience;
        let stopping = opts.stop_after.is_some_and(|n| state.history.len() >= n);
        if state.finished || stopping || state.history.len().is_multiple_of(config.checkpoint_every)
        {
            model
                .clone()
                .save_file(ckpt.join("model.bpk"))
                .map_err(|e| io(&ckpt.join("model.bpk"), &e))?;
            optim
                .save(ckpt.join("optim.bpk"))
                .map_err(|e| io(&ckpt.join("optim.bpk"), &e))?;
            // The state goes last, so a checkpoint interrupted mid-write is never resumed.
            write_atomic(
                &state_path,
                &serde_json::to_vec_pretty(&state).expect("serialisable"),
            )?;
        }
    }
    write_metrics(out, &state)?;
    let mut bundle = None;
    if state.finished {
        let best = Vae::new(&config.arch, &Device::flex())
            .try_load_file(ckpt.join("best.bpk"))
            .map_err(|e| io(&ckpt.join("best.bpk"), &e))?
            .valid();
        export(&best, &state, out, opts)?;
        bundle = Some(out.to_path_buf());
    }
    Ok(TrainOutcome {
        state,
        bundle,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A freshly initialised VAE, reproducible from `config.seed`. Initialisation is the one use
/// of the device's random generator, which is global: a lock keeps concurrent runs (tests run
/// in threads) from interleaving their draws, and the lazy parameters are materialised while
/// it is held.
fn init_model(config: &TrainConfig, device: &Device) -> Vae {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(config.seed);
    let model = Vae::new(&config.arch, device);
    drop(model.clone().into_record());
    model
}

/// Loads a trained VAE written by [`train`] (its `training.json` and `vae.bpk`).
pub fn load_vae(dir: &Path, device: &Device) -> Result<(Vae, TrainState), crate::Error> {
    let cfg = dir.join(VAE_CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg).map_err(|e| {
        crate::Error::Train(format!("{}: {e} (not a training output: the full VAE comes from `vae-ood train`; an encoder-only bundle cannot be fine-tuned)", cfg.display()))
    })?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| crate::Error::Train(format!("{}: {e}", cfg.display())))?;
    let vae = Vae::new(&state.config.arch, device)
        .try_load_file(dir.join(VAE_FILE))
        .map_err(|e| crate::Error::Train(format!("{}: {e}", dir.join(VAE_FILE).display())))?;
    Ok((vae, state))
}

/// The (mean BCE, mean KL) per frame of `set` under `model` in inference mode.
pub fn evaluate(model: &Vae, set: &FrameSet, eps: &[f32], config: &TrainConfig) -> (f64, f64) {
    let device = Device::flex();
    let (mut bce, mut kl) = (0.0, 0.0);
    let l = config.arch.latents;
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(64) {
        let x = images(set, chunk, &config.arch, &device);
        let e = eps[chunk[0] * l..(chunk[0] + chunk.len()) * l].to_vec();
        let e = Tensor::<2>::from_data(TensorData::new(e, [chunk.len(), l]), &device);
        let out = model.forward(x.clone(), e, &config.arch);
        let ls = losses(&out, x);
        bce += sum_of(&ls.bce);
        kl += sum_of(&ls.kl);
    }
    let n = set.len().max(1) as f64;
    (bce / n, kl / n)
}

fn x_shape(n: usize, arch: &EncoderArch) -> [usize; 4] {
    [n, arch.input_channels, arch.input_height, arch.input_width]
}

fn images(set: &FrameSet, idx: &[usize], arch: &EncoderArch, device: &Device) -> Tensor<4> {
    to(&set.gather(idx), &x_shape(idx.len(), arch), device)
}

fn to<const D: usize>(data: &[f32], shape: &[usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), *shape), device)
}

/// A copy of `t` on `device`, outside any autodiff graph.
fn to_dev<const D: usize>(t: &Tensor<D>, device: &Device) -> Tensor<D> {
    Tensor::from_data(t.clone().into_data(), device)
}

fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

fn sum_of(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 tensor")
        .iter()
        .map(|&v| v as f64)
        .sum()
}

fn progress(quiet: bool, len: u64, prefix: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_prefix(prefix.to_string());
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader (or a
/// resumed run) never sees half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), crate::Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .map_err(|e| crate::Error::Train(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| crate::Error::Train(format!("{}: {e}", path.display())))
}

/// metrics.csv, metrics.json and loss.png from the epoch history.
fn write_metrics(out: &Path, state: &TrainState) -> Result<(), crate::Error> {
    let mut csv =
        String::from("epoch,lr,train_loss,train_bce,train_kl,val_loss,val_bce,val_kl,seconds\n");
    for r in &state.history {
        csv += &format!(
            "{},{},{},{},{},{},{},{},{:.3}\n",
            r.epoch,
            r.lr,
            r.train_loss,
            r.train_bce,
            r.train_kl,
            r.val_loss,
            r.val_bce,
            r.val_kl,
            r.seconds
        );
    }
    std::fs::write(out.join("metrics.csv"), csv)
        .map_err(|e| crate::Error::Train(format!("{}: {e}", out.display())))?;
    write_atomic(
        &out.join("metrics.json"),
        &serde_json::to_vec_pretty(state).expect("serialisable"),
    )?;
    let series = |f: fn(&EpochRecord) -> f64| {
        state
            .history
            .iter()
            .map(|r| (r.epoch as f64, f(r)))
            .collect::<Vec<_>>()
    };
    crate::plots::line_chart(
        &out.join("loss.png"),
        ("beta-VAE training loss per frame", "epoch", "BCE + beta KL"),
        &[
            ("train", series(|r| r.train_loss)),
            ("validation", series(|r| r.val_loss)),
        ],
    )
}

/// The ONNX encoder of a trained VAE, as `vae-ood train` exports it into bundle `name`.
pub fn encoder_onnx_of(vae: &Vae, state: &TrainState, name: &str) -> Result<Vec<u8>, crate::Error> {
    let best = state.best_epoch.unwrap_or(0);
    let doc = format!("beta-VAE encoder ({name}) trained by vae_ood_monitor, best epoch {best}");
    let mut weights = Named(model::encoder_weights(&vae.encoder));
    encoder_onnx(
        &state.config.arch,
        &mut weights,
        &GraphNames::default(),
        &doc,
    )
}

/// Writes the full VAE, its description and the detector bundle (ONNX encoder + manifest).
fn export(
    vae: &Vae,
    state: &TrainState,
    out: &Path,
    opts: &RunOptions,
) -> Result<(), crate::Error> {
    let cfg = &state.config;
    vae.clone()
        .save_file(out.join(VAE_FILE))
        .map_err(|e| crate::Error::Train(format!("{}: {e}", out.join(VAE_FILE).display())))?;
    write_atomic(
        &out.join(VAE_CONFIG_FILE),
        &serde_json::to_vec_pretty(state).expect("serialisable"),
    )?;
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("bvae-{}", cfg.preset));
    let best = state.best_epoch.unwrap_or(0);
    let onnx = encoder_onnx_of(vae, state, &name)?;
    let drives = |d: &[PathBuf]| {
        d.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let description = format!(
        "{}, preset {}, trained on {} drives (best validation loss {:.2} at epoch {best})",
        if cfg.flow.is_some() {
            "optical-flow VAE encoder (horizontal and vertical branches)"
        } else {
            "beta-VAE encoder"
        },
        cfg.preset,
        cfg.train.len(),
        state.best_val_loss
    );
    let outputs = Outputs {
        mu: OutputRef::Name { name: "mu".into() },
        logvar: OutputRef::Name {
            name: "logvar".into(),
        },
    };
    let detector = if cfg.flow.is_some() {
        " --detector flow"
    } else {
        ""
    };
    let provenance = Provenance {
        trained: true,
        created_by: format!(
            "vae-ood train{detector} --preset {} --seed {}",
            cfg.preset, cfg.seed
        ),
        training_data: format!(
            "train: {}; validation: {}",
            drives(&cfg.train),
            drives(&cfg.val)
        ),
        license: "Apache-2.0 (trained by this project)".into(),
        notes: format!(
            "architecture: {}; beta {}; full VAE in {VAE_FILE}, training run in {VAE_CONFIG_FILE}",
            serde_json::to_string(&cfg.arch).expect("serialisable"),
            cfg.beta
        ),
    };
    let manifest = match &cfg.flow {
        None => Manifest::for_encoder(
            &cfg.arch,
            cfg.input_spec(),
            &name,
            &description,
            outputs,
            provenance,
        ),
        Some(f) => Manifest::for_flow_encoder(
            &cfg.arch,
            f.clone(),
            &name,
            &description,
            outputs,
            provenance,
        ),
    };
    Bundle::write(out, manifest, &onnx).map_err(|e| crate::Error::Train(e.to_string()))?;
    Ok(())
}
