//! Training: the loss falls, a resumed run matches an uninterrupted one bit for bit, the
//! exported ONNX encoder computes what the burn encoder computes, and misuse is a clear error.

use std::path::{Path, PathBuf};
use vae_ood_core::encoder::{self, BackendOptions};
use vae_ood_core::Bundle;
use vae_ood_tools::onnx_gen::EncoderArch;
use vae_ood_tools::train::{self, RunOptions, TrainConfig};

fn sample(drive: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("data/sample")
        .join(drive)
        .join("bag")
}

/// A model small enough to train in seconds on the committed sample.
fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        preset: "test".into(),
        arch: EncoderArch {
            input_channels: 3,
            input_height: 24,
            input_width: 32,
            conv: vec![8, 8],
            dense: vec![32],
            latents: 4,
            groups: 1,
        },
        beta: 1.0,
        epochs,
        batch_size: 16,
        lr: 3e-3,
        lr_min: 1e-4,
        patience: 100,
        checkpoint_every: 1,
        seed: 3,
        frame_stride: 2,
        filter: vae_ood_core::preprocess::Filter::Area,
        train: vec![sample("id_loop_empty_s1")],
        val: vec![sample("id_small_loop_s2")],
        distill: None,
        flow: None,
    }
}

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn training_loss_falls_and_the_export_matches_the_burn_encoder() {
    let dir = tempfile::tempdir().unwrap();
    // The bilinear filter here (area elsewhere): the bundle must record the filter it was
    // trained with, since the node resizes frames by the bundle's spec.
    let cfg = TrainConfig {
        filter: vae_ood_core::preprocess::Filter::Bilinear,
        ..config(4)
    };
    let out = train::train(&cfg, dir.path(), &quiet()).unwrap();
    let h = &out.state.history;
    assert_eq!(h.len(), 4);
    assert!(
        h.windows(2).all(|w| w[1].train_loss < w[0].train_loss)
            && h[3].train_loss < 0.95 * h[0].train_loss,
        "train loss did not fall: {h:?}"
    );
    assert!(
        h[3].val_loss < h[0].val_loss,
        "val loss did not fall: {h:?}"
    );
    for f in [
        "metrics.csv",
        "metrics.json",
        "loss.png",
        train::VAE_FILE,
        train::VAE_CONFIG_FILE,
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }

    // The bundle loads, says it is trained, and tract computes the burn encoder's posterior.
    let bundle = Bundle::load(dir.path()).unwrap();
    assert!(bundle.manifest.provenance.trained);
    let mut enc = encoder::load(&bundle, BackendOptions::default()).unwrap();
    let device = burn::tensor::Device::flex();
    let (vae, state) = train::load_vae(dir.path(), &device).unwrap();
    assert_eq!(state.best_epoch, out.state.best_epoch);
    let spec = bundle.manifest.input.clone();
    assert_eq!(spec.filter, vae_ood_core::preprocess::Filter::Bilinear);
    let mut n = 0;
    vae_ood_tools::drives::for_each_frame(&sample("ood_rain_udem1_s6"), &mut |img| {
        n += 1;
        if n % 60 != 0 {
            return Ok(());
        }
        let x = vae_ood_core::preprocess::preprocess(img, &spec);
        let post = enc.encode(&x)?;
        let t = burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(x, [1, 3, 24, 32]),
            &device,
        );
        let (mu, logvar) = vae.encoder.forward(t);
        let mu = mu.into_data().try_to_vec::<f32>().unwrap();
        let logvar = logvar.into_data().try_to_vec::<f32>().unwrap();
        for (a, b) in post
            .mu
            .iter()
            .zip(&mu)
            .chain(post.logvar.iter().zip(&logvar))
        {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "tract {a} vs burn {b}"
            );
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 300);
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one() {
    let whole = tempfile::tempdir().unwrap();
    let a = train::train(&config(3), whole.path(), &quiet()).unwrap();
    assert!(a.bundle.is_some());

    let parts = tempfile::tempdir().unwrap();
    let stop = RunOptions {
        stop_after: Some(1),
        ..quiet()
    };
    let b1 = train::train(&config(3), parts.path(), &stop).unwrap();
    assert_eq!(b1.state.history.len(), 1);
    assert!(b1.bundle.is_none(), "a stopped run exports nothing");
    // Starting afresh over a checkpoint would silently discard it: refused.
    let err = train::train(&config(3), parts.path(), &quiet())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    // Resuming with other settings is refused too.
    let resume = RunOptions {
        resume: true,
        ..quiet()
    };
    let mut other = config(3);
    other.lr = 1e-2;
    let err = train::train(&other, parts.path(), &resume)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another configuration"), "{err}");

    let b = train::train(&config(3), parts.path(), &resume).unwrap();
    let strip = |h: &[train::EpochRecord]| {
        h.iter()
            .map(|r| (r.train_loss, r.val_loss, r.lr))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a.state.history), strip(&b.state.history));
    let onnx = |d: &Path| std::fs::read(d.join("encoder.onnx")).unwrap();
    assert_eq!(
        onnx(whole.path()),
        onnx(parts.path()),
        "exported encoders differ"
    );
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(1);
    c.val = c.train.clone();
    let err = train::train(&c, dir.path(), &quiet())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("disjoint"), "{err}");

    let mut c = config(1);
    c.train = vec![dir.path().join("missing")];
    assert!(train::train(&c, dir.path(), &quiet()).is_err());

    // Values out of range, one per class, refused before any epoch (an infinite rate or weight
    // used to surface epochs later as a missing best.bpk).
    type Breaker = fn(&mut TrainConfig);
    let cases: [(&str, Breaker); 5] = [
        ("learning rates", |c| c.lr = f64::INFINITY),
        ("beta", |c| c.beta = f64::INFINITY),
        ("architecture out of range", |c| c.arch.conv = vec![8, 0]),
        ("architecture out of range", |c| {
            c.arch.dense = vec![1 << 20]
        }),
        ("architecture out of range", |c| c.arch.input_width = 4),
    ];
    for (says, breaker) in cases {
        let mut c = config(1);
        breaker(&mut c);
        let err = train::train(&c, dir.path(), &quiet())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(says), "{says}: {err}");
    }

    // An encoder-only bundle has no VAE to fine-tune or distil.
    let default = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models/default");
    for f in ["manifest.yaml", "encoder.onnx"] {
        std::fs::copy(default.join(f), dir.path().join(f)).unwrap();
    }
    let err = train::load_vae(dir.path(), &burn::tensor::Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("encoder-only"), "{err}");
}

