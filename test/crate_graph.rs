//! The crate graph is the architecture (docs/architecture.md): checked here from `cargo
//! metadata` and `cargo tree`, so a dependency that breaks a layer fails the tests.
//!
//! - `vae_ood_core` depends on no other crate of the workspace, and on nothing of ROS, the
//!   command line, plotting, bag formats, progress bars or training.
//! - `vae_ood_bag` depends on the core only; `vae_ood_tools` on core and bag; the CLI on
//!   tools, core and bag; the ROS package on core (and bag for replay), never on tools or CLI.
//! - The lean robot build (node and gate, no replay) pulls in none of the offline stack.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const WORKSPACE: [&str; 5] = [
    "vae_ood_core",
    "vae_ood_bag",
    "vae_ood_tools",
    "vae_ood_cli",
    "vae_ood_monitor",
];

/// Crates the robot does not need: ROS-free tooling, training, plotting, bag storage.
const OFFLINE_STACK: [&str; 8] = [
    "plotters",
    "rusqlite",
    "mcap",
    "indicatif",
    "burn",
    "clap",
    "vae_ood_tools",
    "vae_ood_bag",
];

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn manifest() -> String {
    format!("{}/../../Cargo.toml", env!("CARGO_MANIFEST_DIR"))
}

/// Workspace crate -> the names of its direct dependencies (all kinds but dev), from metadata.
fn direct_deps() -> BTreeMap<String, BTreeSet<String>> {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
            "--manifest-path",
        ])
        .arg(manifest())
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().expect("name").to_string())
                .collect();
            (p["name"].as_str().expect("name").to_string(), deps)
        })
        .collect()
}

#[test]
fn layers_point_down_only() {
    let deps = direct_deps();
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("vae_ood_core", &[][..]),
        ("vae_ood_bag", &["vae_ood_core"][..]),
        ("vae_ood_tools", &["vae_ood_core", "vae_ood_bag"][..]),
        (
            "vae_ood_cli",
            &["vae_ood_core", "vae_ood_bag", "vae_ood_tools"][..],
        ),
        ("vae_ood_monitor", &["vae_ood_core", "vae_ood_bag"][..]),
    ]);
    for krate in WORKSPACE {
        let inner: BTreeSet<&str> = deps[krate]
            .iter()
            .map(String::as_str)
            .filter(|d| WORKSPACE.contains(d))
            .collect();
        for d in &inner {
            assert!(
                allowed[krate].contains(d),
                "{krate} depends on {d}: that arrow points up or sideways (docs/architecture.md)"
            );
        }
    }
    for forbidden in OFFLINE_STACK.iter().chain(&["r2r", "tokio"]) {
        assert!(
            !deps["vae_ood_core"].contains(*forbidden),
            "vae_ood_core depends on {forbidden}: the core must stay free of it"
        );
    }
}

#[test]
fn lean_robot_build_has_no_offline_stack() {
    let out = cargo()
        .args([
            "tree",
            "--locked",
            "-p",
            "vae_ood_monitor",
            "--no-default-features",
            "--features",
            "ros",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(manifest())
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains("r2r") && crates.contains("vae_ood_core"),
        "{tree}"
    );
    for c in OFFLINE_STACK {
        assert!(
            !crates.contains(c),
            "the lean robot build pulls in {c}:\n{tree}"
        );
    }
}
