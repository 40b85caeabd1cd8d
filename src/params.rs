//! The node's parameters: one table gives every name, default and description, so the node
//! declares them (served by r2r's parameter services: `ros2 param list/get/describe`), the
//! `--describe-parameters` flag prints them, and tests check config and launch files against
//! them. Defaults here equal `config/monitor.yaml`.

use r2r::ParameterValue;
use serde::Serialize;
use std::time::Duration;
use vae_ood_core::encoder::BackendKind;
use vae_ood_core::monitor::Recovery;

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DefaultValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(&'static str),
    StrArray(&'static [&'static str]),
    DoubleArray(&'static [f64]),
}

#[derive(Debug, Clone, Serialize)]
pub struct ParamDecl {
    pub name: &'static str,
    pub default: DefaultValue,
    pub description: &'static str,
    /// Can change at run time (`ros2 param set`); every other parameter is read once at
    /// start-up, and a set is refused as read-only.
    pub runtime: bool,
    /// Inclusive bounds, shown by `ros2 param describe`; a set outside them is refused.
    pub range: Option<Range>,
    /// What else it accepts, in words (`ros2 param describe`'s "Constraints:").
    pub constraints: &'static str,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum Range {
    Double(f64, f64),
    Int(i64, i64),
}

/// The fields a declaration leaves out: read-only, no range, no further constraint.
pub const READ_ONLY: ParamDecl = ParamDecl {
    name: "",
    default: DefaultValue::Bool(false),
    description: "",
    runtime: false,
    range: None,
    constraints: "",
};

// `..READ_ONLY` fills what a declaration leaves out; a declaration that gives every field makes
// it redundant, which is fine.
macro_rules! decl {
    ($name:literal, $kind:ident($v:expr), $desc:literal $(, $field:ident: $value:expr)*) => {
        #[allow(clippy::needless_update)]
        ParamDecl {
            name: $name,
            default: DefaultValue::$kind($v),
            description: $desc,
            $($field: $value,)*
            ..READ_ONLY
        }
    };
}

impl ParamDecl {
    /// The constraints r2r serves and enforces for this parameter.
    pub fn ros_constraints(&self) -> r2r::ParameterConstraints {
        r2r::ParameterConstraints {
            read_only: !self.runtime,
            floating_point_range: match self.range {
                Some(Range::Double(lo, hi)) => Some((lo, hi)),
                _ => None,
            },
            integer_range: match self.range {
                Some(Range::Int(lo, hi)) => Some((lo, hi)),
                _ => None,
            },
            additional_constraints: self.constraints.into(),
        }
    }
}

/// The largest finite double: "no upper bound" in a ROS range, which must be finite.
const MAX: f64 = f64::MAX;

/// The deployment default detector.
pub const DEFAULT_BUNDLE: &str = "models/compressed";

