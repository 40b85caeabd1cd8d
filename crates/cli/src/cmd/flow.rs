//! `vae-ood flow`: the dense optical flow between two greyscale frames, as the optical-flow
//! detector computes it (Farnebäck, the reference parameters unless given), saved as a NumPy
//! array of shape (height, width, 2). For parity tests against OpenCV and for inspection.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use vae_ood_core::flow::{farneback, FarnebackParams, Gray};

#[derive(clap::Args)]
pub struct Args {
    /// The earlier frame (PNG or JPEG; colour frames are converted to luma).
    prev: PathBuf,
    /// The later frame, of the same size.
    next: PathBuf,
    /// Output .npy file: float32, shape (height, width, 2), (dx, dy) per pixel.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = FarnebackParams::REFERENCE.pyr_scale)]
    pyr_scale: f64,
    #[arg(long, default_value_t = FarnebackParams::REFERENCE.levels)]
    levels: usize,
    #[arg(long, default_value_t = FarnebackParams::REFERENCE.winsize)]
    winsize: usize,
    #[arg(long, default_value_t = FarnebackParams::REFERENCE.iterations)]
    iterations: usize,
    #[arg(long, default_value_t = FarnebackParams::REFERENCE.poly_n)]
    poly_n: usize,
    #[arg(long, default_value_t = FarnebackParams::REFERENCE.poly_sigma)]
    poly_sigma: f64,
}

fn gray(path: &Path) -> Result<Gray> {
    let img = image::open(path)
        .with_context(|| format!("reading {}", path.display()))?
        .to_luma8();
    Ok(Gray {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.into_raw().into_iter().map(f32::from).collect(),
    })
}

pub fn run(a: &Args) -> Result<()> {
    let params = FarnebackParams {
        pyr_scale: a.pyr_scale,
        levels: a.levels,
        winsize: a.winsize,
        iterations: a.iterations,
        poly_n: a.poly_n,
        poly_sigma: a.poly_sigma,
    };
    let flow = farneback(&gray(&a.prev)?, &gray(&a.next)?, &params)?;
    write_npy(&a.out, &[flow.height, flow.width, 2], &flow.data)
        .with_context(|| format!("writing {}", a.out.display()))
}

/// A little-endian float32 array in NumPy's .npy format (version 1.0).
fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for v in data {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()
}
