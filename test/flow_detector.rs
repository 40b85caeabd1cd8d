//! The optical-flow detector (issue 18) through its bundle: a flow bundle loads as the flow
//! detector, warms up over its stack and again after a gap, its two branches are independent
//! in the exported graph (seeded and trained), and the monitor reports warm-up as STARTING,
//! not as a fault.

use std::path::{Path, PathBuf};
use vae_ood_core::bundle::{Bundle, DetectorSpec, Manifest};
use vae_ood_core::detector::{Detector, Fault, ImageDetector, Scored};
use vae_ood_core::encoder::{self, BackendOptions};
use vae_ood_core::flow::FlowSpec;
use vae_ood_core::flow_detector::FlowDetector;
use vae_ood_core::frame::{FrameData, RawImage};
use vae_ood_core::monitor::{Monitor, MonitorConfig, MonitorState};
use vae_ood_tools::drives::for_each_frame;
use vae_ood_tools::onnx_gen::write_seeded_bundle;

fn sample(drive: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("data/sample")
        .join(drive)
        .join("bag")
}

/// The first `n` frames of a sample drive.
fn frames(drive: &str, n: usize) -> Vec<image::RgbImage> {
    let mut out = vec![];
    for_each_frame(&sample(drive), &mut |img| {
        if out.len() < n {
            out.push(img.clone());
        }
        Ok(())
    })
    .unwrap();
    out
}

/// A frame as a camera driver's raw rgb8 message carries it.
fn rgb8(img: &image::RgbImage) -> FrameData<'_> {
    FrameData::Raw(RawImage {
        width: img.width(),
        height: img.height(),
        encoding: "rgb8",
        is_bigendian: false,
        step: img.width() * 3,
        data: img.as_raw(),
    })
}

fn seeded(dir: &Path) -> Bundle {
    write_seeded_bundle(dir, "flow", 5, "seeded-flow", false).unwrap()
}

/// The seeded flow bundle written to `dir`, loaded as a detector, and 10 frames of one drive
/// with the interval of their stamps (15 Hz).
fn seeded_stream(dir: &Path) -> (Box<dyn Detector>, Vec<image::RgbImage>, i64) {
    seeded(dir);
    let det = vae_ood_core::detector::load(dir, BackendOptions::default()).unwrap();
    (det, frames("id_loop_empty_s1", 10), 66_666_667)
}

/// Scores frames `ks` of `imgs` on `stream`, frame k stamped k * `dt`; the last one's result.
fn feed(
    det: &mut dyn Detector,
    stream: usize,
    imgs: &[image::RgbImage],
    ks: std::ops::Range<usize>,
    dt: i64,
) -> Option<Result<Scored, Fault>> {
    ks.map(|k| det.score_at(stream, (&imgs[k]).into(), Some(k as i64 * dt)))
        .last()
}

#[test]
fn a_flow_bundle_loads_as_the_flow_detector_and_warms_up_over_its_stack_and_after_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let b = seeded(dir.path());
    let DetectorSpec::Flow(spec) = &b.manifest.detector else {
        panic!("a flow bundle")
    };
    assert_eq!(spec, &FlowSpec::REFERENCE);
    assert_eq!(b.manifest.encoder_input_shape(), [1, 12, 113, 152]);
    let mut det = vae_ood_core::detector::load(dir.path(), BackendOptions::default()).unwrap();
    let s = det.open_stream();
    let imgs = frames("id_loop_empty_s1", 12);
    let dt = 66_666_667;
    // depth (6) frames warm the stack up, counting down what is still needed.
    for (k, img) in imgs[..6].iter().enumerate() {
        match det.score_at(s, img.into(), Some(k as i64 * dt)) {
            Err(Fault::WarmingUp { needed }) => assert_eq!(needed, 6 - k, "frame {k}"),
            other => panic!("frame {k}: {other:?}"),
        }
    }
    for (k, img) in imgs.iter().enumerate().skip(6).take(3) {
        let sc = det.score_at(s, img.into(), Some(k as i64 * dt)).unwrap();
        assert_eq!((sc.kl.len(), sc.mu.len()), (24, 24));
        let [h, v] = FlowDetector::branch_kl(&sc.kl);
        assert!(sc.score.is_finite() && (h + v - sc.score).abs() < 1e-9 * sc.score.max(1.0));
    }
    // A stamp 1 s later is a gap (max_gap_ms 250): no flow across it, the stack restarts.
    let later = 9 * dt + 1_000_000_000;
    assert!(matches!(
        det.score_at(s, (&imgs[9]).into(), Some(later)),
        Err(Fault::WarmingUp { needed: 6 })
    ));
    // Another stream keeps its own history; a reset forgets it.
    let t = det.open_stream();
    assert!(matches!(
        det.score(t, (&imgs[0]).into()),
        Err(Fault::WarmingUp { needed: 6 })
    ));
    // The image detector refuses the bundle by name rather than scoring nonsense.
    let e = ImageDetector::load(dir.path(), BackendOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("flow detector bundle"), "{e}");
}

