//! The per-frame monitor on the committed default bundle: fail-safe states, fault counting,
//! stale frames, and identical scores for the same pixels in every transport.

use std::path::Path;
use std::time::Duration;
use vae_ood_core::bundle::Bundle;
use vae_ood_core::detector::{Detector, ImageDetector};
use vae_ood_core::encoder::{self, BackendOptions, Encoder, InferenceError, Posterior};
use vae_ood_core::frame::{FrameData, RawImage};
use vae_ood_core::monitor::{BatchItem, Fault, FrameAge, Monitor, MonitorConfig, MonitorState};

fn default_bundle() -> Bundle {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let mut bundle = Bundle::load(dir).unwrap();
    // These tests drive the per-frame decision (`score_threshold`), which is what a bundle
    // without a calibration section gets.
    bundle.manifest.calibration = None;
    bundle
}

fn monitor(threshold: f64) -> Monitor {
    monitor_with(MonitorConfig {
        score_threshold: threshold,
        max_frame_age: Some(Duration::from_millis(500)),
        ..Default::default()
    })
}

/// The default bundle without its calibration, under `config`.
fn monitor_with(config: MonitorConfig) -> Monitor {
    let bundle = default_bundle();
    let enc = encoder::load(&bundle, BackendOptions::default()).unwrap();
    let det = ImageDetector::with_encoder(bundle, enc).unwrap();
    Monitor::new(Box::new(det), config).unwrap()
}

/// `n` different 32x24 rgb8 frames' pixels (each differs from the next: no frozen camera).
fn distinct_frames(n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            (0..32 * 24 * 3)
                .map(|i| ((i * 7 + k * 13) % 251) as u8)
                .collect()
        })
        .collect()
}

/// A 32x24 rgb8 frame over `d`.
fn raw(d: &[u8]) -> FrameData<'_> {
    FrameData::Raw(RawImage {
        width: 32,
        height: 24,
        encoding: "rgb8",
        is_bigendian: false,
        step: 96,
        data: d,
    })
}

/// The committed default detector as shipped, calibration included.
fn calibrated_default() -> Box<dyn Detector> {
    let bundle =
        Bundle::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default")).unwrap();
    let enc = encoder::load(&bundle, BackendOptions::default()).unwrap();
    Box::new(ImageDetector::with_encoder(bundle, enc).unwrap())
}

fn rgb(w: u32, h: u32) -> Vec<u8> {
    (0..w * h * 3).map(|i| ((i * 7) % 251) as u8).collect()
}

#[test]
fn starting_is_ood_then_faults_fail_safe_and_recover_on_the_next_good_frame() {
    let mut m = monitor(f64::INFINITY);
    assert_eq!(m.state(), MonitorState::Starting);
    assert!(m.state().is_ood());
    let data = rgb(32, 24);
    let good = FrameData::Raw(RawImage {
        width: 32,
        height: 24,
        encoding: "rgb8",
        is_bigendian: false,
        step: 96,
        data: &data,
    });
    let truncated = FrameData::Raw(RawImage {
        width: 32,
        height: 24,
        encoding: "rgb8",
        is_bigendian: false,
        step: 96,
        data: &data[..100],
    });

    let v = m.process(&good, Some(Duration::from_millis(10).into()));
    assert_eq!(v.state, MonitorState::Ok);
    assert!(!v.is_ood());
    let v = m.process(&truncated, None);
    assert_eq!(v.state, MonitorState::Fault);
    assert!(v.is_ood() && v.score.is_none());
    let v = m.process(&good, Some(Duration::from_secs(3).into()));
    assert_eq!(
        (v.state, v.fault.unwrap().kind()),
        (MonitorState::Fault, "stale".to_string())
    );
    let v = m.process(&good, None);
    assert_eq!(v.state, MonitorState::Ok);
    // A stamp a little ahead of the clock (skew) is scored; one further ahead than
    // max_frame_age means the clocks disagree, so the age check cannot vouch for it.
    let v = m.process(&good, Some(FrameAge::Ahead(Duration::from_millis(10))));
    assert_eq!(v.state, MonitorState::Ok);
    let v = m.process(&good, Some(FrameAge::Ahead(Duration::from_secs(3))));
    assert_eq!(
        (v.state, v.fault.unwrap().kind()),
        (MonitorState::Fault, "ahead_of_clock".to_string())
    );

    let c = m.counters();
    assert_eq!((c.frames, c.scored, c.ood, c.total_faults()), (6, 3, 3, 3));
    assert_eq!(c.faults["rejected.truncated"], 1);
    assert_eq!(c.faults["stale"], 1);
    assert_eq!(c.faults["ahead_of_clock"], 1);
}

