"""Offline study of a Gaussian-mixture reference (docs/detector-experiments.md, "A mixture
reference"): the score is the negative log-likelihood of the posterior + detail features under a
mixture fitted on the fit drives, k components; k = 1 is the shipped Mahalanobis distance.
NumPy / scikit-learn reimplementation; the Rust tools are the reference.

  .venv/bin/python scripts/detail_study.py features OUT.npy     # once, a few minutes
  .venv/bin/python scripts/mixture_study.py OUT.npy
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


def main():
    from sklearn.mixture import GaussianMixture

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=pathlib.Path)
    a = ap.parse_args()
    data = np.load(a.data, allow_pickle=True).item()
    feat = us.FEATURES["PD"]
    fit = np.concatenate([feat(d) for d in data["fit"]])
    res = {}
    for k in (1, 2, 4, 8):
        if k == 1:
            f = ds.fit_mahalanobis(fit)
        else:
            g = GaussianMixture(k, covariance_type="full", reg_covar=1e-6, random_state=0, max_iter=300).fit(fit)
            f = lambda X, g=g: -g.score_samples(X)  # noqa: E731
        sc = {r: [f(feat(d)) for d in data[r]] for r in ("cal",) + us.ROLES}
        ref = np.concatenate(sc["cal"])
        print(f"== k={k}: per-frame AUROC {ds.per_type_auroc(data['val'], sc['val'])}")
        st = {r: [sq.pipeline(s, ref, 10, 2) for s in sc[r]] for r in us.ROLES}
        res[k] = ls.evaluate(f"   k={k}, CUSUM (10, 2) rank 4", [st], [4], data)
    base = res[1]
    ok = {k: v for k, v in res.items() if v[0] >= base[0] and base[2] <= v[2]}
    best = min(ok, key=lambda k: ok[k][1])
    print(f"\nrule: least mean delay among those detecting >= {base[0]} drives and every type k=1 detects: k={best}")


if __name__ == "__main__":
    main()
