//! Encoders: run a bundle's ONNX encoder and return the posterior (mu, logvar).
//!
//! [`Encoder`] is the seam between the detector and the runtime. `tract` (pure Rust, CPU) is
//! the default backend; `cuda` (cargo feature `cuda`: tract's CUDA runtime on an NVIDIA GPU)
//! implements the same trait, and [`BackendKind`] picks one (`auto`: the GPU when usable). Tests inject their own encoders (a slow or failing one)
//! through [`crate::detector::ImageDetector::with_encoder`]. Whatever the backend, the same
//! model checks run before a detector is ready ([`check_encoder`]).

mod check;
#[cfg(feature = "gpu")]
pub mod cuda;
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

    /// The device it runs on, for logs and diagnostics (a GPU's name, memory and driver).
    fn device(&self) -> String {
        "cpu".into()
    }

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
    /// An NVIDIA GPU through tract-cuda (builds with the `cuda` feature); fails with what is
    /// missing where no GPU is usable. Computes in f32, whatever precision the weights are
    /// stored in.
    Cuda,
    /// As `cuda`, computing in half precision (f16 weights and activations). Measured on an
    /// H200 with tract-cuda 0.23.9: slower than f32 and 2.8 % off in score (docs/gpu.md), so
    /// never chosen by `auto`.
    #[serde(rename = "cuda-fp16")]
    CudaFp16,
    /// The GPU when this build has the `cuda` feature and a GPU is usable, else the CPU.
    Auto,
}

/// A backend name that is not one of ours.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown backend '{0}' (expected 'tract', 'cuda', 'cuda-fp16' or 'auto')")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "tract" | "cpu" => Ok(Self::Tract),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "cuda-fp16" => Ok(Self::CudaFp16),
            "auto" => Ok(Self::Auto),
            other => Err(UnknownBackend(other.into())),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tract => "tract",
            Self::Cuda => "cuda",
            Self::CudaFp16 => "cuda-fp16",
            Self::Auto => "auto",
        })
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
/// `auto` says which it took, and why, on stderr (once per load).
pub fn load(bundle: &Bundle, opts: BackendOptions) -> Result<Box<dyn Encoder>, BundleError> {
    let mut encoder: Box<dyn Encoder> = match opts.kind {
        BackendKind::Tract => tract_encoder(bundle, opts.threads)?,
        BackendKind::Cuda => cuda_encoder(bundle, false)?,
        BackendKind::CudaFp16 => cuda_encoder(bundle, true)?,
        BackendKind::Auto => match cuda_encoder(bundle, false) {
            Ok(e) => {
                eprintln!("backend auto: {} on {}", e.backend(), e.device());
                e
            }
            Err(why) => {
                eprintln!("backend auto: the CPU (tract), because {why}");
                tract_encoder(bundle, opts.threads)?
            }
        },
    };
    check_encoder(encoder.as_mut(), &bundle.manifest)?;
    Ok(encoder)
}

#[cfg(feature = "gpu")]
fn cuda_encoder(bundle: &Bundle, half: bool) -> Result<Box<dyn Encoder>, BundleError> {
    Ok(Box::new(cuda::CudaEncoder::load(bundle, half)?))
}

#[cfg(not(feature = "gpu"))]
fn cuda_encoder(_: &Bundle, _: bool) -> Result<Box<dyn Encoder>, BundleError> {
    Err(BundleError::Backend(
        "this build has no cuda backend: rebuild with the cargo feature 'cuda' (`cargo build --features cuda`; colcon: --cargo-args --features cuda), or use backend 'tract' (CPU)".into(),
    ))
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
