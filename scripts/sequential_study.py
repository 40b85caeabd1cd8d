"""Offline study of sequential tests under the drive-level threshold (docs/detector-experiments.md,
"A threshold that means something on video"). Reimplements the pipeline in NumPy so that
statistics and scores can be compared quickly; `vae-ood calibrate` and `vae-ood eval` are the
reference (thresholds here differ from theirs by a few per cent: PIL's box filter stands in
for the area resize).

  .venv/bin/python scripts/sequential_study.py features OUT.npy        # once, about 2 min
  .venv/bin/python scripts/sequential_study.py compare OUT.npy [--rank 4] [--score maha|knn]
  .venv/bin/python scripts/sequential_study.py change OUT.npy          # change statistic, union

Roles (scripts/roles.sh): fit = training drives, cal = calibration drives, tune = make
heldout-data + make tuning-data (78 drives), val = validation drives of every type, fa = make
falsealarm-data (50 drives; only ever counted, never chosen on).
"""

import argparse
import glob
import io
import json
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
W = ROOT / "out"
G = (np.arange(100) + 0.5) / 100  # the midpoint grid over epsilon, as the bundles use


def meta(bag):
    return json.loads((pathlib.Path(bag).parent / "meta.json").read_text())


def roles():
    split = lambda d, s: sorted(b for b in glob.glob(f"{W}/{d}/*/bag") if meta(b)["split"] in s)  # noqa: E731
    return {"fit": split("train", ("train",)), "cal": split("train", ("calibration", "train_val")),
            "tune": sorted(glob.glob(f"{W}/heldout/*/bag")) + sorted(glob.glob(f"{W}/tuning/*/bag")),
            "val": sorted(glob.glob(f"{W}/validation/*/bag")) + [str(ROOT / "data/sample/ood_fog_loop_empty_s7/bag")],
            "fa": sorted(glob.glob(f"{W}/falsealarm/*/bag"))}


def features(encoder, out, detail=None, role_bags=None):
    """(mu, logvar) of every frame of every role's drives (`role_bags`, default `roles()`), with
    labels, saved to `out` and returned; with `detail` (a function of the frame's uint8 RGB
    array), its value per frame too, as "D"."""
    import onnxruntime as ort
    from PIL import Image
    from rosbags.highlevel import AnyReader

    sess = ort.InferenceSession(str(encoder))
    name = sess.get_inputs()[0].name
    data = {}
    for role, bags in (role_bags or roles()).items():
        data[role] = []
        for bag in bags:
            x, d = [], []
            with AnyReader([pathlib.Path(bag)]) as r:
                conns = [c for c in r.connections if c.topic.endswith("compressed")]
                for c, _, raw in r.messages(connections=conns):
                    img = Image.open(io.BytesIO(bytes(r.deserialize(raw, c.msgtype).data))).convert("RGB")
                    a = (np.asarray(img.resize((64, 64), Image.BOX), np.float32) / 255).transpose(2, 0, 1)[None]
                    mu, lv = sess.run(None, {name: a})[:2]
                    x.append(np.concatenate([mu[0], lv[0]]))
                    if detail:
                        d.append(detail(np.asarray(img)))
            m = meta(bag)
            ood = np.zeros(m["frames"], bool)
            ood[m["ood_frames"]] = True
            data[role].append({"path": bag, "X": np.array(x), "ood": ood, "type": m["condition"]})
            if detail:
                data[role][-1]["D"] = np.array(d)
        print(role, len(data[role]), flush=True)
    np.save(out, data, allow_pickle=True)
    return data


def p_values(s, ref):
    ref = np.sort(ref)
    return (1 + len(ref) - np.searchsorted(ref, s, side="left")) / (len(ref) + 1)


def log_martingale(p, window):
    """log of the power martingale (mixed over G) of the last `window` p-values, per frame."""
    cs = np.concatenate([[0], np.cumsum(np.log(p))])
    out = np.zeros(len(p))
    for i in range(len(p)):
        lo = max(0, i - window + 1)
        a = (i + 1 - lo) * np.log(G) + (G - 1) * (cs[i + 1] - cs[lo])
        out[i] = a.max() + np.log(np.exp(a - a.max()).sum()) - np.log(len(G))
    return out


def cusum(x, decay):
    s, out = 0.0, np.zeros(len(x))
    for i, v in enumerate(x):
        s = max(0.0, s + v - decay)
        out[i] = s
    return out


def pipeline(s, ref, window, decay):
    """S per frame; 0 until the window is full, as in the bundles' pipeline."""
    return pipeline_of_p(p_values(s, ref), window, decay)


def pipeline_of_p(p, window, decay):
    """`pipeline` from p-values already computed."""
    lm = log_martingale(p, window)
    return np.concatenate([np.zeros(window - 1), cusum(lm[window - 1:], decay)])