#[test]
fn every_transport_of_the_same_pixels_gets_the_same_score() {
    let (w, h) = (40u32, 30u32);
    let px = rgb(w, h);
    let img = image::RgbImage::from_raw(w, h, px.clone()).unwrap();
    let mut m = monitor(f64::INFINITY);
    let reference = m.process_image(&img).score.unwrap();

    let bgr: Vec<u8> = px.chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
    let rgba_padded: Vec<u8> = px
        .chunks((w * 3) as usize)
        .flat_map(|row| {
            row.chunks(3)
                .flat_map(|p| [p[0], p[1], p[2], 9])
                .chain([0u8; 8])
                .collect::<Vec<_>>()
        })
        .collect();
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let frames = [
        FrameData::Raw(RawImage {
            width: w,
            height: h,
            encoding: "rgb8",
            is_bigendian: false,
            step: w * 3,
            data: &px,
        }),
        FrameData::Raw(RawImage {
            width: w,
            height: h,
            encoding: "bgr8",
            is_bigendian: false,
            step: w * 3,
            data: &bgr,
        }),
        FrameData::Raw(RawImage {
            width: w,
            height: h,
            encoding: "rgba8",
            is_bigendian: false,
            step: w * 4 + 8,
            data: &rgba_padded,
        }),
        FrameData::Compressed {
            format: "png",
            data: png.get_ref(),
        },
    ];
    for f in &frames {
        assert_eq!(m.process(f, None).score.unwrap(), reference, "{f:?}");
    }
}

/// An encoder injected through the detector seam: the real one, failing from the `fail_at`-th
/// call on (the model checks' dry run is call 0).
struct FailingEncoder {
    inner: Box<dyn Encoder>,
    calls: usize,
    fail_at: usize,
}

impl Encoder for FailingEncoder {
    fn encode(&mut self, input: &[f32]) -> Result<Posterior, InferenceError> {
        self.calls += 1;
        if self.calls > self.fail_at {
            return Err(InferenceError("injected failure".into()));
        }
        self.inner.encode(input)
    }

    fn backend(&self) -> &'static str {
        "failing"
    }
}

#[test]
fn an_injected_encoder_that_fails_puts_the_monitor_in_fault_and_is_counted() {
    let bundle = default_bundle();
    let inner = encoder::load(&bundle, BackendOptions::default()).unwrap();
    let enc = FailingEncoder {
        inner,
        calls: 0,
        fail_at: 2,
    };
    let det = ImageDetector::with_encoder(bundle, Box::new(enc)).unwrap();
    let mut m = Monitor::new(Box::new(det), MonitorConfig::default()).unwrap();
    assert_eq!(m.detector().backend(), "failing");
    let data = rgb(32, 24);
    let frame = FrameData::Raw(RawImage {
        width: 32,
        height: 24,
        encoding: "rgb8",
        is_bigendian: false,
        step: 32 * 3,
        data: &data,
    });
    assert_eq!(m.process(&frame, None).state, MonitorState::Ok);
    let v = m.process(&frame, None);
    assert_eq!(v.state, MonitorState::Fault);
    assert!(
        matches!(&v.fault, Some(Fault::Inference(e)) if e.contains("injected")),
        "{:?}",
        v.fault
    );
    assert_eq!(m.counters().faults.get("inference_error"), Some(&1));
}

#[test]
fn an_injected_encoder_gets_the_same_model_checks() {
    // An encoder that fails its dry run is refused before the detector is ready.
    let bundle = default_bundle();
    let inner = encoder::load(&bundle, BackendOptions::default()).unwrap();
    let enc = FailingEncoder {
        inner,
        calls: 0,
        fail_at: 0,
    };
    let e = ImageDetector::with_encoder(bundle, Box::new(enc))
        .err()
        .unwrap();
    assert!(e.to_string().contains("dry run"), "{e}");
}

