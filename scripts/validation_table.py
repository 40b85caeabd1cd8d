#!/usr/bin/env python3
"""Per OOD type, the figures a calibration rule chooses on: each drive's per-frame AUROC and
detection delay, as docs/detector-experiments.md's step tables give them.

For every OOD drive of a `vae-ood eval` output: the per-frame AUROC of the score, its OOD frames
against every clear frame of the same evaluation (the validation drives' clear run-ups), and the
sequential test's detection delay in frames (or `missed`). Per type: the mean (smallest) AUROC
and the delays in drive order.

    python3 scripts/validation_table.py EVAL_DIR [EVAL_DIR ...]

Read-only over `vae-ood eval` outputs; chooses nothing.
"""

import argparse
import csv
import json
import pathlib
from collections import defaultdict

from sklearn.metrics import roc_auc_score


def table(eval_dir):
    d = pathlib.Path(eval_dir)
    report = json.loads((d / "report.json").read_text())
    clear, ood = [], defaultdict(list)
    for row in csv.DictReader(open(d / "frames.csv")):
        if row["score"] == "":
            continue
        s = float(row["score"])
        if row["ood"] == "true":
            ood[int(row["input"])].append(s)
        else:
            clear.append(s)
    segments = (report.get("sequential") or {}).get("segments", [])
    by_type = defaultdict(list)
    for seg in segments:
        pos = ood.get(seg["input"], [])
        auc = roc_auc_score([1] * len(pos) + [0] * len(clear), pos + clear) if pos and clear else None
        by_type[seg["ood_type"]].append((auc, seg.get("delay_frames")))
    return by_type


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", nargs="+")
    args = ap.parse_args()
    tables = {e: table(e) for e in args.evals}
    types = sorted({t for tb in tables.values() for t in tb})
    print("| type | " + " | ".join(args.evals) + " |")
    print("|---|" + "---|" * len(args.evals))
    detected = {e: [0, 0] for e in args.evals}
    for t in types:
        cells = []
        for e in args.evals:
            rows = tables[e].get(t, [])
            aucs = [a for a, _ in rows if a is not None]
            delays = ", ".join("missed" if d is None else str(d) for _, d in rows)
            hit = sum(d is not None for _, d in rows)
            detected[e][0] += hit
            detected[e][1] += len(rows)
            mean = sum(aucs) / len(aucs) if aucs else float("nan")
            low = min(aucs) if aucs else float("nan")
            cells.append(f"{mean:.3f} ({low:.3f}), {hit} / {len(rows)}: {delays}")
        print(f"| {t} | " + " | ".join(cells) + " |")
    print("| detected | " + " | ".join(f"{h} of {n}" for h, n in detected.values()) + " |")


if __name__ == "__main__":
    main()