pub const PARAMS: &[ParamDecl] = &[
    decl!("model_bundle", Str(DEFAULT_BUNDLE), "Detector bundle directory. A relative path is looked up in the package's share directory, then the working directory. models/compressed is the compressed default detector; models/default its teacher. One detector; for several use model_bundles (setting both to other values than their defaults is an error)."),
    decl!("model_bundles", StrArray(&[DEFAULT_BUNDLE]), "Detector bundles run on the same camera, each with its own pipeline and outputs under ~/<bundle directory name>/ (score, p_value, martingale, cusum, ood, verdict); ~/ood is true when any of them is not OK (OOD, STARTING or FAULT). With one bundle the outputs stay at ~/score etc. Defaults to model_bundle when left at its default."),
    decl!("backend", Str("tract"), "Inference backend: 'tract' (CPU), 'cuda' (NVIDIA GPU; a build with the cargo feature 'cuda', else a start-up error naming what is missing), 'cuda-fp16' (the same in half precision; slower and less exact with tract-cuda 0.23.9, docs/gpu.md) or 'auto' (the GPU when usable, else the CPU; the choice is logged and in /diagnostics and every ~/verdict).", constraints: "tract | cuda | cuda-fp16 | auto"),
    decl!("threads", Int(1), "Inference threads (tract). 1 leaves the other cores to the rest of the robot.", range: Some(Range::Int(1, 64))),
    decl!("transport", Str("raw"), "Camera transport: 'raw' (sensor_msgs/Image on 'image') or 'compressed' (sensor_msgs/CompressedImage on 'image/compressed').", constraints: "raw | compressed"),
    decl!("image_qos", Str("sensor_data"), "Camera subscription QoS: 'sensor_data' (best effort, as camera drivers publish) or 'reliable'.", constraints: "sensor_data | reliable"),
    decl!("image_qos_depth", Int(5), "Camera subscription queue depth. The monitor always scores the newest frame and counts older ones as dropped.", range: Some(Range::Int(1, 100))),
    decl!("score_threshold", Double(100.0), "Per-frame decision: a frame whose nonconformity score (the bundle's: KL summed over the selected latents, or Mahalanobis distance) exceeds this is out of distribution.", runtime: true, range: Some(Range::Double(0.0, MAX))),
    decl!("cusum_threshold", Double(0.0), "CUSUM alarm threshold for calibrated bundles (verdict OOD when S exceeds it). 0 uses the threshold tuned into the bundle, and the node then shows that threshold here (the value in force); setting 0 at run time goes back to it. With a drive-relative branch it is the pooled statistic's own threshold, multiplied by the bundle's pooled_scale after the start-up hold (~/verdict's cusum_threshold shows the one in force).", runtime: true, range: Some(Range::Double(0.0, MAX)), constraints: "0 = the bundle's own threshold; the node then shows the threshold in force. Settable at run time with one calibrated bundle only"),
    decl!("threshold_scale", Double(1.0), "Multiplies every calibrated bundle's own cusum_threshold (not an explicit cusum_threshold). With several detectors set it to their joint scale (vae-ood joint-threshold; for models/compressed with models/flow: 1.51), so that the combined verdict keeps the drive-level false-alarm promise each threshold makes alone instead of their sum.", range: Some(Range::Double(1.0, 100.0))),
    decl!("threshold_scales", DoubleArray(&[]), "One scale per entry of model_bundles, in order, each multiplying that bundle's own cusum_threshold in place of threshold_scale (on every camera that runs the bundle): an unequal split of the detectors' false-alarm budget, one detector kept at its own threshold and the others raised further, as vae-ood joint-threshold prints it. Write each as a decimal (1.0, not 1). Empty: threshold_scale for every bundle.", constraints: "empty, or one value in 1..=100 per model_bundles entry"),
    decl!("recovery", Str("auto"), "How a calibrated monitor leaves OOD: 'auto' (S at or under recovery_level x the threshold for recovery_frames consecutive frames) or 'manual' (only the ~/reset service).", constraints: "auto | manual"),
    decl!("recovery_frames", Int(10), "Consecutive frames with S at or under recovery_level x the threshold before an automatic recovery from OOD.", range: Some(Range::Int(1, 100_000))),
    decl!("recovery_level", Double(0.5), "Hysteresis of automatic recovery: S must fall to this share of the CUSUM threshold, so that S hovering at the threshold does not leave OOD and alarm again. 1 = no hysteresis. Never delays an alarm.", range: Some(Range::Double(0.01, 1.0))),
    decl!("cusum_ceiling", Double(2.0), "Every calibrated branch's CUSUM statistic S is held at or under this many times its threshold in force, so that OOD outlasts a shift by a bounded time: S falls from the ceiling by about the drift (1 for the shipped bundles) or a little more on each ordinary clear frame, so recovery takes roughly (cusum_ceiling - recovery_level) x the threshold in force frames, then recovery_frames (20 to 50 frames for models/compressed on its test drives; with a drive-relative branch the pooled threshold in force is raised after the start-up hold, and the time with it). Over 1 it changes no first alarm and no false-alarm promise (S is at most the threshold until the first alarm). 0: unbounded (S keeps every frame's evidence; after a long shift recovery may take hundreds of frames).", range: Some(Range::Double(0.0, 1000.0)), constraints: "0 (unbounded) or over 1 and at most 1000 thresholds"),
    decl!("max_frame_age", Double(0.5), "Frames whose header stamp is older than this many seconds on arrival are rejected as stale, and frames stamped more than this ahead of the node's clock as ahead_of_clock (the clocks disagree); both fail safe. 0 disables the check.", range: Some(Range::Double(0.0, 86_400.0)), constraints: "0 disables the check"),
    decl!("max_repeated_frames", Int(15), "A frozen camera: a frame whose encoder posterior repeats the previous frame's bit for bit is a repeat (a real sensor's noise never gives one); more than this many repeats in a row fault (verdict OOD) until a different frame arrives. 0 disables.", range: Some(Range::Int(0, 100_000)), constraints: "0 disables the check"),
    decl!("input_timeout", Double(0.5), "If no frame arrives for this many seconds the monitor faults (verdict OOD) and repeats that verdict every input_timeout until frames return. 0 disables.", range: Some(Range::Double(0.0, 86_400.0)), constraints: "0 disables the check"),
    decl!("heartbeat_period", Double(0.1), "~/ood is republished at this period (seconds) while the inference pipeline is alive, so listeners see a dead or hung monitor as silence.", range: Some(Range::Double(0.001, 86_400.0))),
    decl!("diagnostics_period", Double(1.0), "Period in seconds of the /diagnostics status.", range: Some(Range::Double(0.01, 86_400.0))),
    decl!("expected_rate", Double(0.0), "The camera's frame rate (Hz), if known: /diagnostics warns when frames arrive at less than 90 % of it (frames lost before the node, e.g. large images over DDS; see README). 0 = not checked.", range: Some(Range::Double(0.0, 10_000.0)), constraints: "0 (not checked) or 0.1 to 10000 Hz"),
    decl!("min_rate", Double(0.0), "A slow stream: fewer frames than this (Hz) stamped in the last second reach scoring (lost by the camera, driver or transport, or dropped by this node falling behind) fault (verdict OOD) until the count is back; judged by the camera's stamps once they span a second. For a safety gate, e.g. two thirds of the camera's rate (10 for a 15 Hz camera). 0 disables.", range: Some(Range::Double(0.0, 10_000.0)), constraints: "0 disables the check"),
    decl!("max_busy", Double(0.0), "Seconds one frame or reset may take before the inference thread counts as hung: the ~/ood heartbeat stops (listeners see silence, the gate stops) and /diagnostics goes to ERROR. 0 = max(5 x heartbeat_period, 0.5 s).", range: Some(Range::Double(0.0, 3600.0)), constraints: "0 (automatic) or 0.01 to 3600 s"),
    decl!("relative_branch", Bool(true), "Bundles calibrated with a drive-relative branch (calibration.relative): run it beside the pooled statistic, the two sharing the false-alarm budget as the bundle's split says (the pooled threshold is raised by its pooled_scale once a baseline exists). false: without it, the pooled statistic at its own threshold (beside any direction branch). Ignored for bundles without the branch."),
    decl!("direction_branch", Bool(true), "Image bundles calibrated with a direction branch (calibration.direction): run it beside the pooled statistic (each frame's weakest direction, a motion blur's mark, or with calibration.direction.mscn its natural-scene statistics, which see noise, rain, snow and blur; with its own threshold), the pooled threshold at its share of the false-alarm budget. false: without it, the pooled threshold back at its value before the split (kept raised while a drive-relative branch runs, whose split was made against it; beside a running change branch, back only to its value before the change branch's split). Ignored for bundles without the branch."),
    decl!("change_branch", Bool(true), "Image bundles calibrated with a change branch (calibration.change): run it beside the pooled statistic (how far the posterior moved since the frame before, each step taken over about the calibrated frame interval by the stamps; it sees what changes between frames, such as flickering dirt, drops or interference, not a steady change), with its own threshold, which the start-up phase does not lower. false: without it (the pooled threshold keeps the share it gave the branch: fewer alarms, never more). Ignored for bundles without the branch."),
    decl!("startup_phase", Bool(true), "Calibrated bundles with a start-up phase (calibration.startup): judge a stream's first frames (calibration.startup.frames) at the calibrated thresholds and later ones at their lower cruise share (calibration.startup.cruise_scale, never under its floor; each branch's S falls with its threshold as the phase ends), both certified together on the tuning drives. false: every threshold as calibrated for the whole stream (first alarms after the start-up slower, never sooner). An explicit cusum_threshold turns it off, and so does relative_branch or direction_branch false on a bundle with that branch (the phase was certified with every branch running). Ignored for bundles without one."),
    decl!("branch_rule", Bool(false), "Flow detectors: also apply the reference design's per-branch rule (the bundle's calibration.branch_thresholds): a frame whose KL in either branch exceeds its threshold is OOD whatever the sequential test says. Off by default: the rule has no false-alarm guarantee (SAFETY.md). A flow bundle without the thresholds is a start-up error."),
    decl!("use_sim_time", Bool(false), "Use /clock (e.g. from a replayed bag) for frame ages."),
    decl!("cameras", StrArray(&[]), "Several cameras on one node: their names (e.g. [front, rear]), each configured by <name>.image_topic, <name>.transport, <name>.model_bundles and the optional overrides <name>.score_threshold and <name>.max_frame_age, with its outputs under ~/<name>/ and one /diagnostics status; ~/ood is true when any camera that gates is not OK. Empty: one camera on 'image' (or 'image/compressed') with its outputs at ~/."),
    decl!("batching", Str("auto"), "Frames of several cameras on one detector: 'auto' scores them in one batched call where that is faster (the cuda backends; on the CPU tract's batches are slower), 'always' batches, 'never' does not (for measuring).", constraints: "auto | always | never"),
    decl!("advisory_cameras", StrArray(&[]), "Cameras (of 'cameras') that are reported but do not gate: their ~/<name>/ood and diagnostics say what they see, the node's ~/ood ignores them."),
    decl!("camera", Str(""), "The name of the camera this node watches (e.g. front), for the bundles' calibration.camera: a bundle calibrated on another camera's drives is used with a warning (its false-alarm guarantee is about that camera's view). Empty: not checked."),
    decl!("managed", Bool(false), "A ROS 2 lifecycle (managed) node: it starts unconfigured and waits for a lifecycle manager (~/change_state): configure loads and checks the bundles, activate starts scoring, deactivate stops it, cleanup unloads them. ~/ood is true in every state but active. false: configured and active at start-up."),
];

