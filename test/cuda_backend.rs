//! The `cuda` backend (issue 17), on whatever machine runs it. Without a usable NVIDIA GPU
//! (CI here): `cuda` fails at load time naming each missing library and the fix, and `auto`
//! runs on the CPU. With one: the encoder runs on it and gives tract's posterior on the CPU
//! within float tolerance, and `auto` picks it. Built with `--features cuda` only.

use std::path::PathBuf;
use vae_ood_core::detector::{load, Detector};
use vae_ood_core::encoder::cuda::{probe, CudaUnavailable};
use vae_ood_core::encoder::{BackendKind, BackendOptions};
use vae_ood_core::frame::{Pixels, RawImage};

fn bundle() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default")
}

fn on(kind: BackendKind) -> BackendOptions {
    BackendOptions { kind, threads: 1 }
}

/// A deterministic 160x120 rgb8 frame with some structure.
fn frame() -> Vec<u8> {
    (0..160 * 120 * 3)
        .map(|i| ((i * 37 + i / 480 * 11) % 251) as u8)
        .collect()
}

fn score(det: &mut dyn Detector, data: &[u8]) -> vae_ood_core::detector::Scored {
    let raw = RawImage {
        width: 160,
        height: 120,
        encoding: "rgb8",
        is_bigendian: false,
        step: 480,
        data,
    };
    let stream = det.open_stream();
    det.score(stream, Pixels::from_raw(&raw).unwrap()).unwrap()
}

#[test]
fn the_cuda_backend_runs_on_a_gpu_or_says_what_is_missing() {
    match probe() {
        Err(why) => {
            // The error names the libraries and the way out, and `load` passes it on.
            if let CudaUnavailable::Libraries { missing, .. } = &why {
                assert!(!missing.is_empty());
            }
            let e = load(bundle(), on(BackendKind::Cuda))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(&why.to_string()), "{e}");
            assert!(e.contains("tract") && e.contains("auto"), "{e}");
            println!("SKIPPED: cuda backend on a GPU (none usable here: {why})");
        }
        Ok(device) => {
            let mut gpu = load(bundle(), on(BackendKind::Cuda)).unwrap();
            let mut cpu = load(bundle(), on(BackendKind::Tract)).unwrap();
            assert_eq!(gpu.backend(), "cuda");
            assert!(gpu.device().contains(&device.name));
            let f = frame();
            let (g, c) = (score(gpu.as_mut(), &f), score(cpu.as_mut(), &f));
            for (a, b) in
                g.mu.iter()
                    .chain(&g.logvar)
                    .zip(c.mu.iter().chain(&c.logvar))
            {
                assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "gpu {a} cpu {b}");
            }
            assert!((g.score - c.score).abs() <= 1e-3 * (1.0 + c.score.abs()));
        }
    }
}

#[test]
fn auto_takes_the_gpu_when_usable_and_the_cpu_otherwise() {
    let det = load(bundle(), on(BackendKind::Auto)).unwrap();
    let want = if probe().is_ok() { "cuda" } else { "tract" };
    assert_eq!(det.backend(), want);
    assert_eq!("auto".parse::<BackendKind>().unwrap(), BackendKind::Auto);
}
