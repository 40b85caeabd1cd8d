#!/usr/bin/env bash
# Set-up for the dataset tool only (`make data`, `make sample-data`): the Duckietown simulator
# from PyPI in its own venv (.venv-data, ~850 MB), rendering offscreen through EGL + Mesa.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
need=()
for pkg in libgl1-mesa-dri libegl1 libegl-mesa0 libglu1-mesa python3.11-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3.11 -m venv "$ROOT/.venv-data"
"$ROOT/.venv-data/bin/pip" install -q "duckietown-gym-daffy==6.1.34" "gym==0.26.2" "pyglet==1.5.27" "numpy<2" "rosbags==0.11.9" "Pillow"
