//! `vae-ood calibrate` with the Mahalanobis score, on the committed default encoder and sample
//! drives: the reference is fitted on the fit drives only, written into the bundle, and used for
//! every score; misused options are clear errors.

use std::path::{Path, PathBuf};
use vae_ood_core::detail::DetailSpec;
use vae_ood_core::detection::direction::GREY_LEVEL;
use vae_ood_core::detection::relative::BaselineParams;
use vae_ood_core::detection::tuning::Grid;
use vae_ood_core::detector::Detector;
use vae_ood_core::encoder::BackendOptions;
use vae_ood_core::score::{features, posterior_features, GivenMotion, ScoreSpec};
use vae_ood_tools::calibrate::{
    calibrate, DirectionOptions, DriveArg, MscnOptions, Options, ScoreKind, Tails,
};
use vae_ood_tools::drives::map_drive;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn drive(name: &str) -> DriveArg {
    format!(
        "{}",
        root().join("data/sample").join(name).join("bag").display()
    )
    .parse()
    .unwrap()
}

/// The monitor of the bundle in `dir` with `config`, on the default backend.
fn monitor_of(dir: &Path, config: vae_ood_core::MonitorConfig) -> vae_ood_core::Monitor {
    let det = vae_ood_core::detector::load(dir, BackendOptions::default()).unwrap();
    vae_ood_core::Monitor::new(det, config).unwrap()
}

fn options(score: ScoreKind, fit: Vec<DriveArg>) -> Options {
    Options {
        score,
        fit,
        detail: None,
        motion_residual: false,
        residual_statistic: None,
        residual_given_motion: None,
        detail_lost: false,
        separate: None,
        parts: None,
        components: 1,
        cal: vec![drive("id_small_loop_s2")],
        tune_id: vec![drive("id_udem1_s3")],
        val_ood: vec![],
        latents: None,
        rank: Default::default(),
        grid: Grid {
            k: vec![5],
            window: vec![10],
            decay: vec![1.0],
        },
        epsilon_grid: vae_ood_core::detection::default_grid(),
        false_alarm_rate: 0.001,
        camera: None,
        relative: None,
        direction: None,
        change: None,
        quiet: true,
    }
}

/// Every scored frame of a sample drive under the bundle written to `bundle`: its score and the
/// features it was computed from (the written bundle measures its extra features itself).
fn scored_by(bundle: &Path, drive_name: &str) -> Vec<(f64, Vec<f64>)> {
    let mut cal = vae_ood_core::detector::load(bundle, BackendOptions::default()).unwrap();
    map_drive(cal.as_mut(), &drive(drive_name).path, &|| {}, |s| {
        (s.score, features(&s.mu, &s.logvar, &s.detail))
    })
    .unwrap()
    .frames
}

fn detector() -> Box<dyn Detector> {
    vae_ood_core::detector::load(root().join("models/default"), BackendOptions::default()).unwrap()
}

#[test]
fn the_mahalanobis_reference_is_fitted_on_the_fit_drives_and_scores_every_frame() {
    let out = tempfile::tempdir().unwrap();
    let mut det = detector();
    let fit = vec![drive("id_loop_empty_s1")];
    let o = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &options(ScoreKind::Mahalanobis, fit.clone()),
    )
    .unwrap();
    let m = &o.bundle.manifest;
    let ScoreSpec::Mahalanobis(r) = &m.score else {
        panic!("calibrated with the wrong score: {:?}", m.score)
    };
    assert_eq!(r.frames, 300);
    assert!(r.fitted_on[0].contains("id_loop_empty_s1"), "{r:?}");
    assert_eq!((r.mean.len(), r.precision.len()), (60, 3600));
    // Every latent takes part; the reference's mean is the fit frames' mean posterior.
    assert_eq!(m.latents.selected, (0..30).collect::<Vec<_>>());
    let frames = map_drive(det.as_mut(), &fit[0].path, &|| {}, |s| {
        posterior_features(&s.mu, &s.logvar)
    })
    .unwrap()
    .frames;
    for (j, mean) in r.mean.iter().enumerate() {
        let want = frames.iter().map(|f| f[j]).sum::<f64>() / frames.len() as f64;
        assert!((mean - want).abs() < 1e-9, "feature {j}: {mean} vs {want}");
    }
    // On its own fit frames, the mean squared distance of a fitted Gaussian is the number of
    // features (60) times (n - 1) / n, a little less where the ridge outweighs a variance.
    let d: Vec<f64> = frames.iter().map(|f| r.distance(f)).collect();
    let mean_d = d.iter().sum::<f64>() / d.len() as f64;
    assert!((45.0..=60.0).contains(&mean_d), "mean distance {mean_d}");

    // The written bundle loads, and its detector scores a frame with that distance.
    let mut cal = vae_ood_core::detector::load(out.path(), BackendOptions::default()).unwrap();
    let scored = map_drive(cal.as_mut(), &drive("id_loop_empty_s4").path, &|| {}, |s| {
        (s.score, posterior_features(&s.mu, &s.logvar))
    })
    .unwrap()
    .frames;
    for (score, x) in &scored[..10] {
        assert!((score - r.distance(x)).abs() < 1e-9 * score.max(1.0));
    }
    // The conformal scores are the calibration drive's distances, not the fit drive's.
    let c = m.calibration.as_ref().unwrap();
    assert_eq!(c.scores.len(), 300);
    assert!(c.selection.starts_with("Mahalanobis"), "{}", c.selection);
    // An image detector has no branches, so no per-branch thresholds.
    assert_eq!(c.branch_thresholds, None);
}

#[test]
fn a_reference_with_the_detail_channel_fits_the_frames_detail_and_scores_with_it() {
    let out = tempfile::tempdir().unwrap();
    let mut det = detector();
    let fit = vec![drive("id_loop_empty_s1")];
    let mut o = options(ScoreKind::Mahalanobis, fit.clone());
    o.detail = Some(DetailSpec::at(160, 120));
    let o = calibrate(&root().join("models/default"), out.path(), det.as_mut(), &o).unwrap();
    let ScoreSpec::Mahalanobis(r) = &o.bundle.manifest.score else {
        panic!("calibrated with the wrong score")
    };
    assert_eq!(r.detail, Some(DetailSpec::at(160, 120)));
    assert_eq!((r.mean.len(), r.precision.len()), (63, 63 * 63));
    // The last three means are the fit frames' mean detail features.
    let frames = map_drive(det.as_mut(), &fit[0].path, &|| {}, |s| s.detail)
        .unwrap()
        .frames;
    assert!(frames.iter().all(|d| d.len() == 3));
    for k in 0..3 {
        let want = frames.iter().map(|d| d[k]).sum::<f64>() / frames.len() as f64;
        assert!((r.mean[60 + k] - want).abs() < 1e-9, "octave {k}");
    }
    // The written bundle measures the detail itself and scores with it.
    let scored = scored_by(out.path(), "ood_noise_small_loop_s8");
    for (score, x) in &scored {
        assert_eq!(x.len(), 63);
        assert!((score - r.distance(x)).abs() < 1e-9 * score.max(1.0));
    }
}

