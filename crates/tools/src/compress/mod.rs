//! The paper's compression methodology, piece by piece: pruning ([`prune`]) and choosing the
//! detector to deploy from measured candidates ([`select`]), encoder latencies measured in one
//! run ([`bench`]). Distillation lives in
//! [`crate::train`] (`vae-ood train --teacher`), layer costs in
//! [`crate::onnx_gen::EncoderArch::layer_costs`].

pub mod bench;
#[cfg(feature = "train")]
pub mod finetune;
pub mod prune;
pub mod quantize;
#[cfg(feature = "train")]
pub mod report;
pub mod select;
#[cfg(feature = "train")]
pub mod sweep;

use crate::onnx_gen::{encoder_onnx, read_encoder, EncoderArch, GraphNames, Named};
use crate::{Error, Result};
use prune::Layer;
use quantize::Precision;
use std::path::{Path, PathBuf};
use vae_ood_core::bundle::{Bundle, Manifest, OutputRef, Outputs};

/// The manifest of an uncalibrated bundle derived from `parent` by pruning, distillation or
/// quantisation: named, described and attributed anew, its calibration dropped (the scores
/// change: calibrate it again before use). Given `rewritten` (the new architecture and how it
/// was made), the encoder is one [`crate::onnx_gen`] wrote: outputs named mu and logvar, the
/// architecture recorded in the notes.
pub fn derived_manifest(
    parent: &Manifest,
    name: String,
    description: String,
    created_by: String,
    rewritten: Option<(&EncoderArch, &str)>,
) -> Manifest {
    let mut m = parent.clone();
    m.name = name;
    m.description = description;
    m.calibration = None;
    // A fitted score reference belongs to the parent's posteriors: calibration refits it.
    m.score = Default::default();
    m.provenance.created_by = created_by;
    if let Some((arch, how)) = rewritten {
        m.outputs = Outputs {
            mu: OutputRef::Name { name: "mu".into() },
            logvar: OutputRef::Name {
                name: "logvar".into(),
            },
        };
        m.provenance.notes = format!(
            "architecture: {}; {how}",
            serde_json::to_string(arch).expect("serialisable")
        );
    }
    m
}

/// A pruning operation on a bundle's encoder.
#[derive(Debug, Clone, Copy)]
pub enum Pruning {
    /// Global unstructured magnitude pruning at this sparsity.
    Unstructured(f64),
    /// Structured pruning of one layer at this fraction of its units.
    Structured(Layer, f64),
}

/// Prunes the encoder of the bundle in `dir` and writes the result as a new, uncalibrated
/// bundle in `out` (pruning changes the scores, so calibrate it again before use).
pub fn prune_bundle(
    dir: &Path,
    out: &Path,
    op: Pruning,
    command: &str,
) -> Result<Bundle, crate::Error> {
    let bundle = Bundle::load(dir).map_err(|e| crate::Error::Onnx(e.to_string()))?;
    let path = bundle.encoder_path();
    let bytes =
        std::fs::read(&path).map_err(|e| crate::Error::Onnx(format!("{}: {e}", path.display())))?;
    let (arch, mut w) =
        read_encoder(&bytes).map_err(|e| crate::Error::Onnx(format!("{}: {e}", path.display())))?;
    let (arch, w, what) = match op {
        Pruning::Unstructured(s) => {
            let n = prune::prune_global_l1(&mut w, &arch, s)?;
            (
                arch,
                w,
                format!("global L1 unstructured pruning at sparsity {s} ({n} weights zeroed)"),
            )
        }
        Pruning::Structured(layer, f) => {
            let keep = prune::kept_units(&w, &arch, layer, f)?;
            let (small, w) = prune::prune_structured(&w, &arch, layer, &keep)?;
            let what = format!(
                "structured L2 pruning of {layer} at {f} (keeps {} units)",
                keep.len()
            );
            (small, w, what)
        }
    };
    let m = &bundle.manifest;
    let onnx = encoder_onnx(&arch, &mut Named(w), &GraphNames::default(), &what)?;
    let manifest = derived_manifest(
        m,
        format!("{}-pruned", m.name),
        format!("{} of {}", what, m.name),
        command.to_string(),
        Some((&arch, &format!("pruned from {}", m.name))),
    );
    Bundle::write(out, manifest, &onnx).map_err(|e| crate::Error::Onnx(e.to_string()))
}

/// Quantises a bundle's encoder (`vae-ood quantize`): int8-static takes its activation scales
/// from every 10th frame of the `cal` drives. Returns the uncalibrated bundle and the encoder
/// sizes before and after, in bytes.
pub fn quantize_bundle(
    bundle: &Path,
    out: &Path,
    precision: Precision,
    cal: &[PathBuf],
) -> Result<(Bundle, usize, usize)> {
    // Checked before any drive is decoded: only int8-static reads frames.
    match (precision, cal.is_empty()) {
        (Precision::Int8Static, true) => {
            return Err(Error::Input(
                "--precision int8-static needs --cal drives to set its activation scales".into(),
            ))
        }
        (Precision::Int8Static, false) => {}
        (p, false) => {
            return Err(Error::Input(format!(
                "--cal applies to --precision int8-static only; {p} needs no frames"
            )))
        }
        _ => {}
    }
    let b = Bundle::load(bundle)?;
    let onnx = std::fs::read(b.encoder_path()).map_err(Error::read(b.encoder_path()))?;
    // Every 10th frame, counted across the drives; only those are preprocessed.
    let (mut frames, mut i) = (vec![], 0usize);
    for d in cal {
        crate::drives::for_each_frame(d, &mut |img| {
            if i % 10 == 0 {
                frames.push(vae_ood_core::preprocess::preprocess(img, &b.manifest.input));
            }
            i += 1;
            Ok(())
        })?;
    }
    let q = quantize::quantize(&onnx, precision, &frames)?;
    let m = derived_manifest(
        &b.manifest,
        format!("{}-{precision}", b.manifest.name),
        format!("{precision} quantisation of {}", b.manifest.name),
        format!("vae-ood quantize --precision {precision}"),
        None,
    );
    Ok((Bundle::write(out, m, &q)?, onnx.len(), q.len()))
}
