"""Every frame that reaches the node is counted once (issue 15), live over real DDS (loopback):
N frames published in a burst with reliable QoS, a publisher history and a subscription queue
deep enough for N (so DDS loses none), must show up in /diagnostics as scored, faulted (by
kind), dropped for a newer frame, or lost in r2r's subscription queue (counted by our r2r fork,
vendor/r2r), summing to N. Some of the burst are malformed, so every kind of count is used.
"""

import os

import pytest

from conftest import BUNDLE, NodeProcess, make_frames, wait_for

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros_helpers import Client, raw_image  # noqa: E402

UID = f"{os.getpid()}"
N = 90
COUNTS = ("frames_scored", "frames_faulted", "frames_dropped", "frames_lost_in_queue")


def test_every_frame_of_a_burst_is_counted_once(ros):
    name = f"count_{UID}"
    node = NodeProcess(name, {"image_qos": "reliable", "image_qos_depth": "100", "input_timeout": "0.0",
                              "max_frame_age": "0.0", "diagnostics_period": "0.2"})
    client = Client(name, compressed=False)
    try:
        client.wait_matched()
        qos = QoSProfile(depth=N, history=QoSHistoryPolicy.KEEP_LAST, reliability=QoSReliabilityPolicy.RELIABLE)
        pub = client.node.create_publisher(Image, f"/{name}/cam", qos)
        wait_for(lambda: pub.get_subscription_count() > 0, 30, client.spin, "the monitor to match the burst publisher")
        frames = make_frames(6, width=320, height=240, seed=97)
        for i in range(N):
            msg = raw_image(frames[i % len(frames)])
            if i % 10 == 3:
                msg.step = msg.width * 3 - 1  # malformed: faulted as rejected.bad_step
            msg.header.stamp = client.node.get_clock().now().to_msg()
            pub.publish(msg)

        def total(d):
            return sum(int(d.get(k, 0)) for k in COUNTS)

        wait_for(lambda: any(total(d) >= N for d in client.diagnostics), 30, client.spin,
                 f"/diagnostics to account for {N} frames")
        # Which frames of the burst are scored depends on timing; one more malformed frame,
        # sent alone and answered, is certainly processed (a fault of its kind).
        bad = raw_image(frames[0])
        bad.step = bad.width * 3 - 1
        assert client.send(bad)["fault"] == "rejected.bad_step"
        total_n = N + 1
        wait_for(lambda: any(total(d) >= total_n for d in client.diagnostics), 10, client.spin,
                 f"/diagnostics to account for {total_n} frames")
        # Let two more periods pass: nothing may be counted twice.
        n = len(client.diagnostics)
        wait_for(lambda: len(client.diagnostics) > n + 1, 5, client.spin, "two more /diagnostics")
        last = client.diagnostics[-1]
        counts = {k: int(last[k]) for k in COUNTS}
        print(f"{N} frames in a burst and one alone: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        assert sum(counts.values()) == total_n, counts
        assert int(last["frames_received"]) + counts["frames_lost_in_queue"] == total_n, last
        assert counts["frames_scored"] > 0 and int(last["faults.rejected.bad_step"]) >= 1, last
        assert node.proc.poll() is None
    finally:
        client.close()
        node.stop()
