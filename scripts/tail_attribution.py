#!/usr/bin/env python3
"""Which part of a two-part score raised each alarm and each detection.

A flow bundle's score is max(posterior tail score, motion-residual tail score)
(docs/detector-experiments.md, "The motion residual"); `vae-ood eval` writes both to frames.csv
(`posterior_tail`, `extra_tail`). For every alarm on clear frames and every first detection of
an OOD segment, this looks at the run-up: the frames from the last time S was at zero up to the
alarm, where the sequential statistic accumulated. It reports, per alarm, the share of run-up
frames in which the residual was the larger part and each part's mean, and per OOD type the
per-frame AUROC of each part alone against every clear frame of the same evaluation.

    .venv/bin/python scripts/tail_attribution.py EVAL_DIR [EVAL_DIR ...] [--json OUT]

Read-only over `vae-ood eval` outputs; chooses nothing.
"""

import argparse
import csv
import json
import pathlib
import sys

from sklearn.metrics import roc_auc_score


def auroc(pos, neg):
    if not pos or not neg:
        return None
    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg))


def load(eval_dir):
    d = pathlib.Path(eval_dir)
    report = json.loads((d / "report.json").read_text())
    names = [pathlib.Path(i["path"]).parent.name if pathlib.Path(i["path"]).name == "bag"
             else pathlib.Path(i["path"]).name for i in report["inputs"]]
    rows = list(csv.DictReader(open(d / "frames.csv")))
    if rows and "extra_tail" not in rows[0]:
        sys.exit(f"{d}/frames.csv has no tail columns: evaluate again with a vae-ood from session 25 on")
    by_input = {}
    for r in rows:
        by_input.setdefault(int(r["input"]), []).append(r)
    return names, by_input


def runups(frames):
    """(kind, alarm frame index, run-up rows) for each entry into OOD: 'false_alarm' on a
    clear frame, 'detection' for the first entry at or after an OOD segment's onset."""
    out, prev, seen_onset, detected = [], "STARTING", False, False
    for k, r in enumerate(frames):
        if r["ood"] == "true" and not seen_onset:
            seen_onset, detected = True, False
        if r["state"] == "OOD" and prev != "OOD":
            start = k
            while start > 0 and frames[start - 1]["cusum"] != "" and float(frames[start - 1]["cusum"]) > 0:
                start -= 1
            rows = [f for f in frames[start:k + 1] if f["extra_tail"] != ""]
            if r["ood"] == "true":
                if not detected:
                    out.append(("detection", k, rows))
                    detected = True
            else:
                out.append(("false_alarm", k, rows))
        prev = r["state"]
    return out


def summarise(rows):
    if not rows:
        return {"frames": 0}
    post = [float(r["posterior_tail"]) for r in rows]
    extra = [float(r["extra_tail"]) for r in rows]
    larger = sum(e > p for p, e in zip(post, extra))
    return {
        "frames": len(rows),
        "residual_larger": round(larger / len(rows), 3),
        "mean_posterior_tail": round(sum(post) / len(post), 2),
        "mean_extra_tail": round(sum(extra) / len(extra), 2),
        "part": "residual" if larger * 2 > len(rows) else "posterior",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", nargs="+")
    ap.add_argument("--json")
    args = ap.parse_args()
    events, clear, ood = [], {"posterior": [], "extra": []}, {}
    for e in args.evals:
        names, by_input = load(e)
        for i, frames in by_input.items():
            for kind, k, rows in runups(frames):
                events.append({"eval": e, "drive": names[i], "kind": kind, "frame": k,
                               "type": frames[k]["ood_type"], **summarise(rows)})
            for r in frames:
                if r["extra_tail"] == "":
                    continue
                p, x = float(r["posterior_tail"]), float(r["extra_tail"])
                if r["ood"] == "true":
                    t = ood.setdefault(r["ood_type"], {"posterior": [], "extra": []})
                    t["posterior"].append(p)
                    t["extra"].append(x)
                else:
                    clear["posterior"].append(p)
                    clear["extra"].append(x)
    per_type = {t: {part: auroc(v[part], clear[part]) for part in ("posterior", "extra")}
                for t, v in sorted(ood.items())}
    print(f"{'drive':<32} {'kind':<11} {'type':<13} {'frame':>5} {'run-up':>6} {'resid>post':>10} "
          f"{'post':>6} {'resid':>6}  part")
    for ev in events:
        print(f"{ev['drive']:<32} {ev['kind']:<11} {ev['type']:<13} {ev['frame']:>5} {ev['frames']:>6} "
              f"{ev.get('residual_larger', 0):>10} {ev.get('mean_posterior_tail', 0):>6} "
              f"{ev.get('mean_extra_tail', 0):>6}  {ev.get('part', '-')}")
    for kind in ("false_alarm", "detection"):
        k = [ev for ev in events if ev["kind"] == kind]
        print(f"{kind}s: {len(k)}; raised mostly by the residual: {sum(ev.get('part') == 'residual' for ev in k)}")
    print(f"\nper-frame AUROC of each part alone against {len(clear['posterior'])} clear frames")
    for t, a in per_type.items():
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"  {t:<14} posterior {fmt(a['posterior'])}  residual {fmt(a['extra'])}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"events": events, "per_type_auroc": per_type}, indent=1))


if __name__ == "__main__":
    main()
