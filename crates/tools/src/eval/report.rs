//! The evaluation report: JSON (schema in docs/eval.md) and a per-frame CSV.

use super::metrics::{metrics, Metrics};
use super::{FrameRecord, InputResult};
use serde::Serialize;
use std::collections::BTreeMap;
use vae_ood_core::monitor::MonitorState;
pub use vae_ood_core::stats::{percentiles, Percentiles};

pub const SCHEMA_VERSION: u32 = 1;

/// Metrics, or why they could not be computed (e.g. only one class present).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Ok(Metrics),
    Unavailable { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub input: usize,
    pub ood_type: String,
    pub onset_index: usize,
    pub frames: usize,
    /// Frames from onset to the first OOD verdict inside the segment; None = missed.
    pub delay_frames: Option<usize>,
    pub delay_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sequential {
    pub segments: Vec<Segment>,
    pub detected: usize,
    pub missed: usize,
    pub mean_delay_frames: Option<f64>,
    pub mean_delay_s: Option<f64>,
    /// Entries into the OOD state on in-distribution frames.
    pub false_alarms: usize,
    pub id_frames: usize,
    pub id_hours: f64,
    pub false_alarms_per_1000_id_frames: f64,
    pub false_alarms_per_hour: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub model_id: String,
    pub calibrated: bool,
    pub inputs: Vec<InputResult>,
    /// True when some input was damaged: its frames before the damage are included.
    pub partial: bool,
    pub frames: usize,
    pub scored: usize,
    pub faulted: usize,
    /// Frames a detector with history (the flow detector) spent warming up: neither scored
    /// nor faulted.
    pub warming_up: usize,
    /// Per OOD type (and "all"), on the per-frame nonconformity score.
    pub score_metrics: BTreeMap<String, Outcome>,
    /// Per OOD type (and "all"), on the CUSUM statistic (calibrated bundles).
    pub cusum_metrics: BTreeMap<String, Outcome>,
    pub sequential: Option<Sequential>,
    pub latency_ms: BTreeMap<String, Percentiles>,
    pub throughput_fps: f64,
    pub peak_memory_mib: Option<f64>,
    /// PNG files written beside the report.
    pub plots: Vec<String>,
    /// Why plots are missing, if they are.
    pub plot_error: Option<String>,
    /// The CUSUM threshold the verdicts used (calibrated bundles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cusum_threshold: Option<f64>,
    /// A merged report (`vae-ood report`): each shard's own figures. Latency, throughput and
    /// memory belong to the machine a shard ran on; the detection figures above are over
    /// every frame of every shard.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardSummary>,
}

/// One shard of a merged report, as its own `report.json` gave it.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSummary {
    pub dir: String,
    pub frames: usize,
    pub latency_ms: serde_json::Value,
    pub throughput_fps: f64,
    pub peak_memory_mib: Option<f64>,
}

fn per_type(
    frames: &[FrameRecord],
    value: impl Fn(&FrameRecord) -> Option<f64>,
) -> BTreeMap<String, Outcome> {
    let types = super::ood_types(frames);
    let mut out = BTreeMap::new();
    let mut eval = |name: String, keep: &dyn Fn(&FrameRecord) -> bool| {
        let (s, l): (Vec<f64>, Vec<bool>) = frames
            .iter()
            .filter(|f| keep(f))
            .filter_map(|f| value(f).map(|v| (v, f.ood)))
            .unzip();
        let o = metrics(&s, &l).map_or_else(
            |e| Outcome::Unavailable {
                error: e.to_string(),
            },
            Outcome::Ok,
        );
        out.insert(name, o);
    };
    if types.len() > 1 {
        eval("all".into(), &|_| true);
    }
    for t in types {
        let t2 = t.clone();
        eval(t, &move |f| !f.ood || f.ood_type == t2);
    }
    out
}

fn sequential(frames: &[FrameRecord]) -> Sequential {
    let mut segments = vec![];
    let (mut false_alarms, mut id_frames, mut id_seconds) = (0, 0, 0.0);
    let inputs: Vec<usize> = {
        let mut v: Vec<usize> = frames.iter().map(|f| f.input).collect();
        v.dedup();
        v
    };
    for input in inputs {
        let fs: Vec<&FrameRecord> = frames.iter().filter(|f| f.input == input).collect();
        let mut dts: Vec<i64> = fs
            .windows(2)
            .map(|w| w[1].stamp_ns - w[0].stamp_ns)
            .filter(|d| *d > 0)
            .collect();
        dts.sort_unstable();
        let dt = dts.get(dts.len() / 2).copied().unwrap_or(0) as f64 / 1e9;
        let mut k = 0;
        while k < fs.len() {
            let f = fs[k];
            if !f.ood {
                id_frames += 1;
                id_seconds += dt;
                let entered = f.state == MonitorState::Ood
                    && (k == 0 || fs[k - 1].state != MonitorState::Ood);
                false_alarms += usize::from(entered);
                k += 1;
                continue;
            }
            let start = k;
            while k < fs.len() && fs[k].ood {
                k += 1;
            }
            let hit = (start..k).find(|&j| fs[j].state == MonitorState::Ood);
            segments.push(Segment {
                input,
                ood_type: f.ood_type.clone(),
                onset_index: f.index,
                frames: k - start,
                delay_frames: hit.map(|j| j - start),
                delay_s: hit.map(|j| (fs[j].stamp_ns - f.stamp_ns) as f64 / 1e9),
            });
        }
    }
    let delays: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.delay_frames.is_some())
        .collect();
    let mean = |f: &dyn Fn(&Segment) -> f64| {
        (!delays.is_empty()).then(|| delays.iter().map(|s| f(s)).sum::<f64>() / delays.len() as f64)
    };
    let id_hours = id_seconds / 3600.0;
    Sequential {
        detected: delays.len(),
        missed: segments.len() - delays.len(),
        mean_delay_frames: mean(&|s| s.delay_frames.unwrap_or(0) as f64),
        mean_delay_s: mean(&|s| s.delay_s.unwrap_or(0.0)),
        false_alarms,
        id_frames,
        id_hours,
        false_alarms_per_1000_id_frames: if id_frames > 0 {
            false_alarms as f64 * 1000.0 / id_frames as f64
        } else {
            0.0
        },
        false_alarms_per_hour: (id_hours > 0.0).then(|| false_alarms as f64 / id_hours),
        segments,
    }
}

