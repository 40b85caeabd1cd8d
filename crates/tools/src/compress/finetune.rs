//! Fine-tuning a compressed encoder against its teacher: pruning-informed distillation.
//!
//! Structured pruning leaves a physically smaller encoder whose posterior drifts from the
//! teacher's. The detector's nonconformity score is the KL of that posterior, so the student is
//! trained to give the teacher's posterior on the teacher's own training frames: the loss is
//! the squared distance between the two (mu, logvar), summed over latents. Only the encoder
//! is trained (the decoder plays no part in detection), which makes fine-tuning several times
//! cheaper than training a VAE.
//!
//! The held-out loss of a candidate is the teacher's VAE loss (BCE + β·KL) with the
//! candidate's encoder in front of the teacher's decoder, decoding the posterior mean.

use crate::onnx_gen::EncoderArch;
use crate::train::data::FrameSet;
use crate::train::model::{encoder_from_weights, encoder_weights, losses, Encoder, Vae, VaeOutput};
use crate::train::{load_vae, TrainState};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;

/// Encoder tensors by PyTorch name.
pub type Weights = HashMap<String, Vec<f32>>;

/// A trained teacher: its full VAE (inference mode) and training record.
pub struct Teacher {
    pub vae: Vae,
    pub state: TrainState,
}

impl Teacher {
    /// Loads a `vae-ood train` output (or a bundle that ships `vae.bpk` and `training.json`).
    pub fn load(dir: &Path) -> Result<Self, crate::Error> {
        let (vae, state) = load_vae(dir, &Device::flex())?;
        Ok(Self { vae, state })
    }

    pub fn arch(&self) -> &EncoderArch {
        &self.state.config.arch
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FinetuneOptions {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
    /// Latents the detector scores (the teacher's selection) and how much more their
    /// posterior counts in the loss: their KL is small and its variation is the signal, so
    /// they must match far more closely than the rest.
    #[serde(default)]
    pub selected: Vec<usize>,
    #[serde(default = "default_selected_weight")]
    pub selected_weight: f64,
}

fn default_selected_weight() -> f64 {
    100.0
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        Self {
            epochs: 6,
            lr: 1e-3,
            batch_size: 64,
            seed: 1,
            selected: vec![],
            selected_weight: default_selected_weight(),
        }
    }
}

fn batch(set: &FrameSet, idx: &[usize], arch: &EncoderArch, device: &Device) -> Tensor<4> {
    let shape = [
        idx.len(),
        arch.input_channels,
        arch.input_height,
        arch.input_width,
    ];
    Tensor::from_data(TensorData::new(set.gather(idx), shape), device)
}

fn mean_of(t: Tensor<1>) -> f64 {
    let v = t.into_data().try_to_vec::<f32>().expect("f32 tensor");
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

/// Squared posterior distance per frame between `enc` and the teacher, each latent weighted by
/// `weights` (one per latent; None: all 1).
fn distance(
    enc: &Encoder,
    teacher: &Encoder,
    x: Tensor<4>,
    x_t: Tensor<4>,
    weights: Option<&[f32]>,
) -> Tensor<1> {
    let (mu, lv) = enc.forward(x);
    let (tmu, tlv) = teacher.forward(x_t);
    let device = lv.device();
    let mut d = (mu - Tensor::from_data(tmu.into_data(), &device)).square()
        + (lv - Tensor::from_data(tlv.into_data(), &device)).square();
    if let Some(w) = weights {
        let w: Tensor<2> = Tensor::from_data(TensorData::new(w.to_vec(), [1, w.len()]), &device);
        d = d * w;
    }
    d.sum_dim(1).squeeze_dim(1)
}

/// Fine-tunes the encoder (`arch`, `weights`) towards the teacher's posterior on `frames`
/// with Adam (learning rate on a cosine to a tenth). Returns the new weights and the mean
/// (weighted) training distance per epoch. Shuffling is seeded: the result is reproducible.
pub fn finetune(
    teacher: &Teacher,
    arch: &EncoderArch,
    weights: &Weights,
    frames: &FrameSet,
    opts: &FinetuneOptions,
    progress: &dyn Fn(usize, f64),
) -> Result<(Weights, Vec<f64>), crate::Error> {
    if frames.is_empty() {
        return Err(crate::Error::Train("fine-tuning needs frames".into()));
    }
    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let mut student = encoder_from_weights(arch, weights, &device)?;
    let mut optim = AdamConfig::new().init();
    let mut history = vec![];
    let mut w = vec![1f32; arch.latents];
    for &i in &opts.selected {
        if i >= arch.latents {
            return Err(crate::Error::Train(format!(
                "selected latent {i} out of range (the encoder has {})",
                arch.latents
            )));
        }
        w[i] = opts.selected_weight as f32;
    }
    for epoch in 0..opts.epochs {
        let t = epoch as f64 / opts.epochs.max(1) as f64;
        let lr = opts.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()));
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed.wrapping_add(epoch as u64 * 0x9E37_79B9));
        let mut order: Vec<usize> = (0..frames.len()).collect();
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for idx in order.chunks(opts.batch_size.max(1)) {
            let d = distance(
                &student,
                &teacher.vae.encoder,
                batch(frames, idx, arch, &device),
                batch(frames, idx, arch, &plain),
                Some(&w),
            );
            let loss = d.mean();
            sum += mean_of(loss.clone().reshape([1])) * idx.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &student);
            student = optim.step(lr, student, grads);
        }
        let mean = sum / frames.len() as f64;
        history.push(mean);
        progress(epoch + 1, mean);
    }
    Ok((encoder_weights(&student.valid()), history))
}

