"""Exploration (session 38, issue 14): natural-scene statistics as a distortion branch.

The shipped scores read a frame's content (the posterior) and its detail energy, so a rare clear
scene (a bus close up, the map's edge) scores like rain or fog for 10 to 30 frames and sets the
threshold (docs/detector-experiments.md, "Issue 14's floors today"). Image-quality research
measures distortion apart from content: the mean-subtracted contrast-normalised (MSCN)
coefficients of a natural image follow a stable law whatever it shows, and noise, blur, rain
streaks and snow change that law (Mittal, Moorthy & Bovik, BRISQUE, 2012). This script measures
30 MSCN statistics per frame (`features`, below), fits a Gaussian mixture to them on the clear fit
drives, and runs its score through `sequential_study.py`'s pipeline as a branch of its own
(conformal p-values from the calibration drives, window 1, CUSUM with drift `--decay`, threshold
the largest S of the tuning drives, as the direction branch sets its own). Optionally it adds the
shipped verdict (`vae-ood eval` frames.csv) as the other half of a union.

Roles: fit = the 130 drives the shipped reference is fitted on (make train-data's train split,
heldout-data, tuning-data, more-maps-data), cal = the calibration and train_val drives, tune =
make tuning2-data, tune3 = make tuning3-data (three more maps; counted, never chosen on),
val = make validation-data. Never run it on the test set or a false-alarm set.

  .venv/bin/python scripts/mscn_study.py features out/mscn.npy          # about 4 min, 2 cores
  .venv/bin/python scripts/mscn_study.py compare out/mscn.npy --components 8 \\
      [--shipped out/s36/val_default out/s36/tune2_default]            # vae-ood eval out dirs
"""
import argparse
import collections
import csv
import glob
import io
import json
import pathlib
import sys
from multiprocessing import Pool

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sequential_study as sq  # noqa: E402
from detail_study import auroc, halve  # noqa: E402

W = sq.W
TYPES = ["brightness", "fog", "noise", "rain", "snow", "occlusion", "motion_blur"]
SIGMA, RADIUS = 7 / 6, 4  # BRISQUE's local window; scipy's radius int(3 sigma + 0.5)
TEXTURE_SPREAD, MIN_TEXTURED = 4.0, 0.15  # a frame with too little texture carries no evidence