pub fn build(
    model_id: &str,
    calibrated: bool,
    frames: &[FrameRecord],
    inputs: Vec<InputResult>,
    wall_s: f64,
) -> Report {
    let mut latency = BTreeMap::new();
    let scored: Vec<&FrameRecord> = frames.iter().filter(|f| f.score.is_some()).collect();
    let warming_up = frames
        .iter()
        .filter(|f| f.fault.as_deref() == Some("warming_up"))
        .count();
    for (name, get) in [
        (
            "decode",
            (|f: &FrameRecord| f.decode_ms) as fn(&FrameRecord) -> f64,
        ),
        ("preprocess", |f| f.preprocess_ms),
        ("inference", |f| f.inference_ms),
    ] {
        if let Some(p) = percentiles(scored.iter().map(|f| get(f)).collect()) {
            latency.insert(name.to_string(), p);
        }
    }
    if let Some(p) = percentiles(
        scored
            .iter()
            .map(|f| f.decode_ms + f.preprocess_ms + f.inference_ms)
            .collect(),
    ) {
        latency.insert("total".into(), p);
    }
    Report {
        schema_version: SCHEMA_VERSION,
        model_id: model_id.to_string(),
        calibrated,
        partial: inputs.iter().any(|i| i.error.is_some()),
        inputs,
        frames: frames.len(),
        scored: scored.len(),
        faulted: frames.len() - scored.len() - warming_up,
        warming_up,
        score_metrics: per_type(frames, |f| f.score),
        cusum_metrics: if calibrated {
            per_type(frames, |f| f.cusum)
        } else {
            BTreeMap::new()
        },
        sequential: calibrated.then(|| sequential(frames)),
        latency_ms: latency,
        throughput_fps: if wall_s > 0.0 {
            frames.len() as f64 / wall_s
        } else {
            0.0
        },
        peak_memory_mib: super::peak_memory_mib(),
        plots: vec![],
        plot_error: None,
        cusum_threshold: None,
        shards: vec![],
    }
}

pub fn write_csv(path: &std::path::Path, frames: &[FrameRecord]) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "input,index,stamp_ns,ood,ood_type,score,p_value,log_martingale,cusum,state,fault,decode_ms,preprocess_ms,inference_ms")?;
    let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x}"));
    for f in frames {
        writeln!(
            w,
            "{},{},{},{},{},{},{},{},{},{},{},{:.4},{:.4},{:.4}",
            f.input,
            f.index,
            f.stamp_ns,
            f.ood,
            f.ood_type,
            o(f.score),
            o(f.p_value),
            o(f.log_martingale),
            o(f.cusum),
            f.state.as_str(),
            f.fault.as_deref().unwrap_or(""),
            f.decode_ms,
            f.preprocess_ms,
            f.inference_ms
        )?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fr(index: usize, ood: bool, state: MonitorState) -> FrameRecord {
        FrameRecord {
            input: 0,
            index,
            stamp_ns: index as i64 * 100_000_000,
            ood,
            ood_type: if ood { "rain".into() } else { String::new() },
            score: Some(index as f64),
            p_value: None,
            log_martingale: None,
            cusum: Some(0.0),
            state,
            fault: None,
            decode_ms: 0.0,
            preprocess_ms: 0.0,
            inference_ms: 0.0,
        }
    }

    #[test]
    fn delay_and_false_alarms() {
        use MonitorState::*;
        // ID (false alarm at 1), OOD from 3 detected at 5, then ID again.
        let states = [Ok, Ood, Ok, Ok, Ok, Ood, Ood, Ok];
        let labels = [false, false, false, true, true, true, true, false];
        let frames: Vec<_> = states
            .iter()
            .zip(labels)
            .enumerate()
            .map(|(i, (s, l))| fr(i, l, *s))
            .collect();
        let s = sequential(&frames);
        assert_eq!(s.segments.len(), 1);
        assert_eq!(s.segments[0].delay_frames, Some(2));
        assert!((s.segments[0].delay_s.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!((s.false_alarms, s.id_frames), (1, 4));
        assert_eq!(s.false_alarms_per_1000_id_frames, 250.0);
    }
}