#[test]
fn misused_score_options_are_clear_errors() {
    let out = tempfile::tempdir().unwrap();
    let mut det = detector();
    let mut run = |o: Options| match calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &o,
    ) {
        Ok(_) => panic!("calibration accepted misused options"),
        Err(e) => e.to_string(),
    };
    let err = run(options(ScoreKind::Kl, vec![drive("id_loop_empty_s1")]));
    assert!(
        err.contains("--fit applies to --score mahalanobis"),
        "{err}"
    );
    let mut o = options(ScoreKind::Mahalanobis, vec![drive("id_loop_empty_s1")]);
    o.latents = Some(vec![1, 2]);
    assert!(run(o).contains("--latents"));
    let err = run(options(
        ScoreKind::Mahalanobis,
        vec![drive("id_small_loop_s2")],
    ));
    assert!(err.contains("used twice"), "{err}");
    let mut o = options(ScoreKind::Mahalanobis, vec![]);
    o.detail = Some(DetailSpec::at(160, 120));
    let err = run(o);
    assert!(
        err.contains("--detail adds to a reference being fitted"),
        "{err}"
    );
    let mut o = options(ScoreKind::Mahalanobis, vec![drive("id_loop_empty_s1")]);
    o.detail = Some(DetailSpec::at(4, 4));
    let err = run(o);
    assert!(err.contains("smaller than 3x3"), "{err}");
    let mut o = options(ScoreKind::Mahalanobis, vec![]);
    o.components = 4;
    let err = run(o);
    assert!(
        err.contains("--components applies to a reference being fitted"),
        "{err}"
    );
    let mut o = options(ScoreKind::Mahalanobis, vec![drive("id_loop_empty_s1")]);
    o.components = 0;
    assert!(run(o).contains("expected 1..=64"));
    let mut o = options(ScoreKind::Kl, vec![]);
    o.latents = Some(vec![3, 3]);
    assert!(run(o).contains("distinct latent indices"));
    let mut o = options(ScoreKind::Mahalanobis, vec![drive("id_loop_empty_s1")]);
    o.motion_residual = true;
    let err = run(o);
    assert!(
        err.contains("--motion-residual needs a flow bundle"),
        "{err}"
    );
    let mut o = options(ScoreKind::Mahalanobis, vec![]);
    o.motion_residual = true;
    let err = run(o);
    assert!(
        err.contains("--motion-residual adds to a reference being fitted"),
        "{err}"
    );
    let mut o = options(ScoreKind::Mahalanobis, vec![drive("id_loop_empty_s1")]);
    o.separate = Some(Tails::Both);
    let err = run(o);
    assert!(err.contains("give --detail or --motion-residual"), "{err}");
    // The residual given the motion is an upper tail of the residual scored apart.
    let mut o = options(ScoreKind::Mahalanobis, vec![drive("id_loop_empty_s1")]);
    o.motion_residual = true;
    o.separate = Some(Tails::Both);
    o.residual_given_motion = Some(GivenMotion::Motion);
    let err = run(o);
    assert!(
        err.contains("give --motion-residual --separate upper"),
        "{err}"
    );
}

#[test]
fn a_flow_reference_with_the_motion_residual_fits_it_and_scores_with_it() {
    let out = tempfile::tempdir().unwrap();
    let flow = root().join("models/flow");
    let mut det = vae_ood_core::detector::load(&flow, BackendOptions::default()).unwrap();
    let fit = vec![drive("id_loop_empty_s1")];
    let mut o = options(ScoreKind::Mahalanobis, fit.clone());
    o.motion_residual = true;
    let done = calibrate(&flow, out.path(), det.as_mut(), &o).unwrap();
    let ScoreSpec::Mahalanobis(r) = &done.bundle.manifest.score else {
        panic!("calibrated with the wrong score")
    };
    assert!(r.motion_residual && r.detail.is_none());
    // 24 latents' mu and logvar, then the residual: its mean is the fit stacks' mean residual.
    assert_eq!(r.mean.len(), 49);
    let residuals = map_drive(det.as_mut(), &fit[0].path, &|| {}, |s| s.detail)
        .unwrap()
        .frames;
    assert!(residuals.iter().all(|d| d.len() == 1 && d[0].is_finite()));
    let want = residuals.iter().map(|d| d[0]).sum::<f64>() / residuals.len() as f64;
    assert!((r.mean[48] - want).abs() < 1e-9, "{} {want}", r.mean[48]);
    // The reference design's per-branch thresholds: each branch's largest KL over the
    // calibration frames.
    let branch_kl = map_drive(det.as_mut(), &o.cal[0].path, &|| {}, |s| {
        vae_ood_core::flow_detector::FlowDetector::branch_kl(&s.kl)
    })
    .unwrap()
    .frames;
    let largest = |b: usize| branch_kl.iter().map(|k| k[b]).fold(f64::MIN, f64::max);
    let t = done
        .bundle
        .manifest
        .calibration
        .as_ref()
        .unwrap()
        .branch_thresholds;
    assert_eq!(
        t.map(|t| (t.horizontal, t.vertical)),
        Some((largest(0), largest(1)))
    );
    // The written bundle measures the residual itself and scores with it.
    let scored = scored_by(out.path(), "ood_rain_udem1_s6");
    assert_eq!(
        scored.len(),
        300 - 6,
        "every frame after the stack's warm-up"
    );
    for (score, x) in &scored {
        assert_eq!(x.len(), 49);
        assert!((score - r.distance(x)).abs() < 1e-9 * score.max(1.0));
    }
    // An image bundle cannot ask for it, nor a flow bundle for the image's detail channel.
    let text = std::fs::read_to_string(out.path().join("manifest.yaml")).unwrap();
    let path = out.path().join("manifest.yaml");
    let e = vae_ood_core::bundle::Manifest::parse(
        &text.replace(
            "  motion_residual: true\n",
            "  detail: {width: 160, height: 120, octaves: 3}\n  motion_residual: true\n",
        ),
        &path,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("cannot use it"), "{e}");
    let default = root().join("models/default/manifest.yaml");
    let text = std::fs::read_to_string(&default).unwrap();
    let e = vae_ood_core::bundle::Manifest::parse(
        &text.replace(
            "  kind: mahalanobis\n",
            "  kind: mahalanobis\n  motion_residual: true\n",
        ),
        &default,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("needs a flow detector"), "{e}");
}

#[test]
fn a_mixture_reference_is_fitted_and_the_bundle_reloads_with_it() {
    let out = tempfile::tempdir().unwrap();
    let mut det = detector();
    // Two drives: each component needs more frames than the 60 features.
    let fit = vec![drive("id_loop_empty_s1"), drive("id_loop_empty_s4")];
    let mut o = options(ScoreKind::Mahalanobis, fit);
    o.components = 2;
    let done = calibrate(&root().join("models/default"), out.path(), det.as_mut(), &o).unwrap();
    let ScoreSpec::Mahalanobis(r) = &done.bundle.manifest.score else {
        panic!("wrong score: {:?}", done.bundle.manifest.score)
    };
    assert_eq!((r.components.len(), r.mean.len()), (2, 0));
    assert!((r.components.iter().map(|c| c.weight).sum::<f64>() - 1.0).abs() < 1e-9);
    // The written bundle loads (its manifest is checked) and scores with the mixture.
    let b = vae_ood_core::Bundle::load(out.path()).unwrap();
    assert_eq!(b.manifest.score, done.bundle.manifest.score);
    assert!(b
        .manifest
        .score
        .describe()
        .contains("mixture of 2 Gaussians"));
}