#[test]
fn the_committed_default_encoder_is_the_export_of_the_committed_vae() {
    // models/default ships the full VAE beside its ONNX encoder; they must be the same model.
    use burn::module::Module;
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models/default");
    let bundle = Bundle::load(&dir).unwrap();
    assert!(bundle.manifest.provenance.trained);
    let (vae, state) = train::load_vae(&dir, &burn::tensor::Device::flex()).unwrap();
    let onnx = train::encoder_onnx_of(&vae.valid(), &state, &bundle.manifest.name).unwrap();
    assert!(
        onnx == std::fs::read(bundle.encoder_path()).unwrap(),
        "models/default/encoder.onnx is not the export of models/default/vae.bpk"
    );
}

#[test]
fn distillation_lowers_the_students_distance_to_the_teacher() {
    use burn::module::Module;
    use burn::tensor::activation::sigmoid;
    use burn::tensor::{Device, Tensor, TensorData};
    use vae_ood_tools::train::{data::FrameSet, Distill};
    let teacher = tempfile::tempdir().unwrap();
    train::train(&config(3), teacher.path(), &quiet()).unwrap();

    let student = |distill: Option<Distill>| {
        let dir = tempfile::tempdir().unwrap();
        // Four epochs: with two, the reconstruction distances of the distilled and the plain
        // student differed by 0.2 % and a 1e-7 change in preprocessing flipped the order;
        // with four, distillation's margin is 16 % (reconstruction) and 50x (posterior).
        let mut c = config(4);
        c.arch.conv = vec![4, 4];
        c.arch.dense = vec![16];
        c.seed = 11;
        c.distill = distill;
        train::train(&c, dir.path(), &quiet()).unwrap();
        dir
    };
    let plain = student(None);
    let kd = student(Some(Distill {
        teacher: teacher.path().to_path_buf(),
        alpha: 0.7,
        latent_weight: 1.0,
    }));

    // Distances on held-out frames: reconstructions (mean squared difference of the images)
    // and posteriors (squared difference of mu and logvar).
    let device = Device::flex();
    let (t, ts) = train::load_vae(teacher.path(), &device).unwrap();
    let arch = ts.config.arch.clone();
    let set = FrameSet::load(
        &[sample("id_udem1_s3")],
        &ts.config.input_spec(),
        10,
        &|| {},
    )
    .unwrap();
    let x = || {
        Tensor::<4>::from_data(
            TensorData::new(
                set.data.clone(),
                [set.len(), 3, arch.input_height, arch.input_width],
            ),
            &device,
        )
    };
    let eps = || Tensor::<2>::zeros([set.len(), arch.latents], &device);
    let t_out = t.valid().forward(x(), eps(), &arch);
    let distance = |dir: &Path| {
        let (s, ss) = train::load_vae(dir, &device).unwrap();
        let s_out = s.valid().forward(x(), eps(), &ss.config.arch);
        let recon = (sigmoid(s_out.recon_logits.clone()) - sigmoid(t_out.recon_logits.clone()))
            .square()
            .mean()
            .into_scalar::<f32>();
        let post = ((s_out.mu.clone() - t_out.mu.clone()).square()
            + (s_out.logvar.clone() - t_out.logvar.clone()).square())
        .mean()
        .into_scalar::<f32>();
        (recon, post)
    };
    let (p, k) = (distance(plain.path()), distance(kd.path()));
    eprintln!("distances (reconstruction, posterior): distilled {k:?}, plain {p:?}");
    assert!(
        k.0 < p.0,
        "reconstruction distance: distilled {} vs plain {}",
        k.0,
        p.0
    );
    assert!(
        k.1 < p.1,
        "posterior distance: distilled {} vs plain {}",
        k.1,
        p.1
    );
}