/// Per-camera parameters, `<camera>.<name>`, with several cameras (`cameras`). Their defaults
/// are the node's own parameters; the node shows the values in force.
pub const CAMERA_PARAMS: &[ParamDecl] = &[
    decl!("image_topic", Str(""), "This camera's image topic (relative names are remappable). Default: <camera>/image, or <camera>/image/compressed with the compressed transport."),
    decl!("transport", Str(""), "This camera's transport: raw or compressed. Default: the node's transport."),
    decl!("model_bundles", StrArray(&[]), "The detectors on this camera. Default: the node's model_bundles. Cameras listing the same bundle share one loaded detector (their frames are batched where that pays: on a GPU)."),
    decl!("score_threshold", Double(0.0), "This camera's per-frame threshold (uncalibrated bundles). Default: the node's score_threshold."),
    decl!("max_frame_age", Double(0.0), "This camera's stale-frame limit in seconds (0 disables). Default: the node's max_frame_age."),
];

/// One camera's configuration: the node's parameters with the camera's own overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraConfig {
    /// Empty for the single camera of a node without `cameras` (outputs at `~/`).
    pub name: String,
    pub topic: String,
    pub compressed: bool,
    pub model_bundles: Vec<String>,
    pub score_threshold: f64,
    pub max_frame_age: Option<Duration>,
    /// Reported, not gating (`advisory_cameras`).
    pub advisory: bool,
}

/// The typed, validated configuration read from the declared parameters.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The detectors to run (at least one, no duplicates).
    pub model_bundles: Vec<String>,
    pub backend: BackendKind,
    pub threads: usize,
    pub compressed: bool,
    pub reliable_images: bool,
    pub image_qos_depth: usize,
    pub score_threshold: f64,
    pub max_frame_age: Option<Duration>,
    pub input_timeout: Option<Duration>,
    pub cusum_threshold: Option<f64>,
    pub threshold_scale: f64,
    /// Per entry of `model_bundles`, its own scale (`threshold_scales`); empty: `threshold_scale`.
    pub threshold_scales: Vec<f64>,
    pub recovery: Recovery,
    /// `cusum_ceiling`: S's bound in thresholds; `None`: unbounded.
    pub cusum_ceiling: Option<f64>,
    pub heartbeat_period: Duration,
    pub diagnostics_period: Duration,
    /// How long one event may take before the inference thread counts as hung.
    pub max_busy: Duration,
    /// The camera's rate, when given: fewer frames than 90 % of it is a warning.
    pub expected_rate: Option<f64>,
    /// Exact repeats in a row accepted before the camera counts as frozen.
    pub max_repeated_frames: Option<u32>,
    /// Frames a second, by the stamps, under which the stream faults.
    pub min_rate: Option<f64>,
    /// A lifecycle node: nothing loads or scores until a manager says so.
    pub managed: bool,
    /// Flow detectors also alarm by the reference design's per-branch rule.
    pub branch_rule: bool,
    pub relative_branch: bool,
    pub direction_branch: bool,
    pub change_branch: bool,
    pub startup_phase: bool,
    /// The camera's name, checked against each bundle's `calibration.camera`.
    pub camera: Option<String>,
    /// The cameras: one unnamed camera, or those `cameras` names.
    pub cameras: Vec<CameraConfig>,
    /// How frames of several cameras on one detector are scored.
    pub batching: Batching,
}

/// How the frames of several cameras that share a detector are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Batched where the backend gains from it (`vae_ood_core::monitor::batching_pays`).
    Auto,
    Always,
    Never,
}

impl NodeConfig {
    /// The scale of `bundle`'s own threshold: its entry of `threshold_scales` when that is set
    /// and lists the bundle, else `threshold_scale`.
    pub fn threshold_scale_of(&self, bundle: &str) -> f64 {
        self.model_bundles
            .iter()
            .zip(&self.threshold_scales)
            .find(|(b, _)| b.as_str() == bundle)
            .map_or(self.threshold_scale, |(_, &s)| s)
    }

    /// Several named cameras (`cameras`), each with outputs under `~/<name>/`.
    pub fn several_cameras(&self) -> bool {
        self.cameras.iter().any(|c| !c.name.is_empty())
    }
}