#[test]
fn recalibrating_without_fit_drives_keeps_the_bundles_reference_and_records_the_guarantee() {
    let out = tempfile::tempdir().unwrap();
    let teacher = vae_ood_core::Bundle::load(root().join("models/default")).unwrap();
    let mut det = detector();
    let o = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &options(ScoreKind::Mahalanobis, vec![]),
    )
    .unwrap();
    assert_eq!(o.bundle.manifest.score, teacher.manifest.score);
    // One 300-frame tuning drive cannot certify 1e-4 per frame: the threshold is its largest S,
    // and the bundle says what it does promise (1/2 per drive of 291 full-window frames).
    let c = o.bundle.manifest.calibration.as_ref().unwrap();
    let g = c.guarantee.as_ref().expect("guarantee recorded");
    assert_eq!(
        (g.drives, g.frames_per_drive, g.target_met),
        (1, 291, false)
    );
    assert_eq!(g.per_drive_false_alarm, 0.5);
    assert!(c.pipeline.cusum_threshold >= (1.0f64 / c.target_false_alarm_rate).ln());

    // A bundle without a fitted reference still needs --fit for the Mahalanobis score.
    let mut kl = teacher.manifest.clone();
    kl.score = ScoreSpec::Kl;
    let encoder = std::fs::read(root().join("models/default/encoder.onnx")).unwrap();
    let kl_dir = tempfile::tempdir().unwrap();
    vae_ood_core::Bundle::write(kl_dir.path(), kl, &encoder).unwrap();
    let mut det = vae_ood_core::detector::load(kl_dir.path(), BackendOptions::default()).unwrap();
    let err = calibrate(
        kl_dir.path(),
        out.path(),
        det.as_mut(),
        &options(ScoreKind::Mahalanobis, vec![]),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("--fit"), "{err}");
}

