//! The bodies of the fuzz targets (`fuzz/fuzz_targets`), one function per target. The
//! regression test `test/fuzz_regressions.rs` includes this file and replays the committed
//! inputs under `fuzz/regressions/<target>/` through the same functions in `make test`.
//!
//! Each function feeds bytes to one parser the way the node or the offline tools do and
//! ignores the `Result`: an error is the right answer to hostile bytes, a panic, a hang or an
//! unbounded allocation is a bug.

use std::path::Path;
use vae_ood_bag::{cdr, Bag};
use vae_ood_core::bundle::Manifest;
use vae_ood_core::frame::{self, FrameData, Pixels, RawImage};
use vae_ood_core::preprocess::{
    ChannelOrder, Filter, InputSpec, Layout, Normalize, Preprocessor, ResizeMode,
};

/// Small input specs covering every filter, resize mode, channel order and layout.
fn specs() -> [InputSpec; 2] {
    [
        InputSpec {
            width: 8,
            height: 6,
            channel_order: ChannelOrder::Rgb,
            layout: Layout::Nchw,
            normalize: Normalize::default(),
            resize: ResizeMode::Stretch,
            filter: Filter::Area,
        },
        InputSpec {
            width: 5,
            height: 5,
            channel_order: ChannelOrder::Gray,
            layout: Layout::Nhwc,
            normalize: Normalize {
                mean: vec![0.5],
                std: vec![0.25],
            },
            resize: ResizeMode::CenterCrop,
            filter: Filter::Bilinear,
        },
    ]
}

/// A frame as the monitor takes it: checked (raw) or decoded (compressed), then preprocessed.
fn through_the_monitor(frame: &FrameData<'_>) {
    let mut decoded = None;
    let Ok(pixels) = frame::pixels(frame, &mut decoded) else {
        return;
    };
    for spec in specs() {
        let out = Preprocessor::new(spec).run(pixels);
        assert!(
            out.iter().all(|v| v.is_finite()),
            "preprocessing made a non-finite value"
        );
    }
}

/// CDR bytes as each camera message type and as a Bool label; a decoded frame goes on
/// through the monitor's frame path.
pub fn cdr_camera(data: &[u8]) {
    let _ = cdr::decode_bool(data);
    for ty in [vae_ood_bag::IMAGE, vae_ood_bag::COMPRESSED_IMAGE] {
        if let Ok(f) = cdr::decode_camera(ty, data) {
            through_the_monitor(&f.as_frame());
        }
    }
}

/// Header bytes pick the raw frame's fields (width, height, encoding, padding, byte order);
/// the rest is its data.
pub fn raw_frame(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    const ENCODINGS: [&str; 8] = [
        "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "",
    ];
    let width = u32::from(u16::from_le_bytes([data[0], data[1]]) % 512);
    let height = u32::from(u16::from_le_bytes([data[2], data[3]]) % 512);
    let encoding = ENCODINGS[usize::from(data[4] % 8)];
    let bpp = frame::Encoding::parse(encoding).map_or(1, |e| e.bytes_per_pixel() as u32);
    // Any step, including ones too small for the width.
    let step = (width * bpp)
        .saturating_add(u32::from(data[5] % 8))
        .saturating_sub(u32::from(data[5] >> 7));
    let raw = RawImage {
        width,
        height,
        encoding,
        is_bigendian: data[5] & 0x40 != 0,
        step,
        data: &data[6..],
    };
    through_the_monitor(&FrameData::Raw(raw));
    if let Ok(p) = Pixels::from_raw(&raw) {
        let rgb = p.to_rgb();
        assert_eq!(rgb.dimensions(), (width, height));
    }
}

/// The first byte picks the format string, the rest is the compressed image.
pub fn compressed_frame(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let format = [
        "jpeg",
        "png",
        "rgb8; jpeg compressed bgr8",
        "bgr8; png compressed",
        "tiff",
    ][usize::from(pick % 5)];
    through_the_monitor(&FrameData::Compressed {
        format,
        data: bytes,
    });
}

/// The bytes as a bag file with extension `ext` (`mcap` or `db3`): opened, its topics listed,
/// every message of every topic visited and decoded as the evaluation does.
///
/// The MCAP reader catches panics of the mcap crate and reports a damaged bag; libFuzzer's
/// panic hook would abort on those caught panics too, so a hook that only prints replaces it.
/// A panic that escapes still aborts the run (libfuzzer-sys checks each input's result).
pub fn bag_file(data: &[u8], ext: &str) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("{info}"))));
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(format!("bag.{ext}"));
    std::fs::write(&path, data).expect("write the bag file");
    let Ok(bag) = Bag::open(&path) else {
        return;
    };
    let Ok(topics) = bag.topics() else {
        return;
    };
    let _ = bag.camera_topic(None);
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    let _ = bag.visit(&names, &mut |m| {
        if let Ok(f) = cdr::decode_camera(&m.msg_type, &m.data) {
            through_the_monitor(&f.as_frame());
        }
    });
}

/// The bytes as manifest text.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::parse(text, Path::new("manifest.yaml"));
    }
}
