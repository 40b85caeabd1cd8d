"""Formats an evaluation report (`vae-ood eval`, report.json) as the figures block of a model
card, so that the card's numbers come from one command (scripts/model_card.sh) and a test can
check them.

  python3 scripts/model_card_figures.py REPORT.json [--update CARD.md]

Prints the block; with --update, replaces the text between the card's
`<!-- figures:begin -->` and `<!-- figures:end -->` markers. Latency lines depend on the
machine and are marked `(machine-dependent)`; everything else is deterministic.
"""

import argparse
import json
import pathlib

BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def block(report):
    out = []
    out.append("| OOD partition | frames (OOD / ID) | AUROC score | AUROC CUSUM | AUPR-in score | AUPR-out score | FPR@95TPR score | FPR@95TPR CUSUM |")
    out.append("|---|---|---|---|---|---|---|---|")
    s, c = report["score_metrics"], report["cusum_metrics"]
    for k in sorted(s, key=lambda k: (k == "all", k)):
        m, n = s[k], c[k]
        out.append(f"| {k} | {m['n_ood']} / {m['n_id']} | {m['auroc']:.4f} | {n['auroc']:.4f} | {m['aupr_in']:.4f} | "
                   f"{m['aupr_out']:.4f} | {m['fpr_at_95_tpr']:.4f} | {n['fpr_at_95_tpr']:.4f} |")
    seq = report["sequential"]
    out.append("")
    out.append("| OOD segment | onset frame | OOD frames | detection delay |")
    out.append("|---|---|---|---|")
    for g in seq["segments"]:
        d = "missed" if g["delay_frames"] is None else f"{g['delay_frames']} frames ({g['delay_s']:.2f} s)"
        path = report["inputs"][g["input"]]["path"].split("data/sample/")[-1]
        out.append(f"| {g['ood_type']} ({path}) | {g['onset_index']} | {g['frames']} | {d} |")
    out.append("")
    mean = "n/a" if seq["mean_delay_frames"] is None else f"{seq['mean_delay_frames']:.1f} frames ({seq['mean_delay_s']:.2f} s)"
    out.append(f"- Detected {seq['detected']} of {seq['detected'] + seq['missed']} OOD segments; mean delay {mean}.")
    out.append(f"- False alarms: {seq['false_alarms']} in {seq['id_frames']} in-distribution frames "
               f"({seq['false_alarms_per_1000_id_frames']:.2f} per 1000 ID frames, {seq['false_alarms_per_hour']:.1f} per hour at 15 fps).")
    out.append(f"- Frames: {report['frames']}, scored {report['scored']}, faulted {report['faulted']}.")
    lat = report["latency_ms"]
    out.append("- Latency per frame on the machine that ran the command, p50 / p99 ms (machine-dependent): "
               + ", ".join(f"{k} {lat[k]['p50']:.2f} / {lat[k]['p99']:.2f}" for k in ("decode", "preprocess", "inference", "total"))
               + f"; throughput {report['throughput_fps']:.0f} frames/s (machine-dependent).")
    return "\n".join(out)


def deterministic(text):
    """The block without its machine-dependent lines (what tests compare)."""
    return "\n".join(l for l in text.splitlines() if "machine-dependent" not in l)


def card_block(card_text):
    a, b = card_text.index(BEGIN) + len(BEGIN), card_text.index(END)
    return card_text[a:b].strip("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=pathlib.Path)
    ap.add_argument("--update", type=pathlib.Path, help="model card whose figures block to replace")
    args = ap.parse_args()
    text = block(json.loads(args.report.read_text()))
    if args.update:
        card = args.update.read_text()
        a, b = card.index(BEGIN) + len(BEGIN), card.index(END)
        args.update.write_text(card[:a] + "\n" + text + "\n" + card[b:])
    print(text)


if __name__ == "__main__":
    main()
