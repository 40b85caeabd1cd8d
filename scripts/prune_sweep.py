"""Per-layer pruning sensitivity of a trained detector (the paper's structured L2 sweep, plus
global unstructured L1): for each candidate, prune with `vae-ood prune`, recalibrate with the
teacher's calibration drives, evaluate on the held-out test drives with `vae-ood eval`, and
measure every encoder's latency in one interleaved run (`vae-ood bench-encoders`). No
fine-tuning: this measures how much each layer tolerates, which shapes the students to distil.

  python3 scripts/prune_sweep.py [--teacher out/default_train] [--out out/prune_sweep]

Writes OUT/sweep.csv and prints the table. Needs `make train-data` (calibration drives),
the teacher's training output (scripts/train_default.sh) and target/debug/vae-ood (after
`make test`, which builds it with --features ros: run under `source scripts/env.sh`).
"""

import argparse
import csv
import json
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
S, V = ROOT / "data" / "sample", ROOT / "out" / "train"
VAE = str(ROOT / "target" / "debug" / "vae-ood")
CAL = [V / d / "bag" for d in ("id_loop_empty_s111", "id_small_loop_s119", "id_udem1_s131")]
TUNE = [S / d / "bag" for d in ("id_small_loop_s2", "id_udem1_s3")]
VAL = f"{S / 'ood_fog_loop_empty_s7' / 'bag'}:150"
TEST = [str(S / "id_loop_empty_s4" / "bag"), f"{S / 'ood_brightness_small_loop_s5' / 'bag'}=brightness",
        f"{S / 'ood_rain_udem1_s6' / 'bag'}=rain", f"{S / 'ood_noise_small_loop_s8' / 'bag'}=noise"]


def run(*args):
    return subprocess.run([VAE, *map(str, args)], check=True, capture_output=True, text=True).stdout


def evaluate(bundle, out):
    run("calibrate", "--bundle", bundle, "--out", out / "cal", "--quiet", "--cal", *CAL, "--tune-id", *TUNE, "--val-ood", VAL)
    run("eval", "--bundle", out / "cal", "--out", out / "eval", "--quiet", "--label-topic", "/ood_label", "--input", *TEST)
    return json.loads((out / "eval" / "report.json").read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=pathlib.Path, default=ROOT / "out" / "default_train")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "prune_sweep")
    ap.add_argument("--layers", default="conv0,conv1,conv2,conv3,fc0,fc1")
    ap.add_argument("--fractions", default="0.25,0.5,0.75")
    ap.add_argument("--sparsities", default="0.5,0.9")
    args = ap.parse_args()
    cands = [("teacher", None)]
    cands += [(f"{l}@{f}", ["--layer", l, "--fraction", f]) for l in args.layers.split(",") for f in args.fractions.split(",")]
    cands += [(f"l1@{s}", ["--sparsity", s]) for s in args.sparsities.split(",")]
    rows, bundles = [], []
    for name, prune in cands:
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        bundle = args.teacher
        if prune:
            bundle = out / "bundle"
            run("prune", "--bundle", args.teacher, "--out", bundle, *prune)
        r = evaluate(bundle, out)
        rows.append({"candidate": name, **{f"auroc_{k}_score": round(v["auroc"], 4) for k, v in r["score_metrics"].items()},
                     **{f"auroc_{k}_cusum": round(v["auroc"], 4) for k, v in r["cusum_metrics"].items()}})
        bundles.append(out / "cal")
        print(name, {k: round(v["auroc"], 3) for k, v in r["cusum_metrics"].items()}, flush=True)
    lat = run("bench-encoders", *bundles, "--frames", "300").splitlines()[1:]
    for row, line in zip(rows, lat):
        p50, p99, speed = line.split()[:3]
        row.update(p50_ms=float(p50), p99_ms=float(p99), speedup=float(speed.rstrip("x")))
    with open(args.out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
