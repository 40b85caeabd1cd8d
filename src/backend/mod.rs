//! Inference backends: run a bundle's ONNX encoder and return the posterior (mu, logvar).
//!
//! `tract` (pure Rust, CPU) is the one in this build. The trait is the seam for the planned
//! NVIDIA backend (cudarc): it will implement [`Encoder`] and be picked by [`BackendKind`].

mod tract;

pub use self::tract::TractEncoder;

use crate::bundle::{Bundle, BundleError};
use serde::{Deserialize, Serialize};

/// The encoder's outputs for one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Posterior {
    pub mu: Vec<f32>,
    pub logvar: Vec<f32>,
}

/// An encoder ready to run. `encode` takes the preprocessed input tensor (the bundle's
/// input shape, flattened).
pub trait Encoder: Send {
    fn encode(&mut self, input: &[f32]) -> Result<Posterior, InferenceError>;
    /// A short backend name for logs and diagnostics.
    fn backend(&self) -> &'static str;
}

#[derive(Debug, thiserror::Error)]
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

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" | "cpu" => Ok(Self::Tract),
            "cuda" | "gpu" => Ok(Self::Cuda),
            other => Err(format!(
                "unknown backend '{other}' (expected 'tract' or 'cuda')"
            )),
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
    match opts.kind {
        BackendKind::Tract => Ok(Box::new(TractEncoder::load(bundle, opts.threads)?)),
        BackendKind::Cuda => Err(BundleError::Backend(
            "the cuda backend is not part of this build yet; use backend 'tract' (CPU)".into(),
        )),
    }
}
