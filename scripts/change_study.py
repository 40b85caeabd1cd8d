"""Exploration (session 45, issue 14): how far the posterior moves from one frame to the next.

Occlusion is the slowest shift for both bundled detectors: its frames score only a little above a
clear scene's (p-values near 0.015). But its blotches land somewhere else on every frame, so the
encoder's mean jumps between frames where a clear drive's moves a little. This script measures
the step mu_t - mu_(t-1) on drives and simulates it as a branch of its own, as the direction
branch is run: one Gaussian fitted on the score's fit drives' steps, its score the step's
Mahalanobis distance, conformal p-values from the calibration drives' steps, power martingale
(window 1, grid 100), CUSUM with drift 1, threshold the largest S any tuning drive reached.
It chooses nothing (`vae-ood calibrate --change-branch` builds the branch).

Roles come from the bundle's manifest (its fit, calibration and tuning drives); OOD drives from
make validation-data and validation2-data. Never run it on the test sets or a false-alarm set.

  .venv/bin/python scripts/change_study.py encode models/default out/mu_default DRIVE_DIRS...
  .venv/bin/python scripts/change_study.py branch models/default out/mu_default

`encode` writes each drive's mu (one .npy per drive, onnxruntime on the bundle's encoder, frames
area-resized as the bundle's input says); `branch` prints the steps' quantiles on the tuning drives,
the largest tuning S, how many tuning drives a slower stream (every 2nd or 3rd frame) would alarm,
and each validation drive's delay.
"""
import json
import pathlib
import sys

import numpy as np


def encode(bundle, out, drives):
    import cv2
    import onnxruntime as ort
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out.mkdir(parents=True, exist_ok=True)
    sess = ort.InferenceSession(str(bundle / "encoder.onnx"))
    inp = sess.get_inputs()[0]
    _, _, h, w = inp.shape
    ts = get_typestore(Stores.ROS2_JAZZY)
    for d in drives:
        dst = out / f"{d.name}.npy"
        if dst.exists():
            continue
        frames = []
        with AnyReader([d / "bag"], default_typestore=ts) as r:
            conns = [x for x in r.connections if x.msgtype == "sensor_msgs/msg/CompressedImage"]
            for conn, _, raw in r.messages(connections=conns):
                m = r.deserialize(raw, conn.msgtype)
                img = cv2.imdecode(np.frombuffer(m.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                frames.append(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
        x = np.stack(frames).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        np.save(dst, np.concatenate([sess.run(None, {inp.name: x[i:i + 1]})[0] for i in range(len(x))]))
        print(d.name, len(x), flush=True)


def branch(bundle, mu_dir):
    import yaml

    m = yaml.safe_load((bundle / "manifest.yaml").read_text())
    name = lambda x: x.split()[0].rsplit("/bag", 1)[0].split("/")[-1]
    fit = [name(x) for x in m["score"]["fitted_on"]]
    cal = [name(x) for x in m["calibration"]["data"]["calibration"]]
    tun = [name(x) for x in m["calibration"]["data"]["tuning_id"]]
    load = lambda n: np.load(mu_dir / f"{n}.npy")
    fit_steps = np.concatenate([np.diff(load(n), axis=0) for n in fit])
    mean, precision = fit_steps.mean(0), np.linalg.inv(np.cov(fit_steps.T))

    def steps(a, gap=1):
        d = a[gap:] - a[:-gap] - mean
        return np.einsum("ij,jk,ik->i", d, precision, d)

    calib = np.sort(np.concatenate([steps(load(n)) for n in cal]))
    eps = (np.arange(100) + 0.5) / 100
    ln_eps = np.log(eps)

    def trace(scores):
        p = (len(calib) - np.searchsorted(calib, scores, side="left") + 1) / (len(calib) + 1)
        t = ln_eps[None, :] + (eps[None, :] - 1) * np.log(p)[:, None]
        top = t.max(1)
        log_m = top + np.log(np.exp(t - top[:, None]).sum(1)) - np.log(100)
        s, out = 0.0, []
        for x in log_m:
            s = max(0.0, s + x - 1.0)
            out.append(s)
        return np.array(out)

    tuning = np.concatenate([steps(load(n)) for n in tun])
    print(f"{bundle}: {len(fit)} fit drives ({len(fit_steps)} steps), {len(calib)} calibration steps, {len(tun)} tuning drives")
    print("  tuning steps' distance: " + ", ".join(f"q{q} {np.quantile(tuning, q):.1f}" for q in (0.99, 0.999, 0.9999)))
    largest = sorted(((trace(steps(load(n))).max(), n) for n in tun), reverse=True)
    threshold = largest[0][0]
    print("  largest tuning S:", ", ".join(f"{s:.2f} ({n})" for s, n in largest[:5]), f"-> threshold {threshold:.2f}")
    for gap in (2, 3):
        over = sum(trace(steps(load(n), gap)).max() > threshold for n in tun)
        print(f"  every {gap}th frame: {over} of {len(tun)} tuning drives over it")
    delays = {}
    for f in sorted(mu_dir.glob("ood_*.npy")):
        meta = next(json.loads(p.read_text()) for b in ("out/validation", "out/validation2", "data/sample")
                    if (p := pathlib.Path(b) / f.stem / "meta.json").exists())
        onset = min(meta["ood_frames"])
        s = trace(steps(load(f.stem)))  # s[i]: S after frame i + 1
        before = np.nonzero(s[:onset - 1] > threshold)[0]
        after = np.nonzero(s[onset - 1:] > threshold)[0]
        delays.setdefault(meta["condition"], []).append(
            f"alarm at {before[0] + 1}" if len(before) else (int(after[0]) if len(after) else "-"))
    for c, v in sorted(delays.items()):
        print(f"  {c:12s} {v}")


if __name__ == "__main__":
    cmd, bundle, mu_dir = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    if cmd == "encode":
        encode(bundle, mu_dir, [pathlib.Path(d) for d in sys.argv[4:]])
    else:
        branch(bundle, mu_dir)