#[test]
fn the_monitor_reports_warm_up_as_starting_not_as_a_fault() {
    let dir = tempfile::tempdir().unwrap();
    seeded(dir.path());
    let det = vae_ood_core::detector::load(dir.path(), BackendOptions::default()).unwrap();
    let mut m = Monitor::new(det, MonitorConfig::default()).unwrap();
    let states: Vec<MonitorState> = frames("id_udem1_s3", 8)
        .iter()
        .map(|img| m.process_image(img).state)
        .collect();
    assert_eq!(&states[..6], &[MonitorState::Starting; 6]);
    // Uncalibrated, threshold infinite: scored frames are OK.
    assert_eq!(&states[6..], &[MonitorState::Ok; 2]);
    let c = m.counters();
    assert_eq!((c.frames, c.scored, c.warming_up), (8, 2, 6));
    assert!(c.faults.is_empty(), "{:?}", c.faults);
    assert_eq!(c.ood, 6, "STARTING reports OOD");
}

/// The encoder's two branches: changing the vertical-flow channels leaves the horizontal
/// branch's latents (the first half) bit for bit unchanged, and the other way round.
fn assert_branches_independent(bundle: &Bundle) {
    let mut enc = encoder::load(bundle, BackendOptions::default()).unwrap();
    let shape = bundle.manifest.encoder_input_shape();
    let n: usize = shape.iter().product();
    let half = n / 2;
    let x: Vec<f32> = (0..n)
        .map(|i| 0.5 + 0.3 * ((i as f32) * 0.37).sin())
        .collect();
    let mut y = x.clone();
    y[half..].iter_mut().for_each(|v| *v = 1.0 - *v);
    let mut z = x.clone();
    z[..half].iter_mut().for_each(|v| *v = 1.0 - *v);
    let (a, b, c) = (
        enc.encode(&x).unwrap(),
        enc.encode(&y).unwrap(),
        enc.encode(&z).unwrap(),
    );
    let l = a.mu.len() / 2;
    assert_eq!(
        a.mu[..l],
        b.mu[..l],
        "horizontal branch reads vertical flow"
    );
    assert_eq!(a.logvar[..l], b.logvar[..l]);
    assert_ne!(a.mu[l..], b.mu[l..], "vertical branch ignores its input");
    assert_eq!(
        a.mu[l..],
        c.mu[l..],
        "vertical branch reads horizontal flow"
    );
    assert_ne!(a.mu[..l], c.mu[..l]);
}

#[test]
fn the_seeded_flow_encoders_branches_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    assert_branches_independent(&seeded(dir.path()));
}

#[test]
fn flow_manifests_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let b = seeded(dir.path());
    let text = serde_yaml::to_string(&b.manifest).unwrap();
    let path = dir.path().join("manifest.yaml");
    let parse = |t: &str| Manifest::parse(t, &path).err().map(|e| e.to_string());
    assert_eq!(parse(&text), None);
    let e = parse(&text.replace("format_version: 2", "format_version: 1")).unwrap();
    assert!(e.contains("needs format_version 2"), "{e}");
    let e = parse(&text.replace("depth: 6", "depth: 0")).unwrap();
    assert!(e.contains("depth 0"), "{e}");
    let e = parse(&text.replace("winsize: 15", "winsize: 14")).unwrap();
    assert!(e.contains("winsize 14"), "{e}");
    let e = parse(&text.replace("channel_order: gray", "channel_order: rgb")).unwrap();
    assert!(e.contains("prepared frame"), "{e}");
    // Version 1 image manifests still load: the shipped student as it was before its direction
    // branch (session 35; version 4 since, version 5 since that branch measures the MSCN
    // statistics, session 38, version 6 once it has a start-up phase, session 42, version 8 with
    // its change branch, session 45).
    let student = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/compressed"
    ));
    let mut m = Bundle::load(student).unwrap().manifest;
    assert!(m.detector.is_image() && m.format_version >= 5);
    m.format_version = 1;
    let c = m.calibration.as_mut().unwrap();
    (c.direction, c.startup, c.change) = (None, None, None);
    let v1 = serde_yaml::to_string(&m).unwrap();
    assert!(v1.contains("format_version: 1") && !v1.contains("detector:"));
    assert_eq!(parse(&v1), None);
}

