//! Offline evaluation of a detector on recorded drives (rosbag2 bags or image folders): the
//! same core monitor as the node, frame by frame, then detection metrics.

pub mod html;
pub mod merge;
pub mod metrics;

pub mod report;

use crate::drives::list_images;
use crate::plots;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use vae_ood_bag::{cdr, is_bag, Bag, BOOL};
use vae_ood_core::encoder::BackendOptions;
use vae_ood_core::frame::ImageFile;
use vae_ood_core::monitor::{Monitor, MonitorConfig, MonitorState};

/// How an input's frames are labelled.
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    /// Every frame in distribution.
    Id,
    /// Every frame out of distribution, of this type.
    Ood(String),
    /// Time ranges (header stamps, ns): frames inside are OOD of the range's type; others ID.
    Ranges(Vec<Range>),
    /// A std_msgs/Bool topic in the bag: the latest value at a frame's time is its label; OOD
    /// frames get the given type.
    Topic { topic: String, ood_type: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub start_ns: i64,
    pub end_ns: i64,
    pub ood_type: String,
}

#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
    pub label: Label,
}

/// One evaluated frame.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FrameRecord {
    pub input: usize,
    pub index: usize,
    pub stamp_ns: i64,
    pub ood: bool,
    pub ood_type: String,
    pub score: Option<f64>,
    pub p_value: Option<f64>,
    pub log_martingale: Option<f64>,
    pub cusum: Option<f64>,
    pub state: MonitorState,
    pub fault: Option<String>,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    /// Flow detectors' scored frames: each branch's KL (the reference design's scores).
    pub kl_horizontal: Option<f64>,
    pub kl_vertical: Option<f64>,
    /// The reference design's per-branch rule as one number, max over the branches of KL /
    /// threshold (`BranchThresholds::ratio`): above 1, the rule alarms. Flow bundles with
    /// `calibration.branch_thresholds`.
    pub branch_ratio: Option<f64>,
    /// Bundles with a drive-relative branch: its S, once the drive has a baseline.
    pub relative_cusum: Option<f64>,
    /// Calibrated bundles: the sequential verdict as one number, max over the running
    /// branches of S / its threshold in force (above 1 exactly when it alarms).
    pub alarm_ratio: Option<f64>,
    /// Scores with a separate extra part (the flow detector's motion residual): the
    /// posterior's and the extra part's tail scores, whose larger is `score`. Which part an
    /// alarm came from.
    pub posterior_tail: Option<f64>,
    pub extra_tail: Option<f64>,
    /// Bundles with a direction branch: its S.
    pub direction_cusum: Option<f64>,
    /// Each branch's threshold in force at this frame (pooled, relative, direction), beside
    /// its S: what the start-up phase's certification reads, so that it never rebuilds when
    /// the monitor applies which threshold.
    pub threshold: Option<f64>,
    pub relative_threshold: Option<f64>,
    pub direction_threshold: Option<f64>,
    /// Bundles with a change branch, on frames it measured: its S and threshold.
    pub change_cusum: Option<f64>,
    pub change_threshold: Option<f64>,
}

/// What happened to one input.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputResult {
    pub path: String,
    pub frames: usize,
    /// Set when the input was damaged or unreadable: frames before the damage are kept.
    pub error: Option<String>,
}

pub struct Options {
    pub bundle: PathBuf,
    pub backend: BackendOptions,
    pub monitor: MonitorConfig,
    /// Image topic in bags; found automatically when the bag has exactly one image topic.
    pub topic: Option<String>,
    /// Frame rate assumed for image folders (their frames carry no stamps).
    pub folder_fps: f64,
}

/// Frame rate assumed for image folders unless given (`vae-ood eval --fps`).
pub const DEFAULT_FOLDER_FPS: f64 = 15.0;

