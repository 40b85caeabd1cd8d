//! `vae-ood report`: several `vae-ood eval` outputs (shards: one input each, say, run on the
//! machines of a cluster) merged into one report. The detection figures are computed again over
//! every shard's frames, so they are exactly those of one `eval` over all the inputs in the
//! same order; latency, throughput and memory stay per shard.

use super::report::{self, Report, ShardSummary};
use super::{FrameRecord, InputResult};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use vae_ood_core::monitor::MonitorState;

/// Reads the `frames.csv` that [`report::write_csv`] wrote.
pub fn read_csv(path: &Path) -> Result<Vec<FrameRecord>> {
    let text = std::fs::read_to_string(path).map_err(Error::read(path))?;
    let bad = |line: usize, what: &str| {
        Error::Input(format!(
            "{}: line {line}: {what} (not a frames.csv written by vae-ood eval?)",
            path.display()
        ))
    };
    let mut lines = text.lines();
    // Before session 17 the file ended at inference_ms (no branch columns), before session 21
    // at branch_ratio (no relative-branch columns), before session 25 at alarm_ratio (no tail
    // columns), before session 35 at extra_tail (no direction column), before session 44 at
    // direction_cusum (no threshold columns), before session 45 at direction_threshold (no
    // change-branch columns).
    let before_change = report::CSV_HEADER.strip_suffix(report::CSV_CHANGE_COLUMNS);
    let before_thresholds =
        before_change.and_then(|b| b.strip_suffix(report::CSV_THRESHOLD_COLUMNS));
    let before_direction =
        before_thresholds.and_then(|b| b.strip_suffix(report::CSV_DIRECTION_COLUMNS));
    let before_tails = before_direction.and_then(|b| b.strip_suffix(report::CSV_TAIL_COLUMNS));
    let before_relative = before_tails.and_then(|b| b.strip_suffix(report::CSV_RELATIVE_COLUMNS));
    let fields = match lines.next() {
        Some(report::CSV_HEADER) => 27,
        Some(h) if before_change == Some(h) => 25,
        Some(h) if before_thresholds == Some(h) => 22,
        Some(h) if before_direction == Some(h) => 21,
        Some(h) if before_tails == Some(h) => 19,
        Some(h) if before_relative == Some(h) => 17,
        Some(h)
            if before_relative.and_then(|b| b.strip_suffix(report::CSV_BRANCH_COLUMNS))
                == Some(h) =>
        {
            14
        }
        _ => return Err(bad(1, "unexpected header")),
    };
    lines
        .enumerate()
        .map(|(k, line)| {
            let n = k + 2;
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != fields {
                return Err(bad(n, &format!("expected {fields} fields")));
            }
            let num = |i: usize| -> Result<f64> {
                f[i].parse::<f64>()
                    .map_err(|_| bad(n, "a number does not parse"))
            };
            let opt = |i: usize| -> Result<Option<f64>> {
                if f[i].is_empty() {
                    Ok(None)
                } else {
                    num(i).map(Some)
                }
            };
            let int = |i: usize| {
                f[i].parse::<i64>()
                    .map_err(|_| bad(n, "an integer does not parse"))
            };
            Ok(FrameRecord {
                input: int(0)? as usize,
                index: int(1)? as usize,
                stamp_ns: int(2)?,
                ood: f[3] == "true",
                ood_type: f[4].to_string(),
                score: opt(5)?,
                p_value: opt(6)?,
                log_martingale: opt(7)?,
                cusum: opt(8)?,
                state: match f[9] {
                    "STARTING" => MonitorState::Starting,
                    "OK" => MonitorState::Ok,
                    "OOD" => MonitorState::Ood,
                    "FAULT" => MonitorState::Fault,
                    _ => return Err(bad(n, "unknown state")),
                },
                fault: (!f[10].is_empty()).then(|| f[10].to_string()),
                decode_ms: num(11)?,
                preprocess_ms: num(12)?,
                inference_ms: num(13)?,
                kl_horizontal: if fields > 14 { opt(14)? } else { None },
                kl_vertical: if fields > 14 { opt(15)? } else { None },
                branch_ratio: if fields > 14 { opt(16)? } else { None },
                relative_cusum: if fields > 17 { opt(17)? } else { None },
                alarm_ratio: if fields > 17 { opt(18)? } else { None },
                posterior_tail: if fields > 19 { opt(19)? } else { None },
                extra_tail: if fields > 19 { opt(20)? } else { None },
                direction_cusum: if fields > 21 { opt(21)? } else { None },
                threshold: if fields > 22 { opt(22)? } else { None },
                relative_threshold: if fields > 22 { opt(23)? } else { None },
                direction_threshold: if fields > 22 { opt(24)? } else { None },
                change_cusum: if fields > 25 { opt(25)? } else { None },
                change_threshold: if fields > 25 { opt(26)? } else { None },
            })
        })
        .collect()
}

