#!/usr/bin/env bash
# The default detector's model-card figures, from the committed bundle and the committed sample:
# evaluates models/default on the held-out test drives (clear loop_empty s4; brightness, rain
# and sensor noise) and prints the figures block of models/default/MODEL_CARD.md.
# Usage: scripts/model_card.sh [--update]   (--update rewrites the card's figures block)
# Needs target/debug/vae-ood (cargo build -p vae_ood_cli).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
S="$ROOT/data/sample"
OUT="${MODEL_CARD_OUT:-$ROOT/out/model_card}"
VAE="${VAE_OOD:-$ROOT/target/debug/vae-ood}"
BUNDLE="${MODEL_CARD_BUNDLE:-$ROOT/models/default}"
# A vae-ood built with --features ros needs the ROS environment's libraries.
[ -f "$ROOT/scripts/env.sh" ] && source "$ROOT/scripts/env.sh" >/dev/null 2>&1 || true
source "$ROOT/scripts/roles.sh"
"$VAE" eval --bundle "$BUNDLE" --out "$OUT" --quiet --label-topic /ood_label --input "${TEST[@]}" >&2
update=()
[ "${1:-}" = "--update" ] && update=(--update "$BUNDLE/MODEL_CARD.md")
python3 "$ROOT/scripts/model_card_figures.py" "$OUT/report.json" "${update[@]}"