#[test]
fn a_frozen_camera_faults_after_max_repeated_frames_and_recovers_on_a_new_frame() {
    let (w, h) = (40u32, 30u32);
    let (a, b) = (rgb(w, h), rgb(w, h).into_iter().rev().collect::<Vec<u8>>());
    fn frame(data: &[u8]) -> FrameData<'_> {
        FrameData::Raw(RawImage {
            width: 40,
            height: 30,
            encoding: "rgb8",
            is_bigendian: false,
            step: 40 * 3,
            data,
        })
    }
    let mut m = monitor(f64::INFINITY);
    let max = vae_ood_core::monitor::DEFAULT_MAX_REPEATED_FRAMES;
    // The first frame and `max` repeats of it are scored.
    for i in 0..=max {
        let v = m.process(&frame(&a), None);
        assert_eq!(v.state, MonitorState::Ok, "frame {i}");
    }
    // Every further repeat is a fault, counted as `frozen`.
    for _ in 0..3 {
        let v = m.process(&frame(&a), None);
        assert_eq!(v.state, MonitorState::Fault);
        assert_eq!(v.fault.unwrap().kind(), "frozen");
    }
    assert_eq!(m.counters().faults["frozen"], 3);
    // A different frame is scored again; repeats count afresh from it.
    assert_eq!(m.process(&frame(&b), None).state, MonitorState::Ok);
    assert_eq!(m.process(&frame(&b), None).state, MonitorState::Ok);
    assert_eq!(m.counters().faults["frozen"], 3);

    // Disabled: repeats are scored for ever.
    let mut m = monitor_with(MonitorConfig {
        max_repeated_frames: None,
        ..Default::default()
    });
    for _ in 0..3 * max {
        assert_eq!(m.process(&frame(&a), None).state, MonitorState::Ok);
    }
}

#[test]
fn a_slow_stream_faults_below_min_rate_and_recovers_when_the_rate_does() {
    let mut m = monitor_with(MonitorConfig {
        min_rate: Some(10.0),
        ..Default::default()
    });
    let frames = distinct_frames(4);
    let period = 1_000_000_000 / 15;
    let mut t = 0i64;
    let mut run = |m: &mut Monitor, n: usize, step: i64| -> Vec<MonitorState> {
        (0..n)
            .map(|k| {
                t += step;
                m.process_at(&raw(&frames[k % frames.len()]), None, Some(t))
                    .state
            })
            .collect()
    };
    // 15 Hz for two seconds: never slow.
    assert!(run(&mut m, 30, period)
        .iter()
        .all(|s| *s == MonitorState::Ok));
    // Every third frame lost (5 Hz): slow within a second, and counted.
    let slow = run(&mut m, 10, 3 * period);
    assert_eq!(slow.last(), Some(&MonitorState::Fault), "{slow:?}");
    let faults = m.counters().faults["slow_stream"];
    assert!((1..=10).contains(&faults), "{faults}");
    // Back at 15 Hz: scored again within a second.
    let back = run(&mut m, 20, period);
    assert_eq!(back[15..], [MonitorState::Ok; 5], "{back:?}");
}

#[test]
fn a_restarted_monitor_decides_as_a_new_one_and_keeps_a_run_time_threshold() {
    // The calibrated bundle: warm-up, CUSUM and the latched verdict are what restart clears.
    let load = || Monitor::new(calibrated_default(), MonitorConfig::default()).unwrap();
    let frames = distinct_frames(12);
    let run = |m: &mut Monitor| -> Vec<(MonitorState, Option<f64>)> {
        frames
            .iter()
            .map(|d| {
                let v = m.process(&raw(d), None);
                (v.state, v.step.map(|s| s.cusum))
            })
            .collect()
    };
    let mut used = load();
    let first = run(&mut used);
    assert!(
        first.iter().any(|(s, _)| *s != MonitorState::Starting),
        "{first:?}"
    );
    used.set_cusum_threshold(1234.5);
    assert_eq!(used.restart().unwrap(), MonitorState::Starting);
    assert_eq!(used.pipeline().unwrap().cusum_threshold, 1234.5);
    used.set_cusum_threshold(load().pipeline().unwrap().cusum_threshold);
    assert_eq!(run(&mut used), run(&mut load()));
    assert_eq!(used.counters().frames, 24);
}

