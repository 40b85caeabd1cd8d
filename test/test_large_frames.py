"""Large camera frames reach the node whole over the project's loopback DDS profile (shared
memory with 16 MB segments, scripts/fastdds_loopback.xml): 640x480 rgb8 at 30 Hz for 10 s,
sensor-data QoS as camera drivers publish. Every frame sent must be received (the node's
`frames_received` in /diagnostics); scoring may drop frames for newer ones, transport may not."""

import os
import time

import numpy as np
import pytest

from conftest import BUNDLE, NodeProcess, wait_for

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros_helpers import Client, raw_image  # noqa: E402

UID = f"{os.getpid()}"


def test_640x480_frames_at_30_hz_arrive_whole(ros):
    name = f"m_large_{UID}"
    monitor = NodeProcess(name, {"max_frame_age": "0.0", "score_threshold": "1e9", "diagnostics_period": "0.5"},
                          bundle=BUNDLE)
    client = Client(name, compressed=False)
    pub = client.node.create_publisher(Image, f"/{name}/cam", qos_profile_sensor_data)
    try:
        client.wait_matched()
        wait_for(lambda: pub.get_subscription_count() > 0, 30, client.spin, "the monitor to subscribe")
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
        msgs = [raw_image(f) for f in frames]
        sent, period = 300, 1.0 / 30
        t0 = time.monotonic()
        for i in range(sent):
            m = msgs[i % len(msgs)]
            m.header.stamp = client.node.get_clock().now().to_msg()
            pub.publish(m)
            while time.monotonic() < t0 + (i + 1) * period:
                client.spin()
        received = lambda: max((int(d.get("frames_received", 0)) for d in client.diagnostics), default=0)  # noqa: E731
        end = time.monotonic() + 5
        while received() < sent and time.monotonic() < end:
            client.spin()
        print(f"640x480 rgb8 at 30 Hz: {received()} of {sent} frames received")
        assert received() == sent, f"{received()} of {sent} frames received: frames lost in transit (DDS profile?)"
    finally:
        client.close()
        monitor.stop()
