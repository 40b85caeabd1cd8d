"""The node's combined verdict over several detectors, offline (issue 18): `vae-ood eval` of
each detector on the same inputs (in the same order), merged frame by frame the way the node
merges them (crates/core/src/monitor.rs, MonitorState::combine: OK only when every detector is
OK, else the most severe of FAULT, OOD, STARTING). Reports what `vae-ood eval` reports for one
detector: per OOD segment the detection delay (frames from onset to the first combined OOD
or FAULT frame: ~/ood true), and false alarms (entries into it on in-distribution frames) per 1000 ID frames with
the exact Poisson 95 % upper bound.

    python3 scripts/combined_eval.py out/eval_image out/eval_flow [--json summary.json]
"""

import argparse
import csv
import json
import pathlib
import statistics

from testset_card import poisson_upper

RANK = {"OK": 0, "STARTING": 1, "OOD": 2, "FAULT": 3}


def alarm(frame):
    """An alarm: OOD or FAULT (an input check such as a slow stream), as on the node's ~/ood and
    as `vae-ood eval` counts it. STARTING, also true on ~/ood, is left out on purpose: a detector
    warming up is not a verdict on the scene."""
    return frame["state"] in ("OOD", "FAULT")


def read(path):
    with open(pathlib.Path(path) / "frames.csv") as f:
        return list(csv.DictReader(f))


def combine(evals):
    runs = [read(e) for e in evals]
    n = len(runs[0])
    for e, r in zip(evals, runs):
        if len(r) != n:
            raise SystemExit(f"{e}: {len(r)} frames, {evals[0]}: {n}: evaluate every detector on the same inputs")
    frames = []
    for rows in zip(*runs):
        key = (rows[0]["input"], rows[0]["index"])
        if any((r["input"], r["index"]) != key for r in rows):
            raise SystemExit(f"frame {key}: the evaluations' inputs differ (same inputs, same order)")
        state = max((r["state"] for r in rows), key=RANK.__getitem__)
        frames.append({"input": rows[0]["input"], "ood": rows[0]["ood"] == "true", "type": rows[0]["ood_type"],
                       "state": state})
    return frames


def summarise(frames):
    segments, false_alarms, id_frames = [], 0, 0
    drives_alarming = 0  # drives with at least one false alarm: what the threshold bounds
    inputs = sorted({f["input"] for f in frames}, key=int)
    for i in inputs:
        fs = [f for f in frames if f["input"] == i]
        before = false_alarms
        k = 0
        while k < len(fs):
            if not fs[k]["ood"]:
                id_frames += 1
                false_alarms += alarm(fs[k]) and (k == 0 or not alarm(fs[k - 1]))
                k += 1
                continue
            start = k
            while k < len(fs) and fs[k]["ood"]:
                k += 1
            hit = next((j - start for j in range(start, k) if alarm(fs[j])), None)
            segments.append({"input": int(i), "type": fs[start]["type"], "delay": hit})
        drives_alarming += false_alarms > before
    types = {}
    for s in segments:
        t = types.setdefault(s["type"], {"drives": 0, "detected": 0, "delays": []})
        t["drives"] += 1
        if s["delay"] is not None:
            t["detected"] += 1
            t["delays"].append(s["delay"])
    for t in types.values():
        t["median_delay"] = statistics.median(t["delays"]) if t["delays"] else None
        t["max_delay"] = max(t["delays"]) if t["delays"] else None
    return {"types": types, "id_frames": id_frames, "false_alarms": false_alarms, "drives": len(inputs),
            "drives_alarming": drives_alarming,
            "false_alarms_per_1000": 1000 * false_alarms / id_frames if id_frames else None,
            "false_alarms_per_1000_upper95": 1000 * poisson_upper(false_alarms) / id_frames if id_frames else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evals", nargs="+", help="vae-ood eval output directories (frames.csv), one per detector")
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args()
    s = summarise(combine(args.evals))
    for name, t in sorted(s["types"].items()):
        print(f"{name:<14} detected {t['detected']}/{t['drives']}  median delay {t['median_delay']}  largest {t['max_delay']}")
    if s["id_frames"]:
        print(f"false alarms {s['false_alarms']} in {s['id_frames']} ID frames: {s['false_alarms_per_1000']:.3f} per 1000 "
              f"(95 % upper bound {s['false_alarms_per_1000_upper95']:.3f}), on {s['drives_alarming']} of {s['drives']} drives")
    if args.json:
        args.json.write_text(json.dumps(s, indent=1))


if __name__ == "__main__":
    main()
