#!/usr/bin/env bash
# Sequential-detection figures on the committed sample data (data/sample), as reported in the
# closing notes: calibrate the given bundle twice (default parameters: all latents, window 20,
# decay 2; and auto-tuned k/window/decay), then evaluate both on the held-out test drives.
# Usage: scripts/sample_figures.sh [BUNDLE] [OUT]   (needs target/debug/vae-ood: make test)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="${1:-$ROOT/models/default}"
OUT="${2:-$ROOT/out/sample_figures}"
S="$ROOT/data/sample"
VAE="${VAE_OOD:-$ROOT/target/debug/vae-ood}"
source "$ROOT/scripts/roles.sh"
[ -f "$ROOT/scripts/env.sh" ] && source "$ROOT/scripts/env.sh" >/dev/null 2>&1 || true
for mode in default tuned; do
  grid=()
  [ "$mode" = default ] && grid=(--k 30 --windows 20 --decays 2)
  echo "=== $mode parameters ==="
  "$VAE" calibrate --bundle "$BUNDLE" --out "$OUT/$mode" --quiet \
    --cal "$S/id_small_loop_s2/bag" --tune-id "$S/id_udem1_s3/bag" \
    --val-ood "${VAL_OOD[@]}" "${grid[@]}"
  "$VAE" eval --bundle "$OUT/$mode" --out "$OUT/eval_$mode" --quiet --label-topic /ood_label --input "${TEST[@]}"
done
