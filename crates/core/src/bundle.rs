//! Detector bundles: one directory per detector, holding `manifest.yaml` and the ONNX encoder.
//!
//! The manifest says everything needed to score a frame the way the detector was built to be
//! scored: the input spec (preprocessing), which encoder output is mu and which is logvar,
//! which latents make up the score, and where the detector came from. Every problem is found
//! at load time, with a message that names the file and the fix, never mid-drive.

use crate::preprocess::InputSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// The newest manifest format this build reads. Version 2 added `detector` (the optical-flow
/// detector), version 3 `calibration.relative` (the drive-relative branch), version 4
/// `calibration.direction` (the direction branch), version 5 `calibration.direction.mscn` (the
/// branch on natural-scene statistics), version 6 `calibration.startup` (the start-up phase),
/// version 7 the same certified with its gentle end, version 8 `calibration.change` (the change
/// branch); a bundle is written with the oldest version that holds what it has, so that older
/// releases read it.
pub const FORMAT_VERSION: u32 = 8;
/// The version a bundle with a change branch needs.
pub const CHANGE_FORMAT_VERSION: u32 = 8;
/// The version a bundle with a direction branch needs.
pub const DIRECTION_FORMAT_VERSION: u32 = 4;
/// The version a bundle whose direction branch measures the MSCN statistics needs.
pub const MSCN_FORMAT_VERSION: u32 = 5;
/// The version a bundle with a start-up phase needs.
pub const STARTUP_FORMAT_VERSION: u32 = 6;
/// The version a start-up phase certified with its gentle end needs (session 43: S falls with
/// the thresholds as the phase ends). Version 6's phase was certified with a plain fall; this
/// build ends it gently too, which only lowers S (no earlier first alarm), but a version-6
/// build would add alarms to a phase certified gently.
pub const GENTLE_STARTUP_FORMAT_VERSION: u32 = 7;
/// The version a bundle with a drive-relative branch needs.
pub const RELATIVE_FORMAT_VERSION: u32 = 3;
/// The version flow bundles are written with (without a drive-relative branch).
pub const FLOW_FORMAT_VERSION: u32 = 2;
/// The oldest manifest format this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// The version image bundles are written with.
pub const IMAGE_FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.yaml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Human name, e.g. "duckietown-bvae-v1".
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub encoder: EncoderFile,
    /// Which detector the encoder belongs to. Absent: the β-VAE image detector.
    #[serde(default, skip_serializing_if = "DetectorSpec::is_image")]
    pub detector: DetectorSpec,
    /// The image detector: how a frame becomes the encoder's input. The flow detector: one
    /// prepared grey frame (its size is the flow crop's; `detector` says the rest).
    pub input: InputSpec,
    pub outputs: Outputs,
    pub latents: Latents,
    /// The nonconformity score. Absent: the paper's KL of `latents.selected`.
    #[serde(default, skip_serializing_if = "crate::score::ScoreSpec::is_kl")]
    pub score: crate::score::ScoreSpec,
    pub provenance: Provenance,
    /// Present once `vae-ood calibrate` has run: turns per-frame scores into a calibrated
    /// sequential verdict. Without it the node falls back to a per-frame score threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationSection>,
}

/// Conformal calibration scores, the sequential pipeline's parameters and the data they came
/// from (drive ids per role; the roles are disjoint by drive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSection {
    pub pipeline: crate::detection::PipelineParams,
    /// In-distribution false alarms the threshold was tuned for, as a share of frames.
    pub target_false_alarm_rate: f64,
    /// What the threshold promises, on how many tuning drives (absent in bundles calibrated
    /// before the drive-level threshold: their threshold is a quantile over frames, which
    /// correlated frames void).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<crate::detection::tuning::ThresholdGuarantee>,
    /// The camera whose drives calibrated it (`vae-ood calibrate --camera`), when named. A
    /// threshold's guarantee is about drives like the tuning drives: another camera's view
    /// (mounting, optics, exposure) is not, so a node watching another camera warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// How `latents.selected` was chosen.
    pub selection: String,
    pub data: CalibrationData,
    /// Nonconformity scores (selected latents) of the calibration frames.
    pub scores: Vec<f64>,
    /// Flow detectors: the reference design's per-branch rule ([`BranchThresholds`]), an
    /// alarm path beside the calibrated pipeline that a node uses only when told to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_thresholds: Option<BranchThresholds>,
    /// The drive-relative branch ([`crate::detection::relative`]), a second sequential
    /// statistic beside the pooled one (format version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<RelativeSection>,
    /// The direction branch ([`crate::detection::direction`]), a sequential statistic of the
    /// frame's weakest direction beside the score (image detectors, format version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<crate::detection::direction::DirectionSection>,
    /// The change branch ([`crate::detection::change`]), a sequential statistic of how far the
    /// posterior moved since the frame before (image detectors, format version 8). The
    /// start-up phase does not lower its threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<crate::detection::change::ChangeSection>,
    /// The start-up phase ([`crate::detection::startup`]): every threshold as calibrated for a
    /// stream's first frames, a lower share of it after them (format version 6; 7 when
    /// certified with its gentle end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<crate::detection::startup::StartupSection>,
}

