"""Offline study of one pipeline over a combined p-value (docs/detector-experiments.md, "One
pipeline over a combined p-value"): per frame p = min(1, 2 min(p1, p2)) of two scores'
conformal p-values, into one martingale CUSUM at rank 4 of the tuning drives. NumPy
reimplementation; the Rust tools are the reference.

  .venv/bin/python scripts/detail_study.py features OUT.npy     # once, a few minutes
  .venv/bin/python scripts/combined_study.py OUT.npy
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import detail_study as ds  # noqa: E402
import level_study as ls  # noqa: E402
import sequential_study as sq  # noqa: E402
import union_study as us  # noqa: E402


def p_values(data, name):
    """{role: [per-drive conformal p-values]} of one score, calibrated on the cal drives."""
    f = ds.fit_mahalanobis(np.concatenate([us.FEATURES[name](d) for d in data["fit"]]))
    ref = np.concatenate([f(us.FEATURES[name](d)) for d in data["cal"]])
    return {r: [sq.p_values(f(us.FEATURES[name](d)), ref) for d in data[r]] for r in us.ROLES}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=pathlib.Path)
    a = ap.parse_args()
    data = np.load(a.data, allow_pickle=True).item()
    pv = {n: p_values(data, n) for n in ("P", "PD", "D")}
    comb = lambda x, y: {r: [np.minimum(1, 2 * np.minimum(u, v)) for u, v in zip(x[r], y[r])] for r in us.ROLES}  # noqa: E731
    streams = {"1: PD alone": (pv["PD"], [(10, 2)]),
               "2: PD and D combined": (comb(pv["PD"], pv["D"]), [(10, 2), (5, 1), (1, 1)]),
               "3: P and D combined": (comb(pv["P"], pv["D"]), [(10, 2), (5, 1), (1, 1)])}
    res = {}
    for label, (p, grid) in streams.items():
        for w, dec in grid:
            st = {r: [sq.pipeline_of_p(x, w, dec) for x in p[r]] for r in us.ROLES}
            n = f"{label}, CUSUM ({w}, {dec}) rank 4"
            res[n] = ls.evaluate(n, [st], [4], data)
    base = next(iter(res.values()))
    ok = {k: v for k, v in res.items() if v[0] >= base[0] and base[2] <= v[2]}
    best = min(ok, key=lambda k: ok[k][1])
    print(f"\nrule: least mean delay among those detecting >= {base[0]} drives and every type candidate 1 "
          f"detects: {best} (mean delay {ok[best][1]:.1f})")


if __name__ == "__main__":
    main()
