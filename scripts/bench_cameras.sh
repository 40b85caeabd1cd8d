#!/usr/bin/env bash
# Several cameras on one monitor node (issue 19): N cameras x 30 Hz of 640x480 rgb8 over
# loopback DDS for SECONDS per configuration (batching always and never); the report goes to
# out/bench_cameras/. Arguments after SECONDS go to scripts/bench_cameras.py (--cameras, --rate).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
source scripts/env.sh
cargo build --locked -p vae_ood_monitor --bins
source scripts/loopback.sh "${VAE_OOD_BENCH_DOMAIN:-78}"
exec .venv/bin/python scripts/bench_cameras.py "${1:-600}" "${@:2}"
