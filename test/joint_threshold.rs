//! `vae-ood joint-threshold` on the shipped image and flow detectors over the sample drives:
//! its scale is recomputed here from each detector's `vae-ood eval` frames (the statistic per
//! frame) and the thresholds in the bundles' manifests, and the refusals name what to give.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vae_ood(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vae-ood"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// The bundle's own `cusum_threshold`, read from its manifest.
fn threshold(bundle: &str) -> f64 {
    let m: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join(bundle).join("manifest.yaml")).unwrap(),
    )
    .unwrap();
    m["calibration"]["pipeline"]["cusum_threshold"]
        .as_f64()
        .unwrap()
}

/// Each input's largest S over its threshold `t` in a `vae-ood eval` frames.csv: the alarm
/// ratio where a side branch (drive-relative or direction) ran, which counts each branch against
/// its own threshold as `vae-ood joint-threshold` does; else the pooled S over `t`.
fn largest_ratio(frames_csv: &Path, inputs: usize, t: f64) -> Vec<f64> {
    let text = std::fs::read_to_string(frames_csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (input, cusum, ratio) = (col("input"), col("cusum"), col("alarm_ratio"));
    let side = [col("relative_cusum"), col("direction_cusum")];
    let mut m = vec![f64::NAN; inputs];
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let r = if side.iter().any(|&c| !f[c].is_empty()) {
            f[ratio].parse::<f64>().ok()
        } else {
            f[cusum].parse::<f64>().ok().map(|s| s / t)
        };
        if let Some(r) = r {
            let i: usize = f[input].parse().unwrap();
            m[i] = if m[i].is_nan() { r } else { m[i].max(r) };
        }
    }
    m
}

#[test]
fn the_joint_scale_is_the_largest_ratio_the_tuning_drives_certify() {
    let tmp = tempfile::tempdir().unwrap();
    let drives: Vec<String> = [
        "id_loop_empty_s1",
        "id_small_loop_s2",
        "id_udem1_s3",
        "id_loop_empty_s4",
    ]
    .iter()
    .map(|d| format!("data/sample/{d}/bag"))
    .collect();
    let bundles = ["models/default", "models/flow"];
    let mut ratios = vec![0.0f64; drives.len()];
    // Per detector, each drive's largest S over its own threshold.
    let mut own: Vec<Vec<f64>> = vec![];
    for (k, b) in bundles.iter().enumerate() {
        let out = tmp.path().join(format!("eval{k}"));
        let mut args = vec![
            "eval",
            "--quiet",
            "--bundle",
            b,
            "--out",
            out.to_str().unwrap(),
            "--id",
        ];
        args.extend(drives.iter().map(String::as_str));
        let o = vae_ood(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mine = largest_ratio(&out.join("frames.csv"), drives.len(), threshold(b));
        for (r, m) in ratios.iter_mut().zip(&mine) {
            assert!(m.is_finite(), "{b}: a drive without a statistic");
            *r = r.max(*m);
        }
        own.push(mine);
    }
    let json = tmp.path().join("joint.json");
    let mut args = vec![
        "joint-threshold",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
        "--bundle",
    ];
    args.extend(bundles);
    args.push("--tune-id");
    args.extend(drives.iter().map(String::as_str));
    let o = vae_ood(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // Four drives cannot certify 1e-4 per frame: the scale is the largest ratio (never under 1),
    // and the tool says how many drives would.
    let expected = ratios.iter().copied().fold(1.0, f64::max);
    let scale = j["scale"].as_f64().unwrap();
    assert!(
        expected > 1.0,
        "the sample drives no longer exercise the scale: {expected}"
    );
    assert!(
        (scale - expected).abs() < 1e-9 * expected,
        "{scale} against {expected}"
    );
    assert!(
        stderr.contains("cannot certify") && stderr.contains("give at least"),
        "{stderr}"
    );
    assert!(stdout.contains("threshold_scale to"), "{stdout}");
    for (d, b) in j["detectors"].as_array().unwrap().iter().zip(bundles) {
        let t = threshold(b);
        assert_eq!(d["threshold"].as_f64().unwrap(), t);
        assert!((d["joint_threshold"].as_f64().unwrap() - t * scale).abs() < 1e-9 * t * scale);
    }
    // At the joint scale no tuning drive is over any detector's joint threshold.
    assert!(ratios.iter().all(|&r| r <= scale));
    // The unequal splits: with no drive allowed over, a detector can keep its own threshold
    // only if no drive exceeds it, and the other then needs its largest ratio (at least 1).
    for (k, d) in j["detectors"].as_array().unwrap().iter().enumerate() {
        let kept = d["others_scale_when_kept"].as_f64();
        let other = own[1 - k].iter().copied().fold(1.0, f64::max);
        match own[k].iter().any(|&r| r > 1.0) {
            true => assert_eq!(kept, None, "{}", bundles[k]),
            false => {
                let kept = kept.unwrap();
                assert!(
                    (kept - other).abs() < 1e-9 * other,
                    "{kept} against {other}"
                );
                assert!(stdout.contains("or split unequally"), "{stdout}");
            }
        }
    }
}

#[test]
fn a_joint_threshold_needs_two_calibrated_bundles_and_says_so() {
    let frames = "data/sample/id_loop_empty_s1/bag";
    let refused = |args: &[&str], says: &str| {
        let o = vae_ood(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(
        &[
            "joint-threshold",
            "--bundle",
            "models/default",
            "--tune-id",
            frames,
        ],
        "two or more",
    );
    let tmp = tempfile::tempdir().unwrap();
    let seeded = tmp.path().join("seeded");
    let o = vae_ood(&["gen-seeded", "--out", seeded.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    refused(
        &[
            "joint-threshold",
            "--bundle",
            "models/default",
            seeded.to_str().unwrap(),
            "--tune-id",
            frames,
        ],
        "not calibrated",
    );
    refused(
        &[
            "joint-threshold",
            "--bundle",
            "models/default",
            "models/flow",
            "--false-alarm-rate",
            "0",
            "--tune-id",
            frames,
        ],
        "--false-alarm-rate",
    );
}