#[test]
fn the_relative_branch_is_calibrated_split_and_run_by_the_monitor() {
    let out = tempfile::tempdir().unwrap();
    let mut det = detector();
    let baseline = BaselineParams::new(20, 50);
    let plain = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &options(ScoreKind::Mahalanobis, vec![]),
    )
    .unwrap();
    let pooled_threshold = plain
        .bundle
        .manifest
        .calibration
        .unwrap()
        .pipeline
        .cusum_threshold;
    let o = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &Options {
            relative: Some(baseline),
            ..options(ScoreKind::Mahalanobis, vec![])
        },
    )
    .unwrap();
    let m = &o.bundle.manifest;
    // At least the version the section needs (a recalibration keeps its bundle's, if newer).
    assert!(m.format_version >= vae_ood_core::bundle::RELATIVE_FORMAT_VERSION);
    let written = format!("format_version: {}", m.format_version);
    let c = m.calibration.as_ref().unwrap();
    // The pooled branch is the one calibrated without the branch.
    assert_eq!(c.pipeline.cusum_threshold, pooled_threshold);
    let r = c.relative.as_ref().expect("relative section");
    assert_eq!(r.baseline, baseline);
    // One 300-frame calibration drive: no relative score for its first 20 frames.
    assert_eq!(r.scores.len(), 300 - 20);
    // One tuning drive allows none to alarm (its guarantee is 1/2 per drive), and none does.
    assert_eq!((r.tuning_drives_allowed, r.tuning_drives_alarmed), (0, 0));
    assert!(r.pooled_scale >= 1.0 && r.cusum_threshold > 0.0);
    // The section needs version 3, and a scale under 1 is refused.
    let path = out.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let parse = |t: &str| {
        vae_ood_core::bundle::Manifest::parse(t, &path)
            .err()
            .map(|e| e.to_string())
    };
    let old = parse(&text.replace(&written, "format_version: 2")).expect("refused");
    assert!(
        old.contains("calibration.relative needs format_version 3"),
        "{old}"
    );
    let low: String = text
        .lines()
        .map(|l| match l.split_once("pooled_scale:") {
            Some((indent, _)) => format!("{indent}pooled_scale: 0.5\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(low, text);
    let low = parse(&low).expect("refused");
    assert!(low.contains("relative.pooled_scale"), "{low}");
    // The written bundle reloads, and its monitor runs the branch once a baseline exists; off,
    // the pooled statistic runs alone at its own threshold.
    let drive = root().join("data/sample/id_loop_empty_s4/bag");
    for on in [true, false] {
        let mut mon = monitor_of(
            out.path(),
            vae_ood_core::MonitorConfig {
                relative_branch: on,
                ..Default::default()
            },
        );
        let mut steps = vec![];
        vae_ood_tools::drives::for_each_frame(&drive, &mut |f| {
            let v = mon.process_image(f);
            steps.push((v.relative.is_some(), v.alarm_ratio.unwrap()));
            Ok(())
        })
        .unwrap();
        let with: Vec<bool> = steps.iter().map(|s| s.0).collect();
        let expected: Vec<bool> = (0..with.len()).map(|t| on && t >= 20).collect();
        assert_eq!(with, expected);
        assert_eq!(
            mon.pipeline().unwrap().cusum_threshold,
            pooled_threshold * if on { r.pooled_scale } else { 1.0 }
        );
    }
}

/// `models/flow` calibrated with the motion residual's upper tail apart, in `parts` if given:
/// the output directory and the outcome.
/// The shipped flow encoder recalibrated with its motion residual apart, upper tail only, on
/// one fit drive, and whatever `adjust` adds.
fn flow_with_upper_residual(
    adjust: impl FnOnce(&mut Options),
) -> (tempfile::TempDir, vae_ood_tools::calibrate::Outcome) {
    let out = tempfile::tempdir().unwrap();
    let flow = root().join("models/flow");
    let mut det = vae_ood_core::detector::load(&flow, BackendOptions::default()).unwrap();
    let mut o = options(ScoreKind::Mahalanobis, vec![drive("id_loop_empty_s1")]);
    o.motion_residual = true;
    o.separate = Some(Tails::Upper);
    adjust(&mut o);
    let done = calibrate(&flow, out.path(), det.as_mut(), &o).unwrap();
    (out, done)
}

#[test]
fn a_flow_reference_scores_the_motion_residual_apart_by_its_upper_tail() {
    let (out, done) = flow_with_upper_residual(|_| {});
    let ScoreSpec::Mahalanobis(r) = &done.bundle.manifest.score else {
        panic!("calibrated with the wrong score")
    };
    // The posterior's Gaussian covers its 48 features; the residual has its own, upper tail.
    let s = r.separate.as_ref().expect("a separate part");
    assert!(r.motion_residual && s.upper_only);
    assert_eq!((r.mean.len(), s.mean.len()), (48, 1));
    assert!(done
        .bundle
        .manifest
        .calibration
        .as_ref()
        .unwrap()
        .selection
        .contains("apart"));
    // The written bundle scores every frame as the reference says, rain above clear.
    let mut cal = vae_ood_core::detector::load(out.path(), BackendOptions::default()).unwrap();
    let mut scores = |name: &str| {
        map_drive(cal.as_mut(), &drive(name).path, &|| {}, |s| {
            (s.score, features(&s.mu, &s.logvar, &s.detail))
        })
        .unwrap()
        .frames
    };
    let (clear, rain) = (scores("id_small_loop_s2"), scores("ood_rain_udem1_s6"));
    for (score, x) in clear.iter().chain(&rain) {
        assert_eq!(x.len(), 49);
        assert!((score - r.distance(x)).abs() < 1e-9 * score.max(1.0));
    }
    let median = |v: &[(f64, Vec<f64>)]| {
        let mut s: Vec<f64> = v.iter().map(|(s, _)| *s).collect();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    assert!(
        median(&rain) > median(&clear),
        "{} {}",
        median(&rain),
        median(&clear)
    );
}

#[test]
fn a_flow_reference_judges_the_residual_given_the_motion() {
    // Apart: the form that differs from the residual alone in most ways (a third tail, over a
    // marginal of the fitted Gaussian); `motion` and `turn` share its fit and are unit-tested.
    let (out, done) =
        flow_with_upper_residual(|o| o.residual_given_motion = Some(GivenMotion::Apart));
    let ScoreSpec::Mahalanobis(r) = &done.bundle.manifest.score else {
        panic!("calibrated with the wrong score")
    };
    // The residual's Gaussian is over the residual and the stack's two motion values.
    let s = r.separate.as_ref().expect("a separate part");
    assert!(r.motion_residual && s.upper_only);
    assert_eq!(r.residual_given_motion, Some(GivenMotion::Apart));
    assert!(s.vertical_tail.is_some());
    assert_eq!((r.mean.len(), s.mean.len()), (48, 3));
    // The residual grows with the motion on clear frames: the regression slope (-P0j / P00)
    // on the horizontal motion is positive.
    assert!(-s.precision[1] / s.precision[0] > 0.0, "{:?}", s.precision);
    // The written bundle measures both itself and scores every frame as the reference says.
    let scored = scored_by(out.path(), "ood_rain_udem1_s6");
    assert_eq!(scored.len(), 300 - 6);
    for (score, x) in &scored {
        assert_eq!(x.len(), 51);
        // The motion: ln(0.1 px + mean absolute flow), never below the floor's.
        assert!(x[49] >= 0.1f64.ln() && x[50] >= 0.1f64.ln(), "{x:?}");
        assert!((score - r.distance(x)).abs() < 1e-9 * score.max(1.0));
    }
}

#[test]
fn a_flow_reference_scores_the_detail_lost_beside_the_residual() {
    let (out, done) = flow_with_upper_residual(|o| o.detail_lost = true);
    let ScoreSpec::Mahalanobis(r) = &done.bundle.manifest.score else {
        panic!("calibrated with the wrong score")
    };
    // The residual keeps its one-feature Gaussian; the detail lost has its own after it.
    let s = r.separate.as_ref().expect("a separate part");
    let lost = s.detail_lost.as_ref().expect("the detail lost is scored");
    assert!(r.motion_residual && s.upper_only && lost.precision > 0.0);
    assert_eq!((r.mean.len(), s.mean.len()), (48, 1));
    assert!(done
        .bundle
        .manifest
        .score
        .describe()
        .contains("detail lost"));
    // The written bundle measures it itself: 0 until 80 frames of the stream are there
    // (60 old plus 20 of baseline), then measured, and every score is the reference's.
    let scored = scored_by(out.path(), "ood_fog_loop_empty_s7");
    assert_eq!(scored.len(), 300 - 6);
    for (k, (score, x)) in scored.iter().enumerate() {
        assert_eq!(x.len(), 50);
        if k + 6 < 79 {
            assert_eq!(x[49], 0.0, "frame {}", k + 6);
        }
        assert!((score - r.distance(x)).abs() < 1e-9 * score.max(1.0));
    }
    assert!(scored[80..].iter().all(|(_, x)| x[49] != 0.0));
    // Without --motion-residual --separate upper it is refused, with the reason.
    let flow = root().join("models/flow");
    let mut det = vae_ood_core::detector::load(&flow, BackendOptions::default()).unwrap();
    let mut bad = options(ScoreKind::Mahalanobis, vec![drive("id_loop_empty_s1")]);
    bad.motion_residual = true;
    bad.detail_lost = true;
    let Err(e) = calibrate(&flow, out.path(), det.as_mut(), &bad) else {
        panic!("--detail-lost without --separate upper was accepted")
    };
    assert!(e.to_string().contains("--detail-lost"), "{e}");
}

#[test]
fn a_flow_reference_in_branch_parts_scores_each_branch_and_the_residual_apart() {
    use vae_ood_tools::calibrate::Parts;
    let (out, done) = flow_with_upper_residual(|o| o.parts = Some(Parts::Branches));
    let flow = root().join("models/flow");
    let mut det = vae_ood_core::detector::load(&flow, BackendOptions::default()).unwrap();
    let ScoreSpec::Mahalanobis(r) = &done.bundle.manifest.score else {
        panic!("calibrated with the wrong score")
    };
    // Three parts: each branch's mu and logvar (12 latents each), then the residual.
    let names: Vec<&str> = r.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["horizontal", "vertical", "motion_residual"]);
    let h: Vec<usize> = (0..12).chain(24..36).collect();
    let v: Vec<usize> = (12..24).chain(36..48).collect();
    assert_eq!((&r.parts[0].features, &r.parts[1].features), (&h, &v));
    assert_eq!(r.parts[2].features, [48]);
    assert!(r.parts[2].upper_only && !r.parts[0].upper_only);
    assert!(r.mean.is_empty() && r.separate.is_none() && r.motion_residual);
    // The written bundle scores every frame as the reference says, rain above clear.
    let mut cal = vae_ood_core::detector::load(out.path(), BackendOptions::default()).unwrap();
    let mut scores = |name: &str| {
        let mut s: Vec<f64> = map_drive(cal.as_mut(), &drive(name).path, &|| {}, |s| {
            let x = features(&s.mu, &s.logvar, &s.detail);
            assert!((s.score - r.distance(&x)).abs() < 1e-9 * s.score.max(1.0));
            s.score
        })
        .unwrap()
        .frames;
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let (clear, rain) = (scores("id_small_loop_s2"), scores("ood_rain_udem1_s6"));
    assert!(rain > clear, "{rain} {clear}");
    // Misuse is a clear error: an image bundle, a mixture, no fit drives.
    let mut image = detector();
    let mut o = options(ScoreKind::Mahalanobis, vec![drive("id_loop_empty_s1")]);
    o.parts = Some(Parts::Branches);
    let err = |d: &mut dyn Detector, b: &std::path::Path, o: &Options| {
        calibrate(b, out.path(), d, o)
            .err()
            .expect("refused")
            .to_string()
    };
    let e = err(image.as_mut(), &root().join("models/default"), &o);
    assert!(e.contains("needs a flow bundle"), "{e}");
    o.components = 2;
    let e = err(det.as_mut(), &flow, &o);
    assert!(e.contains("--components"), "{e}");
    o.components = 1;
    o.fit.clear();
    let e = err(det.as_mut(), &flow, &o);
    assert!(e.contains("--fit"), "{e}");
}

/// A change applied to a frame (its index given).
type Shift<'a> = &'a dyn Fn(&image::RgbImage, usize) -> image::RgbImage;

/// Runs the clear sample drive id_loop_empty_s1 through a monitor of the bundle at `dir`, with
/// `shift` applied to every frame from 150 on when given, and checks each verdict with `check`
/// (frame index, verdict). Returns the direction branch's largest S and the frame of its first
/// alarm.
fn run_branch(
    dir: &Path,
    shift: Option<Shift<'_>>,
    check: &dyn Fn(usize, &vae_ood_core::monitor::FrameVerdict),
) -> (f64, Option<usize>) {
    let mut mon = monitor_of(dir, Default::default());
    let (mut largest, mut first, mut t) = (0.0f64, None, 0);
    let drive = root().join("data/sample/id_loop_empty_s1/bag");
    vae_ood_tools::drives::for_each_frame(&drive, &mut |f| {
        let v = match shift {
            Some(shift) if t >= 150 => mon.process_image(&shift(f, t)),
            _ => mon.process_image(f),
        };
        check(t, &v);
        if let Some(st) = v.direction {
            largest = largest.max(st.cusum);
            if st.alarm && first.is_none() {
                first = Some(t);
            }
        }
        t += 1;
        Ok(())
    })
    .unwrap();
    (largest, first)
}

/// A horizontal motion blur: each pixel the mean of `len` neighbours along its row.
fn blur_rows(img: &image::RgbImage, len: u32) -> image::RgbImage {
    let (w, h) = img.dimensions();
    image::RgbImage::from_fn(w, h, |x, y| {
        let (lo, hi) = (x.saturating_sub(len / 2), (x + len / 2).min(w - 1));
        let mut sum = [0u32; 3];
        for i in lo..=hi {
            for (s, v) in sum.iter_mut().zip(img.get_pixel(i, y).0) {
                *s += u32::from(v);
            }
        }
        let n = hi - lo + 1;
        image::Rgb(sum.map(|s| (s / n) as u8))
    })
}

#[test]
fn the_direction_branch_is_calibrated_split_and_alarms_on_a_motion_blur() {
    let out = tempfile::tempdir().unwrap();
    let mut det = detector();
    let tune = ["id_udem1_s3", "id_loop_empty_s1", "id_loop_empty_s4"];
    // Three tuning drives at 2 alarms per 1000 frames of 300: the pooled threshold is the
    // second smallest drive's largest S, so one drive is over it and its share can move.
    let with_tuning = |direction| Options {
        tune_id: tune.iter().map(|d| drive(d)).collect(),
        false_alarm_rate: 0.002,
        direction,
        ..options(ScoreKind::Mahalanobis, vec![])
    };
    let plain = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &with_tuning(None),
    )
    .unwrap();
    let alone = plain.bundle.manifest.calibration.unwrap().pipeline;
    let o = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &with_tuning(Some(DirectionOptions::at(160, 120))),
    )
    .unwrap();
    let m = &o.bundle.manifest;
    // At least the version the section needs (a recalibration keeps its bundle's, if newer).
    assert!(m.format_version >= vae_ood_core::bundle::DIRECTION_FORMAT_VERSION);
    let written = format!("format_version: {}", m.format_version);
    let c = m.calibration.as_ref().unwrap();
    let d = c.direction.as_ref().expect("direction section");
    assert_eq!((d.width, d.height, d.tuning_drives), (160, 120, 3));
    assert_eq!(
        (d.floor, d.baseline),
        (GREY_LEVEL, Some(BaselineParams::new(60, 60)))
    );
    assert_eq!(d.pooled_threshold_alone, alone.cusum_threshold);
    // The pooled threshold moved past one tuning drive: none is over it now.
    assert!(c.pipeline.cusum_threshold > alone.cusum_threshold);
    // One 300-frame calibration drive, each frame against the median of its own earlier 60:
    // none for its first 60.
    assert_eq!(d.scores.len(), 300 - 60);
    assert!(d.scores.iter().all(|&x| (-1.0..1.0).contains(&x)));
    assert!(d.pipeline.cusum_threshold >= (1.0f64 / 0.002).ln());
    // The section needs version 4.
    let path = out.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let Err(old) =
        vae_ood_core::bundle::Manifest::parse(&text.replace(&written, "format_version: 3"), &path)
    else {
        panic!("a direction section below version 4 was accepted")
    };
    let old = old.to_string();
    assert!(
        old.contains("calibration.direction needs format_version 4"),
        "{old}"
    );
    // The written bundle's monitor runs the branch once the drive has a baseline: a tuning
    // drive stays under its threshold (it is their largest S); the same drive blurred along its
    // rows from frame 150 on alarms through the branch, the pooled statistic or not.
    let check = |t: usize, v: &vae_ood_core::monitor::FrameVerdict| {
        assert_eq!(v.direction.is_some(), t >= 60, "{t}");
        if v.direction.is_some_and(|st| st.alarm) {
            assert!(v.is_ood() && v.alarm_ratio.unwrap() > 1.0);
        }
    };
    let blur = |f: &image::RgbImage, _: usize| blur_rows(f, 9);
    let run = |blurred: bool| run_branch(out.path(), blurred.then_some(&blur as _), &check);
    let (clear, none) = run(false);
    assert!(
        clear <= d.pipeline.cusum_threshold && none.is_none(),
        "{clear}"
    );
    let (_, blurred) = run(true);
    assert!(
        blurred.is_some_and(|t| (150..180).contains(&t)),
        "{blurred:?}"
    );
    // Turned off (the node's direction_branch: false), the pooled statistic runs alone at its
    // threshold before the split.
    let mut off = monitor_of(
        out.path(),
        vae_ood_core::MonitorConfig {
            direction_branch: false,
            ..Default::default()
        },
    );
    assert_eq!(
        off.pipeline().unwrap().cusum_threshold,
        d.pooled_threshold_alone
    );
    let frame = image::RgbImage::new(160, 120);
    assert!(off.process_image(&frame).direction.is_none());
    // ... and its detector stops measuring the branch's statistic (nothing would read it).
    let shared: vae_ood_core::monitor::SharedDetector = std::sync::Arc::new(std::sync::Mutex::new(
        vae_ood_core::detector::load(out.path(), BackendOptions::default()).unwrap(),
    ));
    let measured = |d: &vae_ood_core::monitor::SharedDetector| {
        let mut d = d.lock().unwrap();
        let stream = d.open_stream();
        let px = vae_ood_core::frame::Pixels::from(&frame);
        let scored = d.score_batch(&[vae_ood_core::detector::StreamFrame {
            stream,
            pixels: px,
            stamp_ns: None,
        }]);
        scored[0].as_ref().unwrap().direction.is_some()
    };
    assert!(measured(&shared), "a bundle with the branch measures it");
    let _off = vae_ood_core::Monitor::on_shared(
        shared.clone(),
        vae_ood_core::MonitorConfig {
            direction_branch: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!measured(&shared), "measured with the branch off");
    // A monitor opened with the branch on turns the shared meter back on.
    let _on =
        vae_ood_core::Monitor::on_shared(shared.clone(), vae_ood_core::MonitorConfig::default())
            .unwrap();
    assert!(measured(&shared), "not measured with the branch on again");
    // One tuning drive leaves the pooled threshold no budget to share: a clear error.
    let Err(err) = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &Options {
            direction: Some(DirectionOptions::at(160, 120)),
            ..options(ScoreKind::Mahalanobis, vec![])
        },
    ) else {
        panic!("a split with no budget was accepted")
    };
    let err = err.to_string();
    assert!(err.contains("more tuning drives"), "{err}");
}

/// Uniform sensor noise of +-`amp` grey levels, from a fixed seed per frame.
fn add_noise(img: &image::RgbImage, amp: i32, seed: u64) -> image::RgbImage {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = img.clone();
    for v in out.iter_mut() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = ((state >> 33) % (2 * amp as u64 + 1)) as i32 - amp;
        *v = (i32::from(*v) + n).clamp(0, 255) as u8;
    }
    out
}