#[cfg(feature = "train")]
#[test]
fn a_trained_flow_detector_exports_independent_branches_and_scores_drives() {
    use vae_ood_tools::onnx_gen::EncoderArch;
    use vae_ood_tools::train::{self, RunOptions, TrainConfig};
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        preset: "test".into(),
        arch: EncoderArch {
            conv: vec![4, 4],
            dense: vec![8],
            latents: 4,
            ..EncoderArch::flow(6)
        },
        beta: 1.0,
        epochs: 1,
        batch_size: 8,
        lr: 3e-3,
        lr_min: 1e-4,
        patience: 10,
        checkpoint_every: 1,
        seed: 3,
        frame_stride: 8,
        filter: vae_ood_core::preprocess::Filter::Bilinear,
        train: vec![sample("id_loop_empty_s1")],
        val: vec![sample("id_small_loop_s2")],
        distill: None,
        flow: Some(FlowSpec::REFERENCE),
    };
    let opts = RunOptions {
        quiet: true,
        ..Default::default()
    };
    let out = train::train(&cfg, dir.path(), &opts).unwrap();
    let bundle = Bundle::load(out.bundle.unwrap()).unwrap();
    assert!(matches!(bundle.manifest.detector, DetectorSpec::Flow(_)));
    assert!(bundle
        .manifest
        .provenance
        .created_by
        .contains("--detector flow"));
    assert_branches_independent(&bundle);
    // An image architecture cannot train on flow, nor the flow one on frames.
    let e = train::train(
        &TrainConfig {
            flow: None,
            ..cfg.clone()
        },
        &dir.path().join("x"),
        &opts,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("--detector flow"), "{e}");
}

