"""How the pooled statistic's betting function limits its delay (session 39 exploration,
docs/detector-experiments.md "The betting function"; chooses nothing).

From the pooled p-values of `vae-ood eval` (frames.csv), S = max(0, S + ln b(p) - decay) for
several calibrators b (each integrates to 1 over (0, 1)) and decays; the threshold is the 3rd
largest of the tuning set's per-drive largest S (a high rank, as the shipped rule takes); then
the delays on the validation drives and the alarms on a check set's clear drives.

  .venv-data/bin/python scripts/betting_study.py TUNE/frames.csv VALIDATION/frames.csv CHECK/frames.csv
"""
import csv, collections, sys
import numpy as np

def drives(path):
    d = collections.defaultdict(list)
    for r in csv.DictReader(open(path)):
        if r["p_value"] == "":
            continue
        d[int(r["input"])].append((float(r["p_value"]), r["ood"] in ("1", "true"), r["ood_type"], r.get("direction_cusum", "")))
    return list(d.values())

EPS = (np.arange(100) + 0.5) / 100
def power(p, lo=0.0, hi=1.0):
    e = EPS[(EPS > lo) & (EPS < hi)]
    return np.log(np.mean(e * p ** (e - 1)))
def step(p, p0, lam=0.5):
    return np.log((1 - lam) + (lam / p0 if p <= p0 else 0.0))
def steps(p, p0s, lam=0.5):
    return np.log((1 - lam) + lam * np.mean([1 / q if p <= q else 0.0 for q in p0s]))

BETS = {
    "power (shipped)": lambda p: power(p),
    "power eps<0.3": lambda p: power(p, 0, 0.3),
    "power eps<0.1": lambda p: power(p, 0, 0.1),
    "step p0=0.01": lambda p: step(p, 0.01),
    "step p0=0.02": lambda p: step(p, 0.02),
    "steps .003-.03": lambda p: steps(p, [0.003, 0.01, 0.03]),
}

def run(ps, bet, decay):
    s, out = 0.0, []
    for p in ps:
        s = max(0.0, s + bet(p) - decay)
        out.append(s)
    return np.array(out)

tune, val, check = (drives(f) for f in sys.argv[1:4])
check = [d for d in check if not any(x[1] for x in d)]
cache = {}
for name, bet in BETS.items():
    for decay in (0.5, 1.0, 2.0):
        thr = sorted(run([p for p, *_ in d], bet, decay).max() for d in tune)[-3]
        fa = sum(run([p for p, *_ in d], bet, decay).max() > thr for d in check)
        delays = []
        for d in val:
            S = run([p for p, *_ in d], bet, decay)
            on = next(i for i, x in enumerate(d) if x[1])
            hit = next((i - on for i in range(on, len(d)) if d[i][1] and S[i] > thr), None)
            delays.append((d[on][2], hit))
        det = [h for _, h in delays if h is not None]
        print(f"{name:18s} decay {decay}: thr {thr:7.2f} detected {len(det)}/{len(delays)} median {np.median(det) if det else None} "
              f"fa(check) {fa}  " + " ".join(f"{t[:4]}:{h}" for t, h in delays))