#[test]
fn the_mscn_branch_is_fitted_calibrated_and_alarms_on_sensor_noise() {
    let out = tempfile::tempdir().unwrap();
    let mut det = detector();
    let mscn = |fit: Vec<PathBuf>| DirectionOptions {
        baseline: None,
        mscn: Some(MscnOptions {
            fit,
            components: 2,
            reuse: None,
        }),
        ..DirectionOptions::at(160, 120)
    };
    let fit = vec![drive("id_loop_empty_s4").path];
    let with = |direction| Options {
        tune_id: ["id_udem1_s3", "id_loop_empty_s1"]
            .iter()
            .map(|d| drive(d))
            .collect(),
        false_alarm_rate: 0.004,
        direction,
        ..options(ScoreKind::Mahalanobis, vec![])
    };
    let o = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &with(Some(mscn(fit.clone()))),
    )
    .unwrap();
    let m = &o.bundle.manifest;
    // At least the version the section needs (a recalibration keeps its bundle's, if newer).
    assert!(m.format_version >= vae_ood_core::bundle::MSCN_FORMAT_VERSION);
    let written = format!("format_version: {}", m.format_version);
    let d = m.calibration.as_ref().unwrap().direction.as_ref().unwrap();
    let components = &d.mscn.as_ref().expect("the MSCN reference").components;
    assert_eq!(components.len(), 2);
    assert!(components
        .iter()
        .all(|c| c.mean.len() == vae_ood_core::mscn::FEATURES));
    // Scored as measured: every frame of the 300-frame calibration drive has a score.
    assert_eq!((d.baseline, d.scores.len()), (None, 300));
    assert!(d
        .describe()
        .contains("MSCN statistics (2 mixture components)"));
    // The section needs version 5.
    let path = out.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let Err(old) =
        vae_ood_core::bundle::Manifest::parse(&text.replace(&written, "format_version: 4"), &path)
    else {
        panic!("an MSCN branch below version 5 was accepted")
    };
    assert!(
        old.to_string()
            .contains("calibration.direction.mscn needs format_version 5"),
        "{old}"
    );
    // A tuning drive stays under the branch's threshold (the largest S of the tuning drives);
    // the same drive with sensor noise from frame 150 on alarms through the branch within
    // 30 frames.
    let check = |_: usize, v: &vae_ood_core::monitor::FrameVerdict| {
        assert!(
            v.direction.is_some(),
            "scored as measured, from the first frame"
        );
    };
    let noise = |f: &image::RgbImage, t: usize| add_noise(f, 12, t as u64);
    let run = |noisy: bool| run_branch(out.path(), noisy.then_some(&noise as _), &check);
    let (clear, none) = run(false);
    assert!(
        clear <= d.pipeline.cusum_threshold && none.is_none(),
        "{clear}"
    );
    let (_, noisy) = run(true);
    assert!(noisy.is_some_and(|t| (150..180).contains(&t)), "{noisy:?}");
    // Clear errors: no fit drives; a fit drive that is also a tuning drive, found before the
    // fit runs (20 components would not fit; the input error comes first).
    for (fit, says) in [
        (vec![], "--mscn-fit"),
        (vec![drive("id_udem1_s3").path], "used twice"),
    ] {
        let Err(e) = calibrate(
            &root().join("models/default"),
            out.path(),
            det.as_mut(),
            &with(Some(DirectionOptions {
                mscn: Some(MscnOptions {
                    fit,
                    components: 20,
                    reuse: None,
                }),
                ..mscn(vec![])
            })),
        ) else {
            panic!("accepted")
        };
        assert!(e.to_string().contains(says), "{e}");
    }
    // The score's --fit drives may also fit the MSCN mixture (two models, no p-value between
    // them): the overlap passes the role check and the run stops at the next one (a window no
    // tuning drive fills), before any frame is scored.
    let mut both = with(Some(mscn(vec![drive("id_loop_empty_s4").path])));
    both.fit = vec![drive("id_loop_empty_s4")];
    both.grid.window = vec![1000];
    let Err(e) = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &both,
    ) else {
        panic!("a window of 1000 on 300-frame tuning drives was accepted")
    };
    assert!(e.to_string().contains("--windows 1000"), "{e}");
    // Too many components for the fit frames: the error names the MSCN flags.
    let Err(e) = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &with(Some(DirectionOptions {
            mscn: Some(MscnOptions {
                fit,
                components: 20,
                reuse: None,
            }),
            ..mscn(vec![])
        })),
    ) else {
        panic!("20 components on 300 frames were accepted")
    };
    let e = e.to_string();
    assert!(
        e.contains("fewer --mscn-components or more --mscn-fit") && !e.contains(" --components"),
        "{e}"
    );
}

