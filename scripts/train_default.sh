#!/usr/bin/env bash
# Reproduces the bundled default detector (models/default) from scratch: generates the drives
# (Duckietown simulator, fixed seeds): make train-data (clear), make train-var-data (the same
# drives with brightness and rain varied in [0, 0.3]) and make validation-data (15 OOD drives);
# trains the `small` preset on the varied drives with `vae-ood train`; calibrates it with
# `vae-ood calibrate --score mahalanobis --detail-grid 3 --components 16` (reference fitted on
# 160 clear drives: 100 on the three training maps, 30 on three more (session 19) and the 30
# drives of make starts-data, which start over every 60 frames (session 41);
# conformal scores from the clear calibration and early-stopping drives, window 1 and decay 1;
# thresholds from make tuning2-data at 1e-4 false alarms a frame; since session 47 calibrated
# as its student is (scripts/calibrate_compressed.sh): the MSCN branch of session 40 with
# models/compressed's mixture, the change branch of session 45 in place of the drive-relative
# branch (sessions 21-46: DEFAULT_RELATIVE and default_threshold_args in scripts/roles.sh), the
# budget split three ways; the start-up phase of session 42 with session 43's gentle end, its
# length by session 43's rule on the tuning drives: --startup-frames auto, 60 frames);
# copies the full VAE and the training record beside the bundle and
# refreshes MODEL_CARD.md's figures. About 40 minutes on a 2-core CPU.
# Usage: scripts/train_default.sh [OUT]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-out/default_train}"
DATA=out/train
VAR=out/train_var
VAL=out/validation
S=data/sample
[ -f "$DATA/id_udem1_s131/meta.json" ] || make train-data TRAIN_OUT="$DATA"
[ -f "$VAR/id_udem1_s131/meta.json" ] || make train-var-data TRAIN_VAR_OUT="$VAR"
[ -f "$VAL/ood_noise_udem1_s185/meta.json" ] || make validation-data VALIDATION_OUT="$VAL"
[ -f out/heldout/id_udem1_s177/meta.json ] || make heldout-data HELDOUT_OUT=out/heldout
[ -f out/tuning/id_udem1_s458/meta.json ] || make tuning-data TUNING_OUT=out/tuning
[ -f out/tuning2/id_udem1_s776/meta.json ] || make tuning2-data TUNING2_OUT=out/tuning2
[ -f out/starts/id_Montreal_loop_s3029/meta.json ] || make starts-data STARTS_OUT=out/starts
[ -f out/more_maps/id_TTIC_ripltown_s979/meta.json ] || make more-maps-data
cargo build --locked -p vae_ood_cli
VAE=target/debug/vae-ood
source scripts/roles.sh

"$VAE" train --preset small --seed 1 --name bvae-small-duckietown --out "$OUT" \
  --train $(split train "$VAR") --val $(split train_val "$VAR")

BUNDLE=models/default
rm -rf "$BUNDLE.new"
# The regional detail and three more maps' layouts in the fit (docs/detector-experiments.md,
# "Regional detail with more layouts in the fit"), the starts drives (session 41, "A score
# fitted on drives that start over") and the MSCN branch (session 40).
"$VAE" calibrate --bundle "$OUT" --out "$BUNDLE.new" --quiet --score mahalanobis --detail 160x120 --detail-grid 3 \
  --components 16 --windows 1 --decays 1 \
  --fit $(ls -d out/more_maps/*/bag) $(calibration_args "$DATA" "$VAL" out/heldout out/tuning out/tuning2) \
  --fit $(ls -d out/starts/*/bag) --direction-branch 160x120 --direction-statistic mscn --mscn-from models/compressed \
  --change-branch --startup-frames auto
cp "$OUT"/vae.bpk "$OUT"/training.json "$OUT"/metrics.csv "$OUT"/loss.png "$BUNDLE.new/"
[ -f "$BUNDLE/MODEL_CARD.md" ] && cp "$BUNDLE/MODEL_CARD.md" "$BUNDLE.new/"
rm -rf "$BUNDLE" && mv "$BUNDLE.new" "$BUNDLE"
[ -f "$BUNDLE/MODEL_CARD.md" ] && scripts/model_card.sh --update
