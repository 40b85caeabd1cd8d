//! Offline evaluation of a detector on recorded drives (rosbag2 bags or image folders): the
//! same core monitor as the node, frame by frame, then detection metrics.

pub mod html;
pub mod metrics;
pub mod plots;
pub mod report;

use crate::backend::BackendOptions;
use crate::bag::{cdr, Bag, BOOL};
use crate::frame::FrameData;
use crate::monitor::{Detector, Monitor, MonitorConfig, MonitorState};
use crate::tools::drives::list_images;
use std::path::{Path, PathBuf};

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

/// Evaluates every input with a fresh monitor (CUSUM starts at zero per drive).
pub fn run(
    inputs: &[Input],
    opts: &Options,
    progress: &dyn Fn(usize),
) -> Result<(Vec<FrameRecord>, Vec<InputResult>), String> {
    let mut frames = vec![];
    let mut results = vec![];
    for (i, input) in inputs.iter().enumerate() {
        let det = Detector::load(&opts.bundle, opts.backend).map_err(|e| e.to_string())?;
        let mut monitor = Monitor::new(det, opts.monitor)?;
        let before = frames.len();
        let error = eval_input(i, input, opts, &mut monitor, &mut frames, progress).err();
        results.push(InputResult {
            path: input.path.display().to_string(),
            frames: frames.len() - before,
            error,
        });
    }
    Ok((frames, results))
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
    v: &crate::monitor::FrameVerdict,
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
    }
}

fn eval_input(
    i: usize,
    input: &Input,
    opts: &Options,
    monitor: &mut Monitor,
    out: &mut Vec<FrameRecord>,
    progress: &dyn Fn(usize),
) -> Result<(), String> {
    let path = &input.path;
    if path.is_dir() && !path.join("metadata.yaml").is_file() {
        // An image folder: one drive, frames in name order.
        let files = list_images(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if files.is_empty() {
            return Err(format!("{}: no PNG or JPEG frames", path.display()));
        }
        for (k, f) in files.iter().enumerate() {
            let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let format = f
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            let v = monitor.process(
                &FrameData::Compressed {
                    format: &format,
                    data: &bytes,
                },
                None,
            );
            // An image that does not decode is damage to the dataset, not a camera fault:
            // stop this input with an error naming the file (earlier frames are kept).
            if let Some(crate::monitor::Fault::Rejected(e)) = &v.fault {
                return Err(format!("{}: unreadable image: {e}", f.display()));
            }
            let stamp = (k as f64 * 1e9 / opts.folder_fps) as i64;
            out.push(record(
                i,
                k,
                stamp,
                label_at(&input.label, stamp, None, ""),
                &v,
            ));
            progress(1);
        }
        return Ok(());
    }
    let bag = Bag::open(path).map_err(|e| e.to_string())?;
    let (topic, msg_type) = bag
        .camera_topic(opts.topic.as_deref())
        .map_err(|e| e.to_string())?;
    let label_topic = match &input.label {
        Label::Topic { topic: t, .. } => {
            bag.check_topic(t, &[BOOL]).map_err(|e| e.to_string())?;
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
    let mut decode_error: Option<String> = None;
    let result = bag.visit(&topics, &mut |m| {
        if Some(&m.topic) == label_topic.as_ref() {
            if let Ok(b) = cdr::decode_bool(&m.data) {
                current_label = Some(b);
            }
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
                let v = monitor.process(&frame.as_frame(), None);
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
                ));
            }
            Err(e) => {
                // A message that does not decode is a fault of that frame, as in the node.
                let fault = crate::frame::FrameError::Decode(format!(
                    "undecodable {msg_type} message: {e}"
                ));
                let v = monitor.reject(crate::monitor::Fault::Rejected(fault));
                let label = label_at(
                    &input.label,
                    m.log_time_ns,
                    current_label,
                    label_topic.as_deref().unwrap_or(""),
                );
                out.push(record(i, k, m.log_time_ns, label, &v));
                decode_error.get_or_insert_with(|| {
                    format!("{}: message {k} on {topic}: {e}", path.display())
                });
            }
        }
        k += 1;
        progress(1);
    });
    match result {
        Ok(_) if k == 0 => Err(format!("{}: topic {topic} has no messages", path.display())),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// A plot to draw into a given file.
type PlotJob<'a> = Box<dyn Fn(&Path) -> Result<(), String> + 'a>;

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
                report.plot_error.get_or_insert(e);
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
    inputs
        .iter()
        .map(|i| {
            if i.path.is_dir() && !i.path.join("metadata.yaml").is_file() {
                list_images(&i.path).map(|f| f.len()).unwrap_or(0)
            } else {
                Bag::open(&i.path)
                    .and_then(|b| b.topics())
                    .map(|ts| {
                        ts.iter()
                            .filter(|t| topic.map_or(t.is_camera(), |n| t.name == n))
                            .map(|t| t.count as usize)
                            .sum()
                    })
                    .unwrap_or(0)
            }
        })
        .sum()
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

pub fn is_bag(path: &Path) -> bool {
    path.is_file() || path.join("metadata.yaml").is_file()
}
