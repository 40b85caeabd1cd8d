#!/usr/bin/env bash
# Benchmark (issue 16): our CPU inference path against onnxruntime, in one run.
#
# For the default, the compressed and a seeded paper-size (224x224) encoder, at 1 and 2
# threads: tract's p50 through `vae-ood bench-encoders` (the build given, dev profile unless
# VAE_OOD=path/to/release/vae-ood), onnxruntime's p50 on the same ONNX files (PyPI, a
# yardstick only, never a dependency of the product), their ratio, and the roofline: each
# encoder's MACs per second against a 1024^3 f32 GEMM through tract's kernels, same threads.
# Then `vae-ood bench` on 640x480 frames of each raw encoding: decode + preprocess against the
# baseline path measured in the same run. With RELEASE=path/to/release/vae-ood (built with
# `cargo build --release -p vae_ood_cli --no-default-features`), also the dev build's inference
# against the release build's, alternating three times.
# Usage: scripts/bench_cpu.sh [FRAMES]   (needs make test's .venv and a built vae-ood)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-300}"
VAE_OOD="${VAE_OOD:-$ROOT/target/debug/vae-ood}"
PY="$ROOT/.venv/bin/python"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$VAE_OOD" gen-seeded --preset paper --seed 7 --out "$TMP/paper" > /dev/null
BUNDLES=("$ROOT/models/default" "$ROOT/models/compressed" "$TMP/paper")
for t in 1 2; do
  "$VAE_OOD" bench-encoders "${BUNDLES[@]}" --frames "$N" --threads "$t" --roofline --json > "$TMP/tract$t.json"
  "$PY" "$ROOT/scripts/bench_ort.py" --frames "$N" --threads "$t" "${BUNDLES[@]}" > "$TMP/ort$t.json"
done
"$PY" - "$TMP" <<'PY'
import json, sys, os
tmp = sys.argv[1]
print(f"{'encoder':<12} {'thr':>3} {'MMACs':>7} {'tract ms':>9} {'ort ms':>8} {'tract/ort':>9} {'GMAC/s':>7} {'% peak':>7}")
for t in (1, 2):
    tr = json.load(open(f"{tmp}/tract{t}.json"))
    ort = json.load(open(f"{tmp}/ort{t}.json"))
    peak = tr["peak_gmacs_per_s"]
    for row, o in zip(tr["encoders"], ort):
        name = os.path.basename(row["latency"]["bundle"].rstrip("/"))
        l = row["latency"]
        print(f"{name:<12} {t:>3} {l['macs'] / 1e6:7.1f} {l['p50_ms']:9.3f} {o['p50_ms']:8.3f} "
              f"{l['p50_ms'] / o['p50_ms']:8.2f}x {row['gmacs_per_s']:7.1f} {100 * row['gmacs_per_s'] / peak:6.0f}%")
    print(f"roofline ({t} thread(s)): {peak:.1f} GMAC/s, 1024^3 f32 GEMM through tract; build profile: {tr['profile']}")
PY
"$VAE_OOD" bench --bundle "$ROOT/models/compressed" --frames "$N" --encoding rgb8,bgr8,rgba8,mono8,mono16
if [ -n "${RELEASE:-}" ]; then
  for i in 1 2 3; do
    k=0
    for b in "$VAE_OOD" "$RELEASE"; do
      k=$((k + 1))
      "$b" bench-encoders "${BUNDLES[@]}" --frames "$N" --threads 1 --json > "$TMP/prof_${i}_$k.json"
    done
  done
  "$PY" - "$TMP" <<'PY'
import json, sys, glob, os, statistics
tmp = sys.argv[1]
runs = {}
for f in sorted(glob.glob(f"{tmp}/prof_*.json")):
    j = json.load(open(f))
    for row in j["encoders"]:
        name = os.path.basename(row["latency"]["bundle"].rstrip("/"))
        runs.setdefault((name, j["profile"]), []).append(row["latency"]["p50_ms"])
print("dev build against release, inference p50 (median of 3 alternating runs, 1 thread):")
for name in dict.fromkeys(n for n, _ in runs):
    d, r = statistics.median(runs[(name, "dev")]), statistics.median(runs[(name, "release")])
    print(f"  {name:<12} dev {d:8.3f} ms  release {r:8.3f} ms  dev/release {d / r:5.2f}")
PY
fi
