#!/usr/bin/env bash
# Fuzzing (issue 15): runs every cargo-fuzz target in fuzz/ for SECONDS each (default 120), two
# at a time, seeded from fuzz/corpus/<target> (kept out of git; see fuzz/README.md for
# seeds). Needs nightly Rust and `cargo install cargo-fuzz`. A crash lands in
# fuzz/artifacts/<target>/: minimise it (`cargo +nightly fuzz tmin`), fix the bug, and commit
# the input under fuzz/regressions/<target>/, which `make test` replays
# (test/fuzz_regressions.rs).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
SECONDS_EACH="${1:-120}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(cdr_camera raw_frame compressed_frame manifest mcap_bag sqlite_bag)
cargo +nightly fuzz build -O
run() {
  mkdir -p "corpus/$1"
  cargo +nightly fuzz run -O "$1" -- -max_total_time="$SECONDS_EACH" -max_len=65536 \
    -rss_limit_mb=2048 -timeout=10 > "artifacts/$1.log" 2>&1 || true
  echo "$1: $(grep -E '^Done' "artifacts/$1.log" || grep -E 'SUMMARY|panicked' "artifacts/$1.log" | head -1)"
}
mkdir -p artifacts
for ((i = 0; i < ${#TARGETS[@]}; i += 2)); do
  run "${TARGETS[$i]}" &
  [ -z "${TARGETS[$((i + 1))]:-}" ] || run "${TARGETS[$((i + 1))]}"
  wait
done
ls artifacts/*/ 2>/dev/null | grep -E "crash-|oom-|timeout-" && { echo "findings above"; exit 1; } || echo "no findings"