/// The inputs of `vae-ood eval`: `id` (every frame ID), `ood` as `PATH` or `PATH=TYPE` (every
/// frame OOD; the type defaults to the file name), and `input` labelled by exactly one of a
/// ranges file (`labels`) or a Bool topic in the bag (`label_topic`; `PATH=TYPE` names the OOD
/// type of its OOD frames).
pub fn labelled_inputs(
    id: &[PathBuf],
    ood: &[String],
    input: &[String],
    labels: Option<&Path>,
    label_topic: Option<&str>,
) -> Result<Vec<Input>> {
    let mut inputs: Vec<Input> = id
        .iter()
        .map(|p| Input {
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
        inputs.push(Input {
            path,
            label: Label::Ood(type_name(ty)?),
        });
    }
    if input.is_empty() {
        return Ok(inputs);
    }
    let ranges = match (labels, label_topic) {
        (Some(f), None) => Some(read_ranges(f)?),
        (None, Some(_)) => None,
        _ => {
            return Err(Error::Input(
                "--input needs exactly one of --labels FILE or --label-topic TOPIC".into(),
            ))
        }
    };
    for i in input {
        let (path, ty) = match i.rsplit_once('=') {
            Some((p, t)) => (PathBuf::from(p), t.to_string()),
            None => (PathBuf::from(i), String::new()),
        };
        let label = match (&ranges, label_topic) {
            (Some(r), _) => Label::Ranges(r.clone()),
            (None, Some(t)) => Label::Topic {
                topic: t.to_string(),
                ood_type: type_name(ty)?,
            },
            (None, None) => unreachable!("checked above"),
        };
        inputs.push(Input { path, label });
    }
    Ok(inputs)
}

/// An OOD type name as frames.csv can carry it (one unquoted field).
fn type_name(t: String) -> Result<String> {
    match t.contains([',', '"', '\n', '\r']) {
        true => Err(Error::Input(format!(
            "OOD type `{t}` has a comma, quote or line break, which frames.csv cannot hold: name the type with `PATH=TYPE`"
        ))),
        false => Ok(t),
    }
}

/// Reads a labels file: header `start,end,type`, then header-stamp ranges in seconds.
pub fn read_ranges(path: &Path) -> Result<Vec<Range>> {
    let text = std::fs::read_to_string(path).map_err(Error::read(path))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    if lines.next().map(|h| h.replace(' ', "")) != Some("start,end,type".into()) {
        return Err(Error::Input(format!(
            "{}: the first line must be the header `start,end,type`",
            path.display()
        )));
    }
    lines
        .enumerate()
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let bad = || {
                Error::Input(format!(
                    "{} line {}: expected `start,end,type` with finite times in seconds, start <= end and a type name, got `{l}`",
                    path.display(),
                    i + 2
                ))
            };
            if f.len() != 3 {
                return Err(bad());
            }
            let (s, e): (f64, f64) = (
                f[0].parse().map_err(|_| bad())?,
                f[1].parse().map_err(|_| bad())?,
            );
            // NaN or infinite times would label nothing (or everything) without a word, and a
            // range that ends before it starts labels nothing.
            if !(s.is_finite() && e.is_finite() && s <= e) || f[2].is_empty() {
                return Err(bad());
            }
            Ok(Range {
                start_ns: (s * 1e9) as i64,
                end_ns: (e * 1e9) as i64,
                ood_type: f[2].to_string(),
            })
        })
        .collect()
}

/// What `vae-ood eval` produced: the report (also written as files) and where.
#[derive(Debug)]
pub struct Evaluation {
    pub report: report::Report,
    /// The frame records behind the report (also in `frames.csv`).
    pub frames: Vec<FrameRecord>,
}

/// Evaluates `inputs` and writes the report into `out`: `report.json`, `frames.csv`,
/// `report.html` and the plots. The path `vae-ood eval` and the compression sweep share.
pub fn evaluate(
    inputs: &[Input],
    opts: &Options,
    out: &Path,
    progress: &dyn Fn(usize),
) -> Result<Evaluation> {
    if inputs.is_empty() {
        return Err(Error::Input(
            "nothing to evaluate: give --id, --ood or --input".into(),
        ));
    }
    if !(opts.folder_fps > 0.0 && opts.folder_fps.is_finite()) {
        return Err(Error::Input("--fps must be a positive number".into()));
    }
    let bundle = vae_ood_core::bundle::Bundle::load(&opts.bundle)?;
    let calibrated = bundle.manifest.calibration.is_some();
    let cusum_threshold = opts.monitor.cusum_threshold.or(bundle
        .manifest
        .calibration
        .as_ref()
        .map(|c| c.pipeline.cusum_threshold));
    let t0 = std::time::Instant::now();
    let (frames, results) = run(inputs, opts, progress)?;
    let mut report = report::build(
        &bundle.model_id,
        calibrated,
        &frames,
        results,
        t0.elapsed().as_secs_f64(),
    );
    report.cusum_threshold = calibrated.then_some(cusum_threshold).flatten();
    report.cusum_ceiling = calibrated.then_some(opts.monitor.cusum_ceiling).flatten();
    // The promise is the bundle's own threshold's: another threshold or a scale makes another.
    let own_threshold =
        opts.monitor.cusum_threshold.is_none() && opts.monitor.threshold_scale == 1.0;
    let guarantee = bundle
        .manifest
        .calibration
        .as_ref()
        .and_then(|c| c.guarantee.as_ref());
    if let (true, Some(g), Some(seq)) = (own_threshold, guarantee, &report.sequential) {
        report.promise = Some(report::Promise::check(
            g.per_drive_false_alarm,
            g.frames_per_drive,
            seq,
        ));
    }
    write_outputs(out, &mut report, &frames)?;
    Ok(Evaluation { report, frames })
}