/// The drive-relative branch of a calibrated bundle: its baseline, its conformal scores, its
/// threshold, and how it shares the false-alarm budget with the pooled branch
/// ([`crate::detection::relative::split`]). It runs with the pipeline's window, epsilon grid
/// and decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelativeSection {
    pub baseline: crate::detection::relative::BaselineParams,
    /// The relative branch's alarm threshold on its S (its tuned one times its share).
    pub cusum_threshold: f64,
    /// Multiplies `pipeline.cusum_threshold` once the stream has a baseline (the pooled branch
    /// runs at its own threshold before that: the start-up hold).
    pub pooled_scale: f64,
    /// Tuning drives on which either branch alarms under this split, and how many one
    /// threshold's promise allows (`guarantee`).
    pub tuning_drives_alarmed: usize,
    pub tuning_drives_allowed: usize,
    /// Relative scores of the calibration frames (each drive against its own past).
    pub scores: Vec<f64>,
}

impl CalibrationSection {
    /// Every calibrated threshold the start-up phase lowers
    /// ([`crate::detection::startup::calibrated_thresholds`]).
    pub fn startup_thresholds(&self) -> Vec<f64> {
        crate::detection::startup::calibrated_thresholds(
            self.pipeline.cusum_threshold,
            self.relative
                .as_ref()
                .map(|r| (r.cusum_threshold, r.pooled_scale)),
            self.direction.as_ref().map(|d| d.pipeline.cusum_threshold),
        )
    }
}

impl RelativeSection {
    pub fn validate(&self) -> Result<(), crate::detection::DetectionError> {
        self.baseline.validate()?;
        let bad = |param, v: f64, range: &str| crate::detection::DetectionError::InvalidParam {
            param,
            reason: format!("must be {range}, got {v}"),
        };
        if !self.cusum_threshold.is_finite() || self.cusum_threshold <= 0.0 {
            return Err(bad(
                "relative.cusum_threshold",
                self.cusum_threshold,
                "finite and > 0",
            ));
        }
        // A scale of a certified threshold, as the node's threshold_scale: under 1 it would
        // loosen it.
        let range = crate::monitor::THRESHOLD_SCALE_RANGE;
        if !range.contains(&self.pooled_scale) {
            let within = format!("{}..={}", range.start(), range.end());
            return Err(bad("relative.pooled_scale", self.pooled_scale, &within));
        }
        crate::detection::Calibration::new(self.scores.clone()).map(|_| ())
    }

    /// One line for tools' summaries: the baseline, the threshold and the split.
    pub fn describe(&self) -> String {
        let b = &self.baseline;
        format!(
            "baseline {} frames, {} old; threshold {:.4}; pooled threshold x{} after the first {} frames",
            b.window,
            b.gap,
            self.cusum_threshold,
            self.pooled_scale,
            b.hold()
        )
    }
}

/// The reference design's verdict for the flow detector (the paper authors' RTCSA 2022 code):
/// a frame is OOD when the KL of either branch (horizontal or vertical flow) exceeds that
/// branch's threshold. The reference never configured its thresholds; `vae-ood calibrate`
/// sets each to the largest KL of that branch over the calibration frames, so that no
/// calibration frame alarms. Uncalibrated in the sense that matters: one frame decides, with
/// no false-alarm rate behind it (SAFETY.md). Kept to compare with the reference and for users
/// who want an alarm on a single extreme stack.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchThresholds {
    pub horizontal: f64,
    pub vertical: f64,
}

