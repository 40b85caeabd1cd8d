#!/usr/bin/env python3
"""Offline study of nonconformity scores on a trained encoder (docs/detector-experiments.md).

Encodes the default detector's drives with onnxruntime (the test venv: `.venv/bin/python`),
then prints per-frame AUROC for several scores built from the posterior: the KL of the k
quietest latents (the shipped rule), the KL of all latents, and the Mahalanobis distance of
(mu, logvar) from a Gaussian fitted on a chosen set of in-distribution drives. Columns: the
mean over the OOD validation drives of conditions without a floor (make validation-data's
snow, motion blur and occlusion, plus the sample's fog drive), the mean over the validation
drives of each floor partition (brightness, rain: one per map), the three test partitions of
the model card, and test rain after a 20-frame trailing mean of the log score (a rough
stand-in for what the sequential pipeline sees).

This is an analysis tool, not the product: `vae-ood calibrate` and `vae-ood eval` decide what
ships. Its resizing imitates the Rust preprocessing (PIL box for area, half-pixel bilinear
without antialiasing for bilinear); figures agree with `vae-ood eval` to about 0.005 AUROC.

With --heldout-dir (make heldout-data: 18 clear drives, 6 per map), a second table shows how
the Mahalanobis score moves with the drives its Gaussian is fitted on: disjoint draws of one
drive per map, of three per map, and all of them.

Usage: .venv/bin/python scripts/score_study.py --encoder models/default/encoder.onnx
         [--resize area|bilinear] [--size 64] [--train-dir out/train] [--validation-dir out/validation]
         [--heldout-dir out/heldout]
"""

import argparse
import io
import json
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOORS = ("brightness", "rain")  # the partitions with an AUROC floor (issue 5), validated apart
HEADER = ("| score | validation mean, other conditions | validation brightness | validation rain "
          "| test brightness | test rain | test noise | test rain, 20-frame mean |\n|---|---|---|---|---|---|---|---|")
SAMPLE = ROOT / "data" / "sample"


def roles():
    """The default detector's drive roles, read from scripts/roles.sh (their one definition):
    test drives keyed by OOD label ("test_id" for the clear one), tuning drive names, and the
    validation OOD drive names (without their onset)."""
    import subprocess

    script = ('S=data/sample; source scripts/roles.sh; printf "TEST %s\\n" "${TEST[@]}"; '
              'printf "TUNE_ID %s\\n" "${TUNE_ID[@]}"; printf "VAL_OOD %s\\n" "${VAL_OOD[@]}"')
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    test, tune, val = {}, [], []
    for line in out.splitlines():
        role, arg = line.split(" ", 1)
        path, _, label = arg.split(":")[0].partition("=")
        name = pathlib.Path(path).parent.name
        if role == "TEST":
            test[label or "test_id"] = name
        else:
            (tune if role == "TUNE_ID" else val).append(name)
    return test, tune, val


def bilinear(a, w, h):
    """OpenCV INTER_LINEAR: half-pixel centres, no antialiasing (the Rust `bilinear` filter)."""
    a = a.astype(np.float32)

    def axis(n_out, n_in):
        s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(s).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), s - i0

    y0, y1, fy = axis(h, a.shape[0])
    x0, x1, fx = axis(w, a.shape[1])
    r = a[y0] * (1 - fy)[:, None, None] + a[y1] * fy[:, None, None]
    return r[:, x0] * (1 - fx)[None, :, None] + r[:, x1] * fx[None, :, None]


def encode_drive(sess, drive, size, resize):
    """(mu, logvar, ood label) per frame of a generated drive (its bag and meta.json)."""
    from PIL import Image
    from rosbags.highlevel import AnyReader

    ood = set(json.loads((drive / "meta.json").read_text())["ood_frames"])
    mus, lvs = [], []
    with AnyReader([drive / "bag"]) as reader:
        conns = [c for c in reader.connections if c.topic == "/camera/image_raw/compressed"]
        for conn, _, raw in reader.messages(connections=conns):
            im = Image.open(io.BytesIO(bytes(reader.deserialize(raw, conn.msgtype).data))).convert("RGB")
            if resize == "bilinear":
                x = bilinear(np.asarray(im), size, size)
            else:
                x = np.asarray(im.resize((size, size), Image.BOX), dtype=np.float32)
            x = (x.transpose(2, 0, 1) / 255.0)[None].astype(np.float32)
            mu, lv = sess.run(["mu", "logvar"], {sess.get_inputs()[0].name: x})
            mus.append(mu[0])
            lvs.append(lv[0])
    return np.array(mus), np.array(lvs), np.array([i in ood for i in range(len(mus))])