#[test]
fn frames_of_several_cameras_scored_together_get_the_verdicts_of_one_by_one() {
    // Two cameras on one (calibrated) detector, scored in one batched call, against two
    // monitors with a detector each; one camera sends a truncated frame and a stale one.
    let load = calibrated_default;
    let cfg = MonitorConfig {
        max_frame_age: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let mut front = Monitor::new(load(), cfg).unwrap();
    let mut rear = Monitor::on_shared(front.shared_detector().clone(), cfg).unwrap();
    let mut alone = [
        Monitor::new(load(), cfg).unwrap(),
        Monitor::new(load(), cfg).unwrap(),
    ];
    let frames: Vec<[Vec<u8>; 2]> = (0..14u32)
        .map(|k| {
            let f = |c: u32| {
                (0..32 * 24 * 3)
                    .map(|i| ((i * 7 + k * 13 + c * 101) % 251) as u8)
                    .collect()
            };
            [f(0), f(1)]
        })
        .collect();
    for (k, pair) in frames.iter().enumerate() {
        let rear_data = if k == 3 {
            &pair[1][..100]
        } else {
            &pair[1][..]
        };
        let fresh = Some(FrameAge::Old(Duration::from_millis(10)));
        let rear_age = if k == 5 {
            Some(FrameAge::Old(Duration::from_secs(2)))
        } else {
            fresh
        };
        let (f, r) = (raw(&pair[0]), raw(rear_data));
        let stamp = Some(k as i64 * 33_000_000 + 1);
        let together = Monitor::process_batched(&mut [
            BatchItem {
                monitor: &mut front,
                frame: &f,
                age: fresh,
                stamp_ns: stamp,
            },
            BatchItem {
                monitor: &mut rear,
                frame: &r,
                age: rear_age,
                stamp_ns: stamp,
            },
        ]);
        let one_by_one = [
            alone[0].process_at(&f, fresh, stamp),
            alone[1].process_at(&r, rear_age, stamp),
        ];
        for (t, o) in together.iter().zip(&one_by_one) {
            assert_eq!(t.state, o.state, "frame {k}");
            assert_eq!(t.fault.is_some(), o.fault.is_some(), "frame {k}");
            match (t.score, o.score) {
                (Some(a), Some(b)) => assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "frame {k}: {a} vs {b}"
                ),
                (a, b) => assert_eq!(a, b, "frame {k}"),
            }
        }
    }
    assert_eq!(rear.counters().faults.len(), 2, "{:?}", rear.counters());
    assert_eq!(front.counters().scored, 14);
}

/// `threshold_scale` multiplies the bundle's own threshold (what a joint threshold for several
/// detectors sets), survives a restart, and never applies over an explicit `cusum_threshold`.
#[test]
fn the_threshold_scale_multiplies_the_bundles_own_threshold() {
    let own = Bundle::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default"))
        .unwrap()
        .manifest
        .calibration
        .unwrap()
        .pipeline
        .cusum_threshold;
    let threshold = |cfg: MonitorConfig| {
        let mut m = Monitor::new(calibrated_default(), cfg).unwrap();
        let before = m.pipeline().unwrap().cusum_threshold;
        m.restart().unwrap();
        assert_eq!(m.pipeline().unwrap().cusum_threshold, before);
        before
    };
    assert_eq!(threshold(MonitorConfig::default()), own);
    let scaled = MonitorConfig {
        threshold_scale: 1.18,
        ..Default::default()
    };
    assert_eq!(threshold(scaled), own * 1.18);
    let explicit = MonitorConfig {
        threshold_scale: 1.18,
        cusum_threshold: Some(20.0),
        ..Default::default()
    };
    assert_eq!(threshold(explicit), 20.0);
}

/// The committed default detector with a start-up phase of `frames` frames at `cruise_scale`
/// (no floor).
fn default_with_startup(frames: u64, cruise_scale: f64) -> Bundle {
    let mut bundle =
        Bundle::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default")).unwrap();
    bundle.manifest.calibration.as_mut().unwrap().startup =
        Some(vae_ood_core::detection::startup::StartupSection {
            frames,
            cruise_scale,
            floor: 0.0,
            tuning_drives_alarmed: 0,
            tuning_drives_allowed: 1,
        });
    bundle
}

