#!/usr/bin/env bash
# Soak benchmark (issue 15): the monitor node on models/default fed 640x480 rgb8 frames at 30 Hz
# over loopback DDS for SECONDS (default 1200), sampling RSS, CPU and round-trip latency; the
# report goes to out/soak/. Arguments after SECONDS go to scripts/soak.py (--rate, --size).
# Builds the node as `make test` does (debug profile, dependencies at opt-level 3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
source scripts/env.sh
cargo build --locked -p vae_ood_monitor --bins
source scripts/loopback.sh "${VAE_OOD_SOAK_DOMAIN:-77}"
exec .venv/bin/python scripts/soak.py "${1:-1200}" "${@:2}"
