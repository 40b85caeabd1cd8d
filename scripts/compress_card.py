"""The compressed detector's figures, from its sweep report (models/compressed/compress_report.json,
written by `vae-ood compress`): the selected candidate against the teacher, then every
candidate. Prints the Markdown block between the figures markers of MODEL_CARD.md; with
--update CARD rewrites that block in place.

  python3 scripts/compress_card.py models/compressed/compress_report.json [--update models/compressed/MODEL_CARD.md]
"""

import argparse
import json
import pathlib
import re

BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def mean(d):
    return sum(d.values()) / max(len(d), 1)


def block(report):
    rows = report["rows"]
    teacher = rows[0]
    sel = next(r for r in rows if r["spec"]["name"] == report["selected"])
    parts = sorted(teacher["auroc_cusum"])
    out = [BEGIN, "", f"Selected: **{sel['spec']['name']}** ({sel['spec']['technique']}); budget: CUSUM AUROC "
           f"drop at most {report['auroc_drop']} in every OOD partition; latency from one interleaved run of "
           f"{report['bench_frames']} frames per encoder (one tract thread, the machine that ran the sweep).", ""]
    out += ["| | teacher | selected | ratio / change |", "|---|---|---|---|"]
    out.append(f"| encoder p50 latency (ms) | {teacher['p50_ms']:.3f} | {sel['p50_ms']:.3f} | **{sel['speedup']:.2f}x faster** |")
    out.append(f"| encoder p99 latency (ms) | {teacher['p99_ms']:.3f} | {sel['p99_ms']:.3f} | {teacher['p99_ms'] / sel['p99_ms']:.2f}x |")
    out.append(f"| multiply-accumulates per frame | {teacher['macs']:,} | {sel['macs']:,} | {teacher['macs'] / sel['macs']:.2f}x fewer |")
    out.append(f"| parameters | {teacher['params']:,} | {sel['params']:,} | {teacher['params'] / sel['params']:.2f}x fewer |")
    out.append(f"| ONNX size (bytes) | {teacher['onnx_bytes']:,} | {sel['onnx_bytes']:,} | {teacher['onnx_bytes'] / sel['onnx_bytes']:.2f}x smaller |")
    out.append(f"| peak memory of the evaluation (MiB) | {teacher['peak_memory_mib']:.1f} | {sel['peak_memory_mib']:.1f} | {sel['peak_memory_mib'] - teacher['peak_memory_mib']:+.1f} |")
    for p in parts:
        for key, what in (("auroc_cusum", "CUSUM"), ("auroc_score", "per-frame score")):
            t, s = teacher[key][p], sel[key][p]
            out.append(f"| AUROC {p}, {what} | {t:.4f} | {s:.4f} | {s - t:+.4f} |")
    out += ["", "All candidates (sorted as swept; verdicts against the budget):", ""]
    out.append("| candidate | technique | MACs | p50 ms | speed-up | " + " | ".join(f"CUSUM {p}" for p in parts)
               + " | held-out loss | verdict |")
    out.append("|---|---|---|---|---|" + "---|" * len(parts) + "---|---|")
    for r in rows:
        loss = f"{r['heldout_loss']:.1f}" if r.get("heldout_loss") is not None else "-"
        out.append(f"| {r['spec']['name']} | {r['spec']['technique']} | {r['macs']:,} | {r['p50_ms']:.3f} | "
                   f"{r['speedup']:.2f}x | " + " | ".join(f"{r['auroc_cusum'][p]:.3f}" for p in parts)
                   + f" | {loss} | {r['verdict']} |")
    out += ["", END]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=pathlib.Path)
    ap.add_argument("--update", type=pathlib.Path)
    args = ap.parse_args()
    text = block(json.loads(args.report.read_text()))
    if args.update:
        card = args.update.read_text()
        new, n = re.subn(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, card, flags=re.S)
        if n != 1:
            raise SystemExit(f"{args.update}: no figures block to replace")
        args.update.write_text(new)
    print(text)


if __name__ == "__main__":
    main()
