//! The β-VAE of the paper's family in burn: the encoder the node runs (exported to ONNX through
//! [`crate::onnx_gen`]) plus the mirrored decoder that training and distillation need.

use crate::onnx_gen::EncoderArch;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Tensor};
use std::collections::HashMap;

/// LeakyReLU slope of every hidden layer (the paper's 0.1).
const SLOPE: f64 = 0.1;

/// 3x3 conv + BatchNorm (+ LeakyReLU, MaxPool in the encoder).
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// 2x2 stride-2 transposed conv + BatchNorm + LeakyReLU: one decoder upsampling stage.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub deconv: ConvTranspose2d,
    pub bn: BatchNorm,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub convs: Vec<ConvBlock>,
    pub pool: MaxPool2d,
    pub dense: Vec<Linear>,
    pub mu: Linear,
    pub logvar: Linear,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub dense: Vec<Linear>,
    pub ups: Vec<UpBlock>,
    /// The last upsampling, to the image channels; its outputs are logits (sigmoid gives the
    /// image).
    pub out: ConvTranspose2d,
}

#[derive(Module, Debug)]
pub struct Vae {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

/// What one forward pass gives: reconstruction logits and the posterior.
pub struct VaeOutput {
    pub recon_logits: Tensor<4>,
    pub mu: Tensor<2>,
    pub logvar: Tensor<2>,
}

impl Vae {
    pub fn new(arch: &EncoderArch, device: &Device) -> Self {
        let g = arch.groups.max(1);
        let conv3 = |c_in, c_out| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_groups(g)
                .init(device)
        };
        let mut convs = vec![];
        let mut c_in = arch.input_channels;
        for &c in &arch.conv {
            convs.push(ConvBlock {
                conv: conv3(c_in, c),
                bn: BatchNormConfig::new(c).init(device),
            });
            c_in = c;
        }
        // Dense widths: flatten -> dense... -> heads; the decoder mirrors them.
        let mut widths = vec![arch.flatten_size()];
        widths.extend(&arch.dense);
        let linear = |a, b| LinearConfig::new(a, b).init(device);
        let enc_dense = widths.windows(2).map(|w| linear(w[0], w[1])).collect();
        let last = *widths.last().expect("at least the flatten width");
        let mut dec_widths: Vec<usize> = widths.iter().rev().copied().collect();
        dec_widths.insert(0, arch.latents);
        let dec_dense = dec_widths.windows(2).map(|w| linear(w[0], w[1])).collect();
        // Upsampling stages mirror the conv widths (c_last -> ... -> c_first); the last one
        // goes straight to image logits, which keeps full-resolution work small.
        let rev: Vec<usize> = arch.conv.iter().rev().copied().collect();
        let deconv = |c_in, c_out| {
            ConvTranspose2dConfig::new([c_in, c_out], [2, 2])
                .with_stride([2, 2])
                .with_groups(g)
                .init(device)
        };
        let ups = rev
            .windows(2)
            .map(|w| UpBlock {
                deconv: deconv(w[0], w[1]),
                bn: BatchNormConfig::new(w[1]).init(device),
            })
            .collect();
        let c_first = arch.conv.first().copied().unwrap_or(arch.input_channels);
        Self {
            encoder: Encoder {
                convs,
                pool: MaxPool2dConfig::new([2, 2])
                    .with_strides([2, 2])
                    .with_ceil_mode(true)
                    .init(),
                dense: enc_dense,
                mu: linear(last, arch.latents),
                logvar: linear(last, arch.latents),
            },
            decoder: Decoder {
                dense: dec_dense,
                ups,
                out: deconv(c_first, arch.input_channels),
            },
        }
    }
}

/// A dense layer of `groups` independent branches: the weight's off-diagonal blocks are masked
/// out (they get no gradient and are exported as zeros), so branch `g`'s outputs read only
/// its own inputs. One branch is a plain `Linear`.
fn dense(layer: &Linear, h: Tensor<2>, groups: usize) -> Tensor<2> {
    if groups <= 1 {
        return layer.forward(h);
    }
    let [n_in, n_out] = layer.weight.dims();
    let mask = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(block_mask(n_in, n_out, groups), [n_in, n_out]),
        &h.device(),
    );
    let y = h.matmul(layer.weight.val() * mask);
    match &layer.bias {
        Some(b) => y + b.val().unsqueeze(),
        None => y,
    }
}

