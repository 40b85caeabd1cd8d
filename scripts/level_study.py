"""Offline study of a level alarm beside the CUSUM (docs/detector-experiments.md, "A fast level
alarm beside the CUSUM"): the level statistic is the mean of ln(score) over the last w frames;
with the CUSUM, either alarms, each at its share of the tuning drives' rank (union bound).
NumPy reimplementation on the posterior + detail Mahalanobis score; the Rust tools are the
reference.

  .venv/bin/python scripts/detail_study.py features OUT.npy     # once, a few minutes
  .venv/bin/python scripts/level_study.py OUT.npy
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import detail_study as ds  # noqa: E402
import sequential_study as sq  # noqa: E402


def level(s, w):
    """Mean of ln(score) over the last w frames; -inf until w frames are seen."""
    c = np.concatenate([[0.0], np.cumsum(np.log(np.maximum(s, 1e-300)))])
    out = np.full(len(s), -np.inf)
    out[w - 1:] = (c[w:] - c[:-w]) / w
    return out


def delays(stat_sets, thresholds, data):
    """Per validation drive: frames from onset to the first alarm of any statistic (None: missed)."""
    return [sq.first_alarm([s["val"][i] for s in stat_sets], thresholds, d["ood"])
            for i, d in enumerate(data["val"])]


def evaluate(name, sets, ranks, data):
    """Prints one candidate's line (either statistic alarms, each at its rank of the tuning
    drives); returns (drives detected, mean delay with misses counting their OOD length, the
    types detected at least once)."""
    th = [sq.threshold(s["tune"], r) for s, r in zip(sets, ranks)]
    dl = delays(sets, th, data)
    mean = np.mean([x if x is not None else int(d["ood"].sum()) for x, d in zip(dl, data["val"])])
    found = [x for x in dl if x is not None]
    fa = sum(any(np.any(s["fa"][i] > t) for s, t in zip(sets, th)) for i in range(len(data["fa"])))
    per = {}
    for d, x in zip(data["val"], dl):
        per.setdefault(d["type"], []).append("-" if x is None else str(x))
    print(f"{name}: thresholds {', '.join(f'{t:.2f}' for t in th)}; detected {len(found)}/22, mean delay {mean:.1f}, "
          f"median of detected {np.median(found) if found else float('nan'):.0f}; false-alarm drives {fa}/50; "
          + " ".join(f"{k}:{','.join(v)}" for k, v in sorted(per.items())), flush=True)
    return len(found), mean, {k for k, v in per.items() if any(x != "-" for x in v)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=pathlib.Path)
    a = ap.parse_args()
    data = np.load(a.data, allow_pickle=True).item()
    feat = lambda d: np.concatenate([d["X"], d["D"]], axis=1)  # noqa: E731
    f = ds.fit_mahalanobis(np.concatenate([feat(d) for d in data["fit"]]))
    sc = {r: [f(feat(d)) for d in data[r]] for r in ("cal", "tune", "val", "fa")}
    ref = np.concatenate(sc["cal"])
    roles = ("tune", "val", "fa")
    cus = {r: [sq.pipeline(s, ref, 10, 2) for s in sc[r]] for r in roles}
    lev = {w: {r: [level(s, w) for s in sc[r]] for r in roles} for w in (1, 3, 5, 10)}
    cands = [("1: CUSUM alone, rank 4", [cus], [4])]
    cands += [(f"2: level w={w} alone, rank 4", [lev[w]], [4]) for w in (1, 3, 5, 10)]
    cands += [(f"3: CUSUM rank {a} + level w={w} rank {b}", [cus, lev[w]], [a, b])
              for w in (3, 5, 10) for a, b in ((2, 2), (3, 1))]
    print(f"{len(sc['tune'])} tuning drives; 22 validation drives; {len(sc['fa'])} false-alarm drives")
    for name, sets, ranks in cands:
        evaluate(name, sets, ranks, data)

if __name__ == "__main__":
    main()
