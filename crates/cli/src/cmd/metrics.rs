//! `vae-ood metrics` and `vae-ood sequential`: the metrics and the sequential pipeline on given
//! numbers, for parity tests against independent references.

use anyhow::{Context, Result};
use std::path::PathBuf;
use vae_ood_core::detection::{tuning, Calibration, PipelineParams, SequentialDetector, Step};

#[derive(clap::Args)]
pub struct MetricsArgs {
    input: PathBuf,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn metrics(a: &MetricsArgs) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct In {
        scores: Vec<f64>,
        ood: Vec<bool>,
    }
    let i: In = read_json(&a.input)?;
    let m = vae_ood_tools::eval::metrics::metrics(&i.scores, &i.ood)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

#[derive(clap::Args)]
pub struct SequentialArgs {
    input: PathBuf,
}

pub fn sequential(a: &SequentialArgs) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct In {
        calibration: Vec<f64>,
        scores: Vec<f64>,
        window: usize,
        epsilon_grid: usize,
        decay: f64,
        /// With `threshold`: S held at or under `ceiling` x `threshold` (the node's
        /// `cusum_ceiling`); absent or 0, S is unbounded.
        #[serde(default)]
        ceiling: Option<f64>,
        #[serde(default)]
        threshold: Option<f64>,
    }
    let inp: In = read_json(&a.input)?;
    let cal = Calibration::new(inp.calibration)?;
    let params = PipelineParams {
        window: inp.window,
        epsilon_grid: inp.epsilon_grid,
        decay: inp.decay,
        cusum_threshold: inp.threshold.unwrap_or(f64::MAX),
    };
    params.validate()?;
    // 0 is unbounded, as the node's `cusum_ceiling` and `vae-ood eval --cusum-ceiling` read it.
    let steps = match inp.ceiling.filter(|&c| c != 0.0) {
        None => tuning::run(&cal, &params, &inp.scores),
        Some(_) if inp.threshold.is_none() => {
            anyhow::bail!("a ceiling is a multiple of the threshold: give \"threshold\" too")
        }
        Some(c) => {
            let mut det = SequentialDetector::new(cal, params)?;
            det.set_ceiling(Some(c))?;
            inp.scores.iter().map(|&s| det.step(s)).collect()
        }
    };
    let col = |f: fn(&Step) -> f64| steps.iter().map(f).collect::<Vec<_>>();
    println!(
        "{}",
        serde_json::json!({ "p_value": col(|s| s.p_value), "log_martingale": col(|s| s.log_martingale), "cusum": col(|s| s.cusum) })
    );
    Ok(())
}
