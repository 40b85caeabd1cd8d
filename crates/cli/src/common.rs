//! Arguments several subcommands share.

use anyhow::{anyhow, ensure, Context, Result};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use vae_ood_core::detector::Detector;
use vae_ood_core::encoder::{BackendKind, BackendOptions};

#[derive(clap::Args)]
pub struct DetectorArgs {
    /// Detector bundle directory.
    #[arg(long, default_value = "models/default")]
    pub bundle: PathBuf,
    /// Inference backend: tract (CPU), cuda (NVIDIA GPU; a build with the `cuda` feature),
    /// cuda-fp16 (the GPU in half precision) or auto (the GPU when usable, else the CPU).
    #[arg(long, default_value = "tract")]
    pub backend: BackendKind,
    /// Inference threads (1..=256).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
}

impl DetectorArgs {
    pub fn backend_options(&self) -> BackendOptions {
        BackendOptions {
            kind: self.backend,
            threads: self.threads.into(),
        }
    }

    pub fn load(&self) -> Result<Box<dyn Detector>> {
        vae_ood_core::detector::load(&self.bundle, self.backend_options())
            .with_context(|| format!("loading detector bundle {}", self.bundle.display()))
    }
}

/// A `WIDTHxHEIGHT` argument, both positive.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| anyhow!("'{s}': expected WIDTHxHEIGHT, e.g. 64x64"))?;
    let p = |v: &str| {
        v.parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| anyhow!("'{s}': sizes must be positive integers"))
    };
    Ok((p(w)?, p(h)?))
}

/// A number in `range` (NaN never is); `why` says what the bounds mean.
pub fn parse_in_range(s: &str, range: &RangeInclusive<f64>, why: &str) -> Result<f64> {
    let v: f64 = s.parse().map_err(|e| anyhow!("'{s}': {e}"))?;
    ensure!(
        range.contains(&v),
        "{v} is not in {}..={} ({why})",
        range.start(),
        range.end()
    );
    Ok(v)
}

/// A threshold on a nonconformity score: a number >= 0, `inf` allowed (never), NaN refused
/// (every comparison with it is false, so it would silently decide nothing).
pub fn parse_score_threshold(s: &str) -> Result<f64> {
    let why = "a score threshold; inf: never";
    parse_in_range(s, &(0.0..=f64::INFINITY), why)
}
