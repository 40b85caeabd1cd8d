//! `vae-ood`: the offline tool. Works without any ROS install.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vae_ood_monitor::backend::{BackendKind, BackendOptions};
use vae_ood_monitor::bundle::{Bundle, Manifest, OutputRef, Outputs, Provenance};
use vae_ood_monitor::detection::tuning::Grid;
use vae_ood_monitor::detection::{Calibration, PipelineParams};
use vae_ood_monitor::eval::{Input as EvalInput, Label, Options as EvalOptions, Range};
use vae_ood_monitor::frame::{FrameData, RawImage};
use vae_ood_monitor::monitor::{Detector, Monitor, MonitorConfig, Recovery};
use vae_ood_monitor::onnx_gen::{seeded_encoder, EncoderArch, GraphNames};
use vae_ood_monitor::preprocess::{ChannelOrder, Filter, InputSpec, Layout, Normalize, ResizeMode};
use vae_ood_monitor::tools::calibrate::{
    calibrate, DriveArg, Options as CalibrateOptions, ScoreKind,
};

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
        /// Nonconformity score: kl (the paper's: KL of selected latents) or mahalanobis
        /// (distance of (mu, logvar) from a Gaussian fitted on the --fit drives).
        #[arg(long, value_enum, default_value_t = ScoreKind::Kl)]
        score: ScoreKind,
        /// In-distribution drives to fit the Mahalanobis reference on (--score mahalanobis).
        #[arg(long = "fit", num_args = 1..)]
        fit: Vec<DriveArg>,
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
        /// Latent ranking: quiet (lowest in-distribution KL first) or variance (the reference
        /// implementation's rule).
        #[arg(long, default_value = "quiet")]
        rank: vae_ood_monitor::detection::selection::Rank,
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
    /// Evaluate a detector on recorded drives (rosbag2 bags, sqlite3 or MCAP, or image folders):
    /// AUROC / AUPR / FPR@95TPR per OOD type on the score and the CUSUM statistic, detection
    /// delay and false alarms, latency per stage. Writes report.json and frames.csv to --out.
    /// Exit code 0: complete; 2: partial result (a damaged input); 1: error.
    Eval {
        #[command(flatten)]
        detector: DetectorArgs,
        /// Output directory for report.json and frames.csv.
        #[arg(long)]
        out: PathBuf,
        /// In-distribution inputs (every frame ID).
        #[arg(long, num_args = 1..)]
        id: Vec<PathBuf>,
        /// OOD inputs as PATH or PATH=TYPE (every frame OOD; TYPE defaults to the file name).
        #[arg(long, num_args = 1..)]
        ood: Vec<String>,
        /// Inputs labelled by --labels ranges or by --label-topic, as PATH or PATH=TYPE (the OOD
        /// type of their label-topic OOD frames).
        #[arg(long, num_args = 1..)]
        input: Vec<PathBuf>,
        /// CSV with header `start,end,type`: header-stamp ranges in seconds that are OOD.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// std_msgs/Bool topic in the bags (true = OOD) labelling the --input bags.
        #[arg(long)]
        label_topic: Option<String>,
        /// Image topic (needed when a bag has several).
        #[arg(long)]
        topic: Option<String>,
        /// Frame rate assumed for image folders.
        #[arg(long, default_value_t = 15.0)]
        fps: f64,
        /// Per-frame threshold for uncalibrated bundles.
        #[arg(long, default_value_t = f64::INFINITY)]
        score_threshold: f64,
        /// Override the bundle's CUSUM threshold.
        #[arg(long)]
        cusum_threshold: Option<f64>,
        #[arg(long, default_value_t = 10)]
        recovery_frames: u32,
        #[arg(long)]
        quiet: bool,
    },
    /// Inspect a rosbag2 bag (sqlite3 or MCAP): its topics, or (with --dump TOPIC) one JSON
    /// line per decoded camera frame: stamp, frame id, size, encoding, step, SHA-256 of the data.
    Bag {
        path: PathBuf,
        #[arg(long)]
        dump: Option<String>,
    },
    /// Publish a bag's camera topic (and --label-topic) at the recorded rate over ROS 2.
    /// Needs a build with `--features ros`.
    Replay {
        bag: PathBuf,
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        label_topic: Option<String>,
        /// Playback speed factor.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Start again at the end.
        #[arg(long = "loop")]
        repeat: bool,
        /// Publish /clock from the recorded times (for use_sim_time).
        #[arg(long)]
        clock: bool,
        /// Seconds to wait for a subscriber.
        #[arg(long, default_value_t = 30.0)]
        wait: f64,
    },
    /// Detection metrics for given scores and labels (JSON: {"scores": [...], "ood": [...]}).
    Metrics { input: PathBuf },
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
    #[cfg(feature = "train")]
    Train(vae_ood_monitor::train::args::TrainArgs),
    /// The paper's compression methodology: from a trained teacher (its full VAE), build
    /// pruned, pruned-and-distilled and quantised candidates, recalibrate and evaluate each,
    /// measure every encoder's latency in one run, and select the fastest whose CUSUM AUROC
    /// stays within --auroc-drop of the teacher's in every OOD partition. Resumable; writes
    /// report.json, report.html and plots
    #[cfg(feature = "train")]
    Compress(vae_ood_monitor::compress::args::CompressArgs),
    /// Encoder latency of several bundles in one run (interleaved), with speed-ups against the
    /// first: how compressed detectors are compared with their teacher.
    BenchEncoders {
        /// Bundles; the first is the baseline.
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
        #[arg(long, default_value_t = 500)]
        frames: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Prune a detector's encoder: global unstructured magnitude pruning (--sparsity) or
    /// structured pruning of one layer (--layer conv0 --fraction 0.5), which makes the
    /// network physically smaller. Writes an uncalibrated bundle: calibrate it next.
    Prune {
        #[arg(long, default_value = "models/default")]
        bundle: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Fraction of all conv and dense weights to zero (smallest magnitude first).
        #[arg(long, conflicts_with_all = ["layer", "fraction"], required_unless_present = "layer")]
        sparsity: Option<f64>,
        /// Layer to thin: conv<i> or fc<i>.
        #[arg(long, requires = "fraction")]
        layer: Option<vae_ood_monitor::compress::prune::Layer>,
        /// Fraction of the layer's filters or neurons to remove (smallest L2 norm first), < 1.
        #[arg(long, requires = "layer")]
        fraction: Option<f64>,
    },
    /// Quantise a detector's encoder (post-training): fp16 weights, int8-dynamic (dense layers
    /// int8, activations quantised at run time) or int8-static (QDQ with activation scales from
    /// --cal frames). Writes an uncalibrated bundle: calibrate it next. tract computes
    /// int8-static and fp16 in f32: measure before assuming a speed-up
    Quantize {
        #[arg(long, default_value = "models/default")]
        bundle: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        precision: vae_ood_monitor::compress::quantize::Precision,
        /// Drives whose frames set the activation scales (int8-static; every 10th frame)
        #[arg(long, num_args = 1..)]
        cal: Vec<PathBuf>,
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
            score,
            fit,
            cal,
            tune_id,
            val_ood,
            latents,
            rank,
            k,
            windows,
            decays,
            false_alarm_rate,
            epsilon_grid,
            quiet,
        } => {
            let opts = CalibrateOptions {
                score,
                fit,
                cal,
                tune_id,
                val_ood,
                latents,
                rank,
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
        Cmd::Bag { path, dump } => bag_cmd(&path, dump.as_deref()),
        Cmd::Replay {
            bag,
            topic,
            label_topic,
            rate,
            repeat,
            clock,
            wait,
        } => replay_cmd(bag, topic, label_topic, rate, repeat, clock, wait),
        Cmd::Metrics { input } => {
            #[derive(serde::Deserialize)]
            struct In {
                scores: Vec<f64>,
                ood: Vec<bool>,
            }
            let i: In = serde_json::from_str(&std::fs::read_to_string(&input)?)?;
            let m = vae_ood_monitor::eval::metrics::metrics(&i.scores, &i.ood)
                .map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
        Cmd::Eval {
            detector,
            out,
            id,
            ood,
            input,
            labels,
            label_topic,
            topic,
            fps,
            score_threshold,
            cusum_threshold,
            recovery_frames,
            quiet,
        } => {
            match eval_cmd(
                &detector,
                &out,
                &id,
                &ood,
                &input,
                labels.as_deref(),
                label_topic,
                topic,
                fps,
                MonitorConfig {
                    score_threshold,
                    max_frame_age: None,
                    recovery: Recovery::Auto {
                        frames: recovery_frames,
                    },
                    cusum_threshold,
                },
                quiet,
            ) {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(2),
                Err(e) => Err(e),
            }
        }
        Cmd::Bench {
            detector,
            width,
            height,
            encoding,
            frames,
        } => bench(&detector, width, height, &encoding, frames),
        #[cfg(feature = "train")]
        Cmd::Train(args) => train_cmd(&args),
        #[cfg(feature = "train")]
        Cmd::Compress(args) => compress_cmd(&args),
        Cmd::Quantize {
            bundle,
            out,
            precision,
            cal,
        } => quantize_cmd(&bundle, &out, precision, &cal),
        Cmd::BenchEncoders {
            bundles,
            frames,
            threads,
        } => {
            let opts = BackendOptions {
                threads,
                ..Default::default()
            };
            let r = vae_ood_monitor::compress::bench::encoder_latency(&bundles, frames, 20, opts)
                .map_err(anyhow::Error::msg)?;
            println!("{:>9} {:>9} {:>9}  bundle", "p50 ms", "p99 ms", "speed-up");
            for l in &r {
                println!(
                    "{:9.3} {:9.3} {:8.2}x  {}",
                    l.p50_ms,
                    l.p99_ms,
                    l.speedup_p50,
                    l.bundle.display()
                );
            }
            Ok(())
        }
        Cmd::Prune {
            bundle,
            out,
            sparsity,
            layer,
            fraction,
        } => {
            use vae_ood_monitor::compress::{prune_bundle, Pruning};
            let (op, args) = match (sparsity, layer, fraction) {
                (Some(s), _, _) => (Pruning::Unstructured(s), format!("--sparsity {s}")),
                (None, Some(l), Some(f)) => (
                    Pruning::Structured(l, f),
                    format!("--layer {l} --fraction {f}"),
                ),
                _ => bail!("give --sparsity, or --layer with --fraction"),
            };
            let command = format!("vae-ood prune --bundle {} {args}", bundle.display());
            let b = prune_bundle(&bundle, &out, op, &command).map_err(anyhow::Error::msg)?;
            println!(
                "wrote {} ({}): uncalibrated, run `vae-ood calibrate --bundle {}` next",
                out.display(),
                b.manifest.description,
                out.display()
            );
            Ok(())
        }
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
    println!("score       {}", m.score.describe());
    println!("created by  {}", m.provenance.created_by);
    if !m.provenance.trained {
        println!("WARNING     untrained placeholder detector: its verdicts are not meaningful");
    }
    Ok(())
}

fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(
            vae_ood_monitor::tools::drives::list_images(p)
                .with_context(|| format!("reading {}", p.display()))?,
        );
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
    let mut kl_detector = if with_kl { Some(args.load()?) } else { None };
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
        if let Some(det) = kl_detector.as_mut() {
            // Same decoder as the score above; the monitor itself keeps only the sum.
            if let Ok(kl) = vae_ood_monitor::tools::drives::kl_of_file(det, &file) {
                rec["kl"] = serde_json::json!(kl);
            }
        }
        println!("{rec}");
    }
    Ok(())
}

#[cfg(feature = "ros")]
fn replay_cmd(
    bag: PathBuf,
    topic: Option<String>,
    label_topic: Option<String>,
    rate: f64,
    repeat: bool,
    clock: bool,
    wait: f64,
) -> Result<()> {
    use vae_ood_monitor::ros::replay::{replay, ReplayOptions};
    let n = replay(&ReplayOptions {
        bag,
        topic,
        label_topic,
        rate,
        repeat,
        clock,
        wait: std::time::Duration::from_secs_f64(wait),
    })?;
    eprintln!("replayed {n} messages");
    Ok(())
}

#[cfg(not(feature = "ros"))]
fn replay_cmd(
    _: PathBuf,
    _: Option<String>,
    _: Option<String>,
    _: f64,
    _: bool,
    _: bool,
    _: f64,
) -> Result<()> {
    bail!("this vae-ood was built without ROS 2 support: rebuild with `cargo build --features ros` in a ROS 2 environment (source scripts/env.sh)")
}

fn bag_cmd(path: &Path, dump: Option<&str>) -> Result<()> {
    use sha2::Digest;
    use vae_ood_monitor::bag::{cdr, Bag};
    let bag = Bag::open(path)?;
    let Some(topic) = dump else {
        for t in bag.topics()? {
            println!("{}\t{}\t{}", t.name, t.msg_type, t.count);
        }
        return Ok(());
    };
    let (_, ty) = bag.camera_topic(Some(topic))?;
    let mut failure = None;
    let r = bag.visit(&[topic], &mut |m| {
        let decoded = cdr::decode_camera(&ty, &m.data);
        match decoded {
            Ok(f) => {
                let mut rec = serde_json::json!({ "log_time_ns": m.log_time_ns, "stamp_ns": f.stamp_ns, "frame_id": f.frame_id });
                match &f.image {
                    cdr::OwnedImage::Raw { width, height, encoding, is_bigendian, step, data } => {
                        rec["width"] = (*width).into();
                        rec["height"] = (*height).into();
                        rec["encoding"] = encoding.clone().into();
                        rec["is_bigendian"] = (*is_bigendian).into();
                        rec["step"] = (*step).into();
                        rec["sha256"] = format!("{:x}", sha2::Sha256::digest(data)).into();
                    }
                    cdr::OwnedImage::Compressed { format, data } => {
                        rec["format"] = format.clone().into();
                        rec["sha256"] = format!("{:x}", sha2::Sha256::digest(data)).into();
                    }
                }
                println!("{rec}");
            }
            Err(e) => {
                failure.get_or_insert(e.to_string());
            }
        }
    });
    r?;
    if let Some(e) = failure {
        bail!("undecodable message on {topic}: {e}");
    }
    Ok(())
}

/// Returns Ok(false) for a partial result.
#[allow(clippy::too_many_arguments)]
fn eval_cmd(
    args: &DetectorArgs,
    out: &Path,
    id: &[PathBuf],
    ood: &[String],
    input: &[PathBuf],
    labels: Option<&Path>,
    label_topic: Option<String>,
    topic: Option<String>,
    fps: f64,
    monitor: MonitorConfig,
    quiet: bool,
) -> Result<bool> {
    let mut inputs: Vec<EvalInput> = id
        .iter()
        .map(|p| EvalInput {
            path: p.clone(),
            label: Label::Id,
        })
        .collect();
    for o in ood {
        let (path, ty) = match o.rsplit_once('=') {
            Some((p, t)) => (PathBuf::from(p), t.to_string()),
            None => (
                PathBuf::from(o),
                Path::new(o)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "ood".into()),
            ),
        };
        inputs.push(EvalInput {
            path,
            label: Label::Ood(ty),
        });
    }
    if !input.is_empty() {
        let ranges = match (labels, &label_topic) {
            (Some(f), None) => Some(read_ranges(f)?),
            (None, Some(_)) => None,
            _ => bail!("--input needs exactly one of --labels FILE or --label-topic TOPIC"),
        };
        for i in input {
            // PATH=TYPE names the OOD type of a label-topic input's OOD frames.
            let s = i.to_string_lossy();
            let (path, ty) = match s.rsplit_once('=') {
                Some((p, t)) => (PathBuf::from(p), t.to_string()),
                None => (i.clone(), String::new()),
            };
            let label = match (&ranges, &label_topic) {
                (Some(r), _) => Label::Ranges(r.clone()),
                (None, Some(t)) => Label::Topic {
                    topic: t.clone(),
                    ood_type: ty,
                },
                _ => unreachable!("checked above"),
            };
            inputs.push(EvalInput { path, label });
        }
    }
    if inputs.is_empty() {
        bail!("nothing to evaluate: give --id, --ood or --input");
    }
    if !(fps > 0.0 && fps.is_finite()) {
        bail!("--fps must be a positive number");
    }
    let det = args.load()?;
    let (model_id, calibrated) = (
        det.model_id().to_string(),
        det.bundle.manifest.calibration.is_some(),
    );
    let cusum_threshold = monitor.cusum_threshold.or(det
        .bundle
        .manifest
        .calibration
        .as_ref()
        .map(|c| c.pipeline.cusum_threshold));
    drop(det);
    let opts = EvalOptions {
        bundle: args.bundle.clone(),
        backend: BackendOptions {
            kind: args.backend,
            threads: args.threads.max(1),
        },
        monitor,
        topic: topic.clone(),
        folder_fps: fps,
    };
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(
            vae_ood_monitor::eval::count_frames(&inputs, topic.as_deref()) as u64,
        )
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "evaluating {pos}/{len} frames [{bar:30}] {per_sec} {eta}",
        )?
        .progress_chars("=> "),
    );
    let t0 = std::time::Instant::now();
    let (frames, results) = vae_ood_monitor::eval::run(&inputs, &opts, &|n| bar.inc(n as u64))
        .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let mut report = vae_ood_monitor::eval::report::build(
        &model_id,
        calibrated,
        &frames,
        results,
        t0.elapsed().as_secs_f64(),
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    vae_ood_monitor::eval::report::write_csv(&out.join("frames.csv"), &frames)?;
    vae_ood_monitor::eval::write_plots_and_html(out, &mut report, &frames, cusum_threshold)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    print_report(&report, out);
    // An input that gave no frame at all is an error (exit 1); damage after some frames is a
    // partial result (exit 2).
    if let Some(bad) = report
        .inputs
        .iter()
        .find(|i| i.error.is_some() && i.frames == 0)
    {
        bail!("{}", bad.error.as_deref().unwrap_or("input failed"));
    }
    Ok(!report.partial)
}

