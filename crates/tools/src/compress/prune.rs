//! Pruning of encoder weights (PyTorch state-dict names, as [`crate::onnx_gen`] writes them).
//!
//! - Global unstructured magnitude (L1) pruning zeroes the smallest weights across all conv
//!   and dense layers. The network keeps its shape, so tract runs it no faster (sparse
//!   weights buy no speed there); it measures how much of the encoder is redundant.
//! - Structured (L2) pruning removes whole conv filters or dense neurons with the smallest
//!   norm and returns a physically smaller network: that is what makes inference faster.

use crate::onnx_gen::EncoderArch;
use std::collections::HashMap;

/// Encoder tensors by name.
pub type Weights = HashMap<String, Vec<f32>>;

/// Names of the weight matrices (not biases or BatchNorm) in graph order.
fn weight_names(arch: &EncoderArch) -> Vec<String> {
    let mut names: Vec<String> = (0..arch.conv.len())
        .map(|i| format!("conv{i}.weight"))
        .collect();
    names.extend((0..arch.dense.len()).map(|i| format!("fc{i}.weight")));
    names.extend(["mu.weight".to_string(), "logvar.weight".to_string()]);
    names
}

/// Zeroes exactly `round(fraction * n)` of the `n` conv and dense weights, those of smallest
/// magnitude across all layers (ties by position). Returns how many were zeroed.
pub fn prune_global_l1(
    w: &mut Weights,
    arch: &EncoderArch,
    fraction: f64,
) -> Result<usize, crate::Error> {
    // Sparsity 1 zeroes every weight: the encoder then maps every frame to one posterior.
    if !(0.0..1.0).contains(&fraction) {
        return Err(crate::Error::Onnx(format!(
            "sparsity must be in [0, 1), got {fraction}; 1 would zero every weight"
        )));
    }
    let names = weight_names(arch);
    let mut all: Vec<(f32, usize, usize)> = vec![];
    for (t, name) in names.iter().enumerate() {
        let v = w
            .get(name)
            .ok_or_else(|| crate::Error::Onnx(format!("weights have no tensor '{name}'")))?;
        all.extend(v.iter().enumerate().map(|(i, x)| (x.abs(), t, i)));
    }
    let n = (fraction * all.len() as f64).round() as usize;
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for &(_, t, i) in &all[..n] {
        w.get_mut(&names[t]).expect("checked above")[i] = 0.0;
    }
    Ok(n)
}

/// A layer of the encoder that structured pruning can thin: `conv<i>` or `fc<i>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Conv(usize),
    Dense(usize),
}

impl std::str::FromStr for Layer {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, crate::Error> {
        let parse = |n: &str| {
            n.parse::<usize>().map_err(|_| {
                crate::Error::Input(format!("bad layer '{s}' (expected conv<i> or fc<i>)"))
            })
        };
        if let Some(n) = s.strip_prefix("conv") {
            Ok(Layer::Conv(parse(n)?))
        } else if let Some(n) = s.strip_prefix("fc") {
            Ok(Layer::Dense(parse(n)?))
        } else {
            Err(crate::Error::Input(format!(
                "bad layer '{s}' (expected conv<i> or fc<i>)"
            )))
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layer::Conv(i) => write!(f, "conv{i}"),
            Layer::Dense(i) => write!(f, "fc{i}"),
        }
    }
}

/// The units of `layer` that structured pruning at `fraction` keeps: all but the
/// `round(fraction * units)` filters (conv) or neurons (dense) of smallest L2 norm, at least
/// one, in index order.
pub fn kept_units(
    w: &Weights,
    arch: &EncoderArch,
    layer: Layer,
    fraction: f64,
) -> Result<Vec<usize>, crate::Error> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(crate::Error::Onnx(format!(
            "structured sparsity must be in [0, 1), got {fraction}; removing a whole layer changes the shapes around it and needs retraining (a distilled student)"
        )));
    }
    let (name, units) = match layer {
        Layer::Conv(i) if i < arch.conv.len() => (format!("conv{i}.weight"), arch.conv[i]),
        Layer::Dense(i) if i < arch.dense.len() => (format!("fc{i}.weight"), arch.dense[i]),
        _ => {
            return Err(crate::Error::Onnx(format!(
                "the encoder has no layer {layer}"
            )))
        }
    };
    let t = w
        .get(&name)
        .ok_or_else(|| crate::Error::Onnx(format!("weights have no tensor '{name}'")))?;
    let per = t.len() / units;
    let mut norms: Vec<(f32, usize)> = (0..units)
        .map(|u| {
            (
                t[u * per..(u + 1) * per].iter().map(|x| x * x).sum::<f32>(),
                u,
            )
        })
        .collect();
    norms.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let drop = ((fraction * units as f64).round() as usize).min(units - 1);
    let mut keep: Vec<usize> = norms[drop..].iter().map(|&(_, u)| u).collect();
    keep.sort_unstable();
    Ok(keep)
}

