"""Exploration (session 20, issue 14): a drive-relative p-value beside the pooled one, simulated
offline on the per-frame scores of `vae-ood eval` (frames.csv). It reproduces the shipped
pipeline exactly for the pooled p-value (conformal p-value against the calibration drives'
scores, the 100-point mixture martingale, window 1, CUSUM with decay 1, the threshold the 4th
largest of the tuning drives' largest S), then adds:

  relative  s'(t) = s(t) - median(s over the drive's frames [t-g-w, t-g)) (the first w frames
            until t > g + w): the score against the same drive's own recent past, at least g
            frames old; p' against the calibration drives' own s' (each drive against itself);
  union     both statistics with their own thresholds, scaled by their joint scale c on the
            tuning drives (as `vae-ood joint-threshold` does for two detectors);
  split     the pooled branch at c_a times its threshold, the relative branch at the least scale
            that keeps at most 3 tuning drives alarming on either.
Each is also run on the validation drives from their onset on ("starting OOD"): a robot that
starts in the shift, which the relative branch alone cannot see.

Never run it on the test set or the false-alarm sets: it is for choosing what to build.

  V=target/debug/vae-ood; S=data/sample; source scripts/roles.sh
  $V eval --bundle models/default --out out/rel/cal --quiet --id $(split calibration out/train) $(split train_val out/train)
  $V eval --bundle models/default --out out/rel/tune2 --quiet --id $(ls -d out/tuning2/*/bag)
  $V eval --bundle models/default --out out/rel/unseen --quiet --id $(ls -d out/unseen_map/*/bag)
  $V eval --bundle models/default --out out/rel/val --quiet --label-topic /ood_label --input $(eval_inputs out/validation)
  .venv-data/bin/python scripts/relative_study.py out/rel/cal out/rel/tune2 out/rel/val out/rel/unseen [--decay D]
"""
import collections
import csv
import json
import math
import sys

import numpy as np

EPS = (np.arange(100) + 0.5) / 100
DECAY = 1.0  # the bundle's CUSUM decay (models/default 1, models/flow 0): --decay D
LN_EPS = np.log(EPS)


def read(d):
    r = json.load(open(d + "/report.json"))
    names = [str(i["path"] if isinstance(i, dict) else i) for i in r["inputs"]]
    drives = collections.defaultdict(lambda: {"s": [], "ood": [], "type": ""})
    for row in csv.DictReader(open(d + "/frames.csv")):
        k = int(row["input"])
        drives[k]["s"].append(float(row["score"]) if row["score"] else np.nan)
        drives[k]["ood"].append(row["ood"] == "true")
        if row["ood_type"]:
            drives[k]["type"] = row["ood_type"]
        drives[k].setdefault("p", []).append(float(row["p_value"]) if row["p_value"] else np.nan)
        drives[k].setdefault("S", []).append(float(row["cusum"]) if row["cusum"] else np.nan)
    out = []
    for k in sorted(drives):
        v = drives[k]
        out.append({"name": names[k].rstrip("/").split("/")[-2], "s": np.array(v["s"]), "ood": np.array(v["ood"]),
                    "type": v["type"], "p": np.array(v["p"]), "S": np.array(v["S"])})
    return out


def pvals(cal_sorted, s):
    """(1 + #{cal >= s}) / (N + 1); NaN where the frame has no score."""
    n = len(cal_sorted)
    ge = n - np.searchsorted(cal_sorted, s, side="left")
    return np.where(np.isfinite(s), (1 + ge) / (n + 1), np.nan)


def cusum(p):
    """S = max(0, S + log M - decay); a frame without a score (NaN: a flow detector's STARTING
    frames) leaves S as it is."""
    lnp = np.log(np.clip(p, 1e-300, 1))
    S, out = 0.0, np.empty(len(p))
    for i, l in enumerate(lnp):
        if not np.isfinite(l):
            out[i] = S
            continue
        t = LN_EPS + (EPS - 1) * l
        m = t.max()
        logm = m + math.log(np.exp(t - m).sum()) - math.log(len(EPS))
        S = max(0.0, S + logm - DECAY)
        out[i] = S
    return out


def rolling(s, w, g):
    """baseline(t): median of s over [t-g-w, t-g), never later than [0, w): only frames at least
    g old, so an onset is compared with the scene before it for g frames."""
    out = np.empty(len(s))
    for t in range(len(s)):
        hi = max(w, t - g)
        lo = max(0, hi - w)
        seg = s[lo:hi]
        out[t] = s[t] - np.median(seg[np.isfinite(seg)])
    return out