/// 1 where input `i` and output `o` of an [in, out] weight belong to the same branch.
fn block_mask(n_in: usize, n_out: usize, groups: usize) -> Vec<f32> {
    let (bi, bo) = (n_in / groups, n_out / groups);
    (0..n_in)
        .flat_map(|i| (0..n_out).map(move |o| f32::from(u8::from(i / bi == o / bo))))
        .collect()
}

impl Encoder {
    /// Branches of the model (the first convolution's groups).
    pub fn groups(&self) -> usize {
        self.convs.first().map_or(1, |b| b.conv.groups)
    }

    /// `x`: [batch, channels, height, width] in [0, 1]. Returns (mu, logvar).
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let g = self.groups();
        let mut x = x;
        for block in &self.convs {
            x = self
                .pool
                .forward(leaky_relu(block.bn.forward(block.conv.forward(x)), SLOPE));
        }
        let mut h: Tensor<2> = x.flatten(1, 3);
        for layer in &self.dense {
            h = leaky_relu(dense(layer, h, g), SLOPE);
        }
        (dense(&self.mu, h.clone(), g), dense(&self.logvar, h, g))
    }
}

impl Decoder {
    /// `z`: [batch, latents]. Returns logits of shape [batch, channels, height, width].
    pub fn forward(&self, z: Tensor<2>, arch: &EncoderArch) -> Tensor<4> {
        let mut h = z;
        for layer in &self.dense {
            h = leaky_relu(dense(layer, h, arch.groups), SLOPE);
        }
        let (hc, wc) = arch.conv_output_hw();
        let c_last = arch.conv.last().copied().unwrap_or(arch.input_channels);
        let batch = h.dims()[0];
        let mut x: Tensor<4> = h.reshape([batch, c_last, hc, wc]);
        for up in &self.ups {
            x = leaky_relu(up.bn.forward(up.deconv.forward(x)), SLOPE);
        }
        let x = self.out.forward(x);
        // Ceil-mode pooling can round odd sizes up: crop back to the input size.
        x.narrow(2, 0, arch.input_height)
            .narrow(3, 0, arch.input_width)
    }
}

impl Vae {
    /// One pass with the reparameterisation z = mu + exp(logvar / 2) * eps; `eps` is passed in
    /// (not drawn from the device) so that runs and resumed runs are reproducible.
    pub fn forward(&self, x: Tensor<4>, eps: Tensor<2>, arch: &EncoderArch) -> VaeOutput {
        let (mu, logvar) = self.encoder.forward(x);
        let z = mu.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
        VaeOutput {
            recon_logits: self.decoder.forward(z, arch),
            mu,
            logvar,
        }
    }
}

/// Per-sample losses of a batch, each [batch]: BCE summed over pixels, KL summed over latents.
pub struct Losses {
    pub bce: Tensor<1>,
    pub kl: Tensor<1>,
}

/// BCE(sum) between the reconstruction and the target image, computed from logits in the
/// stable form max(x, 0) - x * t + log(1 + exp(-|x|)); KL of N(mu, exp(logvar)) to N(0, I).
pub fn losses(out: &VaeOutput, target: Tensor<4>) -> Losses {
    let bce = bce_with_logits(out.recon_logits.clone(), target);
    let kl = (out.mu.clone().square() + out.logvar.clone().exp() - out.logvar.clone())
        .sub_scalar(1.0)
        .mul_scalar(0.5)
        .sum_dim(1)
        .squeeze_dim(1);
    Losses { bce, kl }
}

/// Per-sample BCE (summed over pixels) of `logits` against targets in [0, 1]: the image for
/// the VAE loss, the teacher's reconstruction for distillation.
pub fn bce_with_logits(logits: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    let x = logits;
    let bce = x.clone().clamp_min(0.0) - x.clone() * target + x.abs().neg().exp().log1p();
    bce.flatten::<2>(1, 3).sum_dim(1).squeeze_dim(1)
}

/// Per-sample squared distance between two posteriors' (mu, logvar).
pub fn posterior_distance(a: &VaeOutput, b_mu: Tensor<2>, b_logvar: Tensor<2>) -> Tensor<1> {
    let d = (a.mu.clone() - b_mu).square() + (a.logvar.clone() - b_logvar).square();
    d.sum_dim(1).squeeze_dim(1)
}

