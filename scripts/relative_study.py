"""Exploration (session 20, issue 14): a drive-relative p-value beside the pooled one, simulated
offline on the per-frame scores of `vae-ood eval` (frames.csv), with `sequential_study.py`'s
pipeline (conformal p-values, the 100-point mixture martingale, window 1, CUSUM with the
bundle's decay, the threshold the 4th largest of the tuning drives' largest S). On the
pooled p-value it reproduces the shipped pipeline's delays exactly. It adds:

  relative  s'(t) = s(t) - median(s over the drive's frames [t-g-w, t-g)) (the first w frames
            until t > g + w): the score against the same drive's own recent past, at least g
            frames old; p' against the calibration drives' own s' (each drive against itself);
  union     both statistics with their own thresholds, scaled by their joint scale c on the
            tuning drives (as `vae-ood joint-threshold` does for two detectors);
  split     the pooled branch at c_a times its threshold, the relative branch at the least scale
            that keeps at most 3 tuning drives alarming on either.
Each is also run on the validation drives from their onset on ("starting OOD"): a robot that
starts in the shift, which the relative branch alone cannot see. Session 6's `change`
statistic (sequential_study.py) was the same idea on the raw log score, without p-values.

Never run it on the test set or the false-alarm sets: it is for choosing what to build.

  V=target/debug/vae-ood; S=data/sample; source scripts/roles.sh
  $V eval --bundle models/default --out out/rel/cal --quiet --id $(split calibration out/train) $(split train_val out/train)
  $V eval --bundle models/default --out out/rel/tune2 --quiet --id $(ls -d out/tuning2/*/bag)
  $V eval --bundle models/default --out out/rel/unseen --quiet --id $(ls -d out/unseen_map/*/bag)
  $V eval --bundle models/default --out out/rel/val --quiet --label-topic /ood_label --input $(eval_inputs out/validation)
  .venv-data/bin/python scripts/relative_study.py out/rel/cal out/rel/tune2 out/rel/val out/rel/unseen [--decay D]
"""
import argparse
import collections
import csv
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sequential_study as sq  # noqa: E402

RANK = 4  # the 4th largest of 78 tuning drives' largest S, as the bundles' thresholds


def read(d):
    """The drives of a `vae-ood eval` output: name, per-frame score (NaN without one), OOD label
    and type."""
    r = json.load(open(d + "/report.json"))
    names = [str(i["path"] if isinstance(i, dict) else i) for i in r["inputs"]]
    drives = collections.defaultdict(lambda: {"s": [], "ood": [], "type": ""})
    for row in csv.DictReader(open(d + "/frames.csv")):
        v = drives[int(row["input"])]
        v["s"].append(float(row["score"]) if row["score"] else np.nan)
        v["ood"].append(row["ood"] == "true")
        v["type"] = v["type"] or row["ood_type"]
    return [{"name": names[k].rstrip("/").split("/")[-2], "s": np.array(v["s"]), "ood": np.array(v["ood"]),
             "type": v["type"]} for k, v in sorted(drives.items())]


def statistic(s, ref, decay):
    """S per frame (window 1); a frame without a score (NaN: a flow detector's STARTING frames)
    leaves S as it is."""
    ok = np.isfinite(s)
    S = np.zeros(len(s))
    S[ok] = sq.pipeline(s[ok], ref, 1, decay)
    # Carry S over the frames without a score (0 before the first).
    last = np.maximum.accumulate(np.where(ok, np.arange(len(s)), -1))
    return np.where(last >= 0, S[np.maximum(last, 0)], 0.0)


def rolling(s, w, g):
    """s minus its baseline: the median of s over [t-g-w, t-g), never later than [0, w): only
    frames at least g old, so an onset is compared with the scene before it for g frames."""
    out = np.empty(len(s))
    for t in range(len(s)):
        hi = max(w, t - g)
        seg = s[max(0, hi - w):hi]
        out[t] = s[t] - np.median(seg[np.isfinite(seg)])
    return out