/// The start-up phase in the node's monitor: the pooled threshold in force is the calibrated
/// one for the stream's first 3 frames and half of it after them; a restart and the operator's
/// reset start the phase again; a branch turned off turns the phase off; a threshold the operator sets at run time is
/// the one in force from then on, through restarts, with the phase off.
#[test]
fn the_start_up_phase_lowers_thresholds_after_its_frames_until_the_operator_sets_one() {
    let mut bundle = default_with_startup(3, 0.5);
    let c = bundle.manifest.calibration.as_mut().unwrap();
    let calibrated = c.pipeline.cusum_threshold;
    let monitor = |config: MonitorConfig| {
        let enc = encoder::load(&bundle, BackendOptions::default()).unwrap();
        let det = ImageDetector::with_encoder(bundle.clone(), enc).unwrap();
        Monitor::new(Box::new(det), config).unwrap()
    };
    let mut m = monitor(MonitorConfig::default());
    let frames = distinct_frames(8);
    let in_force = |m: &mut Monitor, k: usize| {
        m.process(&raw(&frames[k]), None);
        m.pipeline().unwrap().cusum_threshold
    };
    let run: Vec<f64> = (0..5).map(|k| in_force(&mut m, k)).collect();
    let half = calibrated * 0.5;
    assert_eq!(run, [calibrated, calibrated, calibrated, half, half]);
    m.restart().unwrap();
    assert_eq!(in_force(&mut m, 5), calibrated, "the phase starts again");
    let run: Vec<f64> = (0..4).map(|k| in_force(&mut m, k)).collect();
    assert_eq!(run, [calibrated, calibrated, half, half]);
    m.reset();
    assert_eq!(
        in_force(&mut m, 4),
        calibrated,
        "and after the operator's reset"
    );
    // Certified with every branch running: a branch turned off turns the phase off. (Its
    // share may return to the pooled threshold; it is what runs with the phase off.)
    let off = MonitorConfig {
        direction_branch: false,
        ..MonitorConfig::default()
    };
    let own = monitor(MonitorConfig {
        startup_phase: false,
        ..off
    })
    .pipeline()
    .unwrap()
    .cusum_threshold;
    let mut without = monitor(off);
    let run: Vec<f64> = (0..5).map(|k| in_force(&mut without, k)).collect();
    assert!(run.iter().all(|&t| t == own), "{run:?} against {own}");
    m.set_cusum_threshold(20.0);
    m.restart().unwrap();
    let run: Vec<f64> = (0..8).map(|k| in_force(&mut m, k)).collect();
    assert!(run.iter().all(|&t| t == 20.0), "{run:?}");
}

/// The start-up phase's gentle end: at the stream's first frame after the phase, each branch's
/// S falls as its threshold does before the frame's evidence is added, so a start's evidence
/// keeps its alarm ratio instead of alarming by the fall alone.
#[test]
fn s_falls_with_the_thresholds_as_the_start_up_ends() {
    let mut bundle = default_with_startup(3, 0.25);
    let c = bundle.manifest.calibration.as_mut().unwrap();
    let decay = c.pipeline.decay;
    let enc = encoder::load(&bundle, BackendOptions::default()).unwrap();
    let det = ImageDetector::with_encoder(bundle.clone(), enc).unwrap();
    let mut m = Monitor::new(Box::new(det), MonitorConfig::default()).unwrap();
    // Synthetic frames are far from the drives: every one adds evidence.
    let frames = distinct_frames(5);
    let steps: Vec<_> = frames
        .iter()
        .map(|f| m.process(&raw(f), None).step.unwrap())
        .collect();
    let grows = |k: usize| (steps[k - 1].cusum + steps[k].log_martingale - decay).max(0.0);
    assert!(steps[2].cusum > 0.0, "{steps:?}");
    // Through the start-up and after its end, S takes each frame's increment ...
    assert!((steps[1].cusum - grows(1)).abs() < 1e-9, "{steps:?}");
    assert!((steps[4].cusum - grows(4)).abs() < 1e-9, "{steps:?}");
    // ... and as the phase ends, it first falls to a quarter, as the thresholds do.
    let carried = (0.25 * steps[2].cusum + steps[3].log_martingale - decay).max(0.0);
    assert!((steps[3].cusum - carried).abs() < 1e-9, "{steps:?}");
    assert!(steps[3].cusum < grows(3), "{steps:?}");
}
