//! `vae-ood`: the offline tool. Works without any ROS install.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vae_ood_monitor::backend::{BackendKind, BackendOptions};
use vae_ood_monitor::bundle::{
    Bundle, EncoderFile, Latents, Manifest, OutputRef, Outputs, Provenance, FORMAT_VERSION,
};
use vae_ood_monitor::detection::tuning::Grid;
use vae_ood_monitor::detection::{Calibration, PipelineParams};
use vae_ood_monitor::frame::{FrameData, RawImage};
use vae_ood_monitor::monitor::{Detector, Monitor, MonitorConfig};
use vae_ood_monitor::onnx_gen::{seeded_encoder, EncoderArch, GraphNames};
use vae_ood_monitor::preprocess::{ChannelOrder, Filter, InputSpec, Layout, Normalize, ResizeMode};
use vae_ood_monitor::tools::calibrate::{calibrate, DriveArg, Options as CalibrateOptions};

#[derive(Parser)]
#[command(
    name = "vae-ood",
    version,
    about = "β-VAE out-of-distribution detectors: score frames, inspect and create detector bundles"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct DetectorArgs {
    /// Detector bundle directory.
    #[arg(long, default_value = "models/default")]
    bundle: PathBuf,
    /// Inference backend: tract (CPU) or cuda (planned).
    #[arg(long, default_value = "tract")]
    backend: BackendKind,
    /// Inference threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

impl DetectorArgs {
    fn load(&self) -> Result<Detector> {
        let opts = BackendOptions {
            kind: self.backend,
            threads: self.threads.max(1),
        };
        Detector::load(&self.bundle, opts)
            .with_context(|| format!("loading detector bundle {}", self.bundle.display()))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a bundle's manifest summary and model id, after checking it loads.
    Info {
        #[arg(default_value = "models/default")]
        bundle: PathBuf,
    },
    /// Score image files (PNG/JPEG) or folders of them; prints one JSON object per frame.
    Score {
        #[command(flatten)]
        detector: DetectorArgs,
        /// Per-frame decision threshold on the nonconformity score.
        #[arg(long, default_value_t = f64::INFINITY)]
        score_threshold: f64,
        /// Also print the KL divergence of every latent.
        #[arg(long)]
        kl: bool,
        /// Image files or directories (scanned in name order).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the encoder on a raw input tensor (little-endian f32, the bundle's input shape) and
    /// print mu, logvar, the KL per latent and the score as JSON. For parity tests.
    Encode {
        #[command(flatten)]
        detector: DetectorArgs,
        /// File of little-endian f32 values.
        input: PathBuf,
    },
    /// Calibrate a bundle from image-folder drives (one folder = one drive): conformal scores,
    /// latent selection, CUSUM threshold for a target false-alarm rate, and window/decay/k by
    /// least detection delay on validation OOD drives. Writes a new bundle.
    Calibrate {
        #[command(flatten)]
        detector: DetectorArgs,
        /// Output bundle directory.
        #[arg(long)]
        out: PathBuf,
        /// In-distribution calibration drives (conformal scores, latent ranking).
        #[arg(long = "cal", required = true, num_args = 1..)]
        cal: Vec<DriveArg>,
        /// In-distribution tuning drives (CUSUM threshold).
        #[arg(long = "tune-id", required = true, num_args = 1..)]
        tune_id: Vec<DriveArg>,
        /// Validation OOD drives as DIR or DIR:ONSET (first OOD frame; default 0).
        #[arg(long = "val-ood", num_args = 1..)]
        val_ood: Vec<DriveArg>,
        /// Explicit latent indices (comma-separated) instead of ranking.
        #[arg(long, value_delimiter = ',')]
        latents: Option<Vec<usize>>,
        /// Candidate numbers of latents.
        #[arg(long, value_delimiter = ',', default_value = "5,10,15,20,30")]
        k: Vec<usize>,
        /// Candidate martingale windows.
        #[arg(long, value_delimiter = ',', default_value = "10,20")]
        windows: Vec<usize>,
        /// Candidate CUSUM decays.
        #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2")]
        decays: Vec<f64>,
        /// Target false alarms, as a share of in-distribution frames.
        #[arg(long, default_value_t = 0.001)]
        false_alarm_rate: f64,
        #[arg(long, default_value_t = vae_ood_monitor::detection::default_grid())]
        epsilon_grid: usize,
        #[arg(long)]
        quiet: bool,
    },
    /// Run the sequential pipeline on given scores (JSON: calibration, scores, window,
    /// epsilon_grid, decay) and print p-values, log M and S. For reference-parity tests.
    Sequential { input: PathBuf },
    /// Measure per-stage latency on synthetic raw camera frames.
    Bench {
        #[command(flatten)]
        detector: DetectorArgs,
        #[arg(long, default_value_t = 640)]
        width: u32,
        #[arg(long, default_value_t = 480)]
        height: u32,
        #[arg(long, default_value = "rgb8")]
        encoding: String,
        #[arg(long, default_value_t = 300)]
        frames: usize,
    },
    /// Create a bundle holding an UNTRAINED encoder of the paper's architecture with seeded
    /// weights (a placeholder until a trained detector exists: its verdicts mean nothing).
    GenSeeded {
        #[arg(long)]
        out: PathBuf,
        /// Architecture preset: tiny or paper.
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long, default_value = "seeded-bvae")]
        name: String,
        /// Name the ONNX outputs "0" and "1" (as PyTorch exports do) and address them by index.
        #[arg(long)]
        numeric_outputs: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Info { bundle } => info(&bundle),
        Cmd::Score {
            detector,
            score_threshold,
            kl,
            paths,
        } => score(&detector, score_threshold, kl, &paths),
        Cmd::Encode { detector, input } => encode(&detector, &input),
        Cmd::Calibrate {
            detector,
            out,
            cal,
            tune_id,
            val_ood,
            latents,
            k,
            windows,
            decays,
            false_alarm_rate,
            epsilon_grid,
            quiet,
        } => {
            let opts = CalibrateOptions {
                cal,
                tune_id,
                val_ood,
                latents,
                grid: Grid {
                    k,
                    window: windows,
                    decay: decays,
                },
                epsilon_grid,
                false_alarm_rate,
                quiet,
            };
            calibrate_cmd(&detector, &out, &opts)
        }
        Cmd::Sequential { input } => sequential(&input),
        Cmd::Bench {
            detector,
            width,
            height,
            encoding,
            frames,
        } => bench(&detector, width, height, &encoding, frames),
        Cmd::GenSeeded {
            out,
            preset,
            seed,
            name,
            numeric_outputs,
        } => gen_seeded(&out, &preset, seed, &name, numeric_outputs),
    }
}

fn info(dir: &Path) -> Result<()> {
    let det = DetectorArgs {
        bundle: dir.to_path_buf(),
        backend: BackendKind::Tract,
        threads: 1,
    }
    .load()?;
    let m = &det.bundle.manifest;
    println!("bundle      {}", dir.display());
    println!("model id    {}", det.model_id());
    println!("name        {}", m.name);
    println!("trained     {}", m.provenance.trained);
    println!(
        "encoder     {} (sha256 {})",
        m.encoder.path, m.encoder.sha256
    );
    println!(
        "input       {}x{} {:?} {:?}, resize {:?} {:?}",
        m.input.width,
        m.input.height,
        m.input.channel_order,
        m.input.layout,
        m.input.resize,
        m.input.filter
    );
    println!(
        "latents     {} selected of {}: {:?}",
        m.latents.selected.len(),
        m.latents.count,
        m.latents.selected
    );
    println!("created by  {}", m.provenance.created_by);
    if !m.provenance.trained {
        println!("WARNING     untrained placeholder detector: its verdicts are not meaningful");
    }
    Ok(())
}

fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    matches!(
                        f.extension()
                            .and_then(|e| e.to_str())
                            .map(str::to_ascii_lowercase)
                            .as_deref(),
                        Some("png" | "jpg" | "jpeg")
                    )
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        bail!("no PNG or JPEG images found in {paths:?}");
    }
    Ok(out)
}

