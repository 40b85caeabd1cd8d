//! Bundle loading: every broken bundle is refused at load time with an error that names the
//! problem; both output addressing styles work.

use std::path::Path;
use vae_ood_core::bundle::{
    Bundle, EncoderFile, Latents, Manifest, OutputRef, Outputs, Provenance, FORMAT_VERSION,
};
use vae_ood_core::encoder::{BackendKind, BackendOptions};
use vae_ood_core::monitor::{Monitor, MonitorConfig, MonitorState};
use vae_ood_core::preprocess::InputSpec;
use vae_ood_tools::onnx_gen::{seeded_encoder, EncoderArch, GraphNames};

fn manifest(arch: &EncoderArch, outputs: Outputs) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        name: "test".into(),
        description: String::new(),
        encoder: EncoderFile {
            path: "encoder.onnx".into(),
            sha256: String::new(),
        },
        detector: Default::default(),
        input: InputSpec {
            width: arch.input_width as u32,
            height: arch.input_height as u32,
            channel_order: Default::default(),
            layout: Default::default(),
            normalize: Default::default(),
            resize: Default::default(),
            filter: Default::default(),
        },
        outputs,
        latents: Latents {
            count: arch.latents,
            selected: vec![0, 3, 5],
        },
        score: Default::default(),
        calibration: None,
        provenance: Provenance {
            trained: false,
            created_by: "test".into(),
            training_data: String::new(),
            license: String::new(),
            notes: String::new(),
        },
    }
}

fn by_name() -> Outputs {
    Outputs {
        mu: OutputRef::Name { name: "mu".into() },
        logvar: OutputRef::Name {
            name: "logvar".into(),
        },
    }
}

fn write_bundle(dir: &Path, edit: impl FnOnce(&mut Manifest)) {
    let arch = EncoderArch::tiny();
    let mut m = manifest(&arch, by_name());
    edit(&mut m);
    let onnx = seeded_encoder(&arch, 1, &GraphNames::default());
    // Write without validation so broken manifests can be tested.
    std::fs::create_dir_all(dir).unwrap();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&onnx)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    if m.encoder.sha256.is_empty() {
        m.encoder.sha256 = sha;
    }
    std::fs::write(dir.join("encoder.onnx"), onnx).unwrap();
    std::fs::write(
        dir.join("manifest.yaml"),
        serde_yaml::to_string(&m).unwrap(),
    )
    .unwrap();
}