def change(s, lag=15, base=30, decay=0.6):
    """CUSUM of the log score against the median of the drive's own frames [t-lag-base, t-lag)."""
    ls = np.log(s)
    x = np.array([ls[i] - np.median(ls[max(0, i - lag - base):i - lag]) if i - lag - max(0, i - lag - base) >= 5 else 0.0
                  for i in range(len(ls))])
    return cusum(x, decay)


def mahalanobis(bundle=ROOT / "models/default"):
    import yaml

    m = yaml.safe_load((bundle / "manifest.yaml").read_text())["score"]
    mean, prec = np.array(m["mean"]), np.array(m["precision"]).reshape(len(m["mean"]), -1)
    return lambda X: np.sqrt(np.einsum("ij,jk,ik->i", X - mean, prec, X - mean))


def knn(fit, k=5, stride=4):
    """Distance to the k-th nearest training posterior, in coordinates whitened on them."""
    F = np.concatenate([d["X"] for d in fit])[::stride]
    m = F.mean(0)
    L = np.linalg.cholesky(np.linalg.inv(np.cov(F.T) + 1e-6 * np.eye(F.shape[1])))
    R = (F - m) @ L
    R2 = (R ** 2).sum(1)

    def score(X):
        Q = (X - m) @ L
        d = (Q ** 2).sum(1)[:, None] + R2[None, :] - 2 * Q @ R.T
        return np.sqrt(np.maximum(np.partition(d, k - 1, axis=1)[:, k - 1], 0))
    return score


def first_alarm(stats, thresholds, ood):
    on = np.flatnonzero(ood)[0]
    hits = [np.flatnonzero(S[on:] > t) for S, t in zip(stats, thresholds)]
    hits = [int(h[0]) for h in hits if len(h)]
    return min(hits) if hits else None


def threshold(tune_stats, rank):
    """The rank-th largest of the tuning drives' largest S (per-drive bound rank / (K + 1))."""
    return np.sort([S.max() for S in tune_stats])[::-1][rank - 1]


def report(name, stat_sets, thresholds, data):
    res = {}
    for i, d in enumerate(data["val"]):
        res.setdefault(d["type"], []).append(first_alarm([s["val"][i] for s in stat_sets], thresholds, d["ood"]))
    found = [x for v in res.values() for x in v if x is not None]
    fa = sum(any(np.any(s["fa"][i] > t) for s, t in zip(stat_sets, thresholds)) for i in range(len(data["fa"])))
    print(f"{name}: validation {len(found)}/{sum(map(len, res.values()))} detected, median delay "
          f"{np.median(found) if found else float('nan'):.0f}; false-alarm drives {fa}/{len(data['fa'])}; "
          + " ".join(f"{k}:{v}" for k, v in sorted(res.items())), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("features", "compare", "change"))
    ap.add_argument("data", type=pathlib.Path)
    ap.add_argument("--encoder", type=pathlib.Path, default=ROOT / "models/default/encoder.onnx")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--score", choices=("maha", "knn"), default="maha")
    a = ap.parse_args()
    if a.what == "features":
        return features(a.encoder, a.data)
    data = np.load(a.data, allow_pickle=True).item()
    f = mahalanobis() if a.score == "maha" else knn(data["fit"])
    sc = {r: [f(d["X"]) for d in data[r]] for r in ("cal", "tune", "val", "fa")}
    ref = np.concatenate(sc["cal"])
    k = len(sc["tune"])
    print(f"{k} tuning drives; rank {a.rank}: per-drive false-alarm bound {a.rank / (k + 1):.4f}")
    if a.what == "compare":
        for w, dec in [(1, 0.5), (1, 1), (1, 2), (5, 1), (5, 2), (10, 1), (10, 2), (20, 2)]:
            st = {r: [pipeline(s, ref, w, dec) for s in sc[r]] for r in ("tune", "val", "fa")}
            t = max(threshold(st["tune"], a.rank), np.log(1e4))
            report(f"window {w} decay {dec} threshold {t:.1f}", [st], [t], data)
    else:
        A = {r: [pipeline(s, ref, 10, 1) for s in sc[r]] for r in ("tune", "val", "fa")}
        B = {r: [change(s) for s in sc[r]] for r in ("tune", "val", "fa")}
        half = a.rank // 2
        report("martingale CUSUM alone", [A], [threshold(A["tune"], a.rank)], data)
        report("change statistic alone", [B], [threshold(B["tune"], a.rank)], data)
        report("either (union bound: ranks split)", [A, B],
               [threshold(A["tune"], a.rank - half), threshold(B["tune"], half)], data)


if __name__ == "__main__":
    main()
