"""The model cards' test-set figures (issue 14): evaluates a bundle on the test set of
`make testset-data` and its false alarms on the clear drives of `make falsealarm8-data` down to
`make falsealarm-data` (eight sets, the most recent first: falsealarm8 is session 20's,
falsealarm7 and falsealarm6 session 19's, 3-5 session 18's, falsealarm2 session 11's), and
prints (or writes into a model card) the figures block.

  python3 scripts/testset_card.py --bundle models/default [--update models/default/MODEL_CARD.md]

Needs target/debug/vae-ood (cargo build -p vae_ood_cli), out/testset (checked against
data/testset.sha256 when generated) and the eight false-alarm sets in out/. The card's block sits
between `<!-- testset:begin -->` and `<!-- testset:end -->`. The JSON summary goes to OUT/summary.json.
"""

import argparse
import json
import math
import pathlib
import statistics
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- testset:begin -->", "<!-- testset:end -->"
TYPES = ("brightness", "rain", "fog", "snow", "motion_blur", "noise", "occlusion")


def poisson_upper(k, conf=0.95):
    """Exact one-sided upper confidence bound of a Poisson mean after k events."""
    def cdf(lam):
        term, total = math.exp(-lam), math.exp(-lam)
        for i in range(1, k + 1):
            term *= lam / i
            total += term
        return total
    lo, hi = 0.0, 10.0 * (k + 3)
    for _ in range(200):
        mid = (lo + hi) / 2
        if cdf(mid) > 1 - conf:
            lo = mid
        else:
            hi = mid
    return hi


def inputs_of(testset):
    out = []
    for m in sorted(testset.glob("*/meta.json")):
        c = json.loads(m.read_text())["condition"]
        out.append(f"{m.parent}/bag" + ("" if c == "clear" else f"={c}"))
    return out


def evaluate(vae, bundle, out, args):
    subprocess.run([str(vae), "eval", "--bundle", str(bundle), "--out", str(out), "--quiet", *args], check=True)
    return json.loads((out / "report.json").read_text())


def fa_summary(name, fa):
    fs = fa["sequential"]
    k, n = fs["false_alarms"], fs["id_frames"]
    return {"set": name, "false_alarms": k, "frames": n, "drives": len(fa["inputs"]),
            # Drives with at least one alarm: what the drive-level threshold bounds (SAFETY.md).
            "drives_alarming": fs.get("inputs_with_false_alarm"),
            "per_1000": 1000.0 * k / n if n else None,
            "per_1000_upper95": 1000.0 * poisson_upper(k) / n if n else None}


def summarise(test, fas, types=TYPES):
    seq = test["sequential"]
    rows = {}
    for t in types:
        segs = [g for g in seq["segments"] if g["ood_type"] == t]
        delays = [g["delay_frames"] for g in segs]
        found = [d for d in delays if d is not None]
        rows[t] = {
            "drives": len(segs),
            "detected": len(found),
            "delays": delays,
            "median_delay": statistics.median(found) if found else None,
            "max_delay": max(found) if found else None,
            "auroc_score": test["score_metrics"].get(t, {}).get("auroc"),
            "auroc_sequential": test["cusum_metrics"].get(t, {}).get("auroc"),
        }
    all_delays = [d for r in rows.values() for d in r["delays"]]
    found = [d for d in all_delays if d is not None]
    sets = [fa_summary(name, fa) for name, fa in fas]
    # Without false-alarm sets (the test-set part alone, as test_compressed_detector checks it).
    first = sets[0] if sets else dict.fromkeys(("false_alarms", "frames", "drives", "per_1000", "per_1000_upper95"))
    return {
        "bundle_model_id": test["model_id"],
        "types": rows,
        "detected": len(found),
        "segments": len(all_delays),
        "median_delay": statistics.median(found) if found else None,
        "max_delay": max(found) if found else None,
        # The first set given (the fresh one by default), then every set.
        "false_alarms": first["false_alarms"],
        "falsealarm_frames": first["frames"],
        "falsealarm_drives": first["drives"],
        "per_1000": first["per_1000"],
        "per_1000_upper95": first["per_1000_upper95"],
        "falsealarm_sets": sets,
        "test_id_frames": seq["id_frames"],
        "test_false_alarms": seq["false_alarms"],
    }


