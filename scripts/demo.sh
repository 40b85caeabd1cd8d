#!/usr/bin/env bash
# `make demo`: set up, build, calibrate the bundled detector on the committed sample's
# in-distribution drives, start the monitor node and replay committed Duckietown drives into it
# (clear, then brightness, rain and sensor-noise OOD), printing live verdicts and a summary.
# DDS stays on loopback (scripts/loopback.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
source scripts/env.sh
cargo build --locked --features ros --bins
source scripts/loopback.sh "${VAE_OOD_DEMO_DOMAIN:-74}"

S=data/sample
BUNDLE=out/demo/bundle
echo "[demo] calibrating models/default (UNTRAINED placeholder) on the sample's ID drives" >&2
target/debug/vae-ood calibrate --bundle models/default --out "$BUNDLE" --quiet \
  --cal "$S/id_small_loop_s2/bag" --tune-id "$S/id_udem1_s3/bag" --val-ood "$S/ood_fog_loop_empty_s7/bag:150"

echo "[demo] starting the monitor" >&2
# Reliable image QoS makes the replay lossless (every frame gets a verdict); live cameras
# default to sensor_data (best effort), see config/monitor.yaml. Recorded stamps are old, so
# the frame-age check is off for replays.
target/debug/vae_ood_monitor --ros-args --params-file config/monitor.yaml \
  -p model_bundle:="$ROOT/$BUNDLE" -p transport:=compressed -p image_qos:=reliable \
  -p max_frame_age:=0.0 -p input_timeout:=0.0 -r image/compressed:=/camera/image_raw/compressed &
node_pid=$!
trap 'kill -INT $node_pid 2>/dev/null; wait $node_pid 2>/dev/null' EXIT
.venv/bin/python scripts/demo_replay.py "$@"
