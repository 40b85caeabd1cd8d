"""The start-up phase's length (`vae-ood calibrate --startup-frames N`) by session 42's rule:
the cruise scale for N = 15, 30, ..., 300 frames, as `vae_ood_core::detection::startup::cruise_scale`
computes it, and the smallest N at which it reaches its value at N = 300 (where the tuning drives'
starts no longer set it). Run the calibrated bundle (without a start-up phase) over its tuning
drives first, S unbounded:

  vae-ood eval --bundle B --out DIR --quiet --cusum-ceiling 0 --label-topic /ood_label --input TUNING...
  python3 scripts/startup_frames.py DIR ALLOWED

ALLOWED is the bundle's `calibration.guarantee` drives_over: the tuning drives its thresholds
may alarm on (2 for models/default's 117, 3 for models/compressed's 78).
"""
import collections
import csv
import sys


def ratios(eval_dir):
    """Per drive, the alarm ratio of each scored frame, in order."""
    rows = collections.defaultdict(list)
    with open(f"{eval_dir}/frames.csv") as f:
        for r in csv.DictReader(f):
            if r["alarm_ratio"]:
                rows[r["input"]].append(float(r["alarm_ratio"]))
    return list(rows.values())


def cruise_scale(drives, frames, allowed):
    started = [d for d in drives if max(d[:frames], default=0) > 1]
    after = sorted((max(d[frames:], default=0) for d in drives if max(d[:frames], default=0) <= 1), reverse=True)
    room = allowed - len(started)
    if room < 0:
        return 1.0
    return min(1.0, max(after[room] if room < len(after) else 0.0, sys.float_info.min))


def main():
    drives, allowed = ratios(sys.argv[1]), int(sys.argv[2])
    scales = {n: cruise_scale(drives, n, allowed) for n in range(15, 301, 15)}
    print(" ".join(f"{n}:{s:.3f}" for n, s in scales.items()))
    print("N =", min(n for n, s in scales.items() if s == scales[300]))


if __name__ == "__main__":
    main()
