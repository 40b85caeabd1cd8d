//! `vae-ood replay`: a thin entry point to `vae_ood_replay`, the ROS package's executable
//! (this binary has no ROS in it). It runs the one installed beside `vae-ood`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for vae_ood_replay: BAG [--topic T] [--label-topic T] [--rate R] [--loop]
    /// [--clock] [--wait S] [--lockstep VERDICT_TOPIC]; `vae_ood_replay --help` lists them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    args: Vec<String>,
}

const EXE: &str = "vae_ood_replay";

pub fn run(a: &Args) -> Result<()> {
    let me = std::env::current_exe().context("locating the vae-ood binary")?;
    let exe: PathBuf = me.with_file_name(EXE);
    if !exe.is_file() {
        bail!(
            "{} not found: replay is the ROS package's executable; build it in a ROS 2 environment with `source scripts/env.sh && cargo build -p vae_ood_monitor` (feature `replay`, on by default)",
            exe.display()
        );
    }
    let status = std::process::Command::new(&exe)
        .args(&a.args)
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}
