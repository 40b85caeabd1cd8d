//! Offline tools behind the `vae-ood` CLI that are more than a few lines: image folders as
//! drives, and calibration of a bundle from them.

pub mod calibrate;
pub mod drives;