/// The encoder's tensors by their ONNX (PyTorch state-dict) names, ready for
/// [`crate::onnx_gen::Named`]. Linear weights are transposed to PyTorch's [out, in].
pub fn encoder_weights(enc: &Encoder) -> HashMap<String, Vec<f32>> {
    fn v<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .try_to_vec::<f32>()
            .expect("float tensors hold f32")
    }
    let mut w = HashMap::new();
    for (i, b) in enc.convs.iter().enumerate() {
        w.insert(format!("conv{i}.weight"), v(b.conv.weight.val()));
        if let Some(bias) = &b.conv.bias {
            w.insert(format!("conv{i}.bias"), v(bias.val()));
        }
        w.insert(format!("bn{i}.weight"), v(b.bn.gamma.val()));
        w.insert(format!("bn{i}.bias"), v(b.bn.beta.val()));
        w.insert(format!("bn{i}.running_mean"), v(b.bn.running_mean.value()));
        w.insert(format!("bn{i}.running_var"), v(b.bn.running_var.value()));
    }
    let g = enc.groups();
    let mut linear = |name: String, l: &Linear| {
        let [n_in, n_out] = l.weight.dims();
        let mut t = v(l.weight.val().transpose());
        crate::onnx_gen::block_diagonal(&mut t, n_out, n_in, g);
        w.insert(format!("{name}.weight"), t);
        if let Some(bias) = &l.bias {
            w.insert(format!("{name}.bias"), v(bias.val()));
        }
    };
    for (i, l) in enc.dense.iter().enumerate() {
        linear(format!("fc{i}"), l);
    }
    linear("mu".into(), &enc.mu);
    linear("logvar".into(), &enc.logvar);
    w
}

/// The inverse of [`encoder_weights`]: an encoder of `arch` on `device` holding the tensors of
/// `w` (PyTorch names, as [`crate::onnx_gen::read_encoder`] gives them). This is how a pruned
/// encoder comes back into burn to be fine-tuned.
pub fn encoder_from_weights(
    arch: &EncoderArch,
    w: &HashMap<String, Vec<f32>>,
    device: &Device,
) -> Result<Encoder, crate::Error> {
    use burn::module::{Param, RunningState};
    use burn::tensor::TensorData;
    fn t<const D: usize>(
        w: &HashMap<String, Vec<f32>>,
        name: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, crate::Error> {
        let v = w
            .get(name)
            .ok_or_else(|| crate::Error::Train(format!("weights have no tensor '{name}'")))?;
        if v.len() != shape.iter().product::<usize>() {
            return Err(crate::Error::Train(format!(
                "tensor '{name}' has {} values, the architecture needs {shape:?}",
                v.len()
            )));
        }
        Ok(Tensor::from_data(TensorData::new(v.clone(), shape), device))
    }
    let mut enc = Vae::new(arch, device).encoder;
    let mut c_in = arch.input_channels;
    let g = arch.groups.max(1);
    for (i, (b, &c)) in enc.convs.iter_mut().zip(&arch.conv).enumerate() {
        b.conv.weight = Param::from_tensor(t(
            w,
            &format!("conv{i}.weight"),
            [c, c_in / g, 3, 3],
            device,
        )?);
        b.conv.bias = Some(Param::from_tensor(t(
            w,
            &format!("conv{i}.bias"),
            [c],
            device,
        )?));
        b.bn.gamma = Param::from_tensor(t(w, &format!("bn{i}.weight"), [c], device)?);
        b.bn.beta = Param::from_tensor(t(w, &format!("bn{i}.bias"), [c], device)?);
        b.bn.running_mean = RunningState::new(t(w, &format!("bn{i}.running_mean"), [c], device)?);
        b.bn.running_var = RunningState::new(t(w, &format!("bn{i}.running_var"), [c], device)?);
        c_in = c;
    }
    // PyTorch stores linear weights as [out, in], burn as [in, out].
    let linear =
        |l: &mut Linear, name: &str, d_in: usize, d_out: usize| -> Result<(), crate::Error> {
            l.weight = Param::from_tensor(
                t(w, &format!("{name}.weight"), [d_out, d_in], device)?.transpose(),
            );
            l.bias = Some(Param::from_tensor(t(
                w,
                &format!("{name}.bias"),
                [d_out],
                device,
            )?));
            Ok(())
        };
    let mut width = arch.flatten_size();
    for (i, (l, &units)) in enc.dense.iter_mut().zip(&arch.dense).enumerate() {
        linear(l, &format!("fc{i}"), width, units)?;
        width = units;
    }
    linear(&mut enc.mu, "mu", width, arch.latents)?;
    linear(&mut enc.logvar, "logvar", width, arch.latents)?;
    Ok(enc)
}
