#!/usr/bin/env bash
# `make demo`: set up, build, start the monitor node on the bundled detector and replay a real
# camera sequence into it (in-distribution, then a night-time OOD transform), printing live
# verdicts and a summary. DDS stays on loopback (scripts/loopback.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
if ! dpkg -s visp-images-data >/dev/null 2>&1; then
  echo "[demo] installing Debian's visp-images-data (real camera sequences, ~75 MB)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq visp-images-data >/dev/null
fi
source scripts/env.sh
cargo build --locked --features ros --bins
source scripts/loopback.sh "${VAE_OOD_DEMO_DOMAIN:-74}"
# Reliable image QoS makes the replay lossless (every frame gets a verdict); live cameras
# default to sensor_data (best effort), see config/monitor.yaml.

echo "[demo] starting the monitor (model: models/default, UNTRAINED placeholder)" >&2
target/debug/vae_ood_monitor --ros-args --params-file config/monitor.yaml \
  -p model_bundle:="$ROOT/models/default" -p score_threshold:="${SCORE_THRESHOLD:-15.0}" \
  -p image_qos:=reliable -r image:=/camera/image_raw &
node_pid=$!
trap 'kill -INT $node_pid 2>/dev/null; wait $node_pid 2>/dev/null' EXIT
.venv/bin/python scripts/demo_replay.py --topic /camera/image_raw "$@"