impl BranchThresholds {
    /// The largest KL of each branch over `branch_kl` (horizontal, vertical); `None` when empty.
    pub fn largest(branch_kl: impl IntoIterator<Item = [f64; 2]>) -> Option<Self> {
        branch_kl.into_iter().fold(None, |t, [h, v]| {
            let t = t.unwrap_or(Self {
                horizontal: h,
                vertical: v,
            });
            Some(Self {
                horizontal: t.horizontal.max(h),
                vertical: t.vertical.max(v),
            })
        })
    }

    /// Whether either branch's KL is over its threshold.
    pub fn exceeded(&self, [h, v]: [f64; 2]) -> bool {
        h > self.horizontal || v > self.vertical
    }

    /// How far over its threshold the nearer-to-alarm branch is: max(h / horizontal,
    /// v / vertical), above 1 exactly when [`Self::exceeded`]. The rule as one score, for AUROC.
    pub fn ratio(&self, [h, v]: [f64; 2]) -> f64 {
        (h / self.horizontal).max(v / self.vertical)
    }

    /// Both thresholds finite and positive (as a bundle must hold them).
    pub fn validate(&self) -> Result<(), BadBranchThresholds> {
        if [self.horizontal, self.vertical]
            .iter()
            .all(|t| t.is_finite() && *t > 0.0)
        {
            Ok(())
        } else {
            Err(BadBranchThresholds(*self))
        }
    }
}

/// Per-branch thresholds that no KL could be compared with.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("horizontal {} and vertical {} must be finite and positive (a KL): calibrate the bundle again with `vae-ood calibrate`, or remove the section", .0.horizontal, .0.vertical)]
pub struct BadBranchThresholds(pub BranchThresholds);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationData {
    pub calibration: Vec<String>,
    pub tuning_id: Vec<String>,
    pub validation_ood: Vec<String>,
}

/// The detector kind and what it needs beyond the encoder.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DetectorSpec {
    /// The paper's β-VAE over single frames.
    #[default]
    Image,
    /// The optical-flow VAE: stacked flow fields between consecutive frames, in two branches
    /// (horizontal and vertical flow), each with half of the latents.
    Flow(crate::flow::FlowSpec),
}

impl DetectorSpec {
    pub fn is_image(&self) -> bool {
        matches!(self, Self::Image)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Flow(_) => "flow",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderFile {
    /// Path of the ONNX file, relative to the bundle directory.
    pub path: String,
    /// SHA-256 of the file (hex): a bundle whose encoder changed is refused.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    pub mu: OutputRef,
    pub logvar: OutputRef,
}

/// An encoder output, by ONNX name or by position (PyTorch exports name outputs by number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum OutputRef {
    Name { name: String },
    Index { index: usize },
}

impl fmt::Display for OutputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name { name } => write!(f, "'{name}'"),
            Self::Index { index } => write!(f, "#{index}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latents {
    /// Latent dimension of the encoder (length of mu and logvar).
    pub count: usize,
    /// Latent indices summed into the KL score (every latent for the Mahalanobis score).
    pub selected: Vec<usize>,
}

/// Where the detector came from. Free text except `trained`, which the node reports so that
/// nobody mistakes an untrained placeholder for a working detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// False for seeded (untrained) encoders: their verdicts are not meaningful.
    pub trained: bool,
    /// The command or tool that produced the bundle.
    pub created_by: String,
    #[serde(default)]
    pub training_data: String,
    #[serde(default)]
    pub license: String,
    #[serde(default)]
    pub notes: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source} (is this a detector bundle directory? it needs {MANIFEST_FILE} and the ONNX encoder)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: manifest format_version {found} is not supported by this build (it reads versions {MIN_FORMAT_VERSION} to {FORMAT_VERSION}); use a matching vae_ood_monitor release or re-export the bundle")]
    UnsupportedVersion { path: PathBuf, found: u64 },
    #[error("{path}: SHA-256 {actual} does not match the manifest's {expected}; the encoder changed after the bundle was made: re-create the bundle")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: cannot load the encoder: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("encoder and manifest disagree: {0}")]
    ShapeMismatch(String),
    #[error("backend unavailable: {0}")]
    Backend(String),
    #[error("the encoder failed its dry run on a zero input: {0}")]
    DryRun(crate::encoder::InferenceError),
}

