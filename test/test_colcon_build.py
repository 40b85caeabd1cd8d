"""The ROS user's path: colcon (colcon-ros-cargo + cargo-ament-build) builds the package and
installs the executable, launch files, config and models where `ros2 run` / `ros2 launch` look.

The package is also the Cargo workspace root: the member crates carry COLCON_IGNORE, so colcon
builds the one ROS package, with its default features (node, gate, replay).

To avoid compiling everything a second time, colcon's build directory for the package is a
symlink to the project's target directory (same dev profile, same features), so cargo finds
the build fresh. colcon runs from a scratch workspace so its generated .cargo/config.toml
stays out of the source tree.
"""

import os
import shutil
import subprocess

import pytest

from conftest import ROOT, TARGET

PKG = "vae_ood_monitor"


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    colcon = shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon not installed: run scripts/bootstrap.sh")
    if not os.environ.get("AMENT_PREFIX_PATH"):
        pytest.skip("no ROS 2 environment: source scripts/env.sh")
    ws = tmp_path_factory.mktemp("colcon_ws")
    (ws / "build").mkdir()
    os.symlink(TARGET.parent, ws / "build" / PKG)
    r = subprocess.run(
        [colcon, "build", "--base-paths", str(ROOT), "--build-base", str(ws / "build"),
         "--install-base", str(ws / "install"), "--event-handlers", "console_direct-"],
        cwd=ws, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert not (ROOT / ".cargo" / "config.toml").exists(), "colcon must not write into the source tree"
    return ws / "install" / PKG


def test_install_tree(install):
    for name in [PKG, "ood_gate", "vae_ood_replay"]:
        exe = install / "lib" / PKG / name
        assert exe.is_file() and os.access(exe, os.X_OK), name
    share = install / "share" / PKG
    for rel in ["package.xml", "launch/monitor.launch.py", "launch/monitor.launch.xml",
                "launch/monitor_gate.launch.py", "config/monitor.yaml", "config/gate.yaml",
                "models/default/manifest.yaml", "models/default/encoder.onnx",
                "models/compressed/manifest.yaml", "models/compressed/encoder.onnx"]:
        assert (share / rel).is_file(), rel
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / PKG).is_file()


def test_installed_node_finds_its_bundle_in_share(install):
    """Started as `ros2 run` would (from elsewhere, default model_bundle), the node resolves the
    bundle in its share directory and loads it."""
    exe = install / "lib" / PKG / PKG
    p = subprocess.Popen([str(exe), "--ros-args", "-r", f"__node:=colcon_check_{os.getpid()}"],
                         cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in p.stdout:
            lines.append(line)
            if "loaded detector" in line or len(lines) > 50:
                break
    finally:
        p.terminate()
        p.wait(timeout=10)
    out = "".join(lines)
    assert "loaded detector" in out and str(install / "share" / PKG / "models" / "compressed") in out, out
