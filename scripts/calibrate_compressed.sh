#!/usr/bin/env bash
# Recalibrates the shipped student (models/compressed) as session 42 did, after the sweep that
# made it (scripts/compress_default.sh): its score's reference fitted on its own posteriors of
# the teacher's 160 fit drives (the 130 of sessions 19-40 and the 30 of make starts-data, in
# that order), its MSCN branch's mixture kept (--mscn-from itself), its roles and rate as the
# sweep's (scripts/roles.sh), and a start-up phase whose length session 43's rule picks on its
# tuning drives (--startup-frames auto: 60 frames), and since session 45 a change branch whose steps'
# Gaussian is fitted on the same 160 drives (--change-branch). Writes OUT (default out/compressed_calibrated); copy its
# manifest.yaml over models/compressed's to ship it. About 15 minutes on a 2-core CPU.
# Usage: scripts/calibrate_compressed.sh [OUT]   (needs the generated sets below)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-out/compressed_calibrated}"
S=data/sample
source scripts/roles.sh
for d in train validation heldout tuning tuning2 more_maps starts; do
  [ -d "out/$d" ] || { echo "out/$d is missing: make ${d//_/-}-data (see the Makefile's targets)" >&2; exit 1; }
done
cargo build --locked -p vae_ood_cli
target/debug/vae-ood calibrate --bundle models/compressed --out "$OUT" --quiet --score mahalanobis \
  --detail 160x120 --detail-grid 3 --components 16 --windows 1 --decays 1 \
  --fit $(ls -d out/more_maps/*/bag) $(split train out/train) $(split heldout out/heldout) $(split tuning out/tuning) \
  $(ls -d out/starts/*/bag) $(recalibration_args out/train out/validation out/heldout out/tuning out/tuning2) \
  --direction-branch 160x120 --direction-statistic mscn --mscn-from models/compressed --change-branch \
  --startup-frames auto