#[test]
fn fine_tuning_a_pruned_encoder_brings_it_back_towards_the_teacher() {
    use vae_ood_tools::compress::finetune::{self, FinetuneOptions, Teacher};
    use vae_ood_tools::compress::prune::{self, Layer};
    use vae_ood_tools::train::data::FrameSet;
    let dir = tempfile::tempdir().unwrap();
    train::train(&config(3), dir.path(), &quiet()).unwrap();
    let teacher = Teacher::load(dir.path()).unwrap();
    let arch = teacher.arch().clone();
    let spec = teacher.state.config.input_spec();
    let w = finetune::teacher_weights(&teacher);
    let train_set = FrameSet::load(&[sample("id_loop_empty_s1")], &spec, 2, &|| {}).unwrap();
    let held_out = FrameSet::load(&[sample("id_udem1_s3")], &spec, 5, &|| {}).unwrap();

    // The burn -> PyTorch names -> burn round trip is exact: the teacher is at distance 0.
    let d0 = finetune::posterior_distance(&teacher, &arch, &w, &held_out).unwrap();
    assert!(d0 < 1e-10, "teacher vs its own weights: {d0}");

    let keep = prune::kept_units(&w, &arch, Layer::Conv(0), 0.5).unwrap();
    let (small, pw) = prune::prune_structured(&w, &arch, Layer::Conv(0), &keep).unwrap();
    assert_eq!(small.conv[0], 4);
    let before = finetune::posterior_distance(&teacher, &small, &pw, &held_out).unwrap();
    let opts = FinetuneOptions {
        epochs: 4,
        selected: vec![0, 1],
        ..Default::default()
    };
    let (fw, history) =
        finetune::finetune(&teacher, &small, &pw, &train_set, &opts, &|_, _| {}).unwrap();
    let after = finetune::posterior_distance(&teacher, &small, &fw, &held_out).unwrap();
    assert_eq!(history.len(), 4);
    assert!(
        after < 0.7 * before,
        "held-out posterior distance {before} -> {after} (training {history:?})"
    );
    // The held-out VAE loss through the teacher's decoder is finite and not worse than pruned.
    let l_before = finetune::heldout_loss(&teacher, &small, &pw, &held_out).unwrap();
    let l_after = finetune::heldout_loss(&teacher, &small, &fw, &held_out).unwrap();
    assert!(
        l_after.is_finite() && l_after <= l_before,
        "{l_before} -> {l_after}"
    );
    // Bad selections are a clear error.
    let bad = FinetuneOptions {
        selected: vec![99],
        ..opts
    };
    let e = finetune::finetune(&teacher, &small, &pw, &train_set, &bad, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("latent 99"), "{e}");
}