impl Manifest {
    /// The encoder's input shape: the input spec's for the image detector, [1, 2 x depth,
    /// crop height, crop width] for the flow detector.
    pub fn encoder_input_shape(&self) -> [usize; 4] {
        match &self.detector {
            DetectorSpec::Image => self.input.shape(),
            DetectorSpec::Flow(f) => f.encoder_shape(),
        }
    }

    /// KL per latent and the nonconformity score of one posterior, as this bundle scores it;
    /// `detail` holds the frame's detail features when the score asks for them (else empty).
    pub fn score_posterior(&self, mu: &[f32], logvar: &[f32], detail: &[f64]) -> (Vec<f64>, f64) {
        let (kl, score, _) = self.score_posterior_with_tails(mu, logvar, detail);
        (kl, score)
    }

    /// [`Self::score_posterior`] with the score's two tail scores when it has two parts
    /// ([`crate::score::ScoreSpec::score_with_tails`]), from the same pass.
    pub fn score_posterior_with_tails(
        &self,
        mu: &[f32],
        logvar: &[f32],
        detail: &[f64],
    ) -> (Vec<f64>, f64, Option<[f64; 2]>) {
        let kl = crate::score::kl_per_latent(mu, logvar);
        let (score, tails) =
            self.score
                .score_with_tails(&self.latents.selected, mu, logvar, &kl, detail);
        (kl, score, tails)
    }

    /// The manifest of an encoder of the paper's family (see [`crate::arch`]) stored as
    /// `encoder.onnx`, all latents selected, not calibrated.
    pub fn for_encoder(
        arch: &crate::arch::EncoderArch,
        input: InputSpec,
        name: &str,
        description: &str,
        outputs: Outputs,
        provenance: Provenance,
    ) -> Self {
        Self::for_image_encoder(arch.latents, input, name, description, outputs, provenance)
    }

    /// The manifest of any image encoder with `latents` latents stored as `encoder.onnx`
    /// (`vae-ood import`'s, whose architecture is not ours), all latents selected, not
    /// calibrated.
    pub fn for_image_encoder(
        latents: usize,
        input: InputSpec,
        name: &str,
        description: &str,
        outputs: Outputs,
        provenance: Provenance,
    ) -> Self {
        Manifest {
            format_version: IMAGE_FORMAT_VERSION,
            name: name.into(),
            description: description.into(),
            encoder: EncoderFile {
                path: "encoder.onnx".into(),
                sha256: String::new(),
            },
            detector: DetectorSpec::Image,
            input,
            outputs,
            latents: Latents {
                count: latents,
                selected: (0..latents).collect(),
            },
            score: Default::default(),
            calibration: None,
            provenance,
        }
    }

    /// The manifest of a flow detector's encoder (two branches of `arch.latents / 2`), stored
    /// as `encoder.onnx`, all latents selected, not calibrated.
    pub fn for_flow_encoder(
        arch: &crate::arch::EncoderArch,
        flow: crate::flow::FlowSpec,
        name: &str,
        description: &str,
        outputs: Outputs,
        provenance: Provenance,
    ) -> Self {
        let input = InputSpec {
            width: flow.input.crop_width as u32,
            height: flow.input.crop_height as u32,
            channel_order: crate::preprocess::ChannelOrder::Gray,
            layout: crate::preprocess::Layout::Nchw,
            normalize: Default::default(),
            resize: crate::preprocess::ResizeMode::Stretch,
            filter: crate::preprocess::Filter::Bilinear,
        };
        let mut m = Self::for_encoder(arch, input, name, description, outputs, provenance);
        m.format_version = FLOW_FORMAT_VERSION;
        m.detector = DetectorSpec::Flow(flow);
        m
    }
}

/// A loaded, checked bundle (the encoder itself is loaded by a backend).
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Content hash of everything that determines a score: the model id in every verdict.
    pub model_id: String,
}