/// Writes `frames.csv`, the plots, `report.html` and `report.json` into `out`.
pub fn write_outputs(
    out: &Path,
    report: &mut report::Report,
    frames: &[FrameRecord],
) -> Result<()> {
    let cusum_threshold = report.cusum_threshold;
    std::fs::create_dir_all(out).map_err(Error::write(out))?;
    let csv = out.join("frames.csv");
    report::write_csv(&csv, frames).map_err(Error::write(csv))?;
    write_plots_and_html(out, report, frames, cusum_threshold)
        .map_err(Error::write(out.join("report.html")))?;
    let json = out.join("report.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&report).expect("the report serialises"),
    )
    .map_err(Error::write(json))?;
    Ok(())
}

/// Evaluates every input with a fresh monitor (CUSUM starts at zero per drive).
pub fn run(
    inputs: &[Input],
    opts: &Options,
    progress: &dyn Fn(usize),
) -> Result<(Vec<FrameRecord>, Vec<InputResult>), crate::Error> {
    let mut frames = vec![];
    let mut results = vec![];
    for (i, input) in inputs.iter().enumerate() {
        let det = vae_ood_core::detector::load(&opts.bundle, opts.backend)?;
        let mut monitor = Monitor::new(det, opts.monitor)?;
        let before = frames.len();
        let error = eval_input(i, input, opts, &mut monitor, &mut frames, progress)
            .err()
            .map(|e| e.to_string());
        results.push(InputResult {
            path: input.path.display().to_string(),
            frames: frames.len() - before,
            error,
        });
    }
    Ok((frames, results))
}

/// Every frame of clear tuning drives (each labelled in distribution) under `opts.bundle`, a
/// fresh monitor per drive: what the tools that certify thresholds on whole drives read
/// (`vae-ood joint-threshold`, `vae-ood calibrate --startup-frames`). A tuning drive stands for
/// a whole drive, so one that fails to read is an error, not a shorter drive.
pub fn run_tuning_drives(
    drives: &[PathBuf],
    opts: &Options,
    progress: &dyn Fn(usize),
) -> Result<Vec<FrameRecord>, crate::Error> {
    let inputs: Vec<Input> = drives
        .iter()
        .map(|p| Input {
            path: p.clone(),
            label: Label::Id,
        })
        .collect();
    let (records, results) = run(&inputs, opts, progress)?;
    if let Some((r, e)) = results
        .iter()
        .find_map(|r| r.error.as_ref().map(|e| (r, e)))
    {
        return Err(Error::Drive(format!(
            "tuning drive {}: {e}; remove or repair it",
            r.path
        )));
    }
    Ok(records)
}

fn label_at(
    label: &Label,
    stamp_ns: i64,
    topic_value: Option<bool>,
    topic: &str,
) -> (bool, String) {
    match label {
        Label::Id => (false, String::new()),
        Label::Ood(t) => (true, t.clone()),
        Label::Ranges(rs) => rs
            .iter()
            .find(|r| stamp_ns >= r.start_ns && stamp_ns <= r.end_ns)
            .map_or((false, String::new()), |r| (true, r.ood_type.clone())),
        Label::Topic { ood_type, .. } => match topic_value {
            Some(true) => (
                true,
                if ood_type.is_empty() {
                    topic.to_string()
                } else {
                    ood_type.clone()
                },
            ),
            _ => (false, String::new()),
        },
    }
}

