//! Pruning: unstructured pruning zeroes exactly the requested fraction; a structurally pruned
//! (physically smaller) encoder computes, in tract, what the original computes with the pruned
//! units silenced after BatchNorm and activation.

use vae_ood_core::bundle::{Bundle, Manifest, OutputRef, Outputs, Provenance};
use vae_ood_core::encoder::{self, BackendOptions};
use vae_ood_core::preprocess::InputSpec;
use vae_ood_tools::compress::prune::{self, Layer};
use vae_ood_tools::onnx_gen::{encoder_onnx, seeded_weights, EncoderArch, GraphNames, Named};

fn arch() -> EncoderArch {
    EncoderArch {
        input_channels: 3,
        input_height: 20,
        input_width: 28,
        conv: vec![8, 6, 5],
        dense: vec![24, 12],
        latents: 6,
        groups: 1,
    }
}

/// Posterior (mu ++ logvar) of `w` in tract for a fixed input.
fn run(arch: &EncoderArch, w: &prune::Weights) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let onnx = encoder_onnx(arch, &mut Named(w.clone()), &GraphNames::default(), "test").unwrap();
    let input: InputSpec = serde_yaml::from_str(&format!(
        "{{width: {}, height: {}}}",
        arch.input_width, arch.input_height
    ))
    .unwrap();
    let m = Manifest::for_encoder(
        arch,
        input,
        "t",
        "t",
        Outputs {
            mu: OutputRef::Name { name: "mu".into() },
            logvar: OutputRef::Name {
                name: "logvar".into(),
            },
        },
        Provenance {
            trained: false,
            created_by: "test".into(),
            training_data: String::new(),
            license: String::new(),
            notes: String::new(),
        },
    );
    let bundle = Bundle::write(dir.path(), m, &onnx).unwrap();
    let mut enc = encoder::load(&bundle, BackendOptions::default()).unwrap();
    let n = 3 * arch.input_height * arch.input_width;
    let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
    let p = enc.encode(&x).unwrap();
    p.mu.into_iter().chain(p.logvar).collect()
}

#[test]
fn unstructured_pruning_zeroes_exactly_the_requested_fraction() {
    let a = arch();
    for s in [0.1, 0.5, 0.9] {
        let mut w = seeded_weights(&a, 3);
        let names: Vec<String> = w
            .keys()
            .filter(|k| k.ends_with(".weight") && !k.starts_with("bn"))
            .cloned()
            .collect();
        let total: usize = names.iter().map(|n| w[n].len()).sum();
        let zeroed = prune::prune_global_l1(&mut w, &a, s).unwrap();
        let zeros: usize = names
            .iter()
            .map(|n| w[n].iter().filter(|x| **x == 0.0).count())
            .sum();
        assert_eq!(zeroed, (s * total as f64).round() as usize);
        assert_eq!(zeros, zeroed, "sparsity {s}");
        // Biases and BatchNorm are untouched.
        assert!(w["bn0.weight"].iter().all(|x| *x != 0.0));
    }
    assert!(prune::prune_global_l1(&mut seeded_weights(&a, 3), &a, 1.5).is_err());
}

#[test]
fn structured_pruning_equals_silencing_the_pruned_units() {
    let a = arch();
    let w = seeded_weights(&a, 5);
    for (layer, frac) in [
        ("conv0", 0.5),
        ("conv1", 0.3),
        ("conv2", 0.4),
        ("fc0", 0.5),
        ("fc1", 0.25),
    ] {
        let layer: Layer = layer.parse().unwrap();
        let keep = prune::kept_units(&w, &a, layer, frac).unwrap();
        let (small, pruned) = prune::prune_structured(&w, &a, layer, &keep).unwrap();
        let silenced = prune::silence_units(&w, &a, layer, &keep).unwrap();
        let units = match layer {
            Layer::Conv(i) => (a.conv[i], small.conv[i]),
            Layer::Dense(i) => (a.dense[i], small.dense[i]),
        };
        assert_eq!(units.1, keep.len());
        assert!(units.1 < units.0, "{layer}: nothing pruned");
        let (x, y) = (run(&small, &pruned), run(&a, &silenced));
        for (p, q) in x.iter().zip(&y) {
            assert!(
                (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                "{layer}: pruned {p} vs silenced {q}"
            );
        }
        // And silencing really changed the function (the test can fail).
        assert_ne!(y, run(&a, &w), "{layer}");
    }
    assert!(prune::kept_units(&w, &a, "conv9".parse().unwrap(), 0.5).is_err());
    assert!(prune::kept_units(&w, &a, Layer::Dense(0), 1.0).is_err());
}
