"""What the flow does not explain, measured three ways (docs/detector-experiments.md, "Fine
unexplained change", session 23): per frame pair, the absolute difference between the first
prepared frame and the second sampled where Farnebäck's flow says each pixel went, summarised
as its mean (the shipped motion residual), its 99th percentile, or the mean of its fine part
(the map minus its own 3x3 median, clipped at zero: change narrower than three pixels, which
no motion the flow's 15-pixel window describes can explain). Each is taken as ln, averaged over
the stack's 6 pairs as the detector does, and its per-frame AUROC is reported per OOD drive
against the pre-onset frames of every drive given. OpenCV stands in for the Rust flow (the two
agree within 0.05 px, crates/core's flow test). An exploration aid: it chooses nothing by itself.

    .venv/bin/python scripts/residual_study.py --json OUT.json SET_DIR...
"""
import argparse
import json
import pathlib

import cv2
import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

FLOOR = 1e-6
DEPTH = 6
STATS = ("mean", "p99", "fine")


def frames(bag):
    ts = get_typestore(Stores.ROS2_JAZZY)
    with Reader(bag) as r:
        conns = [c for c in r.connections if "Image" in c.msgtype]
        assert conns, f"{bag}: no image topic"
        for c, _, raw in r.messages(connections=conns):
            m = ts.deserialize_cdr(raw, c.msgtype)
            if "Compressed" in c.msgtype:
                bgr = cv2.imdecode(np.frombuffer(m.data, np.uint8), cv2.IMREAD_COLOR)
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            else:
                yield np.frombuffer(m.data, np.uint8).reshape(m.height, m.width, 3)


def prepare(rgb, clahe):
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if g.shape != (120, 160):
        g = cv2.resize(g, (160, 120), interpolation=cv2.INTER_LINEAR)
    return clahe.apply(np.ascontiguousarray(g[3:116, 4:156]))


def pair_stats(prev, nxt):
    flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 1, 15, 1, 5, 1.1, 0)
    h, w = prev.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    tx, ty = gx + flow[..., 0], gy + flow[..., 1]
    inside = (tx >= 0) & (ty >= 0) & (tx <= w - 1) & (ty <= h - 1)
    warped = cv2.remap(nxt.astype(np.float32), tx, ty, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    r = np.abs(prev.astype(np.float32) - warped) / 255.0
    r[~inside] = 0.0
    fine = np.clip(r - cv2.medianBlur(r, 3), 0, None)
    v = r[inside]
    return {
        "mean": np.log(v.mean() + FLOOR) if v.size else np.log(FLOOR),
        "p99": np.log(np.percentile(v, 99) + FLOOR) if v.size else np.log(FLOOR),
        "fine": np.log(fine[inside].mean() + FLOOR) if v.size else np.log(FLOOR),
    }


def drive_series(bag):
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    prev, pairs, out = None, [], []
    for k, img in enumerate(frames(bag)):
        g = prepare(img, clahe)
        if prev is not None:
            pairs.append(pair_stats(prev, g))
        prev = g
        last = pairs[-DEPTH:]
        out.append({s: float(np.mean([p[s] for p in last])) for s in STATS} if len(last) == DEPTH else None)
    return out


def auroc(neg, pos):
    neg, pos = np.asarray(neg), np.asarray(pos)
    allv = np.concatenate([neg, pos])
    ranks = allv.argsort().argsort() + 1.0
    # average ranks for ties
    _, inv, cnt = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, ranks)
    ranks = (sums / cnt)[inv]
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="+", type=pathlib.Path)
    ap.add_argument("--json", type=pathlib.Path, required=True)
    a = ap.parse_args()
    drives = []
    for d in a.sets:
        for m in sorted(d.glob("*/meta.json")):
            meta = json.loads(m.read_text())
            series = drive_series(m.parent / "bag")
            drives.append({"drive": m.parent.name, "condition": meta["condition"],
                           "ood": meta["ood_frames"], "series": series})
            print(m.parent.name, flush=True)
    neg = {s: [] for s in STATS}
    for d in drives:
        onset = d["ood"][0] if d["ood"] else len(d["series"])
        for v in d["series"][:onset]:
            if v is not None:
                for s in STATS:
                    neg[s].append(v[s])
    rows = []
    for d in drives:
        if not d["ood"]:
            continue
        ood = set(d["ood"])
        row = {"drive": d["drive"], "condition": d["condition"]}
        for s in STATS:
            pos = [v[s] for k, v in enumerate(d["series"]) if k in ood and v is not None]
            row[s] = auroc(neg[s], pos)
        rows.append(row)
        print(f"{d['drive']:40s} " + " ".join(f"{s} {row[s]:.3f}" for s in STATS))
    by_type = {}
    for r in rows:
        by_type.setdefault(r["condition"], []).append(r)
    summary = {c: {s: {"mean": float(np.mean([r[s] for r in rs])), "min": float(np.min([r[s] for r in rs]))}
                   for s in STATS} for c, rs in sorted(by_type.items())}
    for c, v in summary.items():
        print(f"{c:14s} " + "  ".join(f"{s} mean {v[s]['mean']:.3f} min {v[s]['min']:.3f}" for s in STATS))
    a.json.write_text(json.dumps({"drives": rows, "by_type": summary, "negatives": len(neg["mean"])}, indent=1))


if __name__ == "__main__":
    main()
