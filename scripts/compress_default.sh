#!/usr/bin/env bash
# Compresses the bundled default detector (the teacher, models/default, which ships its full
# VAE) with `vae-ood compress --budget quick`: the paper's design methodology on this project's
# data. Candidates are recalibrated on the teacher's calibration and tuning drives, checked
# against the AUROC budget on the validation drives of every generated OOD type (--select) and
# reported on the test set of make testset-data (--test). The selected detector is copied to
# models/compressed with the sweep's report.
# Each candidate now takes 4-8 minutes on a 2-core CPU (78 tuning drives, 21 selection drives, the
# test set): the quick plan about 3 hours. Rerunning resumes an interrupted sweep.
# Every candidate refits on the teacher's fit drives, the 30 of `make more-maps-data` among them
# (session 19's reference, session 20's student).
# Usage: scripts/compress_default.sh [OUT [COMPRESS_FLAGS...]], e.g. `--only conv0-75+ft`
# (generates what it needs of `make train-data`, `make train-var-data`, `make validation-data`,
# `make heldout-data`, `make more-maps-data` and `make testset-data`; builds target/debug/vae-ood)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-out/compress}"
shift || true
mkdir -p "$OUT"
S=data/sample
V=out/train
VAL=out/validation
source scripts/roles.sh
source scripts/ship_selected.sh
[ -f "$V/id_udem1_s131/meta.json" ] || make train-data TRAIN_OUT="$V"
[ -f out/train_var/id_udem1_s131/meta.json ] || make train-var-data TRAIN_VAR_OUT=out/train_var
[ -f "$VAL/ood_noise_udem1_s185/meta.json" ] || make validation-data VALIDATION_OUT="$VAL"
[ -f out/heldout/id_udem1_s177/meta.json ] || make heldout-data HELDOUT_OUT=out/heldout
[ -f out/tuning/id_udem1_s458/meta.json ] || make tuning-data TUNING_OUT=out/tuning
[ -f out/tuning2/id_udem1_s776/meta.json ] || make tuning2-data TUNING2_OUT=out/tuning2
[ -f out/testset/id_4way_s328/meta.json ] || make testset-data TESTSET_OUT=out/testset
[ -f out/more_maps/id_TTIC_ripltown_s979/meta.json ] || make more-maps-data
[ -f scripts/env.sh ] && source scripts/env.sh >/dev/null 2>&1 || true
cargo build --locked -p vae_ood_cli
# Sessions 7 and 9 ran this with --only conv0-75+ft,conv0-62.5+ft,conv0-50+ft; the full plan
# takes hours now. The teacher's detail channel (score.detail) is refitted with every candidate.
target/debug/vae-ood compress --teacher models/default --out "$OUT" --budget quick --auroc-drop 0.02 \
  --fit $(ls -d out/more_maps/*/bag) $(calibration_args "$V" "$VAL" out/heldout out/tuning out/tuning2) \
  --select $(eval_inputs "$VAL") --test $(eval_inputs out/testset) "$@" | tee "$OUT/summary.txt"
ship_selected "$OUT" models/compressed
