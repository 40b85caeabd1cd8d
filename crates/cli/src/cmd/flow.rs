//! `vae-ood flow`: the dense optical flow between two frames, as the optical-flow detector
//! computes it (Farnebäck, the reference parameters unless given), saved as a NumPy array of
//! shape (height, width, 2). With `--preprocess`, the frames first get the reference
//! preprocessing (grey, 160x120, centre crop 152x113, CLAHE). For parity tests against OpenCV
//! and for inspection.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use vae_ood_core::flow::{
    farneback, residual_statistic, FarnebackParams, FlowInput, Gray, ResidualStatistic,
};
use vae_ood_core::stats::{percentiles, Percentiles};

#[derive(clap::Args)]
pub struct Args {
    /// The earlier frame (PNG or JPEG; colour frames are converted to luma).
    prev: PathBuf,
    /// The later frame, of the same size.
    next: PathBuf,
    /// Output .npy file: float32, shape (height, width, 2), (dx, dy) per pixel.
    #[arg(long)]
    out: PathBuf,
    /// Give the frames the reference preprocessing first (grey, resize to 160x120, centre crop
    /// to 152x113, CLAHE clip 2 on 8x8 tiles); without it they are used as they are, in grey.
    #[arg(long)]
    preprocess: bool,
    /// Also write the two frames as the flow saw them, as PREFIX_prev.png and PREFIX_next.png.
    #[arg(long, value_name = "PREFIX")]
    save_inputs: Option<PathBuf>,
    /// Also time the preprocessing and the flow of this pair over RUNS repetitions on one
    /// thread (after 5 untimed ones) and print p50 and p99 of each (1..=100000).
    #[arg(long, value_name = "RUNS", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    bench: Option<u32>,
    /// Also print the pair's motion residual by each statistic (ln; `mean`, `p99`, `fine`) as
    /// one JSON line.
    #[arg(long)]
    residual: bool,
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

fn gray(path: &Path, preprocess: bool) -> Result<Gray> {
    let img = image::open(path).with_context(|| format!("reading {}", path.display()))?;
    if preprocess {
        return Ok(FlowInput::REFERENCE.prepare((&img.to_rgb8()).into()));
    }
    let img = img.to_luma8();
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
    let (prev, next) = (gray(&a.prev, a.preprocess)?, gray(&a.next, a.preprocess)?);
    if let Some(prefix) = &a.save_inputs {
        for (g, which) in [(&prev, "prev"), (&next, "next")] {
            let path = PathBuf::from(format!("{}_{which}.png", prefix.display()));
            let bytes: Vec<u8> = g.data.iter().map(|&v| v as u8).collect();
            image::GrayImage::from_raw(g.width as u32, g.height as u32, bytes)
                .expect("sized")
                .save(&path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let flow = farneback(&prev, &next, &params)?;
    if a.residual {
        let by_statistic: serde_json::Map<_, _> = ResidualStatistic::ALL
            .into_iter()
            .map(|s| {
                (
                    s.name().into(),
                    residual_statistic(&prev, &next, &flow, s).into(),
                )
            })
            .collect();
        println!("{}", serde_json::Value::Object(by_statistic));
    }
    if let Some(runs) = a.bench {
        bench(a, &prev, &next, &params, runs as usize)?;
    }
    write_npy(&a.out, &[flow.height, flow.width, 2], &flow.data)
        .with_context(|| format!("writing {}", a.out.display()))
}

/// Prints p50 and p99 of the preprocessing (with `--preprocess`) and of the flow.
fn bench(a: &Args, prev: &Gray, next: &Gray, params: &FarnebackParams, runs: usize) -> Result<()> {
    if a.preprocess {
        let rgb = image::open(&a.next)?.to_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let p = time_ms(runs, || {
            std::hint::black_box(FlowInput::REFERENCE.prepare((&rgb).into()));
            Ok(())
        })?;
        println!(
            "preprocess {w}x{h} -> {}x{}: p50 {:.3} ms  p99 {:.3} ms",
            next.width, next.height, p.p50, p.p99
        );
    }
    let p = time_ms(runs, || {
        std::hint::black_box(farneback(prev, next, params)?);
        Ok(())
    })?;
    println!(
        "flow {}x{}: p50 {:.3} ms  p99 {:.3} ms ({runs} runs, one thread)",
        next.width, next.height, p.p50, p.p99
    );
    // The motion residual the flow detector's score reads, each statistic, against the flow it
    // follows.
    let f = farneback(prev, next, params)?;
    for s in ResidualStatistic::ALL {
        let r = time_ms(runs, || {
            std::hint::black_box(residual_statistic(prev, next, &f, s));
            Ok(())
        })?;
        println!(
            "motion residual ({}) {}x{}: p50 {:.3} ms  p99 {:.3} ms ({:.1} % of the flow's p50)",
            s.name(),
            next.width,
            next.height,
            r.p50,
            r.p99,
            100.0 * r.p50 / p.p50
        );
    }
    Ok(())
}

/// Percentiles of `runs` timed calls of `f`, in milliseconds, after 5 untimed ones.
fn time_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Percentiles> {
    let mut t = Vec::with_capacity(runs);
    for i in 0..runs + 5 {
        let s = std::time::Instant::now();
        f()?;
        if i >= 5 {
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(percentiles(t).expect("runs >= 1"))
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
