"""Offline study of the detail channel (docs/detector-experiments.md, "A detail channel beside
the latent posterior"): per-frame AUROC per validation type and the sequential verdict at the
certified threshold, for the shipped Mahalanobis score over (mu, logvar) against one refitted
over (mu, logvar, d), d the frame's log Laplacian energy per octave. NumPy reimplementation;
the Rust tools are the reference.

  .venv/bin/python scripts/detail_study.py features OUT.npy     # once, a few minutes
  .venv/bin/python scripts/detail_study.py compare OUT.npy
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sequential_study as sq  # noqa: E402


def abs_laplacian(g):
    """|4-neighbour Laplacian| over the interior of g."""
    return np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])


def laplacian_energy(g):
    return max(float(abs_laplacian(g).mean()), 1e-6)


def halve(g):
    h, w = g.shape[0] // 2 * 2, g.shape[1] // 2 * 2
    g = g[:h, :w]
    return 0.25 * (g[0::2, 0::2] + g[1::2, 0::2] + g[0::2, 1::2] + g[1::2, 1::2])


def direction_balance(g):
    """ln D - mean ln D for 0, 45 and 90 degrees, D the mean absolute neighbour difference
    along each of four directions (the diagonals' divided by sqrt 2)."""
    d = np.array([np.abs(np.diff(g, axis=1)).mean(), np.abs(g[1:, 1:] - g[:-1, :-1]).mean() / np.sqrt(2),
                  np.abs(np.diff(g, axis=0)).mean(), np.abs(g[1:, :-1] - g[:-1, 1:]).mean() / np.sqrt(2)])
    ln = np.log(np.maximum(d, 1e-6))
    return list((ln - ln.mean())[:3])


def detail(rgb, grid=1, directions=False):
    """(ln E0, ln E1, ln E2) of a uint8 HxWx3 frame, then with grid > 1 ln E0 of each cell of a
    grid x grid split (row by row; a pixel belongs to cell (y * grid // h, x * grid // w)), then
    with directions the finest octave's direction balance (session 34)."""
    g = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255  # BT.601 luma
    balance = direction_balance(g) if directions else []
    out = []
    if grid > 1:
        h, w = g.shape
        lap = abs_laplacian(g)
        cy = (np.arange(1, h - 1) * grid // h)[:, None]
        cx = (np.arange(1, w - 1) * grid // w)[None, :]
        cell = (cy * grid + cx).ravel()
        sums = np.bincount(cell, lap.ravel(), grid * grid)
        cells = np.log(np.maximum(sums / np.bincount(cell, minlength=grid * grid), 1e-6))
    for _ in range(3):
        out.append(np.log(laplacian_energy(g)))
        g = halve(g)
    return np.array(out + (list(cells) if grid > 1 else []) + balance)


def fit_mahalanobis(F):
    mean = F.mean(0)
    cov = np.cov(F.T, bias=True) + 1e-6 * np.eye(F.shape[1])
    prec = np.linalg.inv(cov)
    return lambda X: np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", X - mean, prec, X - mean), 0))


def auroc(s, ood):
    from scipy.stats import rankdata

    r = rankdata(s)
    n1, n0 = ood.sum(), (~ood).sum()
    return (r[ood].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def per_type_auroc(drives, scores):
    """'type:AUROC ...': the mean per-frame AUROC of each type's drives."""
    per = {}
    for d, s in zip(drives, scores):
        per.setdefault(d["type"], []).append(auroc(s, d["ood"]))
    return " ".join(f"{k}:{np.mean(v):.3f}" for k, v in sorted(per.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("features", "compare"))
    ap.add_argument("data", type=pathlib.Path)
    ap.add_argument("--encoder", type=pathlib.Path, default=sq.ROOT / "models/default/encoder.onnx")
    ap.add_argument("--rank", type=int, default=4)
    a = ap.parse_args()
    if a.what == "features":
        return sq.features(a.encoder, a.data, detail=detail)
    data = np.load(a.data, allow_pickle=True).item()
    cands = {
        "posterior (shipped)": lambda d: d["X"],
        "posterior + detail": lambda d: np.concatenate([d["X"], d["D"]], axis=1),
        "detail alone (information)": lambda d: d["D"],
    }
    for name, feat in cands.items():
        f = fit_mahalanobis(np.concatenate([feat(d) for d in data["fit"]]))
        sc = {r: [f(feat(d)) for d in data[r]] for r in ("cal", "tune", "val", "fa")}
        print(f"== {name}: per-frame AUROC (mean of validation drives) {per_type_auroc(data['val'], sc['val'])}")
        ref = np.concatenate(sc["cal"])
        st = {r: [sq.pipeline(s, ref, 10, 2) for s in sc[r]] for r in ("tune", "val", "fa")}
        t = max(sq.threshold(st["tune"], a.rank), np.log(1e4))
        sq.report(f"   window 10 decay 2 threshold {t:.1f}", [st], [t], data)


if __name__ == "__main__":
    main()
