//! The fast CPU path against the reference path, on every frame of the committed sample
//! drives and both shipped bundles: the encoder as we run it (tract with our 2x2 max pooling
//! swapped in) gives the posterior of the encoder exactly as tract lowers it (max pooling is
//! exact, so to the last bit), and the fused preprocessing keeps every verdict.

use std::path::{Path, PathBuf};
use vae_ood_core::bundle::Bundle;
use vae_ood_core::detail::{DetailExtractor, DetailSpec};
use vae_ood_core::detector::{Detector, Fault, Scored, StreamFrame, StreamId};
use vae_ood_core::encoder::{BackendOptions, Encoder, TractEncoder};
use vae_ood_core::monitor::{Monitor, MonitorConfig, MonitorState};
use vae_ood_core::preprocess::{reference, Preprocessor};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn sample_drives() -> Vec<PathBuf> {
    let mut drives: Vec<_> = std::fs::read_dir(root().join("data/sample"))
        .unwrap()
        .map(|e| e.unwrap().path().join("bag"))
        .collect();
    drives.sort();
    drives
}

#[test]
fn patched_encoders_give_tracts_own_posterior_on_every_sample_frame() {
    for name in ["default", "compressed"] {
        let bundle = Bundle::load(root().join("models").join(name)).unwrap();
        let mut ours = TractEncoder::load(&bundle, 1).unwrap();
        let mut plain = TractEncoder::load_unpatched(&bundle, 1).unwrap();
        let input: Vec<f32> = vec![0.5; bundle.manifest.encoder_input_shape().iter().product()];
        let ops = |e: &mut TractEncoder| -> Vec<String> {
            e.profile(&input, 1)
                .unwrap()
                .into_iter()
                .map(|t| t.op)
                .collect()
        };
        assert!(
            ops(&mut ours).iter().any(|o| o == "MaxPool2x2"),
            "{name}: no pool swapped"
        );
        assert!(!ops(&mut plain).iter().any(|o| o == "MaxPool2x2"));

        let mut pre = Preprocessor::new(bundle.manifest.input.clone());
        let mut frames = 0;
        for drive in sample_drives() {
            vae_ood_tools::drives::for_each_frame(&drive, &mut |img| {
                let x = pre.run(img.into());
                let (a, b) = (ours.encode(&x).unwrap(), plain.encode(&x).unwrap());
                assert_eq!(a, b, "{name}: {} frame {frames}", drive.display());
                frames += 1;
                Ok(())
            })
            .unwrap();
        }
        assert!(frames > 1000, "{name}: only {frames} sample frames");
    }
}

/// The reference path as a detector: decode to RGB, the reference filter, tract's own graph.
struct ReferencePath {
    bundle: Bundle,
    encoder: TractEncoder,
    detail: Option<DetailExtractor>,
    /// The bundle's direction branch measures as in the fast path (it does not touch the
    /// encoder's input).
    direction: Option<vae_ood_core::detection::direction::DirectionMeter>,
}

impl Detector for ReferencePath {
    fn bundle(&self) -> &Bundle {
        &self.bundle
    }
    fn backend(&self) -> &'static str {
        "tract (reference path)"
    }
    fn open_stream(&mut self) -> StreamId {
        0
    }
    fn reset_stream(&mut self, _: StreamId) {}
    fn measure_detail(&mut self, _: Option<DetailSpec>) {
        unimplemented!("the reference path scores; it measures nothing for a caller")
    }
    fn score_batch(&mut self, frames: &[StreamFrame<'_>]) -> Vec<Result<Scored, Fault>> {
        frames
            .iter()
            .map(|StreamFrame { pixels: px, .. }| {
                let x = reference::preprocess(&px.to_rgb(), &self.bundle.manifest.input);
                let p = self.encoder.encode(&x).unwrap();
                let detail = self.detail.as_mut().map_or(vec![], |d| d.features(*px));
                let (kl, score, tail_scores) = self
                    .bundle
                    .manifest
                    .score_posterior_with_tails(&p.mu, &p.logvar, &detail);
                Ok(Scored {
                    score,
                    kl,
                    mu: p.mu,
                    logvar: p.logvar,
                    detail,
                    tail_scores,
                    direction: self.direction.as_mut().map(|m| m.measure(*px)),
                    preprocess: Default::default(),
                    inference: Default::default(),
                })
            })
            .collect()
    }
}

#[test]
fn the_fast_path_keeps_every_verdict_of_the_sample_drives() {
    for name in ["default", "compressed"] {
        let dir = root().join("models").join(name);
        let bundle = Bundle::load(&dir).unwrap();
        assert!(bundle.manifest.calibration.is_some());
        let mut flagged = 0;
        for drive in sample_drives() {
            let fast = vae_ood_core::detector::load(&dir, BackendOptions::default()).unwrap();
            let reference = ReferencePath {
                encoder: TractEncoder::load_unpatched(&bundle, 1).unwrap(),
                detail: bundle.manifest.score.detail_extractor(),
                direction: bundle
                    .manifest
                    .calibration
                    .as_ref()
                    .and_then(|c| c.direction.as_ref())
                    .map(|d| d.meter()),
                bundle: bundle.clone(),
            };
            let mut a = Monitor::new(fast, MonitorConfig::default()).unwrap();
            let mut b = Monitor::new(Box::new(reference), MonitorConfig::default()).unwrap();
            let mut i = 0;
            vae_ood_tools::drives::for_each_frame(&drive, &mut |img| {
                let (va, vb) = (a.process_image(img), b.process_image(img));
                let (sa, sb) = (va.score.unwrap(), vb.score.unwrap());
                assert!(
                    (sa - sb).abs() <= 1e-4 * sb.abs().max(1.0),
                    "{name} {} frame {i}: score {sa} vs {sb}",
                    drive.display()
                );
                assert_eq!(va.state, vb.state, "{name} {} frame {i}", drive.display());
                flagged += usize::from(va.state == MonitorState::Ood);
                i += 1;
                Ok(())
            })
            .unwrap();
        }
        // The comparison covers OOD verdicts, not only quiet drives.
        assert!(flagged > 100, "{name}: only {flagged} OOD verdicts");
    }
}
