#!/usr/bin/env bash
# Benchmark (issue 15): `vae-ood eval` on a large MCAP bag streams it. Writes a bag of N raw
# 640x480 rgb8 frames (default 2300: about 2 GB) with rosbags (an independent writer), then
# evaluates it and prints frames, peak memory (report.json) and throughput.
# Usage: scripts/bench_bigbag.sh [FRAMES] [DIR]   (needs make test's .venv and target/debug/vae-ood)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-2300}"
DIR="${2:-$ROOT/out/bigbag}"
rm -rf "$DIR" && mkdir -p "$DIR"
"$ROOT/.venv/bin/python" - "$DIR/bag" "$N" <<'PY'
import sys, numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
ts = get_typestore(Stores.ROS2_JAZZY)
Image, Header, Time = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
rng = np.random.default_rng(0)
frames = [rng.integers(0, 255, 640 * 480 * 3, dtype=np.uint8) for _ in range(8)]
with Writer(sys.argv[1], version=9, storage_plugin=StoragePlugin.MCAP) as w:
    c = w.add_connection("/camera/image_raw", Image.__msgtype__, typestore=ts)
    for i in range(int(sys.argv[2])):
        ns = 1_700_000_000_000_000_000 + i * 33_333_333
        m = Image(header=Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="camera"),
                  height=480, width=640, encoding="rgb8", is_bigendian=0, step=640 * 3, data=frames[i % 8])
        w.write(c, ns, ts.serialize_cdr(m, Image.__msgtype__))
PY
du -sh "$DIR/bag"
/usr/bin/time -v "$ROOT/target/debug/vae-ood" eval --bundle "$ROOT/models/compressed" --out "$DIR/eval" --quiet \
  --id "$DIR/bag" 2> "$DIR/time.txt" > /dev/null
python3 - "$DIR" <<'PY'
import json, re, sys, pathlib
d = pathlib.Path(sys.argv[1])
r = json.loads((d / "eval/report.json").read_text())
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", (d / "time.txt").read_text())
print(f"frames {r['frames']}, scored {r['scored']}, peak memory {r['peak_memory_mib']:.0f} MiB (report.json), "
      f"max RSS {int(rss.group(1)) / 1024:.0f} MiB (time -v), {r['throughput_fps']:.0f} frames/s")
PY
