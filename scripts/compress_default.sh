#!/usr/bin/env bash
# Compresses the bundled default detector (the teacher, models/default, which ships its full
# VAE) with `vae-ood compress --budget quick`: the paper's design methodology on this project's
# data. Candidates are recalibrated on the teacher's calibration and tuning drives and
# evaluated on the held-out test drives of the committed sample (the model card's). The
# selected detector is copied to models/compressed with the sweep's report.
# About 35 minutes on a 2-core CPU; rerunning resumes an interrupted sweep.
# Usage: scripts/compress_default.sh [OUT]   (needs `make train-data` for the teacher's
# training and calibration drives; builds target/debug/vae-ood)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-out/compress}"
S=data/sample
V=out/train
[ -f "$V/id_udem1_s131/meta.json" ] || make train-data TRAIN_OUT="$V"
[ -f scripts/env.sh ] && source scripts/env.sh >/dev/null 2>&1 || true
cargo build --locked --bin vae-ood
target/debug/vae-ood compress --teacher models/default --out "$OUT" --budget quick \
  --cal "$V/id_loop_empty_s111/bag" "$V/id_small_loop_s119/bag" "$V/id_udem1_s131/bag" \
  --tune-id "$S/id_small_loop_s2/bag" "$S/id_udem1_s3/bag" \
  --val-ood "$S/ood_fog_loop_empty_s7/bag:150" \
  --test "$S/id_loop_empty_s4/bag" "$S/ood_brightness_small_loop_s5/bag=brightness" \
         "$S/ood_rain_udem1_s6/bag=rain" "$S/ood_noise_small_loop_s8/bag=noise" | tee "$OUT/summary.txt"
SEL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["selected"] or "")' "$OUT/report.json")
if [ -n "$SEL" ] && [ "$SEL" != teacher ]; then
  rm -rf models/compressed.new
  cp -r "$OUT/candidates/$SEL/calibrated" models/compressed.new
  cp "$OUT/report.json" models/compressed.new/compress_report.json
  [ -f models/compressed/MODEL_CARD.md ] && cp models/compressed/MODEL_CARD.md models/compressed.new/
  rm -rf models/compressed && mv models/compressed.new models/compressed
  [ -f models/compressed/MODEL_CARD.md ] && python3 scripts/compress_card.py \
    models/compressed/compress_report.json --update models/compressed/MODEL_CARD.md >/dev/null
  echo "shipped $SEL as models/compressed"
fi