/// The merged report and its frames, shards in the order given.
pub fn merge(shards: &[PathBuf]) -> Result<(Report, Vec<FrameRecord>)> {
    if shards.is_empty() {
        return Err(Error::Input(
            "give at least one eval output directory".into(),
        ));
    }
    let (mut frames, mut inputs, mut summaries) = (vec![], vec![], vec![]);
    let mut first: Option<(String, bool, Option<f64>, Option<f64>)> = None;
    // Each shard's promise (per drive, frames per drive), pooled when every shard has the same.
    let mut promises = vec![];
    for dir in shards {
        let json_path = dir.join("report.json");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&json_path).map_err(Error::read(&json_path))?,
        )
        .map_err(|e| Error::Input(format!("{}: {e}", json_path.display())))?;
        let model_id = json["model_id"].as_str().unwrap_or_default().to_string();
        let calibrated = json["calibrated"].as_bool().unwrap_or(false);
        let threshold = json["cusum_threshold"].as_f64();
        let ceiling = json["cusum_ceiling"].as_f64();
        match &first {
            None => first = Some((model_id.clone(), calibrated, threshold, ceiling)),
            Some((m, c, t, k)) if (m, *c, *t, *k) != (&model_id, calibrated, threshold, ceiling) => {
                return Err(Error::Input(format!(
                    "{} was evaluated with detector {model_id} (threshold {threshold:?}, ceiling {ceiling:?}), the first shard with {m} (threshold {t:?}, ceiling {k:?}): merge shards of one detector, one threshold and one ceiling",
                    dir.display()
                )))
            }
            Some(_) => {}
        }
        promises.push(
            json["promise"]["per_drive"]
                .as_f64()
                .zip(json["promise"]["frames_per_drive"].as_u64()),
        );
        let shard_inputs: Vec<InputResult> = json["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| InputResult {
                path: i["path"].as_str().unwrap_or_default().to_string(),
                frames: i["frames"].as_u64().unwrap_or(0) as usize,
                error: i["error"].as_str().map(str::to_string),
            })
            .collect();
        let offset = inputs.len();
        let shard_frames = read_csv(&dir.join("frames.csv"))?;
        if shard_frames.iter().any(|f| f.input >= shard_inputs.len()) {
            return Err(Error::Input(format!(
                "{}: frames.csv names an input that report.json does not list",
                dir.display()
            )));
        }
        summaries.push(ShardSummary {
            dir: dir.display().to_string(),
            frames: shard_frames.len(),
            latency_ms: json["latency_ms"].clone(),
            throughput_fps: json["throughput_fps"].as_f64().unwrap_or(0.0),
            peak_memory_mib: json["peak_memory_mib"].as_f64(),
        });
        frames.extend(shard_frames.into_iter().map(|mut f| {
            f.input += offset;
            f
        }));
        inputs.extend(shard_inputs);
    }
    let (model_id, calibrated, threshold, ceiling) = first.expect("at least one shard");
    let mut r = report::build(&model_id, calibrated, &frames, inputs, 0.0);
    // Latency and memory are each machine's own (in `shards`); shards run side by side, so
    // their rates add up.
    r.latency_ms.clear();
    r.throughput_fps = summaries.iter().map(|s| s.throughput_fps).sum();
    r.peak_memory_mib = None;
    r.cusum_threshold = threshold;
    r.cusum_ceiling = ceiling;
    r.shards = summaries;
    if let (Some(Some((p, n))), Some(seq)) = (promises.first(), &r.sequential) {
        if promises.iter().all(|q| *q == Some((*p, *n))) {
            r.promise = Some(report::Promise::check(*p, *n as usize, seq));
        }
    }
    Ok((r, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_csv_round_trips_with_branches_and_reads_the_old_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames.csv");
        let f = FrameRecord {
            input: 0,
            index: 7,
            stamp_ns: 700,
            ood: true,
            ood_type: "snow".into(),
            score: Some(3.5),
            p_value: Some(0.25),
            log_martingale: Some(0.0),
            cusum: Some(1.5),
            state: MonitorState::Ood,
            fault: None,
            decode_ms: 0.0,
            preprocess_ms: 1.0,
            inference_ms: 2.0,
            kl_horizontal: Some(12.5),
            kl_vertical: Some(4.0),
            branch_ratio: Some(1.25),
            relative_cusum: Some(2.5),
            alarm_ratio: Some(0.75),
            posterior_tail: Some(3.5),
            extra_tail: Some(1.25),
            direction_cusum: Some(6.5),
            threshold: Some(11.5),
            relative_threshold: None,
            direction_threshold: Some(9.25),
            change_cusum: Some(4.5),
            change_threshold: Some(30.5),
        };
        report::write_csv(&path, std::slice::from_ref(&f)).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(
            (
                back[0].kl_horizontal,
                back[0].kl_vertical,
                back[0].branch_ratio,
                back[0].relative_cusum,
                back[0].alarm_ratio,
                back[0].posterior_tail,
                back[0].extra_tail,
                back[0].direction_cusum
            ),
            (
                Some(12.5),
                Some(4.0),
                Some(1.25),
                Some(2.5),
                Some(0.75),
                Some(3.5),
                Some(1.25),
                Some(6.5)
            )
        );
        assert_eq!(
            (
                back[0].threshold,
                back[0].relative_threshold,
                back[0].direction_threshold
            ),
            (Some(11.5), None, Some(9.25))
        );
        assert_eq!(
            (back[0].change_cusum, back[0].change_threshold),
            (Some(4.5), Some(30.5))
        );
        // One written before the change-branch columns (session 44).
        let s44_header = report::CSV_HEADER
            .strip_suffix(report::CSV_CHANGE_COLUMNS)
            .unwrap();
        std::fs::write(
            &path,
            format!("{s44_header}\n0,7,700,true,snow,3.5,0.25,0,1.5,OOD,,0,1,2,12.5,4,1.25,,0.75,3.5,1.25,6.5,11.5,,9.25\n"),
        )
        .unwrap();
        let s44 = read_csv(&path).unwrap();
        assert_eq!(
            (s44[0].direction_threshold, s44[0].change_cusum),
            (Some(9.25), None)
        );
        // One written before the threshold columns (session 43).
        let s43_header = s44_header
            .strip_suffix(report::CSV_THRESHOLD_COLUMNS)
            .unwrap();
        std::fs::write(
            &path,
            format!("{s43_header}\n0,7,700,true,snow,3.5,0.25,0,1.5,OOD,,0,1,2,12.5,4,1.25,,0.75,3.5,1.25,6.5\n"),
        )
        .unwrap();
        let s43 = read_csv(&path).unwrap();
        assert_eq!(
            (s43[0].direction_cusum, s43[0].threshold),
            (Some(6.5), None)
        );
        // One written before the direction column (session 34).
        let s34_header = s43_header
            .strip_suffix(report::CSV_DIRECTION_COLUMNS)
            .unwrap();
        std::fs::write(
            &path,
            format!("{s34_header}\n0,7,700,true,snow,3.5,0.25,0,1.5,OOD,,0,1,2,12.5,4,1.25,,0.75,3.5,1.25\n"),
        )
        .unwrap();
        let s34 = read_csv(&path).unwrap();
        assert_eq!(
            (s34[0].extra_tail, s34[0].direction_cusum),
            (Some(1.25), None)
        );
        // One written before the tail columns (session 24).
        let header = s34_header.strip_suffix(report::CSV_TAIL_COLUMNS).unwrap();
        std::fs::write(
            &path,
            format!("{header}\n0,7,700,true,snow,3.5,0.25,0,1.5,OOD,,0,1,2,12.5,4,1.25,,0.75\n"),
        )
        .unwrap();
        let s24 = read_csv(&path).unwrap();
        assert_eq!(
            (s24[0].alarm_ratio, s24[0].posterior_tail),
            (Some(0.75), None)
        );
        // A frames.csv written before the branch columns.
        std::fs::write(&path, "input,index,stamp_ns,ood,ood_type,score,p_value,log_martingale,cusum,state,fault,decode_ms,preprocess_ms,inference_ms\n0,7,700,true,snow,3.5,0.25,0,1.5,OOD,,0.0000,1.0000,2.0000\n").unwrap();
        let old = read_csv(&path).unwrap();
        assert_eq!((old[0].score, old[0].kl_horizontal), (Some(3.5), None));
        // A row with the old field count under the new header is an error, not a guess.
        let text = format!(
            "{}\n0,7,700,true,snow,3.5,0.25,0,1.5,OOD,,0,1,2\n",
            report::CSV_HEADER
        );
        std::fs::write(&path, text).unwrap();
        assert!(read_csv(&path).is_err());
    }
}
