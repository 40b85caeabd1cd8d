//! Post-training quantisation of the committed default detector: every scheme loads in tract,
//! stays within a stated tolerance of the f32 posterior on real sample frames, and loses at
//! most 0.01 per-frame AUROC on the sample's OOD drives.

use std::path::{Path, PathBuf};
use vae_ood_core::bundle::Bundle;
use vae_ood_core::detail::{DetailExtractor, DetailSpec};
use vae_ood_core::encoder::{self, BackendOptions};
use vae_ood_core::preprocess::{preprocess, InputSpec};
use vae_ood_tools::compress::quantize::{quantize, Precision};
use vae_ood_tools::drives::for_each_frame;
use vae_ood_tools::eval::metrics::auroc;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A preprocessed frame, its detail features (if the score uses them) and its OOD label.
type Frame = (Vec<f32>, Vec<f64>, bool);

/// Every `stride`-th frame of a sample drive.
fn frames(drive: &str, spec: &InputSpec, detail: Option<DetailSpec>, stride: usize) -> Vec<Frame> {
    let mut detail = detail.map(DetailExtractor::new);
    let dir = root().join("data/sample").join(drive);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let ood: Vec<u64> = meta["ood_frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let mut out = vec![];
    let mut i = 0u64;
    for_each_frame(&dir.join("bag"), &mut |img| {
        if i.is_multiple_of(stride as u64) {
            let d = detail.as_mut().map_or(vec![], |d| d.features(img.into()));
            out.push((preprocess(img, spec), d, ood.contains(&i)));
        }
        i += 1;
        Ok(())
    })
    .unwrap();
    out
}

/// (mu ++ logvar, score) per frame under the encoder in `dir`, scored as its manifest says.
fn run(dir: &Path, x: &[Frame]) -> Vec<(Vec<f32>, f64)> {
    let bundle = Bundle::load(dir).unwrap();
    let m = &bundle.manifest;
    let mut enc = encoder::load(&bundle, BackendOptions::default()).unwrap();
    x.iter()
        .map(|(f, d, _)| {
            let p = enc.encode(f).unwrap();
            let (_, s) = m.score_posterior(&p.mu, &p.logvar, d);
            (p.mu.into_iter().chain(p.logvar).collect(), s)
        })
        .collect()
}

#[test]
fn quantised_detectors_stay_close_to_f32_and_keep_their_auroc() {
    let base = root().join("models/default");
    let bundle = Bundle::load(&base).unwrap();
    let spec = bundle.manifest.input.clone();
    let onnx = std::fs::read(bundle.encoder_path()).unwrap();
    // Activation scales from a calibration-split drive, never from the test frames.
    let detail = bundle.manifest.score.detail().copied();
    let calib: Vec<Vec<f32>> = frames("id_small_loop_s2", &spec, detail, 10)
        .into_iter()
        .map(|(f, _, _)| f)
        .collect();
    let id = frames("id_loop_empty_s4", &spec, detail, 2);
    let drives = [
        (
            "brightness",
            frames("ood_brightness_small_loop_s5", &spec, detail, 2),
        ),
        ("rain", frames("ood_rain_udem1_s6", &spec, detail, 2)),
    ];
    let all: Vec<Frame> = id
        .iter()
        .chain(drives.iter().flat_map(|(_, d)| d.iter()))
        .cloned()
        .collect();
    let reference = run(&base, &all);
    // AUROC of one OOD partition: its OOD frames against every ID frame.
    let aurocs = |scores: &[(Vec<f32>, f64)]| -> Vec<f64> {
        let mut out = vec![];
        let mut offset = id.len();
        for (_, d) in &drives {
            let mut s = vec![];
            let mut l = vec![];
            for (k, (_, _, ood)) in all.iter().enumerate() {
                let in_drive = k >= offset && k < offset + d.len();
                if !ood || in_drive {
                    s.push(scores[k].1);
                    l.push(*ood);
                }
            }
            offset += d.len();
            out.push(auroc(&s, &l));
        }
        out
    };
    let base_auroc = aurocs(&reference);
    // Tolerances are stated relative to the f32 posterior's largest magnitude (about 6 for
    // the default encoder), so they mean the same for an encoder with a wider posterior.
    let span = reference
        .iter()
        .flat_map(|(p, _)| p.iter())
        .fold(0f32, |a, v| a.max(v.abs()));
    // Stated tolerances on |mu|, |logvar|: 0.2 %, 1 % and 5 % of the largest f32 magnitude.
    for (p, rel_tol, bytes_at_most) in [
        (Precision::Fp16, 0.002, 0.55),
        (Precision::Int8Dynamic, 0.01, 0.40),
        (Precision::Int8Static, 0.05, 0.30),
    ] {
        let tol = rel_tol * span;
        let q = quantize(&onnx, p, &calib).unwrap();
        assert!(
            (q.len() as f64) < bytes_at_most * onnx.len() as f64,
            "{p}: {} bytes vs {} f32",
            q.len(),
            onnx.len()
        );
        let dir = tempfile::tempdir().unwrap();
        let mut m = bundle.manifest.clone();
        m.name = format!("q-{p}");
        Bundle::write(dir.path(), m, &q).unwrap();
        let out = run(dir.path(), &all);
        let worst = out
            .iter()
            .zip(&reference)
            .flat_map(|((a, _), (b, _))| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        assert!(worst > 0.0, "{p}: quantisation changed nothing");
        assert!(worst <= tol, "{p}: posterior differs by {worst} > {tol}");
        let a = aurocs(&out);
        for ((name, _), (qa, fa)) in drives.iter().zip(a.iter().zip(&base_auroc)) {
            assert!(fa - qa <= 0.01, "{p}: {name} AUROC {qa:.4} vs f32 {fa:.4}");
        }
        eprintln!("{p}: {} bytes ({:.0} % of f32), max posterior error {worst:.4}, AUROC {a:.4?} (f32 {base_auroc:.4?})", q.len(), 100.0 * q.len() as f64 / onnx.len() as f64);
    }
}

#[test]
fn bad_quantisation_input_is_a_clear_error() {
    let onnx = std::fs::read(root().join("models/default/encoder.onnx")).unwrap();
    let e = quantize(&onnx, Precision::Int8Static, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("calibration frames"), "{e}");
    let e = quantize(b"not a model", Precision::Fp16, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("ONNX"), "{e}");
    let e = "int4".parse::<Precision>().unwrap_err().to_string();
    assert!(e.contains("fp16, int8-dynamic or int8-static"), "{e}");
}
