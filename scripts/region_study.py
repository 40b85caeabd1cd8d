"""Exploration (session 41, issue 14): natural-scene statistics per region, the frame judged by
its most ordinary region.

The MSCN branch's clear tail is a calibration drive's view over the map's edge (black void and
sky over a strip of road; docs/detector-experiments.md, session 40): a content change confined to
part of the frame. The shifts the branch sees (noise, rain, snow, motion blur) change the
imaging of the whole frame. So this measures the 30 MSCN statistics of `mscn_study.py` in each
quadrant of the frame (the MSCN fields of the whole frame, cut in 2x2), fits one Gaussian mixture
to the textured quadrants of the clear fit drives (every 4th frame), and scores a frame by the least unusual of its
textured quadrants (`min`) or the second least (`second`); a frame with fewer than 2 textured
quadrants carries no evidence (0), as a flat frame does in the shipped branch. The whole-frame
statistic (`whole`) is run beside it on the same roles, so the comparison is like for like.

Roles (fixed before any figure): fit = make train-data's train split and make heldout-data (40
drives); cal = the calibration and train_val drives; tune = make tuning2-data; val = make
validation-data. Never run it on the test set or a false-alarm set.

  .venv-data/bin/python scripts/region_study.py features out/s41/region.npy   # 2 cores
  .venv-data/bin/python scripts/region_study.py compare out/s41/region.npy
"""
import argparse
import collections
import glob
import io
import pathlib
import sys
from multiprocessing import Pool

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sequential_study as sq  # noqa: E402
from detail_study import auroc, halve  # noqa: E402
from mscn_study import TYPES, MIN_TEXTURED, TEXTURE_SPREAD, delay, gaussian, longest, statistics  # noqa: E402

W = sq.W


def fields(y):
    """MSCN field and local spread of luma y."""
    mu = gaussian(y)
    sigma = np.sqrt(np.abs(gaussian(y * y) - mu * mu))
    return (y - mu) / (sigma + 1.0), sigma


def quadrants(a):
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return [a[:h, :w], a[:h, w:], a[h:, :w], a[h:, w:]]


def features(rgb):
    """Row 0: the whole frame's 30 statistics and textured share; rows 1-4: each quadrant's."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    x, sigma = fields(y)
    xh, _ = fields(halve(y))
    rows = [statistics(x) + statistics(xh) + [float(np.mean(sigma >= TEXTURE_SPREAD))]]
    for q, qh, qs in zip(quadrants(x), quadrants(xh), quadrants(sigma)):
        rows.append(statistics(q) + statistics(qh) + [float(np.mean(qs >= TEXTURE_SPREAD))])
    return np.array(rows)


def one(job):
    bag, stride = job
    from PIL import Image
    from rosbags.highlevel import AnyReader

    f = []
    with AnyReader([pathlib.Path(bag)]) as r:
        conns = [c for c in r.connections if c.topic.endswith("compressed")]
        for k, (c, _, raw) in enumerate(r.messages(connections=conns)):
            if k % stride:
                continue
            f.append(features(np.asarray(Image.open(io.BytesIO(bytes(r.deserialize(raw, c.msgtype).data))).convert("RGB"))))
    m = sq.meta(bag)
    ood = np.zeros(m["frames"], bool)
    ood[m["ood_frames"]] = True
    return {"path": bag, "D": np.array(f), "ood": ood[::stride], "type": m["condition"], "map": m["map"]}


def roles():
    split = lambda d, s: sorted(b for b in glob.glob(f"{W}/{d}/*/bag") if sq.meta(b)["split"] in s)  # noqa: E731
    every = lambda d: sorted(glob.glob(f"{W}/{d}/*/bag"))  # noqa: E731
    return {"fit": split("train", ("train",)) + every("heldout"),
            "cal": split("train", ("calibration", "train_val")), "tune": every("tuning2"),
            "val": every("validation")}


def scorer(fit_rows, components, seed):
    """NLL above the fit's most likely row, >= 0, of 30-statistic rows; fitted on textured rows."""
    from sklearn.mixture import GaussianMixture

    F = fit_rows[fit_rows[:, 30] >= MIN_TEXTURED, :30]
    mean, sd = F.mean(0), F.std(0) + 1e-9
    g = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed, max_iter=300).fit((F - mean) / sd)
    base = g.score_samples((F - mean) / sd).max()
    return lambda R: np.where(R[:, 30] >= MIN_TEXTURED, np.maximum(base - g.score_samples((R[:, :30] - mean) / sd), 0.0), np.nan)