/// The shipped flow detector reads the motion residual beside the posterior (session 16):
/// specks that appear anew on every frame (snow-like) leave change the flow cannot explain,
/// which raises the residual and the score.
#[test]
fn the_shipped_flow_detector_scores_unexplained_change() {
    let flow = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/flow"));
    let mut det = vae_ood_core::detector::load(flow, BackendOptions::default()).unwrap();
    assert!(det.bundle().manifest.score.motion_residual());
    let clean = frames("id_loop_empty_s1", 8);
    let specked: Vec<image::RgbImage> = clean
        .iter()
        .enumerate()
        .map(|(k, img)| {
            let mut img = img.clone();
            // A different scatter of white specks on every frame.
            for i in (k * 13..(img.width() * img.height()) as usize).step_by(53) {
                let (x, y) = ((i as u32) % img.width(), (i as u32) / img.width());
                img.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
            img
        })
        .collect();
    let mut last = |imgs: &[image::RgbImage]| {
        let s = det.open_stream();
        let mut out = None;
        for img in imgs {
            out = det.score(s, img.into()).ok();
        }
        out.expect("a score once the stack is warm")
    };
    let (a, b) = (last(&clean), last(&specked));
    assert_eq!((a.detail.len(), b.detail.len()), (1, 1));
    assert!(
        b.detail[0] > a.detail[0] + 0.5,
        "{:?} {:?}",
        a.detail,
        b.detail
    );
    assert!(b.score > a.score, "{} {}", a.score, b.score);
}

/// The shipped flow bundle with its per-branch thresholds replaced, written to `dir`.
fn with_branch_thresholds(
    dir: &Path,
    t: Option<vae_ood_core::bundle::BranchThresholds>,
) -> PathBuf {
    let flow = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/flow"));
    let b = Bundle::load(flow).unwrap();
    let encoder = std::fs::read(flow.join(&b.manifest.encoder.path)).unwrap();
    let mut m = b.manifest.clone();
    m.calibration.as_mut().unwrap().branch_thresholds = t;
    Bundle::write(dir, m, &encoder).unwrap();
    dir.to_path_buf()
}

#[test]
fn the_reference_designs_branch_rule_alarms_on_single_frames_only_when_asked() {
    use vae_ood_core::bundle::BranchThresholds;
    let imgs = frames("id_loop_empty_s1", 14);
    let run = |dir: &Path, branch_rule: bool| {
        let det = vae_ood_core::detector::load(dir, BackendOptions::default()).unwrap();
        let mut m = Monitor::new(
            det,
            MonitorConfig {
                branch_rule,
                ..Default::default()
            },
        )
        .unwrap();
        imgs.iter()
            .map(|img| m.process_image(img))
            .collect::<Vec<_>>()
    };
    // Without thresholds: the branches' KL on every scored frame, no rule.
    let bare = tempfile::tempdir().unwrap();
    let plain = run(&with_branch_thresholds(bare.path(), None), false);
    assert!(plain[..6].iter().all(|v| v.branch_kl.is_none()));
    assert!(plain[6..]
        .iter()
        .all(|v| v.branch_kl.is_some() && v.branch_ood.is_none()));
    let lowest_h = plain[6..]
        .iter()
        .map(|v| v.branch_kl.unwrap()[0])
        .fold(f64::INFINITY, f64::min);
    // The horizontal threshold under every frame's KL, the vertical far above.
    let low = tempfile::tempdir().unwrap();
    let low = with_branch_thresholds(
        low.path(),
        Some(BranchThresholds {
            horizontal: lowest_h / 2.0,
            vertical: 1e300,
        }),
    );
    // Reported, but the state stays the sequential test's unless the rule is on.
    let reported = run(&low, false);
    for (a, b) in plain.iter().zip(&reported) {
        assert_eq!(a.state, b.state);
        assert_eq!(b.branch_ood, b.branch_kl.map(|_| true));
    }
    let ruled = run(&low, true);
    assert!(ruled[6..].iter().all(|v| v.state == MonitorState::Ood));
    assert_eq!(
        &ruled[..6].iter().map(|v| v.state).collect::<Vec<_>>(),
        &[MonitorState::Starting; 6]
    );
    // Thresholds above every frame: the rule never fires, the verdicts are the plain ones.
    let high = tempfile::tempdir().unwrap();
    let high = with_branch_thresholds(
        high.path(),
        Some(BranchThresholds {
            horizontal: 1e300,
            vertical: 1e300,
        }),
    );
    for (a, b) in plain.iter().zip(run(&high, true)) {
        assert_eq!(
            (a.state, b.branch_ood),
            (b.state, b.branch_kl.map(|_| false))
        );
    }
    // Asking for the rule on a bundle without thresholds fails at start-up, by name.
    let det = vae_ood_core::detector::load(bare.path(), BackendOptions::default()).unwrap();
    let e = Monitor::new(
        det,
        MonitorConfig {
            branch_rule: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("branch_rule") && e.contains("branch_thresholds"),
        "{e}"
    );
}

#[test]
fn branch_thresholds_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = with_branch_thresholds(
        dir.path(),
        Some(vae_ood_core::bundle::BranchThresholds {
            horizontal: 40.0,
            vertical: 30.0,
        }),
    );
    let text = std::fs::read_to_string(path.join("manifest.yaml")).unwrap();
    let parse = |t: &str| Manifest::parse(t, &path).err().map(|e| e.to_string());
    assert_eq!(parse(&text), None);
    let e = parse(&text.replace("horizontal: 40.0", "horizontal: -1.0")).unwrap();
    assert!(
        e.contains("branch_thresholds") && e.contains("positive"),
        "{e}"
    );
    // An image detector has no branches.
    let default = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default"));
    let image = std::fs::read_to_string(default.join("manifest.yaml")).unwrap();
    let image = image.replace(
        "\n  scores:",
        "\n  branch_thresholds:\n    horizontal: 40.0\n    vertical: 30.0\n  scores:",
    );
    let e = parse(&image).unwrap();
    assert!(e.contains("needs a flow detector"), "{e}");
}

/// A stream so slow that every gap restarts the flow stack would keep the flow detector
/// STARTING for ever; with `min_rate` the verdict names the cause (a slow stream, a fault)
/// once a second of stamps has passed.
#[test]
fn a_slow_stream_is_named_when_it_keeps_the_flow_detector_warming_up() {
    let flow = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/flow"));
    let imgs = frames("id_loop_empty_s1", 8);
    let run = |min_rate: Option<f64>| {
        let det = vae_ood_core::detector::load(flow, BackendOptions::default()).unwrap();
        let mut m = Monitor::new(
            det,
            MonitorConfig {
                min_rate,
                ..Default::default()
            },
        )
        .unwrap();
        // 3 Hz: each gap (333 ms) is longer than the bundle's max_gap_ms (250).
        imgs.iter()
            .enumerate()
            .map(|(k, img)| {
                let v = m.process_at(&rgb8(img), None, Some(k as i64 * 1_000_000_000 / 3));
                (v.state, v.fault.map(|f| f.kind()))
            })
            .collect::<Vec<_>>()
    };
    let starting = (MonitorState::Starting, Some("warming_up".to_string()));
    assert!(run(None).iter().all(|v| *v == starting), "{:?}", run(None));
    let named = run(Some(10.0));
    // Judged from the first stamp a second after the first (the 4th frame).
    assert!(named[..3].iter().all(|v| *v == starting), "{named:?}");
    let slow = (MonitorState::Fault, Some("slow_stream".to_string()));
    assert!(named[3..].iter().all(|v| *v == slow), "{named:?}");
}

/// The operator's reset clears an alarm, never a warm-up: a calibrated flow monitor that
/// restarts its stack after a gap in the stamps stays STARTING through a reset, since it has
/// not scored the scene since the gap.
#[test]
fn a_reset_during_warm_up_after_a_gap_stays_starting() {
    let flow = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/flow_compressed"
    ));
    let det = vae_ood_core::detector::load(flow, BackendOptions::default()).unwrap();
    let mut m = Monitor::new(det, MonitorConfig::default()).unwrap();
    let imgs = frames("id_loop_empty_s1", 12);
    let dt = 66_666_667;
    let mut at = |k: usize, stamp: i64| m.process_at(&rgb8(&imgs[k]), None, Some(stamp)).state;
    let states: Vec<_> = (0..10).map(|k| at(k, k as i64 * dt)).collect();
    assert_eq!(states[9], MonitorState::Ok, "{states:?}");
    // One second later: a gap, the stack restarts.
    assert_eq!(at(10, 9 * dt + 1_000_000_000), MonitorState::Starting);
    assert_eq!(m.reset(), MonitorState::Starting);
    assert_eq!(m.state(), MonitorState::Starting);
}

