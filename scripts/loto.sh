#!/usr/bin/env bash
# Leave-one-type-out figures of the default calibration rule (issue 14): for each generated OOD
# type, recalibrate BUNDLE exactly as shipped (scripts/roles.sh, recalibration_args) but
# without that type's validation drives, then evaluate the recalibrated bundle on that type's
# test drives (and the test set's clear drives). A type is never both chosen on and reported.
# The score (its fitted reference) is kept: only the sequential test's window and decay are
# chosen again, so per-frame AUROC equals the test set's.
# The bundle's other calibration flags come from the environment: CALIBRATE_FLAGS (added to
# every type's calibration) and RELATIVE (W,G,H of the drive-relative branch), or RELATIVE_<type>
# where leaving that type out changes the branch's choice. models/default from session 22 to 46
# (its card, "Leave one type out"; with S=data/sample and scripts/roles.sh sourced; session 47's
# calibration has no grid to rerun, window 1 and decay 1 given, and its card's figures come
# from rerunning session 47's rule without each type):
#   CALIBRATE_FLAGS="$(default_threshold_args out/tuning3)" RELATIVE=$DEFAULT_RELATIVE \
#   RELATIVE_motion_blur=30,60,360 scripts/loto.sh
# Usage: scripts/loto.sh [BUNDLE] [OUT]   (needs make train-data validation-data heldout-data
# tuning-data tuning2-data testset-data, and target/debug/vae-ood); prints a markdown table,
# OUT/loto.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUNDLE="${1:-models/default}"
OUT="${2:-out/loto/$(basename "$BUNDLE")}"
VAE="${VAE_OOD:-target/debug/vae-ood}"
S=data/sample
source scripts/roles.sh
mkdir -p "$OUT"
for t in brightness rain fog snow motion_blur noise occlusion; do
  mkdir -p "$OUT/$t"
  rel_of="RELATIVE_$t"
  rel="${!rel_of:-${RELATIVE:-}}"
  # shellcheck disable=SC2086 # CALIBRATE_FLAGS is a list of flags
  SKIP_TYPE=$t "$VAE" calibrate --bundle "$BUNDLE" --out "$OUT/$t/bundle" --quiet --score mahalanobis \
    ${rel:+--relative "$rel"} ${CALIBRATE_FLAGS:-} \
    $(SKIP_TYPE=$t recalibration_args out/train out/validation out/heldout out/tuning out/tuning2) > "$OUT/$t/calibrate.txt"
  "$VAE" eval --bundle "$OUT/$t/bundle" --out "$OUT/$t/eval" --quiet --label-topic /ood_label \
    --input $(eval_inputs out/testset | grep -E "=$t\$|^[^=]*$") > /dev/null
done
python3 - "$OUT" <<'EOF'
import json, pathlib, statistics, sys, yaml
out = pathlib.Path(sys.argv[1])
rows = {}
print("| left-out type | window, decay chosen without it | relative branch | detected | delays (frames) | AUROC sequential | AUROC per-frame |")
print("|---|---|---|---|---|---|---|")
for t in ("brightness", "rain", "fog", "snow", "motion_blur", "noise", "occlusion"):
    r = json.loads((out / t / "eval" / "report.json").read_text())
    c = yaml.safe_load((out / t / "bundle" / "manifest.yaml").read_text())["calibration"]
    p, rel = c["pipeline"], c.get("relative")
    branch = f"{rel['baseline']['window']}, {rel['baseline']['gap']}" if rel else "none"
    d = [g["delay_frames"] for g in r["sequential"]["segments"]]
    rows[t] = {"window": p["window"], "decay": p["decay"], "relative": branch, "delays": d,
               "auroc_sequential": r["cusum_metrics"][t]["auroc"], "auroc_score": r["score_metrics"][t]["auroc"]}
    print(f"| {t} | {p['window']}, {p['decay']} | {branch} | {sum(x is not None for x in d)} / {len(d)} | "
          + ", ".join("missed" if x is None else str(x) for x in d)
          + f" | {rows[t]['auroc_sequential']:.3f} | {rows[t]['auroc_score']:.3f} |")
(out / "loto.json").write_text(json.dumps(rows, indent=1))
EOF
