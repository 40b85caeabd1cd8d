"""Benchmark (issue 18): the monitor node with the image and the optical-flow detector
(`model_bundles`), pinned to one core with `taskset`, fed 160x120 rgb8 frames at 15 Hz for a
given time by an rclpy publisher in this (separate) process over real DDS (loopback). Reports
what the node counted in /diagnostics: frames received, scored, warming up, faulted, dropped
for a newer frame and lost in the subscription queue, and each detector's per-stage latency
from its ~/<name>/verdict records. Frames are a committed sample drive's, in a loop (each pass
is a scene cut; the stamps stay regular, so the stack goes on across it).

    source scripts/env.sh && source scripts/loopback.sh 81 && \
      .venv/bin/python scripts/bench_flow_node.py --seconds 300 --bundles models/compressed models/flow
"""

import argparse
import io
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "test"))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402

from conftest import ROOT, NodeProcess  # noqa: E402
from ros_helpers import Client, raw_image  # noqa: E402


def sample_frames(drive="id_udem1_s3"):
    from PIL import Image
    from rosbags.highlevel import AnyReader

    out = []
    with AnyReader([ROOT / "data" / "sample" / drive / "bag"]) as r:
        conns = [c for c in r.connections if c.msgtype.endswith("CompressedImage")]
        for c, _, raw in r.messages(connections=conns):
            msg = r.deserialize(raw, c.msgtype)
            out.append(np.asarray(Image.open(io.BytesIO(bytes(msg.data))).convert("RGB")))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--rate", type=float, default=15.0)
    ap.add_argument("--cpu", default="0", help="taskset CPU list for the node")
    ap.add_argument("--bundles", nargs="+", default=["models/compressed", "models/flow"])
    args = ap.parse_args()
    rclpy.init()
    name = f"bench_flow_{os.getpid()}"
    bundles = [str(pathlib.Path(b).resolve()) for b in args.bundles]
    names = [pathlib.Path(b).name for b in bundles]
    node = NodeProcess(name, bundle="models/compressed", wrapper=("taskset", "-c", args.cpu), params={
        "model_bundles": "[" + ",".join(bundles) + "]", "image_qos": "reliable", "max_frame_age": "0.0",
        "input_timeout": "0.0", "score_threshold": "1e9"})
    client = Client(name, compressed=False)
    records = {n: [] for n in names}
    for n in names:
        def on(msg, n=n):
            records[n].append({kv.key: kv.value for kv in msg.status[0].values})
        client.node.create_subscription(DiagnosticArray, f"/{name}/{n}/verdict", on, 100)
    frames = [raw_image(f) for f in sample_frames()]
    try:
        client.wait_matched()
        period = 1.0 / args.rate
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < args.seconds:
            due = t0 + sent * period
            while time.monotonic() < due:
                client.spin()
            msg = frames[sent % len(frames)]
            ns = client.stamp()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
            client.pub.publish(msg)
            sent += 1
        end = time.monotonic() + 3
        while time.monotonic() < end:
            client.spin()
        # The last health report: cumulative counts (latency is per period: the last busy one).
        diag = client.diagnostics[-1]
        busy = [d for d in client.diagnostics if d.get("latency_p50_ms") not in (None, "n/a")]
        print(f"node pinned to CPU {args.cpu}, detectors {names}, {sent} frames at {args.rate} Hz over "
              f"{args.seconds:.0f} s (160x120 rgb8, reliable)")
        for k in ("frames_received", "frames_dropped", "frames_lost_in_queue"):
            print(f"  {k:<40} {diag.get(k)}")
        for k in sorted(k for k in diag if k.startswith("detector.") and not k.endswith("model_id")):
            print(f"  {k:<40} {diag[k]}")
        if busy:
            print(f"  latency (receive to publish) p50 per period: max {max(float(d['latency_p50_ms']) for d in busy):.3f} ms; "
                  f"largest single frame {max(float(d['latency_max_ms']) for d in busy):.3f} ms")
        for n in names:
            rs = records[n]
            for k in ("preprocess_ms", "inference_ms", "total_ms"):
                xs = sorted(float(r[k]) for r in rs if k in r)
                if xs:
                    print(f"  {n:<12} {k:<14} p50 {statistics.median(xs):7.3f}  p99 {xs[int(0.99 * (len(xs) - 1))]:7.3f}"
                          f"  max {xs[-1]:7.3f} ms  ({len(xs)} verdicts)")
    finally:
        client.close()
        node.stop()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
