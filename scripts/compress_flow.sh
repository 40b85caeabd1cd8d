#!/usr/bin/env bash
# Compresses the bundled optical-flow detector (models/flow, which ships its full VAE) with
# `vae-ood compress`: the paper's methodology on the second detector. A two-branch encoder gets
# students distilled from scratch (docs/compress.md); each candidate is recalibrated on the
# teacher's drives, checked against the AUROC budget on the flow validation drives (--select)
# and reported on the flow test set (--test). Sessions 12, 16 and 31 ran the all-halved student
# only (ONLY=student-8-16-16-16; 64 minutes on 2 cores in session 31); a selected candidate goes
# to models/flow_compressed with the sweep's report, keeping its model card (session 32 shipped
# the student calibrated as a drop-in, STUDENT_PIPELINE=teacher: models/flow_compressed's card).
# STUDENT_PIPELINE=teacher calibrates students as drop-ins (the teacher's window and decay;
# session 32); the default, own, is how sessions 12 to 31 ran.
# Usage: scripts/compress_flow.sh [OUT]   (data as scripts/flow_detector.sh says)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-out/compress_flow}"
ONLY="${ONLY:-student-8-16-16-16}"
STUDENT_PIPELINE="${STUDENT_PIPELINE:-own}"
mkdir -p "$OUT"
S=data/sample
source scripts/roles.sh
source scripts/ship_selected.sh
[ -f scripts/env.sh ] && source scripts/env.sh >/dev/null 2>&1 || true
only=()
[ -n "$ONLY" ] && only=(--only ${ONLY//,/ })
target/debug/vae-ood compress --teacher models/flow --out "$OUT" --budget quick --auroc-drop 0.02 \
  --student-pipeline "$STUDENT_PIPELINE" \
  --fit $(split train out/train) --cal $(split calibration out/train) $(split train_val out/train) \
  --tune-id $(split heldout out/heldout) $(split tuning out/tuning) \
  --val-ood $(onsets out/flow_validation) $(onsets out/validation | grep -E "ood_(rain|snow)_") \
  --select $(eval_inputs out/flow_validation) $(eval_inputs out/validation | grep -E "ood_(rain|snow)_") \
  --test $(eval_inputs out/flow_testset) "${only[@]}" | tee "$OUT/summary.txt"
ship_selected "$OUT" models/flow_compressed