/// The mean over `frames` of a per-frame quantity `f(encoder, batch)` of the encoder (`arch`,
/// `weights`) in inference mode.
fn mean_per_frame(
    arch: &EncoderArch,
    weights: &Weights,
    frames: &FrameSet,
    f: &dyn Fn(&Encoder, Tensor<4>) -> Tensor<1>,
) -> Result<f64, crate::Error> {
    let device = Device::flex();
    let enc = encoder_from_weights(arch, weights, &device)?;
    let idx: Vec<usize> = (0..frames.len()).collect();
    let mut sum = 0.0;
    for chunk in idx.chunks(64) {
        sum += mean_of(f(&enc, batch(frames, chunk, arch, &device))) * chunk.len() as f64;
    }
    Ok(sum / frames.len().max(1) as f64)
}

/// Mean squared posterior distance per frame between the encoder and the teacher on `frames`
/// (inference mode).
pub fn posterior_distance(
    teacher: &Teacher,
    arch: &EncoderArch,
    weights: &Weights,
    frames: &FrameSet,
) -> Result<f64, crate::Error> {
    mean_per_frame(arch, weights, frames, &|enc, x| {
        distance(enc, &teacher.vae.encoder, x.clone(), x, None)
    })
}

/// The teacher's VAE loss per frame (BCE + β·KL) with this encoder in front of the teacher's
/// decoder, decoding the posterior mean: how much of the image the compressed posterior still
/// explains.
pub fn heldout_loss(
    teacher: &Teacher,
    arch: &EncoderArch,
    weights: &Weights,
    frames: &FrameSet,
) -> Result<f64, crate::Error> {
    let beta = teacher.state.config.beta;
    mean_per_frame(arch, weights, frames, &|enc, x| {
        let (mu, logvar) = enc.forward(x.clone());
        let out = VaeOutput {
            recon_logits: teacher.vae.decoder.forward(mu.clone(), teacher.arch()),
            mu,
            logvar,
        };
        let l = losses(&out, x);
        l.bce + l.kl.mul_scalar(beta)
    })
}

/// The teacher encoder's weights by PyTorch name.
pub fn teacher_weights(teacher: &Teacher) -> Weights {
    encoder_weights(&teacher.vae.encoder)
}