def block(s):
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    out = ["| OOD type | detected | delays per drive (loop_empty, small_loop, udem1), frames | median | AUROC per-frame | AUROC sequential |",
           "|---|---|---|---|---|---|"]
    for t, r in s["types"].items():
        d = ", ".join("missed" if x is None else str(x) for x in r["delays"])
        out.append(f"| {t} | {r['detected']} / {r['drives']} | {d} | {r['median_delay'] if r['median_delay'] is not None else 'n/a'} | "
                   f"{f(r['auroc_score'])} | {f(r['auroc_sequential'])} |")
    out.append("")
    out.append(f"- Detected {s['detected']} of {s['segments']} OOD segments; median delay {s['median_delay']} frames, "
               f"largest {s['max_delay']}.")
    out.append(f"- False alarms on the test set's in-distribution frames (clear drives and the clear quarters of OOD "
               f"drives): {s['test_false_alarms']} in {s['test_id_frames']} frames.")
    for fa in s["falsealarm_sets"]:
        out.append(f"- False alarms on {fa['drives']} held-out clear drives (`make {fa['set']}-data`): "
                   f"{fa['false_alarms']} in {fa['frames']} frames, {fa['per_1000']:.3f} per 1000 frames "
                   f"(95 % upper bound {fa['per_1000_upper95']:.3f})"
                   + ("." if fa.get("drives_alarming") is None else f", on {fa['drives_alarming']} of its drives."))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=pathlib.Path, required=True)
    ap.add_argument("--vae", type=pathlib.Path, default=ROOT / "target/debug/vae-ood")
    ap.add_argument("--testset", type=pathlib.Path, default=ROOT / "out/testset")
    ap.add_argument("--falsealarm", type=pathlib.Path, nargs="+",
                    default=[ROOT / f"out/falsealarm{n}" for n in ("8", "7", "6", "5", "4", "3", "2", "")],
                    help="false-alarm sets (make falsealarm8-data down to falsealarm-data), each reported; "
                         "the first is the card's headline figure")
    ap.add_argument("--types", nargs="+", default=list(TYPES),
                    help="OOD types of the test set, in the card's order (the flow detector's: rain snow "
                         "camera_shake fast frame_drops)")
    ap.add_argument("--cusum-ceiling", default=None,
                    help="passed to vae-ood eval (default: eval's, 2 since session 39; 0: S unbounded, as "
                         "every card block before session 39 was measured)")
    ap.add_argument("--out", type=pathlib.Path)
    ap.add_argument("--update", type=pathlib.Path, help="model card whose testset block to rewrite")
    args = ap.parse_args()
    out = args.out or ROOT / "out" / f"testset_{args.bundle.name}"
    ceiling = [] if args.cusum_ceiling is None else ["--cusum-ceiling", str(args.cusum_ceiling)]
    test = evaluate(args.vae, args.bundle, out / "test",
                    [*ceiling, "--label-topic", "/ood_label", "--input", *inputs_of(args.testset)])
    fas = [(d.name, evaluate(args.vae, args.bundle, out / d.name,
                             [*ceiling, "--id", *[str(p) for p in sorted(d.glob("*/bag"))]]))
           for d in args.falsealarm]
    s = summarise(test, fas, args.types)
    (out / "summary.json").write_text(json.dumps(s, indent=1))
    text = block(s)
    print(text)
    if args.update:
        card = args.update.read_text()
        if BEGIN in card:
            a, b = card.index(BEGIN) + len(BEGIN), card.index(END)
            card = card[:a] + "\n" + text + "\n" + card[b:]
        else:
            card += f"\n{BEGIN}\n{text}\n{END}\n"
        args.update.write_text(card)


if __name__ == "__main__":
    main()
