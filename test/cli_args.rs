//! Operator arguments out of range are refused by name before any work (issue 15): one case
//! per class of bad value (zero, negative, NaN, absurdly large), through the real `vae-ood`.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn refused<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], names: &str) {
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
    // A recovery level S cannot fall to while alarming (over 1), or none at all (0).
    for level in ["--recovery-level=1.5", "--recovery-level=0"] {
        refused(&["eval", level, "--id", frames], "--recovery-level");
    }
    // A threshold scale under 1 loosens the threshold below what its tuning drives certify.
    refused(
        &["eval", "--threshold-scale=0.5", "--id", frames],
        "--threshold-scale",
    );
    // Frame sizes whose byte counts overflow.
    refused(&["bench", "--width=100000"], "--width");
    refused(&["bench", "--height=0"], "--height");
    refused(
        &["bench-encoders", "--roofline=1000000", "models/default"],
        "--roofline",
    );
    // Calibration: a duplicated latent and a mixture without a fit are refused before scoring.
    let tune = root().join("data/sample/id_loop_empty_s4/bag");
    let tune = tune.to_str().unwrap();
    let calibrate = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<&str> = vec![
            "calibrate",
            "--out",
            "/tmp/never",
            "--cal",
            frames,
            "--tune-id",
            tune,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect()
    };
    refused(&calibrate(&["--latents", "3,3"]), "distinct latent indices");
    refused(&calibrate(&["--components", "4"]), "--components");
    // Candidates: no latent, more latents than the encoder has, a rate nothing certifies.
    refused(
        &calibrate(&["--k", "0"]),
        "k 0: a candidate number of latents must be at least 1",
    );
    refused(&calibrate(&["--k", "5,999"]), "--k 999");
    refused(
        &calibrate(&["--false-alarm-rate", "0"]),
        "--false-alarm-rate",
    );
    refused(
        &calibrate(&["--false-alarm-rate", "NaN"]),
        "--false-alarm-rate",
    );
    // Lengths the drives cannot have, found from their indexes before scoring.
    let late = root().join("data/sample/ood_fog_loop_empty_s7/bag:100000");
    refused(
        &calibrate(&["--val-ood", late.to_str().unwrap()]),
        "past its last frame",
    );
    refused(&calibrate(&["--windows", "5000"]), "--windows 5000");
    refused(&calibrate(&["--relative", "60"]), "WINDOW,GAP[,HOLD]");
    refused(&calibrate(&["--relative", "60,300,30"]), "relative.hold");
    refused(&calibrate(&["--relative", "0,300"]), "relative.window");
    // A reused MSCN mixture: from a bundle without one, at another size, or beside a fit.
    let mscn = |from: &str, size: &str, extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "--direction-branch",
            size,
            "--direction-statistic",
            "mscn",
            "--mscn-from",
            from,
        ];
        a.extend_from_slice(extra);
        calibrate(&a)
    };
    refused(
        &mscn("models/flow", "160x120", &[]),
        "has no direction branch (calibration.direction): give a bundle calibrated with --direction-statistic mscn",
    );
    refused(
        &mscn("models/compressed", "80x60", &[]),
        "fitted at 160x120, not the --direction-branch 80x60",
    );
    refused(
        &mscn("models/compressed", "160x120", &["--mscn-fit", tune]),
        "--mscn-fit",
    );
    // Evaluation labels that would label nothing, silently.
    let dir = std::env::temp_dir().join(format!("cli_args_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, row) in [
        ("nan", "NaN,2,fog"),
        ("backwards", "5,2,fog"),
        ("untyped", "1,2,"),
    ] {
        let labels = dir.join(format!("{name}.csv"));
        std::fs::write(&labels, format!("start,end,type\n{row}\n")).unwrap();
        let labels = labels.to_str().unwrap().to_string();
        refused(
            &[
                "eval",
                "--out",
                "/tmp/never",
                "--input",
                frames,
                "--labels",
                &labels,
            ],
            "line 2",
        );
    }
    refused(
        &[
            "eval",
            "--cusum-threshold=NaN",
            "--out",
            "/tmp/never",
            "--id",
            frames,
        ],
        "--cusum-threshold",
    );
    // Compression: a sparsity that zeroes every weight; frames a precision never reads.
    refused(
        &["prune", "--out", "/tmp/never", "--sparsity", "1.0"],
        "sparsity must be in [0, 1)",
    );
    refused(
        &[
            "quantize",
            "--out",
            "/tmp/never",
            "--precision",
            "fp16",
            "--cal",
            frames,
        ],
        "--cal applies to --precision int8-static only",
    );
    refused(
        &[
            "quantize",
            "--out",
            "/tmp/never",
            "--precision",
            "int8-static",
        ],
        "needs --cal",
    );
    std::fs::remove_dir_all(&dir).ok();
}
