"""One threshold for several detectors run together (docs/detector-experiments.md, "One
threshold for both detectors"): from each detector's `vae-ood eval` over the same clear tuning
drives, the scale c by which every detector's own threshold is multiplied so that the node's
combined verdict (OOD when any detector is) alarms on a new drive exchangeable with the tuning
drives with probability at most rank / (K + 1), the promise each threshold makes alone.

Per drive i: V_i = max over detectors d of M_id / t_d (M_id the drive's largest S); c is the
rank-th largest V_i (an alarm needs S > threshold, so rank - 1 tuning drives alarm).

    python3 scripts/joint_threshold.py EVAL_DIR=THRESHOLD EVAL_DIR=THRESHOLD [--rank 4]
"""

import argparse
import csv
import json
import pathlib


def largest_s(eval_dir):
    """Each input's path and its largest S (the CUSUM statistic) over the evaluation."""
    inputs = [i["path"] for i in json.loads((pathlib.Path(eval_dir) / "report.json").read_text())["inputs"]]
    m = [0.0] * len(inputs)
    with open(pathlib.Path(eval_dir) / "frames.csv") as f:
        for row in csv.DictReader(f):
            if row["cusum"]:
                m[int(row["input"])] = max(m[int(row["input"])], float(row["cusum"]))
    return inputs, m


def joint_scale(largest, thresholds, rank):
    v = sorted((max(m[i] / t for m, t in zip(largest, thresholds)) for i in range(len(largest[0]))), reverse=True)
    return max(v[rank - 1], 1.0) if len(v) >= rank else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evals", nargs="+", help="EVAL_DIR=THRESHOLD, one per detector, over the same tuning drives")
    ap.add_argument("--rank", type=int, default=4)
    args = ap.parse_args()
    dirs, thresholds = zip(*((e.rsplit("=", 1)[0], float(e.rsplit("=", 1)[1])) for e in args.evals))
    runs = [largest_s(d) for d in dirs]
    if any(r[0] != runs[0][0] for r in runs):
        raise SystemExit("the evaluations are not over the same inputs in the same order")
    largest = [r[1] for r in runs]
    k = len(largest[0])
    for d, m, t in zip(dirs, largest, thresholds):
        print(f"{d}: threshold {t:.4f}, {sum(x > t for x in m)} of {k} tuning drives over it")
    union = sum(any(m[i] > t for m, t in zip(largest, thresholds)) for i in range(k))
    print(f"together at their own thresholds: {union} of {k} drives alarm")
    c = joint_scale(largest, thresholds, args.rank)
    if c is None:
        raise SystemExit(f"{k} drives cannot certify rank {args.rank}")
    print(f"joint scale c = {c:.4f} (rank {args.rank} of {k}: a new drive alarms with probability at most "
          f"{args.rank}/{k + 1} = {args.rank / (k + 1):.4f})")
    for d, t in zip(dirs, thresholds):
        print(f"{d}: joint threshold {c * t:.4f}")


if __name__ == "__main__":
    main()