fn read_ranges(path: &Path) -> Result<Vec<Range>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    if lines.next().map(|h| h.replace(' ', "")) != Some("start,end,type".into()) {
        bail!(
            "{}: the first line must be the header `start,end,type`",
            path.display()
        );
    }
    lines
        .enumerate()
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let bad = || {
                anyhow::anyhow!(
                    "{} line {}: expected `start,end,type` with times in seconds, got `{l}`",
                    path.display(),
                    i + 2
                )
            };
            if f.len() != 3 {
                return Err(bad());
            }
            let (s, e): (f64, f64) = (
                f[0].parse().map_err(|_| bad())?,
                f[1].parse().map_err(|_| bad())?,
            );
            Ok(Range {
                start_ns: (s * 1e9) as i64,
                end_ns: (e * 1e9) as i64,
                ood_type: f[2].to_string(),
            })
        })
        .collect()
}

fn print_report(r: &vae_ood_monitor::eval::report::Report, out: &Path) {
    use vae_ood_monitor::eval::report::Outcome;
    println!(
        "model {}  frames {} (scored {}, faulted {})  {:.1} frames/s  peak memory {:.0} MiB",
        r.model_id,
        r.frames,
        r.scored,
        r.faulted,
        r.throughput_fps,
        r.peak_memory_mib.unwrap_or(f64::NAN)
    );
    for i in &r.inputs {
        println!(
            "  input {}: {} frames{}",
            i.path,
            i.frames,
            i.error
                .as_ref()
                .map(|e| format!("  PARTIAL: {e}"))
                .unwrap_or_default()
        );
    }
    for (name, table) in [("score", &r.score_metrics), ("cusum", &r.cusum_metrics)] {
        for (ty, o) in table {
            match o {
                Outcome::Ok(m) => println!("  {name:5} {ty:<16} AUROC {:.4}  AUPR-in {:.4}  AUPR-out {:.4}  FPR@95TPR {:.4}  (OOD {}, ID {})", m.auroc, m.aupr_in, m.aupr_out, m.fpr_at_95_tpr, m.n_ood, m.n_id),
                Outcome::Unavailable { error } => println!("  {name:5} {ty:<16} unavailable: {error}"),
            }
        }
    }
    if let Some(s) = &r.sequential {
        println!(
            "  sequential: {} OOD segment(s), {} detected, {} missed, mean delay {} frames ({} s); {} false alarm(s) in {} ID frames = {:.2} per 1000 frames{}",
            s.segments.len(), s.detected, s.missed,
            s.mean_delay_frames.map_or("n/a".into(), |d| format!("{d:.1}")),
            s.mean_delay_s.map_or("n/a".into(), |d| format!("{d:.2}")),
            s.false_alarms, s.id_frames, s.false_alarms_per_1000_id_frames,
            s.false_alarms_per_hour.map_or(String::new(), |h| format!(", {h:.1} per hour"))
        );
    }
    for (stage, p) in &r.latency_ms {
        println!(
            "  latency {stage:<10} p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3} ms",
            p.p50, p.p90, p.p99, p.max
        );
    }
    if let Some(e) = &r.plot_error {
        println!("  plots: {e}");
    }
    println!(
        "wrote {0}/report.html, report.json, frames.csv and {1} plot(s)",
        out.display(),
        r.plots.len()
    );
}