def alarms(over, d):
    """(drive, type, delay from onset or None, alarmed before onset or on a clear drive)."""
    if d["ood"].any():
        on = int(np.argmax(d["ood"]))
        hit = np.nonzero(over[on:] & d["ood"][on:])[0]
        return d["name"], d["type"], int(hit[0]) if len(hit) else None, bool(over[:on].any())
    return d["name"], "clear", None, bool(over.any())


def show(label, thr, res):
    val, unseen = res["validation"], res["unseen_map"]
    delays = [r[2] for r in val if r[1] != "clear"]
    found = [x for x in delays if x is not None]
    print(f"{label} thr {thr}  detected {len(found)}/{len(delays)} mean {np.mean(found):.1f} median {np.median(found):.0f} "
          f"largest {max(found)}  alarmed before onset {sum(r[3] for r in val)}/{len(val)}  unseen_map alarmed "
          f"{sum(r[3] for r in unseen)}/{len(unseen)}")
    start = [r[2] for r in res["from_onset"]]
    hit = [x for x in start if x is not None]
    print(f"    starting OOD: detected {len(hit)}/{len(start)}, median delay {np.median(hit) if hit else None}, "
          f"largest {max(hit) if hit else None}")
    print("   ", " ".join(f"{r[1][:5]}={r[2]}" for r in val if r[1] != "clear"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("cal", "tune", "val", "unseen"):
        ap.add_argument(name, help="a `vae-ood eval` output folder")
    ap.add_argument("--decay", type=float, default=1.0, help="the bundle's CUSUM decay (models/default 1, models/flow 0)")
    a = ap.parse_args()
    cal, tune = read(a.cal), read(a.tune)
    evalsets = {"validation": read(a.val), "unseen_map": read(a.unseen)}
    # The case the relative branch cannot see: a drive that starts out of distribution (the
    # validation drives from their onset on, so the baseline is the shift itself).
    evalsets["from_onset"] = [dict(d, s=d["s"][np.argmax(d["ood"]):], ood=d["ood"][np.argmax(d["ood"]):])
                              for d in evalsets["validation"] if d["ood"].any()]
    finite = lambda x: x[np.isfinite(x)]  # noqa: E731

    def stats(transform):
        """Each drive's S (tuning drives, then every evaluation set), computed once."""
        ref = np.concatenate([finite(transform(d["s"])) for d in cal])
        run = lambda d: statistic(transform(d["s"]), ref, a.decay)  # noqa: E731
        return [run(d) for d in tune], {n: [run(d) for d in ds] for n, ds in evalsets.items()}

    def verdicts(over):
        return {n: [alarms(over(n, i), d) for i, d in enumerate(ds)] for n, ds in evalsets.items()}

    pt, pe = stats(lambda s: s)
    ta = sq.threshold(pt, RANK)
    show("pooled (shipped)", round(ta, 2), verdicts(lambda n, i: pe[n][i] > ta))
    for w, g in [(60, 150), (60, 300)]:
        rt, re = stats(lambda s: rolling(s, w, g))
        tr = sq.threshold(rt, RANK)
        show(f"relative alone (w={w}, g={g})", round(tr, 2), verdicts(lambda n, i: re[n][i] > tr))
        ra = np.array([S.max() / ta for S in pt])
        rr = np.array([S.max() / tr for S in rt])
        c = np.sort(np.maximum(ra, rr))[::-1][RANK - 1]
        show(f"union (w={w}, g={g}), c = {c:.2f}", (round(ta, 2), round(tr, 2)),
             verdicts(lambda n, i: (pe[n][i] > c * ta) | (re[n][i] > c * tr)))
        # Unequal splits: the pooled branch at c_a times its threshold, the relative branch at
        # the least c_r that keeps at most RANK - 1 tuning drives alarming (as one threshold does).
        for c_a in (1.25, 1.5, 2.0, 3.0):
            k = int((ra > c_a).sum())
            if k > RANK - 1:
                continue
            c_r = np.sort(rr[ra <= c_a])[::-1][RANK - 1 - k]
            show(f"  split (w={w}, g={g}): pooled x{c_a}, relative x{c_r:.2f}", (round(ta, 2), round(tr, 2)),
                 verdicts(lambda n, i: (pe[n][i] > c_a * ta) | (re[n][i] > c_r * tr)))


if __name__ == "__main__":
    main()
