#!/usr/bin/env bash
# `make demo`: set up, build, start the monitor node on the bundled default detector
# (models/default: trained and calibrated, see its MODEL_CARD.md) and the optical-flow detector
# (models/flow, its MODEL_CARD.md) side by side, and replay committed Duckietown
# drives into it (clear, then brightness, rain and sensor-noise OOD), printing live verdicts and
# a summary. Arguments go to scripts/demo_replay.py (--rate, --json). DDS stays on loopback
# (scripts/loopback.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
source scripts/env.sh
# The ROS package alone (node, gate, replay): the offline tools are not needed here.
cargo build --locked -p vae_ood_monitor --bins
source scripts/loopback.sh "${VAE_OOD_DEMO_DOMAIN:-74}"

BUNDLE="${VAE_OOD_DEMO_BUNDLE:-models/default}"
# The optical-flow detector (models/flow) runs beside it on the same camera: the node's verdict
# is OK only when both are. VAE_OOD_DEMO_FLOW= (empty) runs the image detector alone.
FLOW="${VAE_OOD_DEMO_FLOW-models/flow}"
BUNDLES="$(realpath "$BUNDLE")"
if [ -n "$FLOW" ]; then
  [ -f "$FLOW/manifest.yaml" ] || { echo "[demo] no flow detector bundle at $FLOW" >&2; exit 1; }
  BUNDLES="$BUNDLES,$(realpath "$FLOW")"
fi
echo "[demo] starting the monitor with [$BUNDLES]" >&2
# Reliable image QoS makes the replay lossless (every frame gets a verdict); live cameras
# default to sensor_data (best effort), see config/monitor.yaml. Recorded stamps are old, so
# the frame-age check is off for replays.
target/debug/vae_ood_monitor --ros-args --params-file config/monitor.yaml \
  -p model_bundles:="[$BUNDLES]" -p transport:=compressed -p image_qos:=reliable \
  -p max_frame_age:=0.0 -p input_timeout:=0.0 -r image/compressed:=/camera/image_raw/compressed &
node_pid=$!
trap 'kill -INT $node_pid 2>/dev/null; wait $node_pid 2>/dev/null' EXIT
.venv/bin/python scripts/demo_replay.py "$@"