fn calibrate_cmd(args: &DetectorArgs, out: &Path, opts: &CalibrateOptions) -> Result<()> {
    let mut det = args.load()?;
    let o = calibrate(&args.bundle, out, &mut det, opts).map_err(anyhow::Error::msg)?;
    let c = o.bundle.manifest.calibration.as_ref().expect("written");
    println!("wrote {} (model id {})", out.display(), o.bundle.model_id);
    println!("score             {}", o.bundle.manifest.score.describe());
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
    let (kl, score) = bundle.manifest.score_posterior(&post.mu, &post.logvar);
    println!(
        "{}",
        serde_json::json!({ "mu": post.mu, "logvar": post.logvar, "kl": kl, "score": score, "selected": bundle.manifest.latents.selected })
    );
    Ok(())
}

fn percentiles(v: Vec<Duration>) -> String {
    let ms = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let p = vae_ood_monitor::eval::report::percentiles(ms).expect("frames after warm-up");
    format!(
        "p50 {:7.3} ms  p90 {:7.3} ms  p99 {:7.3} ms  max {:7.3} ms",
        p.p50, p.p90, p.p99, p.max
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
    if frames == 0 {
        bail!("--frames must be at least 1");
    }
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

#[cfg(feature = "train")]
fn compress_cmd(args: &vae_ood_monitor::compress::args::CompressArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the vae-ood binary")?;
    let r =
        vae_ood_monitor::compress::sweep::run(&args.options(exe)).map_err(anyhow::Error::msg)?;
    println!(
        "{:<28} {:>9} {:>8} {:>9}  CUSUM AUROC per partition  verdict",
        "candidate", "p50 ms", "speed-up", "MACs"
    );
    for row in &r.rows {
        let a: Vec<String> = row
            .result
            .auroc_cusum
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        println!(
            "{:<28} {:9.3} {:7.2}x {:9}  {}  {}",
            row.result.spec.name,
            row.p50_ms,
            row.speedup,
            row.result.macs,
            a.join(", "),
            row.verdict
        );
    }
    match &r.selected {
        Some(s) => println!(
            "selected {s}: calibrated bundle in {}",
            args.out
                .join("candidates")
                .join(s)
                .join("calibrated")
                .display()
        ),
        None => println!("no candidate within the AUROC budget and deadline"),
    }
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}

fn quantize_cmd(
    bundle: &Path,
    out: &Path,
    precision: vae_ood_monitor::compress::quantize::Precision,
    cal: &[PathBuf],
) -> Result<()> {
    let b = Bundle::load(bundle)?;
    let onnx = std::fs::read(b.encoder_path())
        .with_context(|| format!("reading {}", b.encoder_path().display()))?;
    // Every 10th frame, counted across the drives; only those are preprocessed.
    let (mut frames, mut i) = (vec![], 0usize);
    for d in cal {
        vae_ood_monitor::tools::drives::for_each_frame(d, &mut |img| {
            if i % 10 == 0 {
                frames.push(vae_ood_monitor::preprocess::preprocess(
                    img,
                    &b.manifest.input,
                ));
            }
            i += 1;
            Ok(())
        })
        .map_err(anyhow::Error::msg)?;
    }
    let q = vae_ood_monitor::compress::quantize::quantize(&onnx, precision, &frames)
        .map_err(anyhow::Error::msg)?;
    let m = vae_ood_monitor::compress::derived_manifest(
        &b.manifest,
        format!("{}-{precision}", b.manifest.name),
        format!("{precision} quantisation of {}", b.manifest.name),
        format!("vae-ood quantize --precision {precision}"),
        None,
    );
    let nb = Bundle::write(out, m, &q)?;
    println!(
        "wrote {} ({} -> {} bytes): uncalibrated, run `vae-ood calibrate --bundle {}` next",
        nb.dir.display(),
        onnx.len(),
        q.len(),
        out.display()
    );
    Ok(())
}

#[cfg(feature = "train")]
fn train_cmd(args: &vae_ood_monitor::train::args::TrainArgs) -> Result<()> {
    use vae_ood_monitor::train;
    let config = args.config().map_err(anyhow::Error::msg)?;
    let outcome = train::train(&config, &args.out, &args.options()).map_err(anyhow::Error::msg)?;
    let s = &outcome.state;
    let costs = config.arch.layer_costs();
    println!("{:<10} {:>10} {:>12}", "layer", "params", "MACs/frame");
    for c in &costs {
        println!("{:<10} {:>10} {:>12}", c.name, c.params, c.macs);
    }
    println!(
        "{:<10} {:>10} {:>12}",
        "encoder",
        costs.iter().map(|c| c.params).sum::<usize>(),
        costs.iter().map(|c| c.macs).sum::<usize>()
    );
    match &outcome.bundle {
        Some(dir) => println!(
            "trained {} epochs in {:.0} s; best validation loss {:.2} at epoch {}\nbundle {} (uncalibrated: run `vae-ood calibrate --bundle {} ...` next)",
            s.history.len(),
            outcome.seconds,
            s.best_val_loss,
            s.best_epoch.unwrap_or(0),
            dir.display(),
            dir.display()
        ),
        None => println!(
            "stopped after {} epochs (checkpointed); continue with the same arguments plus --resume",
            s.history.len()
        ),
    }
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
    let input = InputSpec {
        width: arch.input_width as u32,
        height: arch.input_height as u32,
        channel_order: ChannelOrder::Rgb,
        layout: Layout::Nchw,
        normalize: Normalize::default(),
        resize: ResizeMode::Stretch,
        filter: Filter::Area,
    };
    let manifest = Manifest::for_encoder(
        &arch,
        input,
        name,
        &format!("UNTRAINED {preset} beta-VAE encoder with seeded weights: a placeholder whose verdicts are not meaningful"),
        outputs,
        Provenance {
            trained: false,
            created_by: format!("vae-ood gen-seeded --preset {preset} --seed {seed} --name {name}{}", if numeric_outputs { " --numeric-outputs" } else { "" }),
            training_data: "none (seeded weights)".into(),
            license: "Apache-2.0 (generated by this project)".into(),
            notes: format!("architecture: {}", serde_json::to_string(&arch)?),
        },
    );
    let bundle = Bundle::write(out, manifest, &onnx)?;
    // Prove it loads and runs before reporting success.
    Detector::load(out, BackendOptions::default())?;
    println!("wrote {} (model id {})", out.display(), bundle.model_id);
    Ok(())
}