/// A drive-relative and an MSCN branch together: the direction branch takes one tuning drive's
/// share by raising the pooled threshold one drive, as alone; the relative branch splits what
/// is left with one drive fewer allowed; the monitor runs all three. A mixture taken from the
/// written bundle (`--mscn-from`) gives the same branch as the fit did.
#[test]
fn the_relative_and_mscn_branches_split_one_budget_and_run_together() {
    let out = tempfile::tempdir().unwrap();
    let mut det = detector();
    let fit = vec![drive("id_loop_empty_s4").path];
    let mscn = |fit: Vec<PathBuf>, reuse| DirectionOptions {
        baseline: None,
        mscn: Some(MscnOptions {
            fit,
            components: 2,
            reuse,
        }),
        ..DirectionOptions::at(160, 120)
    };
    let with = |relative, direction| Options {
        tune_id: ["id_udem1_s3", "id_loop_empty_s1"]
            .iter()
            .map(|d| drive(d))
            .collect(),
        false_alarm_rate: 0.004,
        relative,
        direction,
        ..options(ScoreKind::Mahalanobis, vec![])
    };
    let baseline = BaselineParams::new(20, 50);
    let mut run = |o: &Options| {
        let c = calibrate(&root().join("models/default"), out.path(), det.as_mut(), o).unwrap();
        (c.chosen, c.bundle.manifest)
    };
    let (_, alone) = run(&with(None, Some(mscn(fit.clone(), None))));
    let (chosen, m) = run(&with(Some(baseline), Some(mscn(fit.clone(), None))));
    assert!(m.format_version >= vae_ood_core::bundle::MSCN_FORMAT_VERSION);
    let (a, c) = (alone.calibration.unwrap(), m.calibration.unwrap());
    // The pooled threshold and the direction branch are those of the direction branch alone.
    assert_eq!(c.pipeline.cusum_threshold, a.pipeline.cusum_threshold);
    let (ad, d) = (a.direction.unwrap(), c.direction.unwrap());
    assert_eq!(d.pipeline, ad.pipeline);
    assert!(d.pooled_threshold_alone < c.pipeline.cusum_threshold);
    // The relative branch keeps to one drive fewer than the pooled threshold alone allows.
    let r = c.relative.as_ref().expect("relative section");
    let allowed = chosen.guarantee.drives_over();
    assert!(allowed >= 1, "the test needs a budget to split: {allowed}");
    assert_eq!(r.tuning_drives_allowed, allowed - 1);
    // An invariant of the split (it never reports more than it allows).
    assert!(r.tuning_drives_alarmed < allowed);
    // The written bundle runs all three branches.
    let mut mon = monitor_of(out.path(), Default::default());
    let mut seen = (0, 0);
    vae_ood_tools::drives::for_each_frame(&drive("id_loop_empty_s4").path, &mut |f| {
        let v = mon.process_image(f);
        seen.0 += usize::from(v.relative.is_some());
        seen.1 += usize::from(v.direction.is_some());
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, (300 - 20, 300));
    // The direction branch off: its share returns to the pooled threshold only when the
    // relative branch is off too (the relative split was made against the raised threshold).
    for (relative_branch, pooled) in [
        (true, c.pipeline.cusum_threshold),
        (false, d.pooled_threshold_alone),
    ] {
        let mon = monitor_of(
            out.path(),
            vae_ood_core::MonitorConfig {
                direction_branch: false,
                relative_branch,
                ..Default::default()
            },
        );
        assert_eq!(mon.pipeline().unwrap().cusum_threshold, pooled);
        assert_eq!(mon.relative_split().is_some(), relative_branch);
        assert!(mon.direction_threshold().is_none());
    }
    // The same mixture taken as fitted: the same branch. With fit drives too: refused.
    let reuse = d.mscn.clone();
    let (_, again) = run(&with(Some(baseline), Some(mscn(vec![], reuse.clone()))));
    let again = again.calibration.unwrap();
    assert_eq!(again.direction.unwrap(), d);
    assert_eq!(again.relative.as_ref(), Some(r));
    let Err(e) = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &with(None, Some(mscn(fit, reuse))),
    ) else {
        panic!("a fit and a fitted mixture together were accepted")
    };
    assert!(e.to_string().contains("--mscn-from"), "{e}");
}