fn record(
    input: usize,
    index: usize,
    stamp_ns: i64,
    (ood, ood_type): (bool, String),
    v: &vae_ood_core::monitor::FrameVerdict,
    thresholds: Option<vae_ood_core::bundle::BranchThresholds>,
) -> FrameRecord {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    FrameRecord {
        input,
        index,
        stamp_ns,
        ood,
        ood_type,
        score: v.score,
        p_value: v.step.map(|s| s.p_value),
        log_martingale: v.step.map(|s| s.log_martingale),
        cusum: v.step.map(|s| s.cusum),
        state: v.state,
        fault: v.fault.as_ref().map(|f| f.kind()),
        decode_ms: ms(v.timing.decode),
        preprocess_ms: ms(v.timing.preprocess),
        inference_ms: ms(v.timing.inference),
        kl_horizontal: v.branch_kl.map(|k| k[0]),
        kl_vertical: v.branch_kl.map(|k| k[1]),
        branch_ratio: v.branch_kl.zip(thresholds).map(|(k, t)| t.ratio(k)),
        relative_cusum: v.relative.map(|s| s.cusum),
        alarm_ratio: v.alarm_ratio,
        posterior_tail: v.tail_scores.map(|t| t[0]),
        extra_tail: v.tail_scores.map(|t| t[1]),
        direction_cusum: v.direction.map(|s| s.cusum),
        threshold: v.step.map(|s| s.threshold),
        relative_threshold: v.relative.map(|s| s.threshold),
        direction_threshold: v.direction.map(|s| s.threshold),
        change_cusum: v.change.map(|s| s.cusum),
        change_threshold: v.change.map(|s| s.threshold),
    }
}