/// Structured pruning: removes the units of `layer` not in `keep` (see [`kept_units`]) and the
/// matching inputs of the layer after it. Returns the smaller architecture and its weights.
pub fn prune_structured(
    w: &Weights,
    arch: &EncoderArch,
    layer: Layer,
    keep: &[usize],
) -> Result<(EncoderArch, Weights), crate::Error> {
    if arch.groups > 1 {
        return Err(crate::Error::Onnx(format!(
            "structured pruning of a {}-branch encoder (the flow detector) is not supported yet: removing units must keep every branch the same width; compress it by distillation to narrower widths (vae-ood train --distill) and quantisation instead",
            arch.groups
        )));
    }
    let mut out = w.clone();
    let mut small = arch.clone();
    let get = |name: &str| {
        w.get(name)
            .ok_or_else(|| crate::Error::Onnx(format!("weights have no tensor '{name}'")))
    };
    // Rows of a [units, per] tensor.
    let rows = |t: &[f32], units: usize| -> Vec<f32> {
        let per = t.len() / units;
        keep.iter()
            .flat_map(|&u| t[u * per..(u + 1) * per].iter().copied())
            .collect()
    };
    // Input columns of a [n_out, units * block] matrix (block = spatial size for conv inputs).
    let cols = |t: &[f32], units: usize, block: usize| -> Vec<f32> {
        let n_out = t.len() / (units * block);
        let width = units * block;
        (0..n_out)
            .flat_map(|o| {
                keep.iter().flat_map(move |&u| {
                    t[o * width + u * block..o * width + (u + 1) * block]
                        .iter()
                        .copied()
                })
            })
            .collect()
    };
    let next_dense = |i: Option<usize>| -> Vec<String> {
        match i {
            Some(j) if j < arch.dense.len() => vec![format!("fc{j}.weight")],
            _ => vec!["mu.weight".into(), "logvar.weight".into()],
        }
    };
    match layer {
        Layer::Conv(i) => {
            let units = arch.conv[i];
            for p in [
                format!("conv{i}.weight"),
                format!("conv{i}.bias"),
                format!("bn{i}.weight"),
                format!("bn{i}.bias"),
                format!("bn{i}.running_mean"),
                format!("bn{i}.running_var"),
            ] {
                out.insert(p.clone(), rows(get(&p)?, units));
            }
            if i + 1 < arch.conv.len() {
                let p = format!("conv{}.weight", i + 1);
                out.insert(p.clone(), cols(get(&p)?, units, 9));
            } else {
                let (h, wd) = arch.conv_output_hw();
                for p in next_dense(Some(0)) {
                    out.insert(p.clone(), cols(get(&p)?, units, h * wd));
                }
            }
            small.conv[i] = keep.len();
        }
        Layer::Dense(i) => {
            let units = arch.dense[i];
            for p in [format!("fc{i}.weight"), format!("fc{i}.bias")] {
                out.insert(p.clone(), rows(get(&p)?, units));
            }
            for p in next_dense(Some(i + 1)) {
                out.insert(p.clone(), cols(get(&p)?, units, 1));
            }
            small.dense[i] = keep.len();
        }
    }
    Ok((small, out))
}

/// The original network with the pruned units silenced instead of removed: BatchNorm scale and
/// shift zero for conv filters (so their activations are exactly zero after BatchNorm,
/// LeakyReLU and MaxPool), weights and bias zero for dense neurons. [`prune_structured`] must
/// compute the same function; tests hold it to that.
pub fn silence_units(
    w: &Weights,
    arch: &EncoderArch,
    layer: Layer,
    keep: &[usize],
) -> Result<Weights, crate::Error> {
    let mut out = w.clone();
    let (names, units) = match layer {
        Layer::Conv(i) => (
            vec![format!("bn{i}.weight"), format!("bn{i}.bias")],
            arch.conv[i],
        ),
        Layer::Dense(i) => (
            vec![format!("fc{i}.weight"), format!("fc{i}.bias")],
            arch.dense[i],
        ),
    };
    for n in names {
        let t = out
            .get_mut(&n)
            .ok_or_else(|| crate::Error::Onnx(format!("weights have no tensor '{n}'")))?;
        let per = t.len() / units;
        for u in (0..units).filter(|u| !keep.contains(u)) {
            t[u * per..(u + 1) * per].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    Ok(out)
}