/// The sample drives the start-up tests tune on.
const STARTUP_TUNE: [&str; 3] = ["id_udem1_s3", "id_loop_empty_s1", "id_loop_empty_s4"];

/// `models/default` calibrated into `out` on [`STARTUP_TUNE`] (one pipeline, rate 0.002), with a
/// drive-relative branch when given one, then a start-up phase of `frames` certified on
/// `drives`: the calibration section before the phase, and the phase.
fn with_startup(
    out: &Path,
    relative: Option<BaselineParams>,
    frames: vae_ood_tools::startup::StartupFrames,
    drives: &[PathBuf],
) -> (
    vae_ood_core::bundle::CalibrationSection,
    vae_ood_tools::startup::Certified,
) {
    let mut det = detector();
    let o = calibrate(
        &root().join("models/default"),
        out,
        det.as_mut(),
        &Options {
            tune_id: STARTUP_TUNE.iter().map(|d| drive(d)).collect(),
            false_alarm_rate: 0.002,
            relative,
            grid: Grid {
                k: vec![5],
                window: vec![1],
                decay: vec![1.0],
            },
            ..options(ScoreKind::Mahalanobis, vec![])
        },
    )
    .unwrap();
    let certified = vae_ood_tools::startup::add_startup(
        out,
        drives,
        frames,
        BackendOptions::default(),
        &|_| {},
    )
    .unwrap();
    (o.bundle.manifest.calibration.unwrap(), certified)
}

/// The node's monitor (its defaults, the phase on) over `drives` with the bundle in `dir`: each
/// frame's record.
fn run_monitor(dir: &Path, drives: &[PathBuf]) -> Vec<vae_ood_tools::eval::FrameRecord> {
    use vae_ood_tools::eval;
    let opts = eval::Options {
        bundle: dir.to_path_buf(),
        backend: BackendOptions::default(),
        monitor: vae_ood_core::monitor::MonitorConfig::default(),
        topic: None,
        folder_fps: eval::DEFAULT_FOLDER_FPS,
    };
    eval::run_tuning_drives(drives, &opts, &|_| {}).unwrap()
}

/// How many of `drives` alarm (some frame's alarm ratio over 1).
fn drives_alarmed(records: &[vae_ood_tools::eval::FrameRecord], drives: usize) -> usize {
    (0..drives)
        .filter(|&i| {
            records
                .iter()
                .any(|f| f.input == i && f.alarm_ratio.is_some_and(|r| r > 1.0))
        })
        .count()
}

/// `vae-ood calibrate --startup-frames`: the phase is measured on the tuning drives by the
/// bundle's own monitor, written into the bundle (format 7, with its gentle end), and the node's monitor then puts
/// exactly the certified thresholds in force: on the tuning drives it alarms on no more drives
/// than the section counts.
#[test]
fn a_start_up_phase_is_certified_on_the_tuning_drives_and_put_in_force() {
    use vae_ood_core::detection::startup::floor;
    use vae_ood_tools::startup::StartupFrames;
    let out = tempfile::tempdir().unwrap();
    let tuning: Vec<PathBuf> = STARTUP_TUNE.iter().map(|d| drive(d).path).collect();
    let (calibrated, certified) =
        with_startup(out.path(), None, StartupFrames::Fixed(100), &tuning);
    let s = certified.section;
    let allowed = calibrated.guarantee.as_ref().unwrap().drives_over();
    assert_eq!((s.frames, s.tuning_drives_allowed), (100, allowed));
    assert!(s.cruise_scale > 0.0 && s.cruise_scale <= 1.0, "{s:?}");
    assert!(s.tuning_drives_alarmed <= allowed, "{s:?}");
    assert_eq!(s.floor, floor(1, 0.002));
    let b = vae_ood_core::Bundle::load(out.path()).unwrap();
    assert_eq!(b.manifest.calibration.as_ref().unwrap().startup, Some(s));
    // At least the gentle end's version; a source bundle's newer version is kept.
    let source = vae_ood_core::Bundle::load(root().join("models/default")).unwrap();
    assert_eq!(
        b.manifest.format_version,
        source
            .manifest
            .format_version
            .max(vae_ood_core::bundle::GENTLE_STARTUP_FORMAT_VERSION)
    );

    // The node's monitor: the threshold in force (S over the alarm ratio) is the calibrated
    // one for 100 frames and the cruise share after them; drives alarm no more than counted.
    let records = run_monitor(out.path(), &tuning);
    let t = calibrated.pipeline.cusum_threshold;
    let cruise = (t * s.cruise_scale).max(s.floor);
    // Where each frame is in the phase: the scored frames of its drive before it.
    let (mut checked, mut scored) = (0, vec![0; tuning.len()]);
    for f in records.iter().filter(|f| f.alarm_ratio.is_some()) {
        let k = scored[f.input];
        scored[f.input] += 1;
        if f.cusum.is_some_and(|c| c > 0.1) {
            let in_force = f.cusum.unwrap() / f.alarm_ratio.unwrap();
            let expected = if k < 100 { t } else { cruise };
            assert!((in_force - expected).abs() < 1e-9 * expected, "{f:?}");
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked} frames with evidence");
    let alarmed = drives_alarmed(&records, tuning.len());
    assert!(
        alarmed <= s.tuning_drives_alarmed,
        "{alarmed} drives alarmed"
    );

    // `auto` weighs 15, 30, ..., 300 frames and keeps the shortest whose cruise thresholds are
    // those of the longest.
    let auto = vae_ood_tools::startup::add_startup(
        out.path(),
        &tuning,
        vae_ood_tools::startup::StartupFrames::Auto,
        BackendOptions::default(),
        &|_| {},
    )
    .unwrap();
    let in_force = |scale: f64| (t * scale).max(auto.section.floor);
    let weighed: Vec<usize> = auto.weighed.iter().map(|w| w.frames).collect();
    assert_eq!(weighed, (1..=20).map(|k| k * 15).collect::<Vec<_>>());
    let last = in_force(auto.weighed[19].cruise_scale);
    let first = auto
        .weighed
        .iter()
        .find(|w| (in_force(w.cruise_scale) - last).abs() <= 1e-12 * last)
        .unwrap();
    assert_eq!(
        auto.section.frames, first.frames as u64,
        "{:?}",
        auto.weighed
    );
    assert_eq!(auto.section.cruise_scale, first.cruise_scale);

    // Older versions cannot hold the section.
    let path = out.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let written = format!("format_version: {}", b.manifest.format_version);
    let old =
        vae_ood_core::bundle::Manifest::parse(&text.replace(&written, "format_version: 5"), &path)
            .expect_err("refused")
            .to_string();
    assert!(
        old.contains("calibration.startup needs format_version 6"),
        "{old}"
    );
}

/// With a drive-relative branch whose hold outlasts the start-up (as `models/default`'s 360
/// frames outlasted its 90 until session 46), the phase is certified against the thresholds the monitor runs at:
/// the pooled one keeps its own value until the hold ends. The node's monitor, phase on,
/// alarms on no more tuning drives than the section counts.
#[test]
fn a_start_up_phase_beside_a_relative_branch_is_certified_as_the_monitor_runs() {
    let out = tempfile::tempdir().unwrap();
    // The phase is certified (and the monitor run) on the tuning drives and a drive noisy from
    // its first frame, which alarms inside the start-up: the section must count it. (Which
    // threshold each step records, frame by frame, is the monitor's unit test
    // `each_step_records_the_threshold_in_force`; the certification reads those.)
    let drives: Vec<PathBuf> = STARTUP_TUNE
        .iter()
        .chain(&["ood_noise_small_loop_s8"])
        .map(|d| drive(d).path)
        .collect();
    let baseline = BaselineParams {
        window: 20,
        gap: 30,
        hold: Some(150),
    };
    let s = with_startup(
        out.path(),
        Some(baseline),
        vae_ood_tools::startup::StartupFrames::Fixed(60),
        &drives,
    )
    .1
    .section;
    assert!(s.tuning_drives_alarmed >= 1, "{s:?}");
    let alarmed = drives_alarmed(&run_monitor(out.path(), &drives), drives.len());
    assert!(
        alarmed <= s.tuning_drives_alarmed,
        "{alarmed} drives alarmed: {s:?}"
    );
}

/// Dark blotches that land somewhere else on every frame (lens dirt in the rain, as the
/// generator's occlusion): four discs of radius 15 at positions drawn from `t`.
fn flickering_dirt(img: &image::RgbImage, t: usize) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let mut state = (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = |n: u32| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(n)) as i64
    };
    let discs: Vec<(i64, i64)> = (0..4).map(|_| (next(w), next(h))).collect();
    let mut out = img.clone();
    for (x, y, p) in out.enumerate_pixels_mut() {
        if discs
            .iter()
            .any(|&(cx, cy)| (i64::from(x) - cx).pow(2) + (i64::from(y) - cy).pow(2) < 225)
        {
            p.0 = p.0.map(|v| (f32::from(v) * 0.15 + 20.0) as u8);
        }
    }
    out
}