impl Manifest {
    /// Parses and checks a manifest's text (`path` names it in errors): format version
    /// first, then the schema, input spec, latents, score and calibration. Never panics, on
    /// any text (fuzzed: fuzz/fuzz_targets/manifest.rs).
    pub fn parse(text: &str, path: &Path) -> Result<Self, BundleError> {
        let bad = |reason: String| BundleError::Manifest {
            path: path.to_path_buf(),
            reason,
        };

        // Check the version before the schema, so a newer manifest gets the version error.
        let raw: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| bad(e.to_string()))?;
        match raw
            .get("format_version")
            .and_then(serde_yaml::Value::as_u64)
        {
            Some(v) if (u64::from(MIN_FORMAT_VERSION)..=u64::from(FORMAT_VERSION)).contains(&v) => {
            }
            Some(found) => {
                return Err(BundleError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    found,
                })
            }
            None => return Err(bad("missing or non-integer 'format_version'".into())),
        }
        let manifest: Manifest = serde_yaml::from_value(raw).map_err(|e| bad(e.to_string()))?;
        manifest
            .input
            .validate()
            .map_err(|e| bad(format!("input: {e}")))?;
        let l = &manifest.latents;
        if l.count == 0 {
            return Err(bad("latents.count must be positive".into()));
        }
        if let DetectorSpec::Flow(f) = &manifest.detector {
            if manifest.format_version < 2 {
                return Err(bad(
                    "a 'detector' section needs format_version 2 (version 1 knew only the image detector)".into(),
                ));
            }
            f.validate().map_err(|e| bad(format!("detector: {e}")))?;
            let i = &manifest.input;
            if (i.width as usize, i.height as usize) != (f.input.crop_width, f.input.crop_height)
                || i.channel_order != crate::preprocess::ChannelOrder::Gray
            {
                return Err(bad(format!(
                    "input must describe the flow detector's prepared frame: gray, {}x{} (the crop), got {:?} {}x{}",
                    f.input.crop_width, f.input.crop_height, i.channel_order, i.width, i.height
                )));
            }
            if !l.count.is_multiple_of(2) {
                return Err(bad(format!(
                    "latents.count {} must be even: the flow detector's two branches have half each",
                    l.count
                )));
            }
        }
        if l.selected.is_empty() {
            return Err(bad(
                "latents.selected is empty: at least one latent must be scored".into(),
            ));
        }
        if let Some(i) = l.selected.iter().find(|&&i| i >= l.count) {
            return Err(bad(format!(
                "latents.selected holds {i}, but the encoder has only {} latents",
                l.count
            )));
        }
        let mut sorted = l.selected.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != l.selected.len() {
            return Err(bad("latents.selected lists a latent twice".into()));
        }

        // Each detector kind measures its own extra features: the image detector its detail
        // channel, the flow detector its motion residual; a score asking for the other kind's
        // would fault on every frame.
        let flow = matches!(manifest.detector, DetectorSpec::Flow(_));
        if flow && manifest.score.detail().is_some() {
            return Err(bad(
                "score.detail describes an image; a flow detector's reference cannot use it".into(),
            ));
        }
        if !flow && manifest.score.motion_residual() {
            return Err(bad(
                "score.motion_residual needs a flow detector (detector.kind: flow)".into(),
            ));
        }
        manifest
            .score
            .validate(l.count)
            .map_err(|e| bad(format!("score: {e}")))?;
        if let Some(c) = &manifest.calibration {
            c.pipeline
                .validate()
                .map_err(|e| bad(format!("calibration.pipeline: {e}")))?;
            crate::detection::Calibration::new(c.scores.clone())
                .map_err(|e| bad(format!("calibration.scores: {e}")))?;
            if let Some(r) = &c.relative {
                if manifest.format_version < RELATIVE_FORMAT_VERSION {
                    return Err(bad(format!("calibration.relative needs format_version {RELATIVE_FORMAT_VERSION} (older versions knew only the pooled statistic)")));
                }
                r.validate()
                    .map_err(|e| bad(format!("calibration.relative: {e}")))?;
            }
            if let Some(d) = &c.direction {
                if manifest.format_version < DIRECTION_FORMAT_VERSION {
                    return Err(bad(format!("calibration.direction needs format_version {DIRECTION_FORMAT_VERSION} (older versions knew no direction branch)")));
                }
                if d.mscn.is_some() && manifest.format_version < MSCN_FORMAT_VERSION {
                    return Err(bad(format!("calibration.direction.mscn needs format_version {MSCN_FORMAT_VERSION} (older versions knew only the weakest direction)")));
                }
                if flow {
                    return Err(bad("calibration.direction needs an image detector: the flow detector's input is motion, not a frame's detail".into()));
                }
                d.validate()
                    .map_err(|e| bad(format!("calibration.direction: {e}")))?;
            }
            if let Some(ch) = &c.change {
                if manifest.format_version < CHANGE_FORMAT_VERSION {
                    return Err(bad(format!("calibration.change needs format_version {CHANGE_FORMAT_VERSION} (older versions knew no change branch)")));
                }
                if flow {
                    return Err(bad("calibration.change needs an image detector: the flow detector's posterior describes motion already".into()));
                }
                ch.validate(l.count)
                    .map_err(|e| bad(format!("calibration.change: {e}")))?;
            }
            if let Some(st) = &c.startup {
                if manifest.format_version < STARTUP_FORMAT_VERSION {
                    return Err(bad(format!("calibration.startup needs format_version {STARTUP_FORMAT_VERSION} (older versions held every threshold for the whole stream)")));
                }
                st.validate().map_err(|e| bad(e.to_string()))?;
            }
            if let Some(t) = &c.branch_thresholds {
                if !flow {
                    return Err(bad("calibration.branch_thresholds needs a flow detector (detector.kind: flow): an image detector has no branches".into()));
                }
                t.validate()
                    .map_err(|e| bad(format!("calibration.branch_thresholds: {e}")))?;
            }
        }
        Ok(manifest)
    }
}