/// A frame stamped the same as the last with the same picture is that frame sent again: it keeps
/// the history and gets the score of the frame it repeats. Another picture under that stamp (a
/// stamp source that stopped) restarts, as a stamp that goes back does.
#[test]
fn a_repeated_stamp_is_the_same_instant_and_a_backward_one_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut det, imgs, dt) = seeded_stream(dir.path());
    let s = det.open_stream();
    // A resend while warming up is still warming up, and does not count as a frame.
    let _ = det.score_at(s, (&imgs[0]).into(), Some(0));
    assert!(matches!(
        det.score_at(s, (&imgs[0]).into(), Some(0)),
        Err(Fault::WarmingUp { needed: 6 })
    ));
    let last = feed(det.as_mut(), s, &imgs, 1..8, dt)
        .unwrap()
        .expect("warm after 7 frames")
        .score;
    // Frame 7 again, twice: frame 7's score.
    for _ in 0..2 {
        let again = det
            .score_at(s, (&imgs[7]).into(), Some(7 * dt))
            .unwrap()
            .score;
        assert_eq!(again, last);
    }
    // The history went on: the next frame is scored, not warming up.
    let next = det.score_at(s, (&imgs[8]).into(), Some(8 * dt)).unwrap();
    assert_ne!(next.score, last);
    // Another picture under frame 8's stamp restarts the stack...
    assert!(matches!(
        det.score_at(s, (&imgs[2]).into(), Some(8 * dt)),
        Err(Fault::WarmingUp { needed: 6 })
    ));
    // ...and so does a stamp that goes back (a replay looped).
    let t = det.open_stream();
    feed(det.as_mut(), t, &imgs, 0..8, dt);
    assert!(matches!(
        det.score_at(t, (&imgs[9]).into(), Some(3 * dt)),
        Err(Fault::WarmingUp { needed: 6 })
    ));
}

/// An unstamped frame between stamped ones hides no gap: the next stamped frame is checked
/// against the last stamp seen, and a minute later the stack restarts.
#[test]
fn an_unstamped_frame_does_not_hide_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (mut det, imgs, dt) = seeded_stream(dir.path());
    let s = det.open_stream();
    feed(det.as_mut(), s, &imgs, 0..7, dt);
    assert!(
        det.score_at(s, (&imgs[7]).into(), None).is_ok(),
        "unstamped: the next frame"
    );
    // The last stamp seen was frame 6's; one frame interval after it is no gap...
    assert!(det.score_at(s, (&imgs[8]).into(), Some(8 * dt)).is_ok());
    // ...a minute after it is.
    assert!(matches!(
        det.score_at(s, (&imgs[9]).into(), Some(8 * dt + 60_000_000_000)),
        Err(Fault::WarmingUp { needed: 6 })
    ));
    // Unstamped then a minute on: the same.
    let t = det.open_stream();
    feed(det.as_mut(), t, &imgs, 0..7, dt);
    assert!(det.score_at(t, (&imgs[7]).into(), None).is_ok());
    assert!(matches!(
        det.score_at(t, (&imgs[8]).into(), Some(60_000_000_000)),
        Err(Fault::WarmingUp { needed: 6 })
    ));
}