fn load_err(dir: &Path) -> String {
    match vae_ood_core::detector::load(dir, BackendOptions::default()) {
        Ok(_) => panic!("bundle in {} loaded but should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_bundle_loads_and_scores() {
    let t = tempfile::tempdir().unwrap();
    write_bundle(t.path(), |_| {});
    let det = vae_ood_core::detector::load(t.path(), BackendOptions::default()).unwrap();
    assert!(det.model_id().starts_with("test-"));
    let mut mon = Monitor::new(
        det,
        MonitorConfig {
            score_threshold: f64::INFINITY,
            max_frame_age: None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(mon.state(), MonitorState::Starting);
    let img = image::RgbImage::from_fn(80, 60, |x, y| image::Rgb([x as u8 * 3, y as u8 * 4, 77]));
    let v = mon.process_image(&img);
    assert_eq!(v.state, MonitorState::Ok);
    let s = v.score.unwrap();
    assert!(s.is_finite() && s > 0.0);
    // Deterministic: same frame, same score; threshold below it flips the verdict.
    mon.set_score_threshold(s * 0.5);
    let v2 = mon.process_image(&img);
    assert_eq!(v2.score.unwrap(), s);
    assert_eq!(v2.state, MonitorState::Ood);
}

#[test]
fn numeric_outputs_are_addressed_by_index() {
    let t = tempfile::tempdir().unwrap();
    let arch = EncoderArch::tiny();
    let names = GraphNames {
        input: "input.1".into(),
        mu: "0".into(),
        logvar: "1".into(),
    };
    let m = manifest(
        &arch,
        Outputs {
            mu: OutputRef::Index { index: 0 },
            logvar: OutputRef::Index { index: 1 },
        },
    );
    Bundle::write(t.path(), m, &seeded_encoder(&arch, 1, &names)).unwrap();
    vae_ood_core::detector::load(t.path(), BackendOptions::default()).unwrap();
}

#[test]
fn missing_manifest_or_encoder() {
    let t = tempfile::tempdir().unwrap();
    assert!(load_err(t.path()).contains("manifest.yaml"));
    write_bundle(t.path(), |_| {});
    std::fs::remove_file(t.path().join("encoder.onnx")).unwrap();
    assert!(load_err(t.path()).contains("encoder.onnx"));
}

#[test]
fn unknown_version_is_refused_before_schema_checks() {
    let t = tempfile::tempdir().unwrap();
    write_bundle(t.path(), |m| m.format_version = 9);
    let e = load_err(t.path());
    assert!(
        e.contains("format_version 9") && e.contains("reads versions 1 to 8"),
        "{e}"
    );
}

#[test]
fn changed_encoder_is_refused() {
    let t = tempfile::tempdir().unwrap();
    write_bundle(t.path(), |m| m.encoder.sha256 = "00".repeat(32));
    assert!(load_err(t.path()).contains("does not match"));
}

#[test]
fn shape_and_output_mismatches() {
    let t = tempfile::tempdir().unwrap();
    write_bundle(t.path(), |m| m.input.width = 32);
    assert!(
        load_err(t.path()).contains("input spec"),
        "{}",
        load_err(t.path())
    );
    write_bundle(t.path(), |m| m.latents.count = 12);
    let e = load_err(t.path());
    assert!(
        e.contains("latents.count = 12") || e.contains("only 12"),
        "{e}"
    );
    write_bundle(t.path(), |m| {
        m.outputs.mu = OutputRef::Name {
            name: "z_mean".into(),
        }
    });
    assert!(load_err(t.path()).contains("'z_mean'"));
    write_bundle(t.path(), |m| {
        m.outputs.logvar = OutputRef::Index { index: 5 }
    });
    assert!(load_err(t.path()).contains("#5"));
}

#[test]
fn bad_latent_selection() {
    let t = tempfile::tempdir().unwrap();
    write_bundle(t.path(), |m| m.latents.selected = vec![1, 30]);
    assert!(load_err(t.path()).contains("only 30 latents"));
    write_bundle(t.path(), |m| m.latents.selected = vec![]);
    assert!(load_err(t.path()).contains("empty"));
    write_bundle(t.path(), |m| m.latents.selected = vec![2, 2]);
    assert!(load_err(t.path()).contains("twice"));
}

#[test]
fn unknown_fields_and_cuda_backend_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    write_bundle(t.path(), |_| {});
    let text = std::fs::read_to_string(t.path().join("manifest.yaml")).unwrap();
    std::fs::write(
        t.path().join("manifest.yaml"),
        format!("{text}colour: blue\n"),
    )
    .unwrap();
    assert!(load_err(t.path()).contains("colour"));
    write_bundle(t.path(), |_| {});
    let e = vae_ood_core::detector::load(
        t.path(),
        BackendOptions {
            kind: BackendKind::Cuda,
            threads: 1,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("cuda") && e.contains("tract"), "{e}");
}

/// The shipped teacher's side branches load and run (since session 47 as its student's: the
/// MSCN direction branch and the change branch, no drive-relative branch; a calibration with
/// both a relative and a direction branch is `calibrate`'s
/// `the_relative_and_mscn_branches_split_one_budget_and_run_together`): the direction branch
/// steps from a stream's first frame, the change branch from its second.
#[test]
fn the_shipped_teachers_side_branches_load_and_run() {
    let models = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"));
    let c = Bundle::load(models.join("default"))
        .unwrap()
        .manifest
        .calibration
        .unwrap();
    assert!(c.relative.is_none() && c.direction.is_some() && c.change.is_some());
    let det =
        vae_ood_core::detector::load(models.join("default"), BackendOptions::default()).unwrap();
    let mut mon = Monitor::new(det, MonitorConfig::default()).unwrap();
    assert!(mon.relative_split().is_none() && mon.direction_threshold().is_some());
    assert!(mon.change_threshold().is_some());
    let frame = |k: u32| {
        image::RgbImage::from_fn(160, 120, |x, y| {
            image::Rgb([
                ((x * 7 + k) % 256) as u8,
                (y * 11 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    };
    let first = mon.process_image(&frame(0));
    assert!(
        first.direction.is_some() && first.change.is_none(),
        "{first:?}"
    );
    let second = mon.process_image(&frame(1));
    assert!(
        second.direction.is_some() && second.change.is_some(),
        "{second:?}"
    );
}

/// The monitor refuses a configuration the node's parameters would refuse, by name.
#[test]
fn a_monitor_configuration_outside_the_parameters_ranges_is_refused() {
    use vae_ood_core::monitor::Recovery;
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), |_| {});
    let cases: [(&str, MonitorConfig); 5] = [
        (
            "threshold_scale",
            MonitorConfig {
                threshold_scale: 0.5,
                ..Default::default()
            },
        ),
        (
            "recovery_frames",
            MonitorConfig {
                recovery: Recovery::Auto {
                    frames: 0,
                    level: 0.5,
                },
                ..Default::default()
            },
        ),
        (
            "recovery_level",
            MonitorConfig {
                recovery: Recovery::Auto {
                    frames: 3,
                    level: 2.0,
                },
                ..Default::default()
            },
        ),
        (
            "score_threshold",
            MonitorConfig {
                score_threshold: f64::NAN,
                ..Default::default()
            },
        ),
        (
            "min_rate",
            MonitorConfig {
                min_rate: Some(0.0),
                ..Default::default()
            },
        ),
    ];
    for (param, config) in cases {
        let det = vae_ood_core::detector::load(dir.path(), BackendOptions::default()).unwrap();
        let e = Monitor::new(det, config).err().expect(param).to_string();
        assert!(e.contains(param), "{param}: {e}");
    }
}
