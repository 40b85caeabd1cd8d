//! Encoders: run a bundle's ONNX encoder and return the posterior (mu, logvar).
//!
//! [`Encoder`] is the seam between the detector and the runtime. `tract` (pure Rust, CPU) is
//! the backend in this build; the planned NVIDIA backend (cudarc) implements the same trait and
//! is picked by [`BackendKind`]. Tests inject their own encoders (a slow or failing one)
//! through [`crate::detector::ImageDetector::with_encoder`]. Whatever the backend, the same
//! model checks run before a detector is ready ([`check_encoder`]).

mod check;
#[cfg(feature = "tract")]
pub mod pool;
#[cfg(feature = "tract")]
mod tract;

pub use self::check::{check_declared_shape, check_encoder};
#[cfg(feature = "tract")]
pub use self::tract::{gemm_peak, TractEncoder};

use crate::bundle::{Bundle, BundleError};
use serde::{Deserialize, Serialize};

/// The encoder's outputs for one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Posterior {
    pub mu: Vec<f32>,
    pub logvar: Vec<f32>,
}

/// An encoder ready to run. Inputs are preprocessed tensors of the bundle's input shape,
/// flattened.
pub trait Encoder: Send {
    fn encode(&mut self, input: &[f32]) -> Result<Posterior, InferenceError>;

    /// Encodes several inputs (several cameras) in one call. The default runs them one by one;
    /// a backend that gains from batching overrides it.
    fn encode_batch(&mut self, inputs: &[&[f32]]) -> Result<Vec<Posterior>, InferenceError> {
        inputs.iter().map(|x| self.encode(x)).collect()
    }

    /// A short backend name for logs and diagnostics.
    fn backend(&self) -> &'static str;

    /// The input shape the model itself declares, when it declares a concrete one (checked
    /// against the manifest's input spec).
    fn declared_input_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// Multiply-accumulates per frame, where the backend can count them.
    fn multiply_accumulates(&self) -> Option<u64> {
        None
    }
}

/// An encoder failed on a frame (the runtime's own message).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("inference failed: {0}")]
pub struct InferenceError(pub String);

/// Which backend runs the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// tract-onnx on the CPU.
    #[default]
    Tract,
    /// NVIDIA GPU through cudarc (planned; not in this build).
    Cuda,
}

/// A backend name that is not one of ours.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown backend '{0}' (expected 'tract' or 'cuda')")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "tract" | "cpu" => Ok(Self::Tract),
            "cuda" | "gpu" => Ok(Self::Cuda),
            other => Err(UnknownBackend(other.into())),
        }
    }
}

/// Backend options shared by the node and the tools.
#[derive(Debug, Clone, Copy)]
pub struct BackendOptions {
    pub kind: BackendKind,
    /// Worker threads for inference; 1 keeps the other cores for the rest of the robot.
    pub threads: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            kind: BackendKind::Tract,
            threads: 1,
        }
    }
}

/// Loads the bundle's encoder on the chosen backend and checks it against the manifest.
pub fn load(bundle: &Bundle, opts: BackendOptions) -> Result<Box<dyn Encoder>, BundleError> {
    let mut encoder: Box<dyn Encoder> = match opts.kind {
        BackendKind::Tract => tract_encoder(bundle, opts.threads)?,
        BackendKind::Cuda => {
            return Err(BundleError::Backend(
                "the cuda backend is not part of this build yet; use backend 'tract' (CPU)".into(),
            ))
        }
    };
    check_encoder(encoder.as_mut(), &bundle.manifest)?;
    Ok(encoder)
}

#[cfg(feature = "tract")]
fn tract_encoder(bundle: &Bundle, threads: usize) -> Result<Box<dyn Encoder>, BundleError> {
    Ok(Box::new(TractEncoder::load(bundle, threads)?))
}

#[cfg(not(feature = "tract"))]
fn tract_encoder(_: &Bundle, _: usize) -> Result<Box<dyn Encoder>, BundleError> {
    Err(BundleError::Backend(
        "this build of vae_ood_core has no tract backend (its feature 'tract' is off)".into(),
    ))
}
