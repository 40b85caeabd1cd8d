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
    /// Inputs with at least one false alarm, of the inputs with in-distribution frames: what a
    /// drive-level threshold bounds (SAFETY.md), where `false_alarms` also counts re-entries.
    pub inputs_with_false_alarm: usize,
    pub id_inputs: usize,
    pub id_frames: usize,
    /// In-distribution frames the verdict spent OOD: what false alarms cost in availability
    /// (recovery's hysteresis trades re-entries for time spent OOD).
    pub id_frames_alarmed: usize,
    pub id_hours: f64,
    pub false_alarms_per_1000_id_frames: f64,
    pub false_alarms_per_hour: Option<f64>,
}

/// The bundle's drive-level false-alarm promise set against what an evaluation saw: how likely
/// so many inputs with a false alarm are if the promise holds. One fresh set of drives decides
/// little (SAFETY.md: at the floor's own rate, more than 3 of 52 drives alarm with probability
/// 0.27), so read `tail`, and pool sets with `vae-ood report`, rather than a count alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Promise {
    /// At most this probability that a stretch of `frames_per_drive` clear frames alarms.
    pub per_drive: f64,
    pub frames_per_drive: usize,
    /// Alarmed stretches the promise allows on average over the evaluation's in-distribution
    /// frames: `per_drive` x ID frames / `frames_per_drive`.
    pub expected: f64,
    /// Inputs with a false alarm (`Sequential::inputs_with_false_alarm`).
    pub seen: usize,
    /// P(X >= seen) for X ~ Poisson(expected): small (under 0.05, say) when these drives alarm
    /// more often than the promise allows. Poisson, not binomial, so that inputs of any length
    /// count by their frames; it is the more lenient tail.
    pub tail: f64,
}

impl Promise {
    /// The promise of `per_drive` per stretch of `frames_per_drive` frames against `seq`.
    pub fn check(per_drive: f64, frames_per_drive: usize, seq: &Sequential) -> Self {
        let expected = per_drive * seq.id_frames as f64 / frames_per_drive.max(1) as f64;
        let seen = seq.inputs_with_false_alarm;
        Self {
            per_drive,
            frames_per_drive,
            expected,
            seen,
            tail: poisson_tail(expected, seen),
        }
    }
}

/// P(X >= k) for X ~ Poisson(lambda).
fn poisson_tail(lambda: f64, k: usize) -> f64 {
    let (mut term, mut below) = ((-lambda).exp(), 0.0);
    for i in 0..k {
        below += term;
        term *= lambda / (i + 1) as f64;
    }
    (1.0 - below).clamp(0.0, 1.0)
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
    /// The threshold's false-alarm promise against these drives: for a calibrated bundle at
    /// its own threshold (no explicit threshold or scale), whose manifest records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promise: Option<Promise>,
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
    /// The ceiling on every branch's S, in thresholds (`--cusum-ceiling`; calibrated bundles;
    /// absent: unbounded). It moves no first alarm but shapes the CUSUM metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cusum_ceiling: Option<f64>,
    /// A merged report (`vae-ood report`): each shard's own figures. Latency, throughput and
    /// memory belong to the machine a shard ran on; the detection figures above are over
    /// every frame of every shard.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardSummary>,
    /// Flow detectors: the reference design's per-branch scores and rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branches: Option<Branches>,
}

/// The reference design's view of a flow detector (the paper authors' RTCSA 2022 code): each
/// branch's KL as a per-frame score, and its rule (OOD when either branch's KL exceeds its
/// threshold) as a verdict of its own, beside the calibrated pipeline's.
#[derive(Debug, Clone, Serialize)]
pub struct Branches {
    /// Per OOD type, on the horizontal branch's KL.
    pub horizontal: BTreeMap<String, Outcome>,
    /// Per OOD type, on the vertical branch's KL.
    pub vertical: BTreeMap<String, Outcome>,
    /// Per OOD type, on max over the branches of KL / threshold (bundles with
    /// `calibration.branch_thresholds`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rule_metrics: BTreeMap<String, Outcome>,
    /// The rule's detections and false alarms, as `sequential` counts the verdict's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Sequential>,
}