fn score(
    args: &DetectorArgs,
    score_threshold: f64,
    with_kl: bool,
    paths: &[PathBuf],
) -> Result<()> {
    let det = args.load()?;
    let mut monitor = Monitor::new(
        det,
        MonitorConfig {
            score_threshold,
            max_frame_age: None,
            ..Default::default()
        },
    )
    .map_err(anyhow::Error::msg)?;
    for file in image_files(paths)? {
        // Same decoder as the node's CompressedImage path.
        let verdict = match std::fs::read(&file) {
            Ok(bytes) => {
                let format = file
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                monitor.process(
                    &FrameData::Compressed {
                        format: &format,
                        data: &bytes,
                    },
                    None,
                )
            }
            Err(e) => bail!("cannot read {}: {e}", file.display()),
        };
        let mut rec = serde_json::json!({
            "file": file.display().to_string(),
            "state": verdict.state,
            "ood": verdict.is_ood(),
            "score": verdict.score,
            "score_f32": verdict.score.map(|s| s as f32),
            "fault": verdict.fault.as_ref().map(|f| f.to_string()),
        });
        if with_kl {
            if let Ok(img) = image::open(&file) {
                rec["kl"] = serde_json::json!(monitor_kl(&monitor, &img.into_rgb8()));
            }
        }
        println!("{rec}");
    }
    Ok(())
}

