//! `vae_ood_monitor`: out-of-distribution detection for camera-driven robots with compressed
//! β-VAE detectors (Bansal, Yuhas, Easwaran, "Compressing VAE-Based Out-of-Distribution
//! Detectors for Embedded Deployment", RTCSA 2024).
//!
//! This library is the ROS-free core: frame decoding ([`frame`]), preprocessing
//! ([`preprocess`]), detector bundles ([`bundle`]), inference backends ([`backend`]), the
//! nonconformity score ([`score`]) and the per-frame monitor ([`monitor`]). The ROS 2 node
//! (`--features ros`) is a thin layer over it in [`ros`].

pub mod backend;
pub mod bag;
pub mod bundle;
pub mod compress;
pub mod detection;
pub mod eval;
pub mod frame;
pub mod monitor;
pub mod onnx_gen;
pub mod preprocess;
pub mod score;
pub mod tools;
#[cfg(feature = "train")]
pub mod train;

#[cfg(feature = "ros")]
pub mod ros;

pub use bundle::Bundle;
pub use monitor::{Detector, Monitor, MonitorConfig, MonitorState};
