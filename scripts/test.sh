#!/usr/bin/env bash
# The project's test command (`make test`; CI runs exactly this through .ci/run).
# Set-up, then: offline core tests with no ROS in the environment, the ROS build, the Python
# suite (live node tests over real DDS confined to loopback, parity against onnxruntime,
# static launch/config checks, the colcon build check).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Each stage line carries the seconds since the start, so a slow CI run says where its time went.
SECONDS=0
stage() { echo "=== $1 (at ${SECONDS} s) ==="; }
bash scripts/bootstrap.sh

stage "1/3 core, bag, tools, CLI (no ROS environment)"
# This also leaves target/debug/vae-ood, which the Python suite runs: the CLI's integration
# tests need the binary, so cargo builds it (with this selection's features; a separate
# `cargo build -p vae_ood_cli` would compile core, tools and the CLI a second time).
env -u ROS_DISTRO -u AMENT_PREFIX_PATH -u IDL_PACKAGE_FILTER \
  cargo test --locked --workspace --exclude vae_ood_monitor
test -x target/debug/vae-ood || { echo "cargo test left no target/debug/vae-ood" >&2; exit 1; }

stage "1b/3 the cuda backend (builds without CUDA; with no GPU its GPU half is skipped, saying why)"
# libnvrtc from the PyPI wheel (scripts/requirements-test.txt): our kernels compile to PTX here.
NVRTC_LIB=$(echo "$ROOT"/.venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib)
# The same package selection as 1/3, so the features resolve as there and its build is reused
# (crates/core/Cargo.toml pins the features tract-cuda would change); only the core's test is
# selected, so only the CUDA crates and the core compile again, not tools and the CLI (3 minutes
# of a cold CI run). The GPU code lives in the core (the bench's device comparison included),
# so this compiles all of it; the CLI's cuda lines are printing only (scripts/gpu_check.sh
# builds them).
env -u ROS_DISTRO -u AMENT_PREFIX_PATH -u IDL_PACKAGE_FILTER \
  LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  cargo test --locked --workspace --exclude vae_ood_monitor --features vae_ood_cli/cuda \
  --test cuda_backend -- --nocapture

stage "2/3 ROS package (node, gate, replay)"
source scripts/env.sh
cargo build --locked -p vae_ood_monitor --bins --example hung_monitor
cargo test --locked -p vae_ood_monitor --lib
# The vendored r2r's own change (vendor/r2r/FORK.md): a reply its parameter services cannot send
# is a warning, not a panic that leaves them deaf. Its test binary cannot take build.rs's libpython
# link (that is the node's), so with the PyPI wheels it is preloaded.
LD_PRELOAD="${VAE_OOD_LINK_PYTHON:+$VAE_OOD_LINK_PYTHON/libpython3.11.so}" \
  cargo test --locked -p r2r --lib services::tests
# The node with the cuda backend (issue 17): the feature resolves to the GPU crates. The node's
# own code has no cuda-only lines; the core's GPU code and the CLI's were compiled in 1b.
cargo tree --locked -p vae_ood_monitor --features cuda -e normal -i cudarc >/dev/null

stage "3/3 Python suite (rclpy, onnxruntime, colcon)"
source scripts/loopback.sh "${VAE_OOD_TEST_DOMAIN:-73}"
set +e
"$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider -rsx --durations=12 test/ "$@"
rc=$?
set -e
stage "end (pytest exit code $rc)"
exit $rc
