//! The tools' error type: what went wrong, with the file or drive it concerns, so that the
//! message alone tells the user what to fix.

use std::path::PathBuf;
use vae_ood_bag::BagError;
use vae_ood_core::bundle::BundleError;
use vae_ood_core::detection::DetectionError;
use vae_ood_core::frame::ImageFileError;
use vae_ood_core::fsutil::WriteError;
use vae_ood_core::score::ScoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    WriteAtomic(#[from] WriteError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Bag(#[from] BagError),
    #[error(transparent)]
    ImageFile(#[from] ImageFileError),
    #[error(transparent)]
    Detection(#[from] DetectionError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Inference(#[from] vae_ood_core::encoder::InferenceError),
    /// A drive's data is unusable (an undecodable or unscorable frame, no frames at all).
    #[error("{0}")]
    Drive(String),
    /// The arguments do not make sense together; the message says what to give instead.
    #[error("{0}")]
    Input(String),
    /// An ONNX graph could not be read, written or transformed.
    #[error("ONNX: {0}")]
    Onnx(String),
    /// Training or fine-tuning failed (burn, checkpoints, a diverging loss).
    #[error("{0}")]
    Train(String),
    /// A chart could not be drawn (no font, a backend error).
    #[error("plot: {0}")]
    Plot(String),
}

impl Error {
    pub fn read(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Read { path, source }
    }

    pub fn write(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Write { path, source }
    }
}