def gaussian(g):
    """Separable Gaussian blur, edges replicated (scipy.ndimage.gaussian_filter, mode nearest)."""
    k = np.exp(-0.5 * (np.arange(-RADIUS, RADIUS + 1) / SIGMA) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        p = np.pad(g, [(RADIUS, RADIUS) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        n = g.shape[axis]
        g = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return g


def mscn(y, share=False):
    """(y - mu) / (sigma + 1): luma y in 0..255, mu and sigma its local Gaussian mean and spread;
    with `share`, also the share of pixels whose spread is at least TEXTURE_SPREAD."""
    mu = gaussian(y)
    sigma = np.sqrt(np.abs(gaussian(y * y) - mu * mu))
    x = (y - mu) / (sigma + 1.0)
    return (x, float(np.mean(sigma >= TEXTURE_SPREAD))) if share else x


def statistics(x):
    """15 statistics of one scale's MSCN field: ln E[x^2], (E|x|)^2 / E[x^2] (the generalised
    Gaussian's shape), ln of the kurtosis, then for the 4 neighbour directions (right, down,
    down-right, down-left) the products' mean and the ln spread of their negative and positive
    parts (the asymmetric generalised Gaussian's two sides; -14 when a side is empty)."""
    x2 = (x * x).mean()
    out = [np.log(x2 + 1e-9), np.abs(x).mean() ** 2 / (x2 + 1e-9), np.log((x ** 4).mean() / (x2 * x2 + 1e-12) + 1e-9)]
    for a, b in [(x[:, :-1], x[:, 1:]), (x[:-1, :], x[1:, :]), (x[:-1, :-1], x[1:, 1:]), (x[:-1, 1:], x[1:, :-1])]:
        p = (a * b).ravel()
        neg, pos = p[p < 0], p[p > 0]
        out += [p.mean(),
                np.log(np.sqrt((neg ** 2).mean()) + 1e-6) if len(neg) else -14.0,
                np.log(np.sqrt((pos ** 2).mean()) + 1e-6) if len(pos) else -14.0]
    return out


def features(rgb):
    """30 MSCN statistics of a uint8 HxWx3 frame (its BT.601 luma, then its 2x2 area halving),
    then the share of its textured pixels (crates/core/src/mscn.rs leaves frames with a share
    under MIN_TEXTURED unmeasured: score 0, p-value 1, not in the fit)."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    x, share = mscn(y, share=True)
    return np.array(statistics(x) + statistics(mscn(halve(y))) + [share])


def one(bag):
    from PIL import Image
    from rosbags.highlevel import AnyReader

    f = []
    with AnyReader([pathlib.Path(bag)]) as r:
        conns = [c for c in r.connections if c.topic.endswith("compressed")]
        for c, _, raw in r.messages(connections=conns):
            f.append(features(np.asarray(Image.open(io.BytesIO(bytes(r.deserialize(raw, c.msgtype).data))).convert("RGB"))))
    m = sq.meta(bag)
    ood = np.zeros(m["frames"], bool)
    ood[m["ood_frames"]] = True
    return {"path": bag, "D": np.array(f), "ood": ood, "type": m["condition"], "map": m["map"]}


def roles():
    split = lambda d, s: sorted(b for b in glob.glob(f"{W}/{d}/*/bag") if sq.meta(b)["split"] in s)  # noqa: E731
    every = lambda d: sorted(glob.glob(f"{W}/{d}/*/bag"))  # noqa: E731
    return {"fit": split("train", ("train",)) + every("heldout") + every("tuning") + every("more_maps"),
            "cal": split("train", ("calibration", "train_val")), "tune": every("tuning2"),
            "tune3": every("tuning3"), "val": every("validation")}


def longest(mask):
    best = cur = 0
    for x in mask:
        cur = cur + 1 if x else 0
        best = max(best, cur)
    return best


def shipped(out_dir):
    """Per drive of a `vae-ood eval` out dir: its score and its verdict (state OOD), by path."""
    by = collections.OrderedDict()
    for r in csv.DictReader(open(f"{out_dir}/frames.csv")):
        by.setdefault(int(r["input"]), []).append(r)
    paths = [i["path"] for i in json.load(open(f"{out_dir}/report.json"))["inputs"]]
    return {str(pathlib.Path(p).resolve()): (np.array([float(r["score"]) for r in rs]), np.array([r["state"] == "OOD" for r in rs]))
            for p, rs in zip(paths, by.values())}


def delay(alarm, ood):
    h = np.flatnonzero(alarm[np.flatnonzero(ood)[0]:])
    return int(h[0]) if len(h) else None


def compare(a):
    from sklearn.mixture import GaussianMixture

    data = np.load(a.data, allow_pickle=True).item()
    textured = lambda D: D[:, 30] >= MIN_TEXTURED if D.shape[1] > 30 else np.ones(len(D), bool)  # noqa: E731
    F = np.concatenate([d["D"][textured(d["D"]), :30] for d in data["fit"]])
    mean, sd = F.mean(0), F.std(0) + 1e-9
    g = GaussianMixture(a.components, covariance_type="full", reg_covar=1e-4, random_state=a.seed, max_iter=300).fit((F - mean) / sd)
    # The fit's most likely frame scores 0, so a textured frame scores >= 0 there and the flat
    # ones' 0 is the least unusual, as in the Rust score (which is twice this, on a mixture
    # fitted by its own EM on unstandardised features: figures agree in rank, not in value).
    base = g.score_samples((F - mean) / sd).max()
    S = {r: [np.where(textured(d["D"]), np.maximum(base - g.score_samples((d["D"][:, :30] - mean) / sd), 0.0), 0.0) for d in data[r]]
         for r in data}
    val, clear_val = data["val"], np.concatenate([s[~d["ood"]] for s, d in zip(S["val"], data["val"])])
    print(f"{a.components} components (seed {a.seed}); per type: per-frame AUROC, the median OOD score, the share of "
          "clear tuning frames above it, the 5 longest runs of them")
    for t in TYPES:
        of = [(s, d) for s, d in zip(S["val"], val) if d["type"] == t]
        q = np.median(np.concatenate([s[d["ood"]] for s, d in of]))
        au = np.mean([auroc(np.concatenate([clear_val, s[d["ood"]]]), np.r_[np.zeros(len(clear_val), bool), np.ones(d["ood"].sum(), bool)])
                      for s, d in of])
        print(f"  {t:12s} {au:.3f}  {q:9.2f}  {np.mean(np.concatenate(S['tune']) > q):.4f}  "
              f"{sorted((longest(s > q) for s in S['tune']), reverse=True)[:5]}")
    ref = np.concatenate(S["cal"])
    ship = None
    if a.shipped:
        v, t = shipped(a.shipped[0]), shipped(a.shipped[1])
        ship = [v[str(pathlib.Path(d["path"]).resolve())][1] for d in val]
        n = [delay(x, d["ood"]) for x, d in zip(ship, val)]
        found = [x for x in n if x is not None]
        print(f"shipped verdict: {len(found)}/{len(val)}, median delay {np.median(found)}")
    for decay in a.decay:
        st = {r: [sq.pipeline(s, ref, 1, decay) for s in S[r]] for r in ("tune", "tune3", "val")}
        thr = max(sq.threshold(st["tune"], 1), np.log(1e4))  # the largest tuning S, at least Ville's
        res = collections.defaultdict(list)
        both = collections.defaultdict(list)
        for i, d in enumerate(val):
            res[d["type"]].append(delay(st["val"][i] > thr, d["ood"]))
            if ship:
                both[d["type"]].append(delay((st["val"][i] > thr) | ship[i], d["ood"]))
        early = sum(bool(np.any(s[:np.flatnonzero(d["ood"])[0]] > thr)) for s, d in zip(st["val"], val))
        line = lambda r: f"{sum(x is not None for v in r.values() for x in v)}/{len(val)} median " + \
            f"{np.median([x for v in r.values() for x in v if x is not None]):.1f}; " + \
            " ".join(f"{k}:{v}" for k, v in sorted(r.items()))  # noqa: E731
        print(f"branch decay {decay} threshold {thr:.2f}: {line(res)}; clear frames alarmed before onset on {early} drives; "
              f"tuning3 drives over it {sum(s.max() > thr for s in st['tune3'])}/{len(st['tune3'])}")
        if ship:
            print(f"   with the shipped verdict: {line(both)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("features", "compare"))
    ap.add_argument("data", type=pathlib.Path)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decay", type=float, nargs="+", default=[1.0, 1.25, 1.5])
    ap.add_argument("--shipped", nargs=2, metavar=("VAL_DIR", "TUNE2_DIR"))
    a = ap.parse_args()
    if a.what == "compare":
        return compare(a)
    data = {}
    with Pool(2) as pool:
        for role, bags in roles().items():
            data[role] = pool.map(one, bags)
            print(role, len(bags), flush=True)
    np.save(a.data, data, allow_pickle=True)


if __name__ == "__main__":
    main()
