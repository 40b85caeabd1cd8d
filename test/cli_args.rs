//! Operator arguments out of range are refused by name before any work (issue 15): one case
//! per class of bad value (zero, negative, NaN, absurdly large), through the real `vae-ood`.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn refused(args: &[&str], names: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_vae-ood"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} was accepted");
    assert!(err.contains(names), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn out_of_range_arguments_are_refused_by_name() {
    let frames = root().join("data/sample/id_loop_empty_s1/bag");
    let frames = frames.to_str().unwrap();
    // Threads: zero and absurdly many (a rayon pool of a million threads would panic).
    refused(&["score", "--threads=0", frames], "--threads");
    refused(&["score", "--threads=1000000", frames], "--threads");
    // A score threshold that decides nothing (NaN) or everything (negative).
    refused(
        &["score", "--score-threshold=NaN", frames],
        "--score-threshold",
    );
    refused(
        &["eval", "--score-threshold=-1", "--id", frames],
        "--score-threshold",
    );
    // Recovery after zero frames would leave OOD the frame it was entered.
    refused(
        &["eval", "--recovery-frames=0", "--id", frames],
        "--recovery-frames",
    );
    // Frame sizes whose byte counts overflow.
    refused(&["bench", "--width=100000"], "--width");
    refused(&["bench", "--height=0"], "--height");
    refused(
        &["bench-encoders", "--roofline=1000000", "models/default"],
        "--roofline",
    );
    // Calibration: a duplicated latent and a mixture without a fit are refused before scoring.
    let calibrate = |extra: &[&'static str]| {
        let mut args = vec![
            "calibrate",
            "--out",
            "/tmp/never",
            "--cal",
            frames,
            "--tune-id",
            frames,
        ];
        args.extend_from_slice(extra);
        args
    };
    refused(&calibrate(&["--latents", "3,3"]), "distinct latent indices");
    refused(&calibrate(&["--components", "4"]), "--components");
}
