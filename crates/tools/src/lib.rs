//! `vae_ood_tools`: the offline tools of vae_ood_monitor as library functions with typed
//! inputs and outputs. The `vae-ood` binary (crate `vae_ood_cli`) parses arguments and prints;
//! everything it does happens here, on the core's detector seam, so a frame gets the same
//! score here as in the node.
//!
//! - [`drives`]: recorded drives (image folders, rosbag2 bags) frame by frame.
//! - [`eval`]: metrics and reports of a detector on labelled drives (`vae-ood eval`).
//! - [`calibrate`]: conformal scores, thresholds and latents from drives (`vae-ood calibrate`).
//! - [`train`] (feature `train`): a β-VAE with burn (`vae-ood train`).
//! - [`joint`]: one threshold scale for detectors run together (`vae-ood joint-threshold`).
//! - [`compress`]: the paper's methodology: pruning, distillation, quantisation, selection.
//! - [`onnx_gen`]: encoders of the paper's family written as ONNX; [`plots`]: PNG charts.

pub mod bench;
pub mod calibrate;
pub mod compress;
pub mod drives;
pub mod error;
pub mod eval;
pub mod import;
pub mod inspect;
pub mod joint;
pub mod onnx_gen;
pub mod plots;
pub mod score;
pub mod startup;
#[cfg(feature = "train")]
pub mod train;

pub use error::{Error, Result};