fn branches(frames: &[FrameRecord]) -> Option<Branches> {
    if frames.iter().all(|f| f.kl_horizontal.is_none()) {
        return None;
    }
    let ruled = frames.iter().any(|f| f.branch_ratio.is_some());
    Some(Branches {
        horizontal: per_type(frames, |f| f.kl_horizontal),
        vertical: per_type(frames, |f| f.kl_vertical),
        rule_metrics: if ruled {
            per_type(frames, |f| f.branch_ratio)
        } else {
            BTreeMap::new()
        },
        rule: ruled.then(|| sequential(frames, |f| f.branch_ratio.is_some_and(|r| r > 1.0))),
    })
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

/// Detections and false alarms of a verdict: `alarm` says whether it is OOD on a frame.
fn sequential(frames: &[FrameRecord], alarm: impl Fn(&FrameRecord) -> bool) -> Sequential {
    let mut segments = vec![];
    let (mut false_alarms, mut id_frames, mut id_seconds) = (0, 0, 0.0);
    let (mut inputs_with_false_alarm, mut id_inputs, mut id_frames_alarmed) = (0, 0, 0);
    let inputs: Vec<usize> = {
        let mut v: Vec<usize> = frames.iter().map(|f| f.input).collect();
        // Each input once, however a merged or hand-made frames.csv orders its rows.
        v.sort_unstable();
        v.dedup();
        v
    };
    for input in inputs {
        let fs: Vec<&FrameRecord> = frames.iter().filter(|f| f.input == input).collect();
        let mut dts: Vec<i64> = fs
            .windows(2)
            // Stamps come from the bag (any i64 where a header stamp is unset): no overflow.
            .filter_map(|w| w[1].stamp_ns.checked_sub(w[0].stamp_ns))
            .filter(|d| *d > 0)
            .collect();
        dts.sort_unstable();
        let dt = dts.get(dts.len() / 2).copied().unwrap_or(0) as f64 / 1e9;
        let (alarms_before, id_before) = (false_alarms, id_frames);
        let mut k = 0;
        while k < fs.len() {
            let f = fs[k];
            if !f.ood {
                id_frames += 1;
                id_seconds += dt;
                let alarmed = alarm(f);
                id_frames_alarmed += usize::from(alarmed);
                let entered = alarmed && (k == 0 || !alarm(fs[k - 1]));
                false_alarms += usize::from(entered);
                k += 1;
                continue;
            }
            let start = k;
            while k < fs.len() && fs[k].ood {
                k += 1;
            }
            let hit = (start..k).find(|&j| alarm(fs[j]));
            segments.push(Segment {
                input,
                ood_type: f.ood_type.clone(),
                onset_index: f.index,
                frames: k - start,
                delay_frames: hit.map(|j| j - start),
                delay_s: hit
                    .map(|j| (i128::from(fs[j].stamp_ns) - i128::from(f.stamp_ns)) as f64 / 1e9),
            });
        }
        id_inputs += usize::from(id_frames > id_before);
        inputs_with_false_alarm += usize::from(false_alarms > alarms_before);
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
        inputs_with_false_alarm,
        id_inputs,
        id_frames,
        id_frames_alarmed,
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
    // Counted, not subtracted: a hand-made frames.csv may hold a score beside a fault.
    let faulted = frames
        .iter()
        .filter(|f| f.score.is_none() && f.fault.as_deref() != Some("warming_up"))
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
        faulted,
        warming_up,
        score_metrics: per_type(frames, |f| f.score),
        cusum_metrics: if calibrated {
            // With a drive-relative or direction branch the sequential statistic is the
            // branches' alarm ratio; alone, S (the same ranking as S / threshold).
            if frames
                .iter()
                .any(|f| f.relative_cusum.is_some() || f.direction_cusum.is_some())
            {
                per_type(frames, |f| f.alarm_ratio)
            } else {
                per_type(frames, |f| f.cusum)
            }
        } else {
            BTreeMap::new()
        },
        // The alarm is OOD or a fault (an input check, e.g. a slow stream), as on the node's
        // ~/ood; STARTING, also true there, is left out on purpose: a detector warming up is
        // not a verdict on the scene.
        sequential: calibrated.then(|| {
            sequential(frames, |f| {
                matches!(f.state, MonitorState::Ood | MonitorState::Fault)
            })
        }),
        promise: None,
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
        cusum_ceiling: None,
        shards: vec![],
        branches: branches(frames),
    }
}

/// The columns of `frames.csv` ([`CSV_BRANCH_COLUMNS`]: flow detectors' branches, empty
/// otherwise; [`CSV_TAIL_COLUMNS`]: the score's parts, empty unless it has two).
pub const CSV_HEADER: &str = "input,index,stamp_ns,ood,ood_type,score,p_value,log_martingale,cusum,state,fault,decode_ms,preprocess_ms,inference_ms,kl_horizontal,kl_vertical,branch_ratio,relative_cusum,alarm_ratio,posterior_tail,extra_tail,direction_cusum,threshold,relative_threshold,direction_threshold,change_cusum,change_threshold";

/// The columns session 17 appended to `frames.csv`; files written before end without them.
pub const CSV_BRANCH_COLUMNS: &str = ",kl_horizontal,kl_vertical,branch_ratio";

/// The columns session 21 appended (the drive-relative branch); files written before end
/// without them.
pub const CSV_RELATIVE_COLUMNS: &str = ",relative_cusum,alarm_ratio";

/// The columns session 25 appended (the two tail scores of a score with a separate extra
/// part); files written before end without them.
pub const CSV_TAIL_COLUMNS: &str = ",posterior_tail,extra_tail";

/// The column session 35 appended (the direction branch); files written before end without
/// it.
pub const CSV_DIRECTION_COLUMNS: &str = ",direction_cusum";

/// The columns session 44 appended (each branch's threshold in force); files written before
/// end without them.
pub const CSV_THRESHOLD_COLUMNS: &str = ",threshold,relative_threshold,direction_threshold";

/// The columns session 45 appended (the change branch's S and threshold, on frames it
/// measured); files written before end without them.
pub const CSV_CHANGE_COLUMNS: &str = ",change_cusum,change_threshold";

pub fn write_csv(path: &std::path::Path, frames: &[FrameRecord]) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "{CSV_HEADER}")?;
    let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x}"));
    for f in frames {
        writeln!(
            w,
            "{},{},{},{},{},{},{},{},{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{},{},{},{},{},{},{},{},{}",
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
            f.inference_ms,
            o(f.kl_horizontal),
            o(f.kl_vertical),
            o(f.branch_ratio),
            o(f.relative_cusum),
            o(f.alarm_ratio),
            o(f.posterior_tail),
            o(f.extra_tail),
            o(f.direction_cusum),
            o(f.threshold),
            o(f.relative_threshold),
            o(f.direction_threshold),
            o(f.change_cusum),
            o(f.change_threshold)
        )?;
    }
    w.flush()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_promise_check_is_the_poisson_tail_of_the_alarmed_inputs() {
        assert_eq!(poisson_tail(3.0, 0), 1.0);
        assert!((poisson_tail(1.0, 1) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        // 52 drives of 600 frames at 4/79 per drive (SAFETY.md's figure): 4 or more alarmed
        // drives with probability about 0.27.
        let id = Sequential {
            segments: vec![],
            detected: 0,
            missed: 0,
            mean_delay_frames: None,
            mean_delay_s: None,
            false_alarms: 5,
            inputs_with_false_alarm: 4,
            id_inputs: 52,
            id_frames: 52 * 600,
            id_frames_alarmed: 40,
            id_hours: 0.6,
            false_alarms_per_1000_id_frames: 0.16,
            false_alarms_per_hour: None,
        };
        let p = Promise::check(4.0 / 79.0, 600, &id);
        assert!((p.expected - 52.0 * 4.0 / 79.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.seen, 4);
        assert!((p.tail - 0.2707).abs() < 0.001, "{p:?}");
        // Twice the frames at the same count: the count is less surprising.
        let longer = Sequential {
            id_frames: 2 * id.id_frames,
            ..id
        };
        assert!(Promise::check(4.0 / 79.0, 600, &longer).tail > p.tail);
    }

    /// A frame record with every optional column empty: tests set what they need.
    pub(crate) fn fr(index: usize, ood: bool, state: MonitorState) -> FrameRecord {
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
            kl_horizontal: None,
            kl_vertical: None,
            branch_ratio: None,
            relative_cusum: None,
            alarm_ratio: None,
            direction_cusum: None,
            posterior_tail: None,
            extra_tail: None,
            threshold: None,
            relative_threshold: None,
            direction_threshold: None,
            change_cusum: None,
            change_threshold: None,
        }
    }

    /// Whatever a bag or a hand-made frames.csv holds: stamps a full i64 range apart, one
    /// input's rows split by another's, a score beside a warm-up fault. No panic, each input
    /// counted once, and faults counted rather than subtracted.
    #[test]
    fn extreme_stamps_split_inputs_and_odd_rows_are_counted_not_panicked_on() {
        use MonitorState::*;
        let mut frames = vec![fr(0, true, Ok), fr(1, true, Ood), fr(0, false, Ok)];
        frames[0].stamp_ns = i64::MIN + 1;
        frames[1].stamp_ns = i64::MAX - 1;
        frames[2].input = 1;
        let mut again = fr(2, false, Ood);
        again.fault = Some("warming_up".into());
        frames.push(again);
        let s = sequential(&frames, |f| f.state == Ood);
        assert_eq!(s.segments.len(), 1);
        assert_eq!(s.segments[0].delay_frames, Some(1));
        assert!(s.segments[0].delay_s.unwrap() > 1e10, "{:?}", s.segments[0]);
        assert_eq!((s.id_inputs, s.id_frames, s.false_alarms), (2, 2, 0));
        let r = build("m", true, &frames, vec![], 1.0);
        assert_eq!((r.frames, r.scored, r.warming_up, r.faulted), (4, 4, 1, 0));
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
        let s = sequential(&frames, |f| f.state == Ood);
        assert_eq!(s.segments.len(), 1);
        assert_eq!(s.segments[0].delay_frames, Some(2));
        assert!((s.segments[0].delay_s.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!((s.false_alarms, s.id_frames), (1, 4));
        assert_eq!(s.false_alarms_per_1000_id_frames, 250.0);
        assert_eq!((s.inputs_with_false_alarm, s.id_inputs), (1, 1));
    }

    #[test]
    fn re_entries_count_as_alarms_but_once_per_input() {
        use MonitorState::*;
        // Input 0 enters OOD twice on clear frames, input 1 never, input 2 is OOD only.
        let states = [Ood, Ok, Ood, Ok, Ok, Ok, Ood, Ood];
        let inputs = [0, 0, 0, 1, 1, 1, 2, 2];
        let labels = [false, false, false, false, false, false, true, true];
        let frames: Vec<_> = (0..8)
            .map(|i| FrameRecord {
                input: inputs[i],
                ..fr(i, labels[i], states[i])
            })
            .collect();
        let s = sequential(&frames, |f| f.state == Ood);
        assert_eq!(s.false_alarms, 2);
        assert_eq!((s.inputs_with_false_alarm, s.id_inputs), (1, 2));
        assert_eq!(s.id_frames_alarmed, 2);
    }

    #[test]
    fn the_branch_rule_is_a_verdict_of_its_own() {
        // The rule alarms where KL / threshold > 1: once on a clear frame (1), and one frame
        // into the OOD segment (3), whatever the monitor's state says.
        let labels = [false, false, false, true, true, false];
        let ratios = [0.5, 1.2, 0.9, 0.8, 1.5, 0.7];
        let frames: Vec<_> = labels
            .iter()
            .zip(ratios)
            .enumerate()
            .map(|(i, (&l, r))| FrameRecord {
                kl_horizontal: Some(10.0 * r),
                kl_vertical: Some(1.0),
                branch_ratio: Some(r),
                relative_cusum: None,
                alarm_ratio: None,
                direction_cusum: None,
                ..fr(i, l, MonitorState::Ok)
            })
            .collect();
        let b = branches(&frames).expect("flow frames have branches");
        let rule = b.rule.expect("thresholds given");
        assert_eq!((rule.false_alarms, rule.id_frames), (1, 4));
        assert_eq!(rule.segments[0].delay_frames, Some(1));
        assert!(matches!(b.horizontal["rain"], Outcome::Ok(_)));
        assert!(matches!(b.rule_metrics["rain"], Outcome::Ok(_)));
        // Without thresholds: the branches' scores, no rule.
        let bare: Vec<_> = frames
            .iter()
            .map(|f| FrameRecord {
                branch_ratio: None,
                relative_cusum: None,
                alarm_ratio: None,
                direction_cusum: None,
                ..f.clone()
            })
            .collect();
        let b = branches(&bare).unwrap();
        assert!(b.rule.is_none() && b.rule_metrics.is_empty());
        // An image detector's frames: no branches section.
        let image: Vec<_> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| fr(i, l, MonitorState::Ok))
            .collect();
        assert!(branches(&image).is_none());
    }
}
