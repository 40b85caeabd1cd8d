//! The per-frame monitor on the committed default bundle: fail-safe states, fault counting,
//! stale frames, and identical scores for the same pixels in every transport.

use std::path::Path;
use std::time::Duration;
use vae_ood_monitor::backend::BackendOptions;
use vae_ood_monitor::frame::{FrameData, RawImage};
use vae_ood_monitor::monitor::{Detector, Monitor, MonitorConfig, MonitorState};

fn monitor(threshold: f64) -> Monitor {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let mut det = Detector::load(dir, BackendOptions::default()).unwrap();
    // These tests drive the per-frame decision (`score_threshold`), which is what a bundle
    // without a calibration section gets.
    det.bundle.manifest.calibration = None;
    Monitor::new(
        det,
        MonitorConfig {
            score_threshold: threshold,
            max_frame_age: Some(Duration::from_millis(500)),
            ..Default::default()
        },
    )
    .unwrap()
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

    let v = m.process(&good, Some(Duration::from_millis(10)));
    assert_eq!(v.state, MonitorState::Ok);
    assert!(!v.is_ood());
    let v = m.process(&truncated, None);
    assert_eq!(v.state, MonitorState::Fault);
    assert!(v.is_ood() && v.score.is_none());
    let v = m.process(&good, Some(Duration::from_secs(3)));
    assert_eq!(
        (v.state, v.fault.unwrap().kind()),
        (MonitorState::Fault, "stale".to_string())
    );
    let v = m.process(&good, None);
    assert_eq!(v.state, MonitorState::Ok);

    let c = m.counters();
    assert_eq!((c.frames, c.scored, c.ood, c.total_faults()), (4, 2, 2, 2));
    assert_eq!(c.faults["rejected.truncated"], 1);
    assert_eq!(c.faults["stale"], 1);
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
