#!/usr/bin/env bash
# Reproduces the bundled default detector (models/default) from scratch: generates the training
# and calibration drives (make train-data: Duckietown simulator, fixed seeds), trains the
# `small` preset with `vae-ood train`, calibrates it with `vae-ood calibrate`, copies the full VAE
# and the training record beside the bundle, and refreshes MODEL_CARD.md's figures.
# About 35 minutes on a 2-core CPU. Usage: scripts/train_default.sh [OUT]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-out/default_train}"
DATA=out/train
S=data/sample
[ -f "$DATA/id_udem1_s131/meta.json" ] || make train-data TRAIN_OUT="$DATA"
cargo build --locked --bin vae-ood
VAE=target/debug/vae-ood
source scripts/roles.sh

"$VAE" train --preset small --seed 1 --name bvae-small-duckietown --out "$OUT" \
  --train $(split train "$DATA") --val $(split train_val "$DATA")

BUNDLE=models/default
rm -rf "$BUNDLE.new"
"$VAE" calibrate --bundle "$OUT" --out "$BUNDLE.new" --quiet \
  --cal $(split calibration "$DATA") --tune-id "${TUNE_ID[@]}" --val-ood "${VAL_OOD[@]}"
cp "$OUT"/vae.bpk "$OUT"/training.json "$OUT"/metrics.csv "$OUT"/loss.png "$BUNDLE.new/"
[ -f "$BUNDLE/MODEL_CARD.md" ] && cp "$BUNDLE/MODEL_CARD.md" "$BUNDLE.new/"
rm -rf "$BUNDLE" && mv "$BUNDLE.new" "$BUNDLE"
[ -f "$BUNDLE/MODEL_CARD.md" ] && scripts/model_card.sh --update
