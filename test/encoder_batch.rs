//! Batched and half-precision encoding on the CPU (issue 17; issue 19 batches cameras): a batch
//! of frames in one run gives each frame's own posterior, and the f16 translation that the GPU
//! applies to an fp16 encoder stays within the fp16 tolerance SAFETY.md states. The GPU runs the
//! same graphs (scripts/gpu_check.sh measures them there).

use std::path::Path;
use vae_ood_core::bundle::Bundle;
use vae_ood_core::encoder::{Encoder, TractEncoder};

fn bundle(name: &str) -> Bundle {
    Bundle::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")).join(name))
        .unwrap()
}

/// `n` distinct deterministic inputs in [0, 1] of the bundle's input size.
fn inputs(b: &Bundle, n: usize) -> Vec<Vec<f32>> {
    let len: usize = b.manifest.encoder_input_shape().iter().product();
    (0..n)
        .map(|k| {
            (0..len)
                .map(|i| ((i * (37 + 2 * k) + 11 * k) % 101) as f32 / 100.0)
                .collect()
        })
        .collect()
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_batch_gives_every_frame_its_own_posterior() {
    for name in ["default", "compressed", "flow"] {
        let b = bundle(name);
        let mut enc = TractEncoder::load(&b, 1).unwrap();
        let xs = inputs(&b, 4);
        let one_by_one: Vec<_> = xs.iter().map(|x| enc.encode(x).unwrap()).collect();
        // Sizes 4, 3, then 4 again: the batched plan is rebuilt when the size changes.
        for n in [4, 3, 4] {
            let refs: Vec<&[f32]> = xs[..n].iter().map(Vec::as_slice).collect();
            let batched = enc.encode_batch(&refs).unwrap();
            assert_eq!(batched.len(), n);
            for (p, q) in batched.iter().zip(&one_by_one) {
                // The same kernels on other matrix shapes may sum in another order.
                assert!(largest_difference(&p.mu, &q.mu) < 1e-4, "{name} mu");
                assert!(
                    largest_difference(&p.logvar, &q.logvar) < 1e-4,
                    "{name} logvar"
                );
            }
        }
        // The frames are distinct, so a mix-up between batch rows would show.
        assert!(largest_difference(&one_by_one[0].mu, &one_by_one[1].mu) > 1e-3);
    }
}

#[test]
fn half_precision_stays_within_the_fp16_tolerance() {
    let b = bundle("default");
    let mut full = TractEncoder::load(&b, 1).unwrap();
    let mut half = TractEncoder::load_half(&b, 1).unwrap();
    for x in inputs(&b, 3) {
        let (p, q) = (full.encode(&x).unwrap(), half.encode(&x).unwrap());
        // f16 keeps 11 significant bits: mu (order 1) within 2e-2 absolute, as SAFETY.md states.
        let d = largest_difference(&p.mu, &q.mu);
        assert!(d < 2e-2, "mu differs by {d}");
        assert!(largest_difference(&p.logvar, &q.logvar) < 5e-2);
        // And it did compute in f16: not bit-identical to f32.
        assert!(d > 0.0);
    }
}

#[test]
fn an_fp16_candidate_is_known_by_its_weights() {
    use vae_ood_tools::compress::quantize::{quantize, Precision};
    let b = bundle("default");
    assert!(!TractEncoder::load(&b, 1).unwrap().fp16_weights());
    let onnx = std::fs::read(b.encoder_path()).unwrap();
    let q = quantize(&onnx, Precision::Fp16, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    Bundle::write(dir.path(), b.manifest.clone(), &q).unwrap();
    let fp16 = Bundle::load(dir.path()).unwrap();
    let mut enc = TractEncoder::load(&fp16, 1).unwrap();
    assert!(enc.fp16_weights());
    // tract on the CPU computes it in f32: the weights are all that changed.
    let x = &inputs(&b, 1)[0];
    let mut full = TractEncoder::load(&b, 1).unwrap();
    assert!(largest_difference(&enc.encode(x).unwrap().mu, &full.encode(x).unwrap().mu) < 2e-2);
}

#[test]
fn a_frame_without_pixels_fails_alone_in_its_batch() {
    use vae_ood_core::detector::{self, Fault, StreamFrame};
    use vae_ood_core::encoder::BackendOptions;
    use vae_ood_core::frame::{FrameError, Pixels};
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default"));
    let mut d = detector::load(dir, BackendOptions::default()).unwrap();
    let (a, b) = (d.open_stream(), d.open_stream());
    let frame = image::RgbImage::from_fn(160, 120, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let empty = image::RgbImage::new(0, 0);
    let good = StreamFrame {
        stream: a,
        pixels: Pixels::from(&frame),
        stamp_ns: None,
    };
    // What the batch's two frames with pixels give without the empty one.
    let pair: Vec<f64> = d
        .score_batch(&[good, good])
        .iter()
        .map(|r| r.as_ref().unwrap().score)
        .collect();
    // Two cameras in one batch, one of them sending an empty frame.
    let batch = d.score_batch(&[
        good,
        StreamFrame {
            stream: b,
            pixels: Pixels::from(&empty),
            stamp_ns: None,
        },
        good,
    ]);
    assert_eq!(batch.len(), 3);
    assert!(matches!(
        batch[1],
        Err(Fault::Rejected(FrameError::ZeroSize {
            width: 0,
            height: 0
        }))
    ));
    for (r, want) in [&batch[0], &batch[2]].into_iter().zip(pair) {
        assert_eq!(
            r.as_ref().expect("a frame with pixels is scored").score,
            want
        );
    }
}