#[test]
fn the_change_branch_is_fitted_calibrated_and_alarms_on_flickering_dirt() {
    let out = tempfile::tempdir().unwrap();
    let mut det = detector();
    let with = |change: Option<Vec<PathBuf>>| Options {
        tune_id: ["id_udem1_s3", "id_loop_empty_s1"]
            .iter()
            .map(|d| drive(d))
            .collect(),
        false_alarm_rate: 0.004,
        change,
        ..options(ScoreKind::Mahalanobis, vec![])
    };
    let fit = vec![drive("id_loop_empty_s4").path];
    let o = calibrate(
        &root().join("models/default"),
        out.path(),
        det.as_mut(),
        &with(Some(fit)),
    )
    .unwrap();
    let m = &o.bundle.manifest;
    assert!(m.format_version >= vae_ood_core::bundle::CHANGE_FORMAT_VERSION);
    let c = m.calibration.as_ref().unwrap();
    let ch = c.change.as_ref().expect("the change section");
    // The sample drives run at 15 frames a second: the steps' interval from their stamps.
    assert!(
        (60_000_000..70_000_000).contains(&ch.interval_ns),
        "{}",
        ch.interval_ns
    );
    // One Gaussian over every latent's step; a score for every calibration step.
    assert_eq!(ch.components.len(), 1);
    assert_eq!(ch.components[0].mean.len(), m.latents.count);
    assert_eq!(ch.scores.len(), 299);
    // The branch took one tuning drive's share: the pooled threshold moved up past it.
    assert!(ch.pooled_threshold_before < c.pipeline.cusum_threshold);
    assert!(ch.describe().contains("the posterior's step over 66.7 ms"));
    // The section needs version 8.
    let path = out.path().join("manifest.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let written = format!("format_version: {}", m.format_version);
    let Err(old) =
        vae_ood_core::bundle::Manifest::parse(&text.replace(&written, "format_version: 7"), &path)
    else {
        panic!("a change branch below version 8 was accepted")
    };
    assert!(
        old.to_string()
            .contains("calibration.change needs format_version 8"),
        "{old}"
    );
    // A tuning drive stays under the branch's threshold (the largest S of the tuning drives);
    // the same drive with dirt that flickers from frame 150 on alarms through the branch
    // within 30 frames. Its first frame starts no step.
    let run = |dirt: bool| {
        let mut mon = monitor_of(out.path(), Default::default());
        assert_eq!(mon.change_threshold(), Some(ch.pipeline.cusum_threshold));
        let (mut largest, mut first, mut t) = (0.0f64, None, 0);
        vae_ood_tools::drives::for_each_frame(
            &root().join("data/sample/id_loop_empty_s1/bag"),
            &mut |f| {
                let v = match dirt && t >= 150 {
                    true => mon.process_image(&flickering_dirt(f, t)),
                    false => mon.process_image(f),
                };
                assert_eq!(v.change.is_some(), t > 0, "frame {t}");
                if let Some(st) = v.change {
                    largest = largest.max(st.cusum);
                    if st.alarm && first.is_none() {
                        first = Some(t);
                    }
                }
                t += 1;
                Ok(())
            },
        )
        .unwrap();
        (largest, first)
    };
    let (clear, none) = run(false);
    assert!(
        clear <= ch.pipeline.cusum_threshold && none.is_none(),
        "{clear}"
    );
    let (_, dirty) = run(true);
    assert!(dirty.is_some_and(|t| (150..180).contains(&t)), "{dirty:?}");
    // Turned off, the monitor runs without it.
    let off = monitor_of(
        out.path(),
        vae_ood_core::MonitorConfig {
            change_branch: false,
            ..Default::default()
        },
    );
    assert!(off.change_threshold().is_none());
    // Beside a direction branch, whose share was taken first (the shipped student has both):
    // with the direction branch off, the pooled threshold goes back only to its value before
    // the change branch's split while that branch runs, and to the one before both splits when
    // it is off too.
    let student = root().join("models/compressed");
    let m = vae_ood_core::bundle::Bundle::load(&student)
        .unwrap()
        .manifest;
    let c = m.calibration.as_ref().unwrap();
    let (d, ch) = (
        c.direction
            .as_ref()
            .expect("the student's direction branch"),
        c.change.as_ref().expect("the student's change branch"),
    );
    assert!(d.pooled_threshold_alone < ch.pooled_threshold_before);
    assert!(ch.pooled_threshold_before < c.pipeline.cusum_threshold);
    for (change_branch, pooled) in [
        (true, ch.pooled_threshold_before),
        (false, d.pooled_threshold_alone),
    ] {
        let mon = monitor_of(
            &student,
            vae_ood_core::MonitorConfig {
                direction_branch: false,
                change_branch,
                ..Default::default()
            },
        );
        assert_eq!(mon.pipeline().unwrap().cusum_threshold, pooled);
        assert_eq!(mon.change_threshold().is_some(), change_branch);
    }
    // Clear errors: no drives to fit the steps on; a fit drive that is also a tuning drive.
    for (fit, says) in [
        (vec![], "--change-fit"),
        (vec![drive("id_udem1_s3").path], "used twice"),
    ] {
        let Err(e) = calibrate(
            &root().join("models/default"),
            tempfile::tempdir().unwrap().path(),
            detector().as_mut(),
            &with(Some(fit)),
        ) else {
            panic!("{says}: accepted")
        };
        assert!(e.to_string().contains(says), "{e}");
    }
}