impl Bundle {
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &path)?;

        let encoder = dir.join(&manifest.encoder.path);
        let bytes = std::fs::read(&encoder).map_err(|source| BundleError::Io {
            path: encoder.clone(),
            source,
        })?;
        let actual = hex(&Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&manifest.encoder.sha256) {
            return Err(BundleError::HashMismatch {
                path: encoder,
                expected: manifest.encoder.sha256.clone(),
                actual,
            });
        }
        let model_id = model_id(&manifest);
        Ok(Self {
            dir,
            manifest,
            model_id,
        })
    }

    pub fn encoder_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.encoder.path)
    }

    /// Writes `manifest` and `encoder_bytes` as a bundle in `dir` (created if needed), filling
    /// in the encoder hash.
    pub fn write(
        dir: impl AsRef<Path>,
        mut manifest: Manifest,
        encoder_bytes: &[u8],
    ) -> Result<Self, BundleError> {
        let dir = dir.as_ref();
        let io = |path: PathBuf| move |source| BundleError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        manifest.encoder.sha256 = hex(&Sha256::digest(encoder_bytes));
        let enc = dir.join(&manifest.encoder.path);
        std::fs::write(&enc, encoder_bytes).map_err(io(enc.clone()))?;
        let text = serde_yaml::to_string(&manifest).expect("manifest serialises");
        let header = "# Detector bundle manifest (vae_ood_monitor). Schema: docs/bundle.md\n";
        let path = dir.join(MANIFEST_FILE);
        std::fs::write(&path, format!("{header}{text}")).map_err(io(path))?;
        Self::load(dir)
    }
}

/// Hash of the encoder bytes plus the manifest fields that change what a score means.
fn model_id(m: &Manifest) -> String {
    let mut h = Sha256::new();
    h.update(m.encoder.sha256.to_ascii_lowercase().as_bytes());
    // The calibration changes verdicts, not scores, but a verdict must trace to it too.
    h.update(
        serde_json::to_vec(&(&m.input, &m.outputs, &m.latents, &m.calibration))
            .expect("serialisable"),
    );
    // Hashed only when present, so image bundles keep the ids they had before the field
    // existed.
    if !m.detector.is_image() {
        h.update(serde_json::to_vec(&m.detector).expect("serialisable"));
    }
    // Hashed only when present, so KL bundles keep the ids they had before the field existed.
    if !m.score.is_kl() {
        h.update(serde_json::to_vec(&m.score).expect("serialisable"));
    }
    format!("{}-{}", m.name, &hex(&h.finalize())[..12])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
