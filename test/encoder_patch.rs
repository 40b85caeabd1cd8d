//! The encoder as we run it (tract with our 2x2 max pooling swapped in) against the encoder
//! exactly as tract lowers it on its own: on every frame of the committed sample drives, both
//! shipped bundles give the same posterior (max pooling is exact, so to the last bit) and
//! the pooling swap really happened.

use std::path::Path;
use vae_ood_core::bundle::Bundle;
use vae_ood_core::encoder::{Encoder, TractEncoder};
use vae_ood_core::preprocess::Preprocessor;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn patched_encoders_give_tracts_own_posterior_on_every_sample_frame() {
    for name in ["default", "compressed"] {
        let bundle = Bundle::load(root().join("models").join(name)).unwrap();
        let mut ours = TractEncoder::load(&bundle, 1).unwrap();
        let mut plain = TractEncoder::load_unpatched(&bundle, 1).unwrap();
        let input: Vec<f32> = vec![0.5; bundle.manifest.input.shape().iter().product()];
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
        let mut drives: Vec<_> = std::fs::read_dir(root().join("data/sample"))
            .unwrap()
            .map(|e| e.unwrap().path().join("bag"))
            .collect();
        drives.sort();
        for drive in drives {
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