def drives_with_split(folder, split):
    return [m.parent for m in sorted(folder.glob("*/meta.json")) if json.loads(m.read_text())["split"] == split]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", type=pathlib.Path, default=ROOT / "models" / "default" / "encoder.onnx")
    ap.add_argument("--resize", choices=["area", "bilinear"], default="area")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-dir", type=pathlib.Path, default=ROOT / "out" / "train")
    ap.add_argument("--validation-dir", type=pathlib.Path, default=ROOT / "out" / "validation")
    ap.add_argument("--per-drive", action="store_true", help="also print each validation drive's AUROC")
    ap.add_argument("--heldout-dir", type=pathlib.Path, help="make heldout-data's drives: adds the fit-stability table")
    args = ap.parse_args()
    import onnxruntime as ort
    from sklearn.metrics import roc_auc_score

    TEST, TUNE, VAL_OOD = roles()
    sess = ort.InferenceSession(str(args.encoder))
    enc = lambda d: encode_drive(sess, d, args.size, args.resize)  # noqa: E731
    post = {k: enc(SAMPLE / v) for k, v in TEST.items()}
    post.update({t: enc(SAMPLE / t) for t in TUNE})
    val = [SAMPLE / v for v in VAL_OOD] + sorted(p for p in args.validation_dir.glob("ood_*") if p.is_dir())
    post.update({f"val:{p.name}": enc(p) for p in val})
    condition = {f"val:{p.name}": json.loads((p / "meta.json").read_text())["condition"] for p in val}
    fit_sets = {}
    for split in ("calibration", "train_val", "train"):
        fit_sets[split] = [f"{split}:{d.name}" for d in drives_with_split(args.train_dir, split)]
        post.update({f"{split}:{d.name}": enc(d) for d in drives_with_split(args.train_dir, split)})
    heldout = {}
    if args.heldout_dir:
        for d in drives_with_split(args.heldout_dir, "heldout"):
            heldout.setdefault(json.loads((d / "meta.json").read_text())["map"], []).append(f"heldout:{d.name}")
            post[f"heldout:{d.name}"] = enc(d)
        if not heldout:
            raise SystemExit(f"no held-out drives under {args.heldout_dir}: run `make heldout-data`")
    if not fit_sets["calibration"]:
        raise SystemExit(f"no calibration drives under {args.train_dir}: run `make train-data`")

    kl = {k: 0.5 * (mu**2 + np.exp(lv) - lv - 1) for k, (mu, lv, _) in post.items()}
    ranking_drives = fit_sets["calibration"] + TUNE  # the shipped rule ranks on calibration + tuning
    order = np.argsort(np.concatenate([kl[k] for k in ranking_drives]).mean(0))

    def auroc(neg, pos):
        return roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos])

    def smooth(s, w=20):
        ls = np.log(np.maximum(s, 1e-12))
        c = np.cumsum(np.r_[0, ls])
        i = np.arange(1, len(ls) + 1)
        return (c[i] - c[np.maximum(i - w, 0)]) / np.minimum(i, w)

    def row(name, score):
        s = {k: score(k) for k in post}
        lab = {k: post[k][2] for k in post}
        tune = np.concatenate([s[t] for t in TUNE])
        va = {k: auroc(np.r_[tune, s[k][~lab[k]]], s[k][lab[k]]) for k in condition}
        v = np.mean([a for k, a in va.items() if condition[k] not in FLOORS])
        vf = [np.mean([a for k, a in va.items() if condition[k] == c] or [np.nan]) for c in FLOORS]
        if args.per_drive:
            print("  " + ", ".join(f"{k[4:]} {a:.3f}" for k, a in va.items()))
        neg = lambda f: np.concatenate([f(s["test_id"])] + [f(s[p])[~lab[p]] for p in ("brightness", "rain")])  # noqa: E731
        t = [auroc(neg(lambda x: x), s[p][lab[p]]) for p in ("brightness", "rain", "noise")]
        rs = auroc(neg(smooth), smooth(s["rain"])[lab["rain"]])
        print(f"| {name} | {v:.3f} | {vf[0]:.3f} | {vf[1]:.3f} | {t[0]:.3f} | {t[1]:.3f} | {t[2]:.3f} | {rs:.3f} |")

    print(f"encoder {args.encoder} ({args.resize} {args.size}x{args.size}); {len(val)} validation drives")
    print(HEADER)
    for k in (5, 10):
        row(f"KL, {k} quietest latents", lambda d, k=k: kl[d][:, order[:k]].sum(1))
    row("KL, all latents", lambda d: kl[d].sum(1))
    feat = {k: np.c_[mu, lv] for k, (mu, lv, _) in post.items()}

    def mahalanobis(fit_keys):
        x = np.concatenate([feat[k] for k in fit_keys])
        mean, prec = x.mean(0), np.linalg.inv(np.cov(x.T) + 1e-6 * np.eye(x.shape[1]))
        return lambda d: np.einsum("ij,jk,ik->i", feat[d] - mean, prec, feat[d] - mean)

    for split in ("calibration", "train_val", "train"):
        if fit_sets[split]:
            row(f"Mahalanobis (mu, logvar), fitted on {split} drives", mahalanobis(fit_sets[split]))
    if heldout:
        print("\nMahalanobis (mu, logvar) fitted on held-out clear drives:")
        print(HEADER.replace("| score |", "| fitted on |"))
        per_map = min(len(v) for v in heldout.values())
        for i in range(per_map):
            row(f"1 drive per map, draw {i + 1}", mahalanobis([v[i] for v in heldout.values()]))
        for i in range(per_map // 3):
            row(f"3 drives per map, draw {i + 1}", mahalanobis([k for v in heldout.values() for k in v[3 * i:3 * i + 3]]))
        every = [k for v in heldout.values() for k in v]
        row(f"all {len(every)} held-out drives", mahalanobis(every))
        row(f"all {len(every)} held-out drives and the train_val drives", mahalanobis(every + fit_sets["train_val"]))


if __name__ == "__main__":
    main()
