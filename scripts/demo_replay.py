"""Demo client: replays a real camera sequence into the monitor node and prints its verdicts.

Frames: the `mbt/cube` sequence of Debian's visp-images-data (640x480 greyscale camera video,
GPL-2, installed by `make demo`, not shipped with this project). The first part is replayed as
is (in-distribution), the second part through a documented OOD transform ("night": brightness
scaled to 25 % plus Gaussian sensor noise, sigma 20 grey levels, fixed seed).
"""

import argparse
import array
import pathlib
import statistics
import sys
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

SEQ = pathlib.Path("/usr/share/visp-images-data/ViSP-images/mbt/cube")


def read_pgm(path):
    data = path.read_bytes()
    parts, pos = [], 0
    while len(parts) < 4:  # magic, width, height, maxval (no comments in these files)
        while data[pos:pos + 1].isspace():
            pos += 1
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        parts.append(data[pos:end])
        pos = end
    w, h = int(parts[1]), int(parts[2])
    return np.frombuffer(data[pos + 1:pos + 1 + w * h], np.uint8).reshape(h, w)


def night(img, rng):
    noisy = img.astype(np.float32) * 0.25 + rng.normal(0, 20, img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--monitor", default="vae_ood_monitor")
    ap.add_argument("--topic", default="/camera/image_raw")
    ap.add_argument("--frames", type=int, default=120, help="frames per segment")
    ap.add_argument("--rate", type=float, default=15.0)
    args = ap.parse_args()

    files = sorted(SEQ.glob("image*.pgm"))
    if len(files) < args.frames:
        sys.exit(f"demo frames not found in {SEQ}: install Debian's visp-images-data (make demo does)")
    rng = np.random.default_rng(0)
    segments = [("in-distribution", [read_pgm(f) for f in files[: args.frames]])]
    segments.append(("OOD: night (25% brightness + noise)", [night(read_pgm(f), rng) for f in files[: args.frames]]))

    rclpy.init()
    node = rclpy.create_node("vae_ood_demo_camera")
    pub = node.create_publisher(Image, args.topic, 10)
    verdicts = {}

    def on_verdict(msg):
        st = msg.status[0]
        verdicts[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = {kv.key: kv.value for kv in st.values}

    node.create_subscription(DiagnosticArray, f"/{args.monitor}/verdict", on_verdict, 50)
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if pub.get_subscription_count() == 0:
        sys.exit("the monitor node did not subscribe within 30 s")

    print(f"{'frame':>5}  {'segment':<36} {'score':>10}  verdict   latency")
    summary = []
    stages = []
    n = 0
    for label, frames in segments:
        sent = []
        for img in frames:
            msg = Image()
            stamp = node.get_clock().now().nanoseconds
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.header.frame_id = "camera"
            rgb = np.repeat(img[:, :, None], 3, axis=2)  # published as a colour camera would
            msg.height, msg.width = img.shape
            msg.encoding, msg.step = "rgb8", 3 * img.shape[1]
            msg.data = array.array("B", rgb.tobytes())
            pub.publish(msg)
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            sent.append(key)
            t_end = time.monotonic() + 1.0 / args.rate
            while time.monotonic() < t_end:
                rclpy.spin_once(node, timeout_sec=max(0.0, t_end - time.monotonic()))
            n += 1
            v = verdicts.get(key)
            if v and (n % 10 == 0 or v["state"] == "FAULT"):
                print(f"{n:5d}  {label:<36} {float(v['score']):10.3f}  {v['state']:<8}  {v['total_ms']} ms")
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            rclpy.spin_once(node, timeout_sec=0.05)
        got = [verdicts[k] for k in sent if k in verdicts]
        scores = [float(v["score"]) for v in got if v["score"] != "nan"]
        flagged = sum(v["ood"] == "true" for v in got)
        lat = sorted(float(v["total_ms"]) for v in got)
        summary.append((label, len(sent), len(got), flagged, statistics.median(scores) if scores else float("nan"), lat[len(lat) // 2] if lat else float("nan")))
        stages.extend(got)

    print("\nsummary")
    print(f"  {'segment':<36} {'sent':>5} {'scored':>6} {'flagged OOD':>11} {'median score':>12} {'p50 latency':>11}")
    for label, sent, got, flagged, med, lat in summary:
        print(f"  {label:<36} {sent:5d} {got:6d} {flagged:11d} {med:12.3f} {lat:9.2f} ms")
    print("\nper-stage latency in the node, 640x480 rgb8 frames (p50 / p90 / max, ms):")
    for stage in ["decode_ms", "preprocess_ms", "inference_ms", "publish_ms", "total_ms"]:
        xs = sorted(float(v[stage]) for v in stages)
        if xs:
            print(f"  {stage[:-3]:<11} {xs[len(xs) // 2]:7.3f} / {xs[int(len(xs) * 0.9)]:7.3f} / {xs[-1]:7.3f}")
    print("\nNOTE: the bundled detector is an UNTRAINED placeholder (seeded weights): these verdicts are")
    print("not meaningful yet. The pipeline (decode, preprocess, inference, scoring, publishing) is real.")
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