/// A ROS 2 name token: a letter, then letters, digits and underscores.
fn is_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A ROS 2 topic name as rcl accepts it (absolute, relative or `~/`-private).
fn is_topic(t: &str) -> bool {
    let rest = t
        .strip_prefix("~/")
        .or_else(|| t.strip_prefix('/'))
        .unwrap_or(t);
    !rest.is_empty()
        && rest.split('/').all(|tok| {
            !tok.is_empty()
                && !tok.starts_with(|c: char| c.is_ascii_digit())
                && tok.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The cameras from `cameras` and their `<camera>.*` overrides, or the node's single camera.
fn cameras(
    r: &Reader,
    node_bundles: &[String],
    compressed: bool,
    score_threshold: f64,
    max_frame_age: Option<Duration>,
) -> Result<Vec<CameraConfig>, ParamError> {
    let topic = |compressed: bool, base: &str| match compressed {
        true => format!("{base}/compressed"),
        false => base.to_string(),
    };
    let names = r.string_array("cameras")?;
    let advisory = r.string_array("advisory_cameras")?;
    if names.is_empty() {
        if !advisory.is_empty() {
            return Err(ParamError(format!(
                "parameter 'advisory_cameras' is {advisory:?} but 'cameras' is empty: name the cameras first"
            )));
        }
        return Ok(vec![CameraConfig {
            name: String::new(),
            topic: topic(compressed, "image"),
            compressed,
            model_bundles: node_bundles.to_vec(),
            score_threshold,
            max_frame_age,
            advisory: false,
        }]);
    }
    for (i, n) in names.iter().enumerate() {
        if !is_name(n) {
            return Err(ParamError(format!(
                "parameter 'cameras': '{n}' is not a valid name (a letter, then letters, digits and underscores): it names the camera's outputs ~/{n}/"
            )));
        }
        if names[..i].contains(n) {
            return Err(ParamError(format!("parameter 'cameras' lists '{n}' twice")));
        }
    }
    if let Some(a) = advisory.iter().find(|a| !names.contains(a)) {
        return Err(ParamError(format!(
            "parameter 'advisory_cameras' names '{a}', which is not in 'cameras' ({names:?})"
        )));
    }
    if names.iter().all(|n| advisory.contains(n)) {
        return Err(ParamError(
            "every camera is advisory: the node's ~/ood would gate on none; leave at least one camera out of 'advisory_cameras'".into(),
        ));
    }
    names
        .iter()
        .map(|name| {
            let key = |k: &str| format!("{name}.{k}");
            let set = |k: &str| !matches!(r.get(&key(k)), ParameterValue::NotSet);
            let compressed = match set("transport") {
                false => compressed,
                true => match r.string(&key("transport"))?.as_str() {
                    "raw" => false,
                    "compressed" => true,
                    other => {
                        return Err(ParamError(format!(
                            "parameter '{}' is '{other}'; expected 'raw' or 'compressed'",
                            key("transport")
                        )))
                    }
                },
            };
            let image_topic = match set("image_topic") {
                true => r.string(&key("image_topic"))?,
                false => topic(compressed, &format!("{name}/image")),
            };
            if !is_topic(&image_topic) {
                return Err(ParamError(format!(
                    "parameter '{}' is '{image_topic}': not a valid ROS topic name (letters, digits, '_' and '/', ~ only first, no token starting with a digit)",
                    key("image_topic")
                )));
            }
            let model_bundles = match set("model_bundles") {
                true => bundles(
                    DEFAULT_BUNDLE.into(),
                    r.string_array(&key("model_bundles"))?,
                )
                .map_err(|e| ParamError(format!("camera '{name}': {e}")))?,
                false => node_bundles.to_vec(),
            };
            let number = |k: &str| -> Result<Option<f64>, ParamError> {
                match r.get(&key(k)) {
                    ParameterValue::NotSet => Ok(None),
                    ParameterValue::Integer(i) => Ok(Some(i as f64)),
                    _ => r.double(&key(k)).map(Some),
                }
            };
            let score_threshold = match number("score_threshold")? {
                None => score_threshold,
                Some(t) if valid_score_threshold(t) => t,
                Some(t) => {
                    return Err(ParamError(format!(
                        "parameter '{}' is {t}; expected >= 0 (scores are distances)",
                        key("score_threshold")
                    )))
                }
            };
            let max_frame_age = match number("max_frame_age")? {
                None => max_frame_age,
                Some(a) => Some(seconds(&key("max_frame_age"), a)?).filter(|d| !d.is_zero()),
            };
            Ok(CameraConfig {
                name: name.clone(),
                topic: image_topic,
                compressed,
                model_bundles,
                score_threshold,
                max_frame_age,
                advisory: advisory.contains(name),
            })
        })
        .collect()
}

/// Shows each camera's parameters (`<camera>.*`) with the values in force, read-only.
pub fn declare_cameras(node: &mut r2r::Node, cfg: &NodeConfig) {
    if !cfg.several_cameras() {
        return;
    }
    let mut params = node.params.lock().expect("parameter lock");
    let mut constraints = node.param_constraints.lock().expect("parameter lock");
    for c in &cfg.cameras {
        for d in CAMERA_PARAMS {
            let value = match d.name {
                "image_topic" => ParameterValue::String(c.topic.clone()),
                "transport" => {
                    ParameterValue::String(if c.compressed { "compressed" } else { "raw" }.into())
                }
                "model_bundles" => ParameterValue::StringArray(c.model_bundles.clone()),
                "score_threshold" => ParameterValue::Double(c.score_threshold),
                _ => ParameterValue::Double(c.max_frame_age.map_or(0.0, |d| d.as_secs_f64())),
            };
            let name = format!("{}.{}", c.name, d.name);
            params.insert(
                name.clone(),
                r2r::Parameter {
                    value,
                    description: d.description,
                },
            );
            constraints.insert(name, d.ros_constraints());
        }
    }
}

fn to_value(d: &DefaultValue) -> ParameterValue {
    match d {
        DefaultValue::Bool(b) => ParameterValue::Bool(*b),
        DefaultValue::Int(i) => ParameterValue::Integer(*i),
        DefaultValue::Double(x) => ParameterValue::Double(*x),
        DefaultValue::Str(s) => ParameterValue::String(s.to_string()),
        DefaultValue::StrArray(v) => {
            ParameterValue::StringArray(v.iter().map(|s| s.to_string()).collect())
        }
        DefaultValue::DoubleArray(v) => ParameterValue::DoubleArray(v.to_vec()),
    }
}

/// A parameter that is missing, of the wrong type or out of range; the message names it and
/// what it accepts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// Declares every parameter on the node: overrides from `--params-file`/`-p` are kept (after a
/// type check), everything else gets its default. Returns a clear error for a wrong type.
pub fn declare(node: &mut r2r::Node, table: &[ParamDecl]) -> Result<(), ParamError> {
    let mut params = node.params.lock().expect("parameter lock");
    for d in table {
        let default = to_value(&d.default);
        let value = match params.get(d.name).map(|p| p.value.clone()) {
            None | Some(ParameterValue::NotSet) => default,
            // YAML `1` for a double parameter is a common slip: accept it as 1.0.
            Some(ParameterValue::Integer(i)) if matches!(default, ParameterValue::Double(_)) => ParameterValue::Double(i as f64),
            // An empty YAML list has no element type: take it as the declared kind's.
            Some(v) if is_empty_array(&v) && is_empty_array(&default) => default,
            // Likewise `[1, 2]` for a list of doubles.
            Some(ParameterValue::IntegerArray(v)) if matches!(default, ParameterValue::DoubleArray(_)) => ParameterValue::DoubleArray(v.into_iter().map(|i| i as f64).collect()),
            Some(v) if std::mem::discriminant(&v) == std::mem::discriminant(&default) => v,
            Some(v) => return Err(ParamError(format!("parameter '{}' has the wrong type: got {v:?}, expected the type of its default {default:?}", d.name))),
        };
        params.insert(
            d.name.to_string(),
            r2r::Parameter {
                value,
                description: d.description,
            },
        );
        node.param_constraints
            .lock()
            .expect("parameter lock")
            .insert(d.name.to_string(), d.ros_constraints());
    }
    Ok(())
}

/// An array parameter value with no elements (of any element type).
fn is_empty_array(v: &ParameterValue) -> bool {
    match v {
        ParameterValue::StringArray(a) => a.is_empty(),
        ParameterValue::DoubleArray(a) => a.is_empty(),
        ParameterValue::IntegerArray(a) => a.is_empty(),
        ParameterValue::BoolArray(a) => a.is_empty(),
        ParameterValue::ByteArray(a) => a.is_empty(),
        _ => false,
    }
}

/// Parameters set on the node (params file, `-p`) that are not in `table`.
pub fn unknown(node: &r2r::Node, table: &[ParamDecl]) -> Vec<String> {
    let params = node.params.lock().expect("parameter lock");
    params
        .keys()
        .filter(|k| !table.iter().any(|d| d.name == k.as_str()))
        .cloned()
        .collect()
}

/// A duration parameter in seconds, bounded so time arithmetic can never overflow.
pub fn seconds(name: &str, v: f64) -> Result<Duration, ParamError> {
    if !(0.0..=86_400.0).contains(&v) {
        return Err(ParamError(format!(
            "parameter '{name}' is {v}; expected 0..=86400 seconds"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A per-frame threshold the node accepts, at start-up and at run time: finite and >= 0
/// (scores are distances).
pub fn valid_score_threshold(t: f64) -> bool {
    t.is_finite() && t >= 0.0
}

/// Reads and validates the configuration from the node's current parameters.
pub fn read(node: &r2r::Node) -> Result<NodeConfig, ParamError> {
    config(&Reader::new(node))
}

/// [`read`] on a snapshot of parameter values: every range check, without a node.
pub fn config(r: &Reader) -> Result<NodeConfig, ParamError> {
    let string = |n: &str| r.string(n);
    let int = |n: &str| r.int(n);
    let double = |n: &str| r.double(n);
    let compressed = match string("transport")?.as_str() {
        "raw" => false,
        "compressed" => true,
        other => {
            return Err(ParamError(format!(
                "parameter 'transport' is '{other}'; expected 'raw' or 'compressed'"
            )))
        }
    };
    let reliable_images = match string("image_qos")?.as_str() {
        "sensor_data" | "best_effort" => false,
        "reliable" => true,
        other => {
            return Err(ParamError(format!(
                "parameter 'image_qos' is '{other}'; expected 'sensor_data' or 'reliable'"
            )))
        }
    };
    let threads = int("threads")?;
    if !(1..=64).contains(&threads) {
        return Err(ParamError(format!(
            "parameter 'threads' is {threads}; expected 1..=64"
        )));
    }
    let depth = int("image_qos_depth")?;
    if !(1..=100).contains(&depth) {
        return Err(ParamError(format!(
            "parameter 'image_qos_depth' is {depth}; expected 1..=100"
        )));
    }
    let age = double("max_frame_age")?;
    let period = double("diagnostics_period")?;
    let timeout = double("input_timeout")?;
    let heartbeat = double("heartbeat_period")?;
    if heartbeat < 0.001 {
        return Err(ParamError(
            "heartbeat_period must be at least 0.001 s".into(),
        ));
    }
    let cusum = double("cusum_threshold")?;
    if cusum < 0.0 {
        return Err(ParamError(
            "cusum_threshold must be >= 0 (0 = the bundle's)".into(),
        ));
    }
    let threshold_scale = double("threshold_scale")?;
    if !vae_ood_core::monitor::THRESHOLD_SCALE_RANGE.contains(&threshold_scale) {
        return Err(ParamError(format!(
            "parameter 'threshold_scale' is {threshold_scale}; expected 1..=100 (under 1 would loosen a threshold below what its tuning drives certify)"
        )));
    }
    let recovery_frames = int("recovery_frames")?;
    if !(1..=100_000).contains(&recovery_frames) {
        return Err(ParamError(format!(
            "parameter 'recovery_frames' is {recovery_frames}; expected 1..=100000"
        )));
    }
    let recovery_level = double("recovery_level")?;
    if !vae_ood_core::monitor::RECOVERY_LEVEL_RANGE.contains(&recovery_level) {
        return Err(ParamError(format!(
            "parameter 'recovery_level' is {recovery_level}; expected 0.01..=1 (1 = no hysteresis)"
        )));
    }
    let recovery = match string("recovery")?.as_str() {
        "auto" => Recovery::Auto {
            frames: recovery_frames as u32,
            level: recovery_level,
        },
        "manual" => Recovery::Manual,
        other => {
            return Err(ParamError(format!(
                "parameter 'recovery' is '{other}'; expected 'auto' or 'manual'"
            )))
        }
    };
    let cusum_ceiling = match double("cusum_ceiling")? {
        0.0 => None,
        c if vae_ood_core::detection::ceiling_is_valid(c) => Some(c),
        c => {
            return Err(ParamError(format!(
                "parameter 'cusum_ceiling' is {c}; expected 0 (unbounded) or over 1 and at most 1000 thresholds (at 1 or under S could never exceed the threshold it alarms over)"
            )))
        }
    };
    let max_busy = match double("max_busy")? {
        // Bounded like every duration: five heartbeats of a day-long period would not be.
        0.0 => (seconds("heartbeat_period", heartbeat)? * 5)
            .clamp(Duration::from_millis(500), Duration::from_secs(86_400)),
        b if (0.01..=3600.0).contains(&b) => seconds("max_busy", b)?,
        b => {
            return Err(ParamError(format!(
                "parameter 'max_busy' is {b}; expected 0 (automatic) or 0.01..=3600 seconds"
            )))
        }
    };
    let expected_rate = match double("expected_rate")? {
        0.0 => None,
        r if (0.1..=10_000.0).contains(&r) => Some(r),
        r => {
            return Err(ParamError(format!(
                "parameter 'expected_rate' is {r}; expected 0 (not checked) or 0.1..=10000 Hz"
            )))
        }
    };
    let min_rate = match double("min_rate")? {
        0.0 => None,
        r if vae_ood_core::monitor::MIN_RATE_RANGE.contains(&r) => Some(r),
        r => {
            return Err(ParamError(format!(
                "parameter 'min_rate' is {r}; expected 0 (not checked) or up to 10000 Hz"
            )))
        }
    };
    let max_repeated_frames = match int("max_repeated_frames")? {
        0 => None,
        n if (1..=100_000).contains(&n) => Some(n as u32),
        n => {
            return Err(ParamError(format!(
                "parameter 'max_repeated_frames' is {n}; expected 0 (not checked) or 1..=100000"
            )))
        }
    };
    if age < 0.0 || timeout < 0.0 || period < 0.01 {
        return Err(ParamError(
            "max_frame_age and input_timeout must be >= 0, diagnostics_period > 0".into(),
        ));
    }
    let score_threshold = double("score_threshold")?;
    if !valid_score_threshold(score_threshold) {
        return Err(ParamError(format!(
            "parameter 'score_threshold' is {score_threshold}; expected >= 0 (scores are distances)"
        )));
    }
    let backend: BackendKind = string("backend")?
        .parse()
        .map_err(|e| ParamError(format!("parameter 'backend': {e}")))?;
    let model_bundles = bundles(string("model_bundle")?, r.string_array("model_bundles")?)?;
    if model_bundles.len() > 1 && cusum > 0.0 {
        return Err(ParamError(format!(
            "parameter 'cusum_threshold' is {cusum} with {} detectors in model_bundles: each detector's threshold is its own bundle's; leave it 0 (recalibrate a bundle to change its threshold)",
            model_bundles.len()
        )));
    }
    let max_frame_age = (age > 0.0)
        .then(|| seconds("max_frame_age", age))
        .transpose()?;
    let cameras = cameras(
        r,
        &model_bundles,
        compressed,
        score_threshold,
        max_frame_age,
    )?;
    if let Some(c) = cameras
        .iter()
        .find(|c| c.model_bundles.len() > 1 && cusum > 0.0)
    {
        return Err(ParamError(format!(
            "parameter 'cusum_threshold' is {cusum} with {} detectors on camera '{}': each detector's threshold is its own bundle's; leave it 0",
            c.model_bundles.len(),
            c.name
        )));
    }
    let threshold_scales = r.double_array("threshold_scales")?;
    if !threshold_scales.is_empty() && threshold_scales.len() != model_bundles.len() {
        return Err(ParamError(format!(
            "parameter 'threshold_scales' has {} values for {} entries of model_bundles ({model_bundles:?}): give one per bundle, in order, or none",
            threshold_scales.len(),
            model_bundles.len()
        )));
    }
    if let Some(s) = threshold_scales
        .iter()
        .find(|s| !vae_ood_core::monitor::THRESHOLD_SCALE_RANGE.contains(s))
    {
        return Err(ParamError(format!(
            "parameter 'threshold_scales' has {s}; expected each in 1..=100 (under 1 would loosen a threshold below what its tuning drives certify)"
        )));
    }
    Ok(NodeConfig {
        model_bundles,
        backend,
        threads: threads as usize,
        compressed,
        reliable_images,
        image_qos_depth: depth as usize,
        score_threshold,
        max_frame_age,
        input_timeout: (timeout > 0.0)
            .then(|| seconds("input_timeout", timeout))
            .transpose()?,
        cusum_threshold: (cusum > 0.0).then_some(cusum),
        threshold_scale,
        threshold_scales,
        recovery,
        cusum_ceiling,
        heartbeat_period: seconds("heartbeat_period", heartbeat)?,
        diagnostics_period: seconds("diagnostics_period", period)?,
        max_busy,
        expected_rate,
        max_repeated_frames,
        min_rate,
        managed: r.bool("managed")?,
        branch_rule: r.bool("branch_rule")?,
        relative_branch: r.bool("relative_branch")?,
        direction_branch: r.bool("direction_branch")?,
        change_branch: r.bool("change_branch")?,
        startup_phase: r.bool("startup_phase")?,
        camera: Some(string("camera")?).filter(|c| !c.is_empty()),
        cameras,
        batching: match string("batching")?.as_str() {
            "auto" => Batching::Auto,
            "always" => Batching::Always,
            "never" => Batching::Never,
            other => {
                return Err(ParamError(format!(
                    "parameter 'batching' is '{other}'; expected 'auto', 'always' or 'never'"
                )))
            }
        },
    })
}

/// The detectors to run from `model_bundle` (one, kept for configurations written before the
/// list) and `model_bundles`: whichever differs from its default, the list when neither does;
/// both changed is ambiguous and refused.
fn bundles(one: String, list: Vec<String>) -> Result<Vec<String>, ParamError> {
    let list_default = list.len() == 1 && list[0] == DEFAULT_BUNDLE;
    let list = match (one == DEFAULT_BUNDLE, list_default) {
        (true, _) => list,
        (false, true) => vec![one],
        (false, false) => {
            return Err(ParamError(format!(
                "parameters 'model_bundle' ({one}) and 'model_bundles' ({list:?}) are both set: set one (model_bundles for several detectors)"
            )))
        }
    };
    if list.is_empty() || list.iter().any(|b| b.trim().is_empty()) {
        return Err(ParamError(format!(
            "parameter 'model_bundles' is {list:?}; expected at least one bundle directory, none empty"
        )));
    }
    if let Some(d) = list
        .iter()
        .enumerate()
        .find(|(i, b)| list[..*i].contains(b))
    {
        return Err(ParamError(format!(
            "parameter 'model_bundles' lists {} twice",
            d.1
        )));
    }
    Ok(list)
}

/// The parameter table as JSON, for `--describe-parameters` (no ROS needed).
pub fn describe_json(table: &[ParamDecl]) -> String {
    serde_json::to_string_pretty(table).expect("serialisable")
}

/// Typed access to a snapshot of the declared parameters; errors name the parameter and the
/// expected type.
pub struct Reader {
    values: std::collections::HashMap<String, ParameterValue>,
}

impl Reader {
    pub fn new(node: &r2r::Node) -> Self {
        let params = node.params.lock().expect("parameter lock");
        Self::from_values(params.iter().map(|(k, p)| (k.clone(), p.value.clone())))
    }

    /// Parameter values by name, as a node holds them once declared.
    pub fn from_values(values: impl IntoIterator<Item = (String, ParameterValue)>) -> Self {
        Self {
            values: values.into_iter().collect(),
        }
    }

    /// The defaults of `table`, overridden by `overrides`: what a node launched with those
    /// overrides would read (the range checks' tests use it; no ROS context needed).
    pub fn with_defaults(
        table: &[ParamDecl],
        overrides: impl IntoIterator<Item = (String, ParameterValue)>,
    ) -> Self {
        let mut r = Self::from_values(
            table
                .iter()
                .map(|d| (d.name.to_string(), to_value(&d.default))),
        );
        r.values.extend(overrides);
        r
    }

    fn get(&self, name: &str) -> ParameterValue {
        self.values
            .get(name)
            .cloned()
            .unwrap_or(ParameterValue::NotSet)
    }

    pub fn string(&self, name: &str) -> Result<String, ParamError> {
        match self.get(name) {
            ParameterValue::String(s) => Ok(s),
            v => Err(ParamError(format!(
                "parameter '{name}' must be a string, got {v:?}"
            ))),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, ParamError> {
        match self.get(name) {
            ParameterValue::Bool(b) => Ok(b),
            v => Err(ParamError(format!(
                "parameter '{name}' is {v:?}; expected a boolean"
            ))),
        }
    }

    pub fn string_array(&self, name: &str) -> Result<Vec<String>, ParamError> {
        match self.get(name) {
            ParameterValue::StringArray(v) => Ok(v),
            v => Err(ParamError(format!(
                "parameter '{name}' must be a list of strings, got {v:?}"
            ))),
        }
    }

    pub fn double_array(&self, name: &str) -> Result<Vec<f64>, ParamError> {
        match self.get(name) {
            ParameterValue::DoubleArray(v) if v.iter().all(|x| x.is_finite()) => Ok(v),
            ParameterValue::IntegerArray(v) => Ok(v.into_iter().map(|i| i as f64).collect()),
            v => Err(ParamError(format!(
                "parameter '{name}' must be a list of finite numbers, got {v:?}"
            ))),
        }
    }

    pub fn int(&self, name: &str) -> Result<i64, ParamError> {
        match self.get(name) {
            ParameterValue::Integer(i) => Ok(i),
            v => Err(ParamError(format!(
                "parameter '{name}' must be an integer, got {v:?}"
            ))),
        }
    }

    pub fn double(&self, name: &str) -> Result<f64, ParamError> {
        match self.get(name) {
            ParameterValue::Double(x) if x.is_finite() => Ok(x),
            v => Err(ParamError(format!(
                "parameter '{name}' must be a finite number, got {v:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{gate_config, GATE_PARAMS};
    use proptest::prelude::*;
    use ParameterValue::{Double, Integer, String as Str};

    fn node(overrides: &[(&str, ParameterValue)]) -> Result<NodeConfig, ParamError> {
        config(&Reader::with_defaults(
            PARAMS,
            overrides.iter().map(|(k, v)| (k.to_string(), v.clone())),
        ))
    }

    #[test]
    fn the_defaults_are_valid() {
        let c = node(&[]).unwrap();
        assert_eq!(c.max_busy, Duration::from_millis(500));
        assert_eq!(c.max_frame_age, Some(Duration::from_millis(500)));
        assert!(gate_config(&Reader::with_defaults(GATE_PARAMS, [])).is_ok());
    }

    /// The ranges `ros2 param describe` shows agree with what the node accepts at start-up:
    /// each bound itself is accepted, and just outside it is refused. Only the thresholds
    /// change at run time.
    #[test]
    fn declared_ranges_match_the_start_up_checks() {
        for d in PARAMS.iter().chain(GATE_PARAMS) {
            let check = |v: ParameterValue| match PARAMS.iter().any(|p| p.name == d.name) {
                true => node(&[(d.name, v)]).map(|_| ()),
                false => gate_config(&Reader::with_defaults(
                    GATE_PARAMS,
                    [(d.name.to_string(), v)],
                ))
                .map(|_| ()),
            };
            match d.range {
                Some(Range::Int(lo, hi)) => {
                    assert!(
                        check(Integer(lo)).is_ok() && check(Integer(hi)).is_ok(),
                        "{}",
                        d.name
                    );
                    assert!(
                        check(Integer(lo - 1)).is_err() && check(Integer(hi + 1)).is_err(),
                        "{}",
                        d.name
                    );
                }
                Some(Range::Double(lo, hi)) => {
                    assert!(
                        check(Double(lo)).is_ok() && check(Double(hi)).is_ok(),
                        "{}",
                        d.name
                    );
                    assert!(check(Double(lo - 1e-3)).is_err(), "{}", d.name);
                    if hi < f64::MAX {
                        assert!(check(Double(hi * 1.001)).is_err(), "{}", d.name);
                    }
                }
                None => {}
            }
        }
        let runtime: Vec<&str> = PARAMS
            .iter()
            .filter(|d| d.runtime)
            .map(|d| d.name)
            .collect();
        assert_eq!(runtime, ["score_threshold", "cusum_threshold"]);
        assert!(GATE_PARAMS.iter().all(|d| d.ros_constraints().read_only));
    }

    /// One case per class of bad value; each error names the parameter.
    #[test]
    fn every_class_of_bad_value_is_refused_by_name() {
        let cases: &[(&str, ParameterValue)] = &[
            ("threads", Integer(0)),               // below the range
            ("image_qos_depth", Integer(101)),     // above the range
            ("max_frame_age", Double(-1.0)),       // negative seconds
            ("input_timeout", Double(1e9)),        // past any sane duration
            ("heartbeat_period", Double(0.0)),     // a period of zero
            ("max_busy", Double(0.001)),           // in the gap between 0 (auto) and its range
            ("expected_rate", Double(-30.0)),      // a negative rate
            ("min_rate", Double(f64::NAN)),        // not a number
            ("score_threshold", Double(-1.0)),     // scores are distances
            ("cusum_threshold", Double(f64::NAN)), // not a number
            ("diagnostics_period", Double(f64::INFINITY)),
            ("recovery_frames", Integer(0)),
            ("threshold_scale", Double(0.9)), // looser than the tuning drives certify
            ("recovery_level", Double(0.0)),  // no level to fall to
            ("recovery_level", Double(1.5)),  // over the threshold: never under it while alarming
            ("cusum_ceiling", Double(0.5)),   // under the threshold: S could never alarm
            ("cusum_ceiling", Double(1.0)),   // at the threshold: S could never exceed it
            ("max_repeated_frames", Integer(-1)),
            ("transport", Str("udp".into())), // unknown choice
            ("image_qos", Str("fast".into())),
            ("recovery", Str("never".into())),
            ("backend", Str("tpu".into())),
            ("threads", Str("two".into())), // wrong type
            ("max_frame_age", Str("0.5".into())),
            ("model_bundles", ParameterValue::StringArray(vec![])),
            (
                "model_bundles",
                ParameterValue::StringArray(vec!["a".into(), "a".into()]),
            ),
            ("model_bundles", Str("models/default".into())),
        ];
        for (name, v) in cases {
            let e = node(&[(name, v.clone())]).expect_err(name);
            assert!(e.0.contains(name), "{name}: {e}");
        }
        let gate = |k: &str, v: ParameterValue| {
            gate_config(&Reader::with_defaults(GATE_PARAMS, [(k.to_string(), v)]))
        };
        for (name, v) in [
            ("watchdog_timeout", Double(0.0)),
            ("watchdog_timeout", Double(f64::NAN)),
            ("stop_rate", Double(5000.0)),
            ("input_type", Str("joy".into())),
        ] {
            let e = gate(name, v).expect_err(name);
            assert!(e.0.contains(name), "{name}: {e}");
        }
    }

    #[test]
    fn threshold_scales_give_each_bundle_its_own_scale() {
        let pair = ParameterValue::StringArray(vec!["img".into(), "flow".into()]);
        let scales = |v: &[f64]| ParameterValue::DoubleArray(v.to_vec());
        let c = node(&[
            ("model_bundles", pair.clone()),
            ("threshold_scale", Double(2.0)),
            ("threshold_scales", scales(&[1.51, 1.0])),
        ])
        .unwrap();
        assert_eq!(c.threshold_scale_of("img"), 1.51);
        assert_eq!(c.threshold_scale_of("flow"), 1.0);
        // A bundle the list does not name (a camera's own) keeps threshold_scale.
        assert_eq!(c.threshold_scale_of("other"), 2.0);
        // Unset: threshold_scale for all; whole numbers written as integers are accepted.
        let c = node(&[("model_bundles", pair.clone())]).unwrap();
        assert_eq!(c.threshold_scale_of("flow"), 1.0);
        let ints = ParameterValue::IntegerArray(vec![2, 1]);
        let c = node(&[("model_bundles", pair.clone()), ("threshold_scales", ints)]).unwrap();
        assert_eq!(c.threshold_scale_of("img"), 2.0);
        // One per bundle, each in the certified range.
        for (v, what) in [
            (scales(&[1.5]), "one per bundle"),
            (scales(&[1.5, 0.9]), "1..=100"),
            (scales(&[1.5, f64::NAN]), "finite"),
            (Str("1.5".into()), "list"),
        ] {
            let e = node(&[("model_bundles", pair.clone()), ("threshold_scales", v)]);
            let e = e.expect_err(what).0;
            assert!(e.contains("threshold_scales") && e.contains(what), "{e}");
        }
    }

    #[test]
    fn model_bundle_and_model_bundles_resolve_to_one_list() {
        let list =
            |v: &[&str]| ParameterValue::StringArray(v.iter().map(|s| s.to_string()).collect());
        let get = |o: &[(&str, ParameterValue)]| node(o).map(|c| c.model_bundles);
        assert_eq!(get(&[]).unwrap(), vec![DEFAULT_BUNDLE]);
        assert_eq!(
            get(&[("model_bundle", Str("x".into()))]).unwrap(),
            vec!["x"]
        );
        assert_eq!(
            get(&[("model_bundles", list(&["x", "y"]))]).unwrap(),
            vec!["x", "y"]
        );
        let e = get(&[
            ("model_bundle", Str("x".into())),
            ("model_bundles", list(&["y"])),
        ])
        .unwrap_err();
        assert!(e.0.contains("both set"), "{e}");
        let e = node(&[
            ("model_bundles", list(&["x", "y"])),
            ("cusum_threshold", Double(5.0)),
        ])
        .unwrap_err();
        assert!(e.0.contains("cusum_threshold"), "{e}");
    }

    #[test]
    fn cameras_take_the_node_defaults_and_their_own_overrides() {
        let list =
            |v: &[&str]| ParameterValue::StringArray(v.iter().map(|s| s.to_string()).collect());
        let c = node(&[
            ("cameras", list(&["front", "rear"])),
            ("advisory_cameras", list(&["rear"])),
            ("transport", Str("compressed".into())),
            ("rear.transport", Str("raw".into())),
            ("rear.score_threshold", Integer(7)),
            ("front.max_frame_age", Double(0.0)),
        ])
        .unwrap();
        let (f, r) = (&c.cameras[0], &c.cameras[1]);
        assert!(c.several_cameras());
        assert_eq!(
            (f.name.as_str(), f.topic.as_str()),
            ("front", "front/image/compressed")
        );
        assert_eq!(
            (r.topic.as_str(), r.compressed, r.advisory),
            ("rear/image", false, true)
        );
        assert_eq!((f.score_threshold, r.score_threshold), (100.0, 7.0));
        assert_eq!((f.max_frame_age, r.max_frame_age), (None, c.max_frame_age));
        assert_eq!(f.model_bundles, c.model_bundles);
        // Without `cameras`: one unnamed camera on the node's own topic.
        let one = node(&[]).unwrap();
        assert!(!one.several_cameras() && one.cameras[0].topic == "image");
        for bad in ["", "/", "a//b", "1cam/image", "cam image", "~", "a/~/b"] {
            let e = node(&[
                ("cameras", list(&["front"])),
                ("front.image_topic", Str(bad.into())),
            ])
            .unwrap_err();
            assert!(e.0.contains("front.image_topic"), "{bad:?}: {e}");
        }
        for good in ["/front/image_raw", "front/image", "~/image"] {
            assert!(is_topic(good), "{good}");
        }
    }

    /// Mostly values inside every double parameter's range (so that about a quarter of the
    /// cases are valid as a whole), then the edges and the hostile ones.
    fn double() -> impl Strategy<Value = f64> {
        prop_oneof![
            40 => 0.1f64..50.0,
            1 => -2.0f64..200.0,
            1 => 1e4f64..86_400.0,
            1 => Just(0.0),
            1 => Just(f64::NAN),
            1 => Just(-f64::INFINITY),
            1 => 1e4f64..1e12,
        ]
    }

    fn int() -> impl Strategy<Value = i64> {
        prop_oneof![40 => 1i64..=64, 1 => -2i64..200, 1 => Just(0), 1 => any::<i64>()]
    }

    proptest! {
        /// No combination of values panics; the configuration is accepted exactly when every
        /// value is in its documented range (the ranges are restated here as the spec).
        #[test]
        fn any_values_are_accepted_iff_in_range(
            threads in int(), depth in int(), age in double(), timeout in double(),
            heartbeat in double(), period in double(), cusum in double(), score in double(),
            recovery_frames in int(), max_busy in double(), rate in double(), repeats in int(),
        ) {
            let r = node(&[
                ("threads", Integer(threads)), ("image_qos_depth", Integer(depth)),
                ("max_frame_age", Double(age)), ("input_timeout", Double(timeout)),
                ("heartbeat_period", Double(heartbeat)), ("diagnostics_period", Double(period)),
                ("cusum_threshold", Double(cusum)), ("score_threshold", Double(score)),
                ("recovery_frames", Integer(recovery_frames)), ("max_busy", Double(max_busy)),
                ("expected_rate", Double(rate)), ("max_repeated_frames", Integer(repeats)),
            ]);
            let secs = |x: f64| (0.0..=86_400.0).contains(&x);
            let in_range = (1..=64).contains(&threads)
                && (1..=100).contains(&depth)
                && secs(age) && secs(timeout)
                && secs(heartbeat) && heartbeat >= 0.001
                && secs(period) && period >= 0.01
                && cusum.is_finite() && cusum >= 0.0
                && score.is_finite() && score >= 0.0
                && (1..=100_000).contains(&recovery_frames)
                && (max_busy == 0.0 || (0.01..=3600.0).contains(&max_busy))
                && (rate == 0.0 || (0.1..=10_000.0).contains(&rate))
                && (repeats == 0 || (1..=100_000).contains(&repeats));
            prop_assert_eq!(r.is_ok(), in_range, "{:?}", r.err());
            if let Ok(c) = r {
                // What the node does with them cannot overflow: every duration is bounded.
                prop_assert!(c.max_busy <= Duration::from_secs(86_400));
            }
        }

        #[test]
        fn any_gate_values_are_accepted_iff_in_range(timeout in double(), rate in double()) {
            let r = gate_config(&Reader::with_defaults(GATE_PARAMS, [
                ("watchdog_timeout".to_string(), Double(timeout)),
                ("stop_rate".to_string(), Double(rate)),
            ]));
            prop_assert_eq!(r.is_ok(), (0.01..=60.0).contains(&timeout) && (0.1..=1000.0).contains(&rate));
        }
    }
}
