//! `vae_ood_monitor`: the ROS 2 layer of the out-of-distribution monitor (Bansal, Yuhas,
//! Easwaran, "Compressing VAE-Based Out-of-Distribution Detectors for Embedded Deployment",
//! RTCSA 2024): a thin r2r node over [`vae_ood_core::monitor::Monitor`], the command gate, and
//! (feature `replay`) a bag replayer. Everything that decides lives in `vae_ood_core`, which
//! builds and tests without ROS; see docs/architecture.md.
//!
//! Features: `ros` (the node and the gate; needs a ROS 2 environment to build) and `replay`
//! (adds `vae_ood_replay`, which reads bags), both on by default for colcon and `make demo`.
//! A lean robot build: `cargo build -p vae_ood_monitor --no-default-features --features ros`.

#[cfg(feature = "ros")]
pub mod gate;
#[cfg(feature = "ros")]
pub mod inference;
#[cfg(feature = "ros")]
pub mod lifecycle;
#[cfg(feature = "ros")]
pub mod messages;
#[cfg(feature = "ros")]
pub mod node;
#[cfg(feature = "ros")]
pub mod params;
#[cfg(feature = "replay")]
pub mod replay;
