"""Offline study of a reference fitted on more clear drives (docs/detector-experiments.md,
"A reference fitted on more clear drives"): the shipped score (negative log-likelihood of the
posterior + detail features under a Gaussian mixture) fitted on the 22 training drives or on
100 clear drives, each candidate's window and decay chosen by `vae-ood calibrate`'s rule, every
threshold from the 78 fresh drives of `make tuning2-data`. NumPy / scikit-learn
reimplementation; the Rust tools are the reference.

  .venv/bin/python scripts/fit_study.py features OUT.npy     # once, a few minutes
  .venv/bin/python scripts/fit_study.py compare OUT.npy
"""

import argparse
import glob
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import detail_study as ds  # noqa: E402
import sequential_study as sq  # noqa: E402

W = sq.W
WINDOWS, DECAYS, RANK = (1, 5, 10, 20), (0, 0.5, 1, 2, 4), 4


def role_bags():
    r = sq.roles()
    return {"fit": r["fit"], "more": sorted(glob.glob(f"{W}/heldout/*/bag")) + sorted(glob.glob(f"{W}/tuning/*/bag")),
            "cal": r["cal"], "tune": sorted(glob.glob(f"{W}/tuning2/*/bag")), "val": r["val"]}


def feat(d):
    return np.concatenate([d["X"], d["D"]], axis=1)


def reference(F, k):
    """The score: Mahalanobis distance (k = 1) or mixture negative log-likelihood."""
    if k == 1:
        return ds.fit_mahalanobis(F)
    from sklearn.mixture import GaussianMixture

    g = GaussianMixture(k, covariance_type="full", reg_covar=1e-6, random_state=0, max_iter=300).fit(F)
    return lambda X: -g.score_samples(X)


def choose(sc, ref, val):
    """`vae-ood calibrate`'s rule: the grid point with the least mean delay (misses count their
    OOD length), ties to fewer misses, then the shorter window. Returns its line."""
    best = None
    for w in WINDOWS:
        for dec in DECAYS:
            tune = [sq.pipeline(s, ref, w, dec) for s in sc["tune"]]
            t = max(sq.threshold(tune, RANK), np.log(1e4))
            dl = [sq.first_alarm([sq.pipeline(s, ref, w, dec)], [t], d["ood"]) for s, d in zip(sc["val"], val)]
            mean = np.mean([x if x is not None else int(d["ood"].sum()) for x, d in zip(dl, val)])
            key = (mean, sum(x is None for x in dl), w, dec)
            if best is None or key < best[0]:
                best = (key, t, dl)
    (mean, missed, w, dec), t, dl = best
    per = {}
    for d, x in zip(val, dl):
        per.setdefault(d["type"], []).append("-" if x is None else str(x))
    found = [x for x in dl if x is not None]
    return {"window": w, "decay": dec, "threshold": t, "detected": len(found), "mean": mean,
            "median": float(np.median(found)) if found else float("nan"), "per": per,
            "types": {k for k, v in per.items() if any(x != "-" for x in v)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("features", "compare"))
    ap.add_argument("data", type=pathlib.Path)
    ap.add_argument("--encoder", type=pathlib.Path, default=sq.ROOT / "models/default/encoder.onnx")
    ap.add_argument("--roles", nargs="*", help="features: only these roles, added to DATA if it exists")
    a = ap.parse_args()
    if a.what == "features":
        bags = {r: b for r, b in role_bags().items() if not a.roles or r in a.roles}
        old = np.load(a.data, allow_pickle=True).item() if a.roles and a.data.exists() else {}
        new = sq.features(a.encoder, a.data, detail=ds.detail, role_bags=bags)
        return np.save(a.data, {**old, **new}, allow_pickle=True)
    data = np.load(a.data, allow_pickle=True).item()
    print(f"fit {len(data['fit'])} + {len(data['more'])} drives, {len(data['tune'])} tuning drives, "
          f"{len(data['val'])} validation drives", flush=True)
    fits = {"F22": np.concatenate([feat(d) for d in data["fit"]])}
    fits["F100"] = np.concatenate([fits["F22"]] + [feat(d) for d in data["more"]])
    res = {}
    for name, k in (("F22", 8), ("F100", 1), ("F100", 8), ("F100", 16)):
        f = reference(fits[name], k)
        sc = {r: [f(feat(d)) for d in data[r]] for r in ("cal", "tune", "val")}
        c = choose(sc, np.concatenate(sc["cal"]), data["val"])
        res[(name, k)] = c
        print(f"{name} k={k}: per-frame AUROC {ds.per_type_auroc(data['val'], sc['val'])}\n"
              f"   window {c['window']} decay {c['decay']} threshold {c['threshold']:.1f}: detected {c['detected']}/"
              f"{len(data['val'])}, mean delay {c['mean']:.1f}, median of detected {c['median']:.0f}; "
              + " ".join(f"{t}:{','.join(v)}" for t, v in sorted(c["per"].items())), flush=True)
    base = res[("F22", 8)]
    ok = {k: v for k, v in res.items() if v["detected"] >= base["detected"] and base["types"] <= v["types"]}
    best = min(ok, key=lambda k: ok[k]["mean"])
    print(f"\nrule: least mean delay among those detecting >= {base['detected']} drives and every type the "
          f"shipped reference detects: {best[0]} k={best[1]}")


if __name__ == "__main__":
    main()
