//! `vae_ood_core`: the ROS-free core of vae_ood_monitor, an out-of-distribution monitor for
//! camera-driven robots built on compressed β-VAE detectors (Bansal, Yuhas, Easwaran,
//! "Compressing VAE-Based Out-of-Distribution Detectors for Embedded Deployment", RTCSA 2024).
//!
//! A frame's path: [`frame`] decodes it, [`preprocess`] makes the encoder's input tensor, an
//! [`encoder`] gives the posterior (mu, logvar), [`score`] turns it into a nonconformity score,
//! and [`detection`] into a conformal p-value, a martingale and a CUSUM statistic. The
//! [`detector`] seam ties the first steps together for one detector kind; the [`monitor`]
//! adds the verdict and its fail-safe states. A detector ships as a [`bundle`].
//!
//! Nothing here knows about ROS, command lines, plots, bag formats or training: the node, the
//! CLI and the offline tools are crates on top (docs/architecture.md).

// The GPU backend binds one CUDA API level (it also fixes which library names load).
#[cfg(all(feature = "cuda", feature = "cuda13"))]
compile_error!(
    "enable one of the cargo features `cuda` (CUDA 12) and `cuda13` (CUDA 13), not both"
);
#[cfg(all(feature = "gpu", not(any(feature = "cuda", feature = "cuda13"))))]
compile_error!(
    "the `gpu` feature is shared plumbing: enable `cuda` (CUDA 12) or `cuda13` (CUDA 13)"
);

pub mod arch;
pub mod bundle;
pub mod clahe;
pub mod detail;
pub mod detail_lost;
pub mod detection;
pub mod detector;
pub mod device_preprocess;
pub mod encoder;
pub mod flow;
pub mod flow_detector;
pub mod frame;
pub mod fsutil;
pub mod mixture;
pub mod monitor;
pub mod mscn;
pub mod preprocess;
pub mod score;
pub mod stats;
pub mod tail;

/// The types most users of the core need.
pub mod prelude {
    pub use crate::bundle::{Bundle, BundleError, Manifest};
    pub use crate::detector::{Detector, Fault, ImageDetector, Scored, StreamFrame, StreamId};
    pub use crate::encoder::{BackendKind, BackendOptions, Encoder, InferenceError, Posterior};
    pub use crate::flow_detector::FlowDetector;
    pub use crate::frame::{FrameData, FrameError, RawImage};
    pub use crate::monitor::{
        FrameAge, FrameVerdict, Monitor, MonitorConfig, MonitorState, Recovery,
    };
}

pub use bundle::Bundle;
pub use detector::Detector;
pub use monitor::{Monitor, MonitorConfig, MonitorState};