fn eval_input(
    i: usize,
    input: &Input,
    opts: &Options,
    monitor: &mut Monitor,
    out: &mut Vec<FrameRecord>,
    progress: &dyn Fn(usize),
) -> Result<(), crate::Error> {
    let path = &input.path;
    if !is_bag(path) {
        // An image folder: one drive, frames in name order.
        let files = list_images(path).map_err(Error::read(path))?;
        if files.is_empty() {
            return Err(Error::Drive(format!(
                "{}: no PNG or JPEG frames",
                path.display()
            )));
        }
        for (k, f) in files.iter().enumerate() {
            let file = ImageFile::read(f)?;
            let v = monitor.process(&file.as_frame(), None);
            // An image that does not decode is damage to the dataset, not a camera fault:
            // stop this input with an error naming the file (earlier frames are kept).
            if let Some(vae_ood_core::monitor::Fault::Rejected(e)) = &v.fault {
                return Err(Error::Drive(format!(
                    "{}: unreadable image: {e}",
                    f.display()
                )));
            }
            let stamp = (k as f64 * 1e9 / opts.folder_fps) as i64;
            out.push(record(
                i,
                k,
                stamp,
                label_at(&input.label, stamp, None, ""),
                &v,
                monitor.branch_thresholds(),
            ));
            progress(1);
        }
        return Ok(());
    }
    let bag = Bag::open(path)?;
    let (topic, msg_type) = bag.camera_topic(opts.topic.as_deref())?;
    let label_topic = match &input.label {
        Label::Topic { topic: t, .. } => {
            bag.check_topic(t, &[BOOL])?;
            Some(t.clone())
        }
        _ => None,
    };
    let mut topics = vec![topic.as_str()];
    if let Some(t) = &label_topic {
        topics.push(t);
    }
    let mut current_label: Option<bool> = None;
    let mut k = 0usize;
    // Damage that costs no frame (each undecodable frame is a fault, as in the node) is
    // still the input's error: counted, with the first message's detail.
    let (mut bad_frames, mut bad_labels) = (Damage::default(), Damage::default());
    let mut labels_seen = 0usize;
    let result = bag.visit(&topics, &mut |m| {
        if Some(&m.topic) == label_topic.as_ref() {
            match cdr::decode_bool(&m.data) {
                Ok(b) => current_label = Some(b),
                Err(e) => {
                    bad_labels.note(|| format!("label message {labels_seen} on {}: {e}", m.topic))
                }
            }
            labels_seen += 1;
            return;
        }
        let decoded = cdr::decode_camera(&msg_type, &m.data);
        match decoded {
            Ok(frame) => {
                let stamp = if frame.stamp_ns > 0 {
                    frame.stamp_ns
                } else {
                    m.log_time_ns
                };
                let v = monitor.process_at(
                    &frame.as_frame(),
                    None,
                    (frame.stamp_ns > 0).then_some(frame.stamp_ns),
                );
                out.push(record(
                    i,
                    k,
                    stamp,
                    label_at(
                        &input.label,
                        stamp,
                        current_label,
                        label_topic.as_deref().unwrap_or(""),
                    ),
                    &v,
                    monitor.branch_thresholds(),
                ));
            }
            Err(e) => {
                // A message that does not decode is a fault of that frame, as in the node.
                let fault = vae_ood_core::frame::FrameError::Decode(format!(
                    "undecodable {msg_type} message: {e}"
                ));
                let v = monitor.reject(vae_ood_core::monitor::Fault::Rejected(fault));
                let label = label_at(
                    &input.label,
                    m.log_time_ns,
                    current_label,
                    label_topic.as_deref().unwrap_or(""),
                );
                out.push(record(
                    i,
                    k,
                    m.log_time_ns,
                    label,
                    &v,
                    monitor.branch_thresholds(),
                ));
                bad_frames.note(|| format!("message {k} on {topic}: {e}"));
            }
        }
        k += 1;
        progress(1);
    });
    match result {
        Ok(_) if k == 0 => Err(Error::Drive(format!(
            "{}: topic {topic} has no messages",
            path.display()
        ))),
        Ok(_) => {
            let damage: Vec<String> = [
                bad_frames.describe("undecodable frame(s), each counted as a fault"),
                bad_labels.describe(
                    "undecodable label message(s), after which frames kept the label before",
                ),
            ]
            .into_iter()
            .flatten()
            .collect();
            match damage.is_empty() {
                true => Ok(()),
                false => Err(Error::Drive(format!(
                    "{}: {}",
                    path.display(),
                    damage.join("; ")
                ))),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Damage of one kind that costs no frame: how often, and the first occurrence's detail.
#[derive(Default)]
struct Damage {
    count: usize,
    first: Option<String>,
}

impl Damage {
    fn note(&mut self, detail: impl FnOnce() -> String) {
        self.count += 1;
        self.first.get_or_insert_with(detail);
    }

    /// "N <what> (first: detail)", or nothing when none was noted.
    fn describe(&self, what: &str) -> Option<String> {
        let first = self.first.as_ref()?;
        Some(format!("{} {what} (first: {first})", self.count))
    }
}

/// A plot to draw into a given file.
type PlotJob<'a> = Box<dyn Fn(&Path) -> Result<(), crate::Error> + 'a>;

/// Writes the plots and report.html beside report.json; plot failures (e.g. no font) are
/// recorded in the report, not fatal.
pub fn write_plots_and_html(
    out: &Path,
    report: &mut report::Report,
    frames: &[FrameRecord],
    cusum_threshold: Option<f64>,
) -> std::io::Result<()> {
    let mut jobs: Vec<(String, PlotJob<'_>)> = vec![(
        "roc_score.png".into(),
        Box::new(|p: &Path| plots::roc(p, "ROC, per-frame score", frames, |f| f.score)),
    )];
    if report.calibrated {
        jobs.push((
            "roc_cusum.png".into(),
            Box::new(|p: &Path| plots::roc(p, "ROC, CUSUM statistic", frames, |f| f.cusum)),
        ));
    }
    for (k, input) in report.inputs.iter().enumerate() {
        let fs: Vec<&FrameRecord> = frames.iter().filter(|f| f.input == k).collect();
        if fs.is_empty() {
            continue;
        }
        let title = format!("input {k}: {}", input.path);
        jobs.push((
            format!("timeline_{k}.png"),
            Box::new(move |p: &Path| plots::timeline(p, &title, &fs, cusum_threshold)),
        ));
    }
    for (name, job) in jobs {
        match job(&out.join(&name)) {
            Ok(()) => report.plots.push(name),
            Err(e) => {
                report.plot_error.get_or_insert(e.to_string());
            }
        }
    }
    std::fs::write(out.join("report.html"), html::render(report))
}

/// The OOD types present, sorted.
pub fn ood_types(frames: &[FrameRecord]) -> Vec<String> {
    let mut types: Vec<String> = frames
        .iter()
        .filter(|f| f.ood)
        .map(|f| f.ood_type.clone())
        .collect();
    types.sort();
    types.dedup();
    types
}

/// Total frames of the inputs (for a progress bar); unknown inputs count zero.
pub fn count_frames(inputs: &[Input], topic: Option<&str>) -> usize {
    let paths: Vec<&Path> = inputs.iter().map(|i| i.path.as_path()).collect();
    crate::drives::count_frames(&paths, topic)
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_memory_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// frames.csv carries the OOD type as one unquoted field: a type with a comma, quote or
    /// line break is refused up front, by name, whichever way it was given.
    #[test]
    fn an_ood_type_frames_csv_cannot_hold_is_refused() {
        let refused = |ood: &[&str], input: &[&str]| {
            let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            labelled_inputs(&[], &s(ood), &s(input), None, Some("/ood_label"))
                .unwrap_err()
                .to_string()
        };
        assert!(refused(&["d/x=heavy,rain"], &[]).contains("heavy,rain"));
        assert!(refused(&["d/fog,night"], &[]).contains("fog,night"));
        assert!(refused(&[], &["d/x=a\"b"]).contains("a\"b"));
        let ok = labelled_inputs(&[], &["d/x=heavy rain".into()], &[], None, None).unwrap();
        assert!(matches!(&ok[0].label, Label::Ood(t) if t == "heavy rain"));
    }
}
