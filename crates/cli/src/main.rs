//! `vae-ood`: the offline tool. Works without any ROS install. Argument parsing and printing
//! only: every command is a function of `vae_ood_tools` (or the core), one module per
//! subcommand in `cmd/`.

mod cmd;
mod common;

use anyhow::Result;
use clap::{Parser, Subcommand};

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

#[derive(Subcommand)]
enum Cmd {
    /// Print a bundle's manifest summary and model id, after checking it loads.
    Info(cmd::info::Args),
    /// Score image files (PNG/JPEG) or folders of them; prints one JSON object per frame.
    Score(cmd::score::Args),
    /// Run the encoder on a raw input tensor (little-endian f32, the bundle's input shape) and
    /// print mu, logvar, the KL per latent and the score as JSON. For parity tests.
    Encode(cmd::encode::Args),
    /// Calibrate a bundle from image-folder drives (one folder = one drive): conformal scores,
    /// latent selection, CUSUM threshold for a target false-alarm rate, and window/decay/k by
    /// least detection delay on validation OOD drives. Writes a new bundle.
    Calibrate(cmd::calibrate::Args),
    /// Evaluate a detector on recorded drives (rosbag2 bags, sqlite3 or MCAP, or image folders):
    /// AUROC / AUPR / FPR@95TPR per OOD type on the score and the CUSUM statistic, detection
    /// delay and false alarms, latency per stage. Writes report.json and frames.csv to --out.
    /// Exit code 0: complete; 2: partial result (a damaged input); 1: error.
    Eval(cmd::eval::Args),
    /// One scale for the thresholds of several calibrated detectors run together (the node's
    /// `threshold_scale`), from their largest statistic on the same clear tuning drives, so
    /// that the combined verdict keeps the drive-level false-alarm promise of one threshold.
    JointThreshold(cmd::joint::Args),
    /// Inspect a rosbag2 bag (sqlite3 or MCAP): its topics, or (with --dump TOPIC) one JSON
    /// line per decoded camera frame: stamp, frame id, size, encoding, step, SHA-256 of the data.
    Bag(cmd::bag::Args),
    /// Publish a bag's camera topic (and --label-topic) at the recorded rate over ROS 2: runs
    /// `vae_ood_replay` (the ROS package's executable) from beside this binary.
    Replay(cmd::replay::Args),
    /// Detection metrics for given scores and labels (JSON: {"scores": [...], "ood": [...]}).
    Metrics(cmd::metrics::MetricsArgs),
    /// Run the sequential pipeline on given scores (JSON: calibration, scores, window,
    /// epsilon_grid, decay) and print p-values, log M and S. For reference-parity tests.
    Sequential(cmd::metrics::SequentialArgs),
    /// Measure per-stage latency on synthetic raw camera frames.
    Bench(cmd::bench::Args),
    /// Dense optical flow (Farnebäck) between two greyscale frames, as a .npy array.
    Flow(cmd::flow::Args),
    #[cfg(feature = "train")]
    Train(cmd::train::TrainArgs),
    /// The paper's compression methodology: from a trained teacher (its full VAE), build
    /// pruned, pruned-and-distilled and quantised candidates, recalibrate and evaluate each,
    /// measure every encoder's latency in one run, and select the fastest whose CUSUM AUROC
    /// stays within --auroc-drop of the teacher's in every OOD partition. Resumable; writes
    /// report.json, report.html and plots
    #[cfg(feature = "train")]
    Compress(cmd::compress::CompressArgs),
    /// Encoder latency of several bundles in one run (interleaved), with speed-ups against the
    /// first: how compressed detectors are compared with their teacher.
    BenchEncoders(cmd::bench::EncodersArgs),
    /// Prune a detector's encoder: global unstructured magnitude pruning (--sparsity) or
    /// structured pruning of one layer (--layer conv0 --fraction 0.5), which makes the
    /// network physically smaller. Writes an uncalibrated bundle: calibrate it next.
    Prune(cmd::prune::Args),
    /// Quantise a detector's encoder (post-training): fp16 weights, int8-dynamic (dense layers
    /// int8, activations quantised at run time) or int8-static (QDQ with activation scales from
    /// --cal frames). Writes an uncalibrated bundle: calibrate it next. tract computes
    /// int8-static and fp16 in f32: measure before assuming a speed-up
    Quantize(cmd::prune::QuantizeArgs),
    /// Create a bundle holding an UNTRAINED encoder of the paper's architecture with seeded
    /// weights (a placeholder until a trained detector exists: its verdicts mean nothing).
    GenSeeded(cmd::info::GenSeededArgs),
    /// Make a bundle from an encoder trained elsewhere (e.g. a PyTorch VAE exported to ONNX):
    /// input size and layout and the mu/logvar outputs read from the file, the rest from flags
    /// (defaults printed), checked by a dry run. Calibrate it next
    Import(cmd::import::Args),
    /// Merge `vae-ood eval` outputs (shards, e.g. one input each on the machines of a cluster)
    /// into one report: detection figures over every frame, exactly as one eval over all
    /// inputs; latency, throughput and memory per shard
    Report(cmd::eval::ReportArgs),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Info(a) => cmd::info::run(&a),
        Cmd::Score(a) => cmd::score::run(&a),
        Cmd::Encode(a) => cmd::encode::run(&a),
        Cmd::Calibrate(a) => cmd::calibrate::run(a),
        Cmd::Eval(a) => cmd::eval::run(&a),
        Cmd::JointThreshold(a) => cmd::joint::run(&a),
        Cmd::Bag(a) => cmd::bag::run(&a),
        Cmd::Replay(a) => cmd::replay::run(&a),
        Cmd::Metrics(a) => cmd::metrics::metrics(&a),
        Cmd::Sequential(a) => cmd::metrics::sequential(&a),
        Cmd::Bench(a) => cmd::bench::run(&a),
        Cmd::Flow(a) => cmd::flow::run(&a),
        #[cfg(feature = "train")]
        Cmd::Train(a) => cmd::train::run(&a),
        #[cfg(feature = "train")]
        Cmd::Compress(a) => cmd::compress::run(&a),
        Cmd::BenchEncoders(a) => cmd::bench::encoders(&a),
        Cmd::Prune(a) => cmd::prune::run(&a),
        Cmd::Quantize(a) => cmd::prune::quantize(&a),
        Cmd::GenSeeded(a) => cmd::info::gen_seeded(&a),
        Cmd::Import(a) => cmd::import::run(&a),
        Cmd::Report(a) => cmd::eval::report(&a),
    }
}
