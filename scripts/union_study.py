"""Offline study of two scores with two pipelines and one verdict (docs/detector-experiments.md,
"Two scores, two pipelines, one verdict"): each score has its own conformal p-values and
sequential statistic; either alarms, each at its share of the tuning drives' rank (union bound).
NumPy reimplementation; the Rust tools are the reference.

  .venv/bin/python scripts/detail_study.py features OUT.npy     # once, a few minutes
  .venv/bin/python scripts/union_study.py OUT.npy
"""

import argparse
import itertools
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import detail_study as ds  # noqa: E402
import level_study as ls  # noqa: E402
import sequential_study as sq  # noqa: E402

ROLES = ("tune", "val", "fa")
FEATURES = {
    "P": lambda d: d["X"],
    "PD": lambda d: np.concatenate([d["X"], d["D"]], axis=1),
    "D": lambda d: d["D"],
}


def statistics(data, name, stats):
    """{statistic name: {role: [per-drive statistic]}} for one score."""
    f = ds.fit_mahalanobis(np.concatenate([FEATURES[name](d) for d in data["fit"]]))
    sc = {r: [f(FEATURES[name](d)) for d in data[r]] for r in ("cal",) + ROLES}
    ref = np.concatenate(sc["cal"])
    out = {}
    for st in stats:
        if st[0] == "cusum":
            out[f"{name} CUSUM ({st[1]}, {st[2]})"] = {r: [sq.pipeline(s, ref, st[1], st[2]) for s in sc[r]] for r in ROLES}
        else:
            out[f"{name} level w={st[1]}"] = {r: [ls.level(s, st[1]) for s in sc[r]] for r in ROLES}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=pathlib.Path)
    a = ap.parse_args()
    data = np.load(a.data, allow_pickle=True).item()
    cus = [("cusum", 10, 2), ("cusum", 5, 1), ("cusum", 1, 1)]
    pd = statistics(data, "PD", cus[:1])
    p = statistics(data, "P", cus[:1])
    d = statistics(data, "D", cus + [("level", 3), ("level", 10)])
    res = {}
    for k, v in pd.items():
        res["1: " + k] = ls.evaluate("1: " + k + " rank 4", [v], [4], data)
    for k, v in d.items():
        res["2: " + k] = ls.evaluate("2: " + k + " rank 4", [v], [4], data)
    for label, first in (("3", pd), ("4", p)):
        (fk, fv), = first.items()
        for (dk, dv), (r1, r2) in itertools.product(d.items(), ((2, 2), (3, 1), (1, 3))):
            n = f"{label}: {fk} rank {r1} or {dk} rank {r2}"
            res[n] = ls.evaluate(n, [fv, dv], [r1, r2], data)
    base = res[next(iter(res))][0]
    ok = {k: v[:2] for k, v in res.items() if v[0] >= base}
    best = min(ok, key=lambda k: ok[k][1])
    print(f"\nrule: least mean delay among those detecting >= {base}: {best} {ok[best]}")


if __name__ == "__main__":
    main()