def show(label, thr, res):
    val = res["validation"]
    delays = [r[2] for r in val if r[1] != "clear"]
    found = [x for x in delays if x is not None]
    print(f"{label} thr {thr}  detected {len(found)}/{len(delays)} mean {np.mean(found):.1f} median {np.median(found):.0f} "
          f"largest {max(found)}  alarmed before onset {sum(r[3] for r in val)}/21  unseen_map alarmed "
          f"{sum(r[3] for r in res['unseen_map'])}/12")
    start = [r[2] for r in res["from_onset"]]
    hit = [x for x in start if x is not None]
    print(f"    starting OOD: detected {len(hit)}/{len(start)}, median delay {np.median(hit) if hit else None}, "
          f"largest {max(hit) if hit else None}")
    print("   ", " ".join(f"{r[1][:5]}={r[2]}" for r in val if r[1] != "clear"))


def alarms(stat_over, d):
    """(drive, type, delay from onset or None, alarmed before onset or on a clear drive)."""
    if d["ood"].any():
        on = int(np.argmax(d["ood"]))
        hit = np.nonzero(stat_over[on:] & d["ood"][on:])[0]
        return d["name"], d["type"], int(hit[0]) if len(hit) else None, bool(stat_over[:on].any())
    return d["name"], "clear", None, bool(stat_over.any())


def main():
    global DECAY
    if "--decay" in sys.argv:
        i = sys.argv.index("--decay")
        DECAY = float(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    cal, tune = read(sys.argv[1]), read(sys.argv[2])
    evalsets = {"validation": read(sys.argv[3]), "unseen_map": read(sys.argv[4])}
    # The case the relative branch cannot see: a drive that starts out of distribution (the
    # validation drives from their onset on, so the baseline is the shift itself).
    evalsets["from_onset"] = [dict(d, s=d["s"][np.argmax(d["ood"]):], ood=d["ood"][np.argmax(d["ood"]):])
                              for d in evalsets["validation"] if d["ood"].any()]
    cal_abs = np.sort(np.concatenate([d["s"][np.isfinite(d["s"])] for d in cal]))
    pooled = lambda d: cusum(pvals(cal_abs, d["s"]))  # noqa: E731
    ta = sorted((pooled(d).max() for d in tune), reverse=True)[3]
    res = {n: [alarms(pooled(d) > ta, d) for d in ds] for n, ds in evalsets.items()}
    show("pooled (shipped)", round(ta, 2), res)
    for w, g in [(60, 150), (60, 300)]:
        cal_rel = np.sort(np.concatenate([rolling(d["s"], w, g)[np.isfinite(d["s"])] for d in cal]))
        relative = lambda d: cusum(pvals(cal_rel, rolling(d["s"], w, g)))  # noqa: E731
        tr = sorted((relative(d).max() for d in tune), reverse=True)[3]
        res = {n: [alarms(relative(d) > tr, d) for d in ds] for n, ds in evalsets.items()}
        show(f"relative alone (w={w}, g={g})", round(tr, 2), res)
        tst = [(pooled(d), relative(d)) for d in tune]
        c = sorted((max(a.max() / ta, r.max() / tr) for a, r in tst), reverse=True)[3]
        res = {n: [alarms((pooled(d) > c * ta) | (relative(d) > c * tr), d) for d in ds] for n, ds in evalsets.items()}
        show(f"union (w={w}, g={g}), c = {c:.2f}", (round(ta, 2), round(tr, 2)), res)
        # Unequal splits: the pooled branch at c_a times its threshold, the relative branch at
        # the least c_r that keeps at most 3 of the tuning drives alarming (as one threshold does).
        ra = np.array([a.max() / ta for a, _ in tst])
        rr = np.array([r.max() / tr for _, r in tst])
        for c_a in (1.25, 1.5, 2.0, 3.0):
            k = int((ra > c_a).sum())
            if k > 3:
                continue
            rest = np.sort(rr[ra <= c_a])[::-1]
            c_r = rest[3 - k]
            res = {n: [alarms((pooled(d) > c_a * ta) | (relative(d) > c_r * tr), d) for d in ds]
                   for n, ds in evalsets.items()}
            show(f"  split (w={w}, g={g}): pooled x{c_a}, relative x{c_r:.2f}", (round(ta, 2), round(tr, 2)), res)


if __name__ == "__main__":
    main()