def compare(a):
    data = np.load(a.data, allow_pickle=True).item()
    whole = scorer(np.concatenate([d["D"][:, 0] for d in data["fit"]]), a.components, a.seed)
    region = scorer(np.concatenate([d["D"][:, 1:].reshape(-1, 31) for d in data["fit"]]), a.components, a.seed)

    def stats(d):
        w = np.nan_to_num(whole(d["D"][:, 0]), nan=0.0)
        q = np.sort(region(d["D"][:, 1:].reshape(-1, 31)).reshape(-1, 4), axis=1)  # nan (flat) sorts last
        enough = np.sum(~np.isnan(q), axis=1) >= 2
        return {"whole": w, "min": np.where(enough, q[:, 0], 0.0), "second": np.where(enough, q[:, 1], 0.0)}

    S = {r: [stats(d) for d in data[r]] for r in data}
    val = data["val"]
    for name in ("whole", "min", "second"):
        print(f"== {name} ({a.components} components, seed {a.seed})")
        clear_val = np.concatenate([s[name][~d["ood"]] for s, d in zip(S["val"], val)])
        ref = np.concatenate([s[name] for s in S["cal"]])
        tune = [s[name] for s in S["tune"]]
        print("  type: per-frame AUROC, median OOD p-value, share of clear tuning frames above the median OOD score, "
              "their 5 longest runs")
        for t in TYPES:
            of = [(s[name], d) for s, d in zip(S["val"], val) if d["type"] == t]
            o = np.concatenate([s[d["ood"]] for s, d in of])
            q = np.median(o)
            au = np.mean([auroc(np.concatenate([clear_val, s[d["ood"]]]),
                                np.r_[np.zeros(len(clear_val), bool), np.ones(d["ood"].sum(), bool)]) for s, d in of])
            print(f"  {t:12s} {au:.3f}  p {np.median(sq.p_values(o, ref)):.4f}  {np.mean(np.concatenate(tune) > q):.4f}  "
                  f"{sorted((longest(s > q) for s in tune), reverse=True)[:5]}")
        # Where the calibration tail comes from: the 5 highest calibration frames.
        cal = [(s[name][i], pathlib.Path(d["path"]).parent.name, i) for s, d in zip(S["cal"], data["cal"]) for i in range(len(d["ood"]))]
        print("  calibration's highest:", ", ".join(f"{n}[{i}] {v:.1f}" for v, n, i in sorted(cal, reverse=True)[:5]))
        for decay in a.decay:
            st = {r: [sq.pipeline(s[name], ref, 1, decay) for s in S[r]] for r in ("tune", "val")}
            thr = max(sq.threshold(st["tune"], 1), np.log(1e4))
            res = collections.defaultdict(list)
            for i, d in enumerate(val):
                res[d["type"]].append(delay(st["val"][i] > thr, d["ood"]))
            found = [x for v in res.values() for x in v if x is not None]
            early = sum(bool(np.any(s[:np.flatnonzero(d["ood"])[0]] > thr)) for s, d in zip(st["val"], val))
            print(f"  decay {decay} threshold {thr:.2f}: {len(found)}/{len(val)} median {np.median(found) if found else '-'}; "
                  + " ".join(f"{k}:{v}" for k, v in sorted(res.items())) + f"; early alarms on {early} drives")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("features", "compare"))
    ap.add_argument("data", type=pathlib.Path)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decay", type=float, nargs="+", default=[1.0, 1.5])
    a = ap.parse_args()
    if a.what == "compare":
        return compare(a)
    # A role measured before with the same drives is kept (a rerun after more data is made).
    data = np.load(a.data, allow_pickle=True).item() if a.data.is_file() else {}
    with Pool(2) as pool:
        for role, bags in roles().items():
            if [d["path"] for d in data.get(role, [])] == bags:
                continue
            data[role] = pool.map(one, [(b, 4 if role == "fit" else 1) for b in bags])
            print(role, len(bags), flush=True)
    a.data.parent.mkdir(parents=True, exist_ok=True)
    np.save(a.data, data, allow_pickle=True)


if __name__ == "__main__":
    main()
