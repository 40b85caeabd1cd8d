#!/usr/bin/env bash
# The optical-flow detector (issue 18), end to end on generated drives: calibrate the trained
# teacher into models/flow, evaluate it and the image detector on the flow test set and the
# fresh false-alarm set, and merge the two as the node does (scripts/combined_eval.py).
#
#   scripts/flow_detector.sh calibrate   # TEACHER (default out/flow_train) -> models/flow
#   scripts/flow_detector.sh evaluate    # figures into out/flow_card/
#
# Data: make train-data heldout-data tuning-data validation-data flow-validation-data
# flow-testset-data falsealarm13-data (and, where generated, the earlier falsealarm4-data,
# falsealarm3-data and falsealarm2-data: each false-alarm set present is evaluated). Training (about 35 min on 2 cores):
#   vae-ood train --detector flow --train $(split train out/train) --val $(split train_val out/train) \
#     --out out/flow_train --frame-stride 3 --epochs 10 --name flow-v1
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
S="$ROOT/data/sample"
VAE="${VAE_OOD:-$ROOT/target/debug/vae-ood}"
TEACHER="${TEACHER:-out/flow_train}"
OUT="${FLOW_OUT:-out/flow_card}"
IMAGE="${IMAGE_BUNDLE:-models/compressed}"
[ -f scripts/env.sh ] && source scripts/env.sh >/dev/null 2>&1 || true
source scripts/roles.sh
# The flow detector is chosen on motion OOD drives (flow-validation-data) and on the rain and
# snow validation drives, never on the test set.
flow_val_ood() { { onsets out/flow_validation; onsets out/validation | grep -E "ood_(rain|snow)_"; }; }
case "${1:-}" in
  calibrate)
    # The Mahalanobis distance of the posterior (not the KL of selected latents), and beside
    # it the stack's motion residual, scored apart, upper tail only (session 16), each pair's
    # residual map summarised by its 99th percentile (session 23): chosen on the validation
    # drives (models/flow/MODEL_CARD.md, "How it was chosen").
    "$VAE" calibrate --bundle "$TEACHER" --out models/flow.new --score mahalanobis \
      --motion-residual --residual-statistic p99 --separate upper \
      --fit $(split train out/train) \
      --cal $(split calibration out/train) $(split train_val out/train) \
      --tune-id $(split heldout out/heldout) $(split tuning out/tuning) \
      --val-ood $(flow_val_ood)
    # The full VAE and training record travel with the bundle (compression starts from them).
    # (TEACHER=models/flow recalibrates the shipped encoder in place.)
    cp "$TEACHER"/{vae.bpk,training.json,metrics.csv,loss.png} models/flow.new/
    [ -f models/flow/MODEL_CARD.md ] && cp models/flow/MODEL_CARD.md models/flow.new/
    # The compression sweep's report stays with the encoder it compressed.
    [ -f "$TEACHER/compress_report.json" ] && cp "$TEACHER/compress_report.json" models/flow.new/
    rm -rf models/flow && mv models/flow.new models/flow
    ;;
  evaluate)
    FALSEALARM=()
    for fa in out/falsealarm13 out/falsealarm4 out/falsealarm3 out/falsealarm2; do
      [ -d "$fa" ] && FALSEALARM+=("$fa")
    done
    # Each detector on the flow test set and the fresh false-alarm set (scripts/testset_card.py:
    # the model cards' figures block), then both merged as the node merges them.
    mkdir -p "$OUT"
    img=$(basename "$IMAGE")
    for b in models/flow "$IMAGE"; do
      update=()
      [ "$b" = models/flow ] && [ -f models/flow/MODEL_CARD.md ] && update=(--update models/flow/MODEL_CARD.md)
      echo "== $b"
      python3 scripts/testset_card.py --bundle "$b" --vae "$VAE" --testset out/flow_testset \
        --types rain snow camera_shake fast frame_drops --falsealarm "${FALSEALARM[@]}" \
        ${CUSUM_CEILING:+--cusum-ceiling "$CUSUM_CEILING"} \
        --out "$OUT/$(basename "$b")" "${update[@]}"
    done
    echo "== combined ($img + flow), flow test set"
    python3 scripts/combined_eval.py "$OUT/$img/test" "$OUT/flow/test" --json "$OUT/combined_test.json"
    for fa in "${FALSEALARM[@]##*/}"; do
      echo "== combined ($img + flow), false-alarm set $fa"
      python3 scripts/combined_eval.py "$OUT/$img/$fa" "$OUT/flow/$fa" --json "$OUT/combined_$fa.json"
    done
    # The image detector's test set (make testset-data), when generated: what the flow detector
    # adds to, or costs, the image detector on the shifts it was built for.
    if [ -d out/testset ]; then
      for b in models/flow "$IMAGE"; do
        "$VAE" eval --bundle "$b" --out "$OUT/$(basename "$b")/image_test" --quiet \
          --label-topic /ood_label --input $(eval_inputs out/testset) >/dev/null
      done
      echo "== combined ($img + flow), the image detector's test set"
      python3 scripts/combined_eval.py "$OUT/$img/image_test" "$OUT/flow/image_test" --json "$OUT/combined_image_test.json"
    fi
    ;;
  *)
    echo "usage: $0 calibrate|evaluate" >&2
    exit 2
    ;;
esac
