//! `vae-ood prune` and `vae-ood quantize`: one compression step applied to a bundle.

use anyhow::{bail, Result};
use std::path::PathBuf;
use vae_ood_tools::compress::prune::Layer;
use vae_ood_tools::compress::quantize::Precision;
use vae_ood_tools::compress::{prune_bundle, quantize_bundle, Pruning};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "models/default")]
    bundle: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Fraction of all conv and dense weights to zero (smallest magnitude first).
    #[arg(long, conflicts_with_all = ["layer", "fraction"], required_unless_present = "layer")]
    sparsity: Option<f64>,
    /// Layer to thin: conv<i> or fc<i>.
    #[arg(long, requires = "fraction")]
    layer: Option<Layer>,
    /// Fraction of the layer's filters or neurons to remove (smallest L2 norm first), < 1.
    #[arg(long, requires = "layer")]
    fraction: Option<f64>,
}

pub fn run(a: &Args) -> Result<()> {
    let (op, args) = match (a.sparsity, a.layer, a.fraction) {
        (Some(s), _, _) => (Pruning::Unstructured(s), format!("--sparsity {s}")),
        (None, Some(l), Some(f)) => (
            Pruning::Structured(l, f),
            format!("--layer {l} --fraction {f}"),
        ),
        _ => bail!("give --sparsity, or --layer with --fraction"),
    };
    let command = format!("vae-ood prune --bundle {} {args}", a.bundle.display());
    let b = prune_bundle(&a.bundle, &a.out, op, &command)?;
    println!(
        "wrote {} ({}): uncalibrated, run `vae-ood calibrate --bundle {}` next",
        a.out.display(),
        b.manifest.description,
        a.out.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    #[arg(long, default_value = "models/default")]
    bundle: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    precision: Precision,
    /// Drives whose frames set the activation scales (int8-static; every 10th frame)
    #[arg(long, num_args = 1..)]
    cal: Vec<PathBuf>,
}

pub fn quantize(a: &QuantizeArgs) -> Result<()> {
    let (b, before, after) = quantize_bundle(&a.bundle, &a.out, a.precision, &a.cal)?;
    println!(
        "wrote {} ({before} -> {after} bytes): uncalibrated, run `vae-ood calibrate --bundle {}` next",
        b.dir.display(),
        a.out.display()
    );
    Ok(())
}
