"""Live per-stage latency of the monitor node for 640x480 rgb8 frames over real DDS (loopback):
decode, preprocess, inference and publish as the node reports them in ~/verdict, plus the
round trip seen by an rclpy client. Usage (after `make test` built the node):

    source scripts/env.sh && source scripts/loopback.sh 80 && .venv/bin/python scripts/bench_live.py
"""

import os
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "test"))
import time  # noqa: E402

import rclpy  # noqa: E402

from conftest import NodeProcess, make_frames  # noqa: E402
from ros_helpers import Client, raw_image  # noqa: E402


def main(n=200):
    rclpy.init()
    name = f"bench_{os.getpid()}"
    node = NodeProcess(name, {"image_qos": "reliable"})
    client = Client(name, compressed=False)
    try:
        client.wait_matched()
        frames = make_frames(8, width=640, height=480)
        stages = {k: [] for k in ["decode_ms", "preprocess_ms", "inference_ms", "publish_ms", "total_ms"]}
        rtt = []
        for i in range(n + 10):
            t = time.perf_counter()
            v = client.send(raw_image(frames[i % len(frames)]))
            if i >= 10:
                rtt.append((time.perf_counter() - t) * 1e3)
                for k in stages:
                    stages[k].append(float(v[k]))
        print(f"{n} frames 640x480 rgb8, node {name} (p50 / p90 / max, ms)")
        for k, xs in list(stages.items()) + [("round_trip_ms (client)", rtt)]:
            xs.sort()
            print(f"  {k:<24} {statistics.median(xs):7.3f} / {xs[int(len(xs) * 0.9)]:7.3f} / {xs[-1]:7.3f}")
    finally:
        client.close()
        node.stop()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