/// KL per latent for a frame, via a fresh scoring pass (the monitor keeps only the sum).
fn monitor_kl(monitor: &Monitor, img: &image::RgbImage) -> Vec<f64> {
    let b = &monitor.detector().bundle;
    let mut det =
        Detector::load(&b.dir, BackendOptions::default()).expect("bundle loaded once already");
    det.score_image(img).map(|s| s.kl).unwrap_or_default()
}

fn calibrate_cmd(args: &DetectorArgs, out: &Path, opts: &CalibrateOptions) -> Result<()> {
    let mut det = args.load()?;
    let o = calibrate(&args.bundle, out, &mut det, opts).map_err(anyhow::Error::msg)?;
    let c = o.bundle.manifest.calibration.as_ref().expect("written");
    println!("wrote {} (model id {})", out.display(), o.bundle.model_id);
    println!("selected latents  {:?}", o.bundle.manifest.latents.selected);
    println!("window            {}", c.pipeline.window);
    println!("decay             {}", c.pipeline.decay);
    println!(
        "cusum_threshold   {:.4} (target false-alarm rate {} per frame)",
        c.pipeline.cusum_threshold, c.target_false_alarm_rate
    );
    println!(
        "calibration       {} scores from {:?}",
        c.scores.len(),
        c.data.calibration
    );
    if !c.data.validation_ood.is_empty() {
        println!(
            "validation delay  {:.2} frames mean, {} missed",
            o.chosen.mean_delay, o.chosen.missed
        );
        println!("\n  k  window  decay  threshold  mean delay  missed");
        for cand in o.candidates.iter().take(8) {
            println!(
                "{:3}  {:6}  {:5}  {:9.3}  {:10.2}  {:6}",
                cand.k, cand.window, cand.decay, cand.cusum_threshold, cand.mean_delay, cand.missed
            );
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct SequentialInput {
    calibration: Vec<f64>,
    scores: Vec<f64>,
    window: usize,
    epsilon_grid: usize,
    decay: f64,
}

fn sequential(input: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let inp: SequentialInput =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", input.display()))?;
    let cal = Calibration::new(inp.calibration).map_err(anyhow::Error::msg)?;
    let params = PipelineParams {
        window: inp.window,
        epsilon_grid: inp.epsilon_grid,
        decay: inp.decay,
        cusum_threshold: f64::MAX,
    };
    let steps = vae_ood_monitor::detection::tuning::run(&cal, &params, &inp.scores);
    let col =
        |f: fn(&vae_ood_monitor::detection::Step) -> f64| steps.iter().map(f).collect::<Vec<_>>();
    println!(
        "{}",
        serde_json::json!({ "p_value": col(|s| s.p_value), "log_martingale": col(|s| s.log_martingale), "cusum": col(|s| s.cusum) })
    );
    Ok(())
}

fn encode(args: &DetectorArgs, input: &Path) -> Result<()> {
    let bundle = Bundle::load(&args.bundle)?;
    let mut encoder = vae_ood_monitor::backend::load(
        &bundle,
        BackendOptions {
            kind: args.backend,
            threads: args.threads.max(1),
        },
    )?;
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let want: usize = bundle.manifest.input.shape().iter().product();
    if bytes.len() != want * 4 {
        bail!(
            "{} holds {} bytes; the bundle's input {:?} needs {} f32 values ({} bytes)",
            input.display(),
            bytes.len(),
            bundle.manifest.input.shape(),
            want,
            want * 4
        );
    }
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let post = encoder.encode(&x)?;
    let kl = vae_ood_monitor::score::kl_per_latent(&post.mu, &post.logvar);
    let score = vae_ood_monitor::score::nonconformity(&kl, &bundle.manifest.latents.selected);
    println!(
        "{}",
        serde_json::json!({ "mu": post.mu, "logvar": post.logvar, "kl": kl, "score": score, "selected": bundle.manifest.latents.selected })
    );
    Ok(())
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    format!(
        "p50 {:7.3} ms  p90 {:7.3} ms  p99 {:7.3} ms  max {:7.3} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    )
}

fn bench(
    args: &DetectorArgs,
    width: u32,
    height: u32,
    encoding: &str,
    frames: usize,
) -> Result<()> {
    let det = args.load()?;
    let bpp = vae_ood_monitor::frame::Encoding::parse(encoding)?.bytes_per_pixel() as u32;
    let step = width * bpp;
    // Deterministic frames with structure (gradients + a moving bar), not constant images.
    let make = |i: usize| -> Vec<u8> {
        (0..height * step)
            .map(|k| {
                let (y, x) = (k / step, (k % step) / bpp);
                ((x + y + 7 * i as u32) % 256) as u8
                    ^ if (x / 16 + i as u32) % 8 == 0 {
                        0x55
                    } else {
                        0
                    }
            })
            .collect()
    };
    let data: Vec<Vec<u8>> = (0..16).map(make).collect();
    let mut monitor = Monitor::new(
        det,
        MonitorConfig {
            score_threshold: f64::INFINITY,
            max_frame_age: None,
            ..Default::default()
        },
    )
    .map_err(anyhow::Error::msg)?;
    let (mut dec, mut pre, mut inf, mut tot) = (vec![], vec![], vec![], vec![]);
    for i in 0..frames + 10 {
        let raw = RawImage {
            width,
            height,
            encoding,
            is_bigendian: false,
            step,
            data: &data[i % data.len()],
        };
        let t = std::time::Instant::now();
        let v = monitor.process(&FrameData::Raw(raw), None);
        let total = t.elapsed();
        if let Some(f) = v.fault {
            bail!("benchmark frame faulted: {f}");
        }
        if i >= 10 {
            // the first frames warm caches and allocators
            dec.push(v.timing.decode);
            pre.push(v.timing.preprocess);
            inf.push(v.timing.inference);
            tot.push(total);
        }
    }
    let m = &monitor.detector().bundle.manifest;
    println!("bench: {frames} frames {width}x{height} {encoding} -> {}x{} input, model {}, backend {} x{} thread(s)", m.input.width, m.input.height, monitor.detector().model_id(), monitor.detector().backend(), args.threads);
    println!("  decode      {}", percentiles(dec));
    println!("  preprocess  {}", percentiles(pre));
    println!("  inference   {}", percentiles(inf));
    println!("  total       {}", percentiles(tot));
    Ok(())
}

fn gen_seeded(
    out: &Path,
    preset: &str,
    seed: u64,
    name: &str,
    numeric_outputs: bool,
) -> Result<()> {
    let Some(arch) = EncoderArch::preset(preset) else {
        bail!("unknown preset '{preset}' (expected tiny or paper)")
    };
    let names = if numeric_outputs {
        GraphNames {
            input: "input.1".into(),
            mu: "0".into(),
            logvar: "1".into(),
        }
    } else {
        GraphNames::default()
    };
    let onnx = seeded_encoder(&arch, seed, &names);
    let outputs = if numeric_outputs {
        Outputs {
            mu: OutputRef::Index { index: 0 },
            logvar: OutputRef::Index { index: 1 },
        }
    } else {
        Outputs {
            mu: OutputRef::Name { name: "mu".into() },
            logvar: OutputRef::Name {
                name: "logvar".into(),
            },
        }
    };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: name.into(),
        description: format!("UNTRAINED {preset} beta-VAE encoder with seeded weights: a placeholder whose verdicts are not meaningful"),
        encoder: EncoderFile { path: "encoder.onnx".into(), sha256: String::new() },
        input: InputSpec {
            width: arch.input_width as u32,
            height: arch.input_height as u32,
            channel_order: ChannelOrder::Rgb,
            layout: Layout::Nchw,
            normalize: Normalize::default(),
            resize: ResizeMode::Stretch,
            filter: Filter::Area,
        },
        outputs,
        latents: Latents { count: arch.latents, selected: (0..arch.latents).collect() },
        calibration: None,
        provenance: Provenance {
            trained: false,
            created_by: format!("vae-ood gen-seeded --preset {preset} --seed {seed} --name {name}{}", if numeric_outputs { " --numeric-outputs" } else { "" }),
            training_data: "none (seeded weights)".into(),
            license: "Apache-2.0 (generated by this project)".into(),
            notes: format!("architecture: {}", serde_json::to_string(&arch)?),
        },
    };
    let bundle = Bundle::write(out, manifest, &onnx)?;
    // Prove it loads and runs before reporting success.
    Detector::load(out, BackendOptions::default())?;
    println!("wrote {} (model id {})", out.display(), bundle.model_id);
    Ok(())
}
