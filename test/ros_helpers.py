"""rclpy helpers shared by the live tests: a client node that feeds a monitor and records
everything it publishes."""

import array
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Float32

from conftest import wait_for


class Client:
    """An rclpy node that feeds one monitor and records what it publishes."""

    def __init__(self, monitor: str, compressed: bool):
        self.node = rclpy.create_node(f"client_{monitor}")
        self.verdicts = {}
        self.scores = []
        self.ood = []
        self.diagnostics = []
        if compressed:
            self.pub = self.node.create_publisher(CompressedImage, f"/{monitor}/cam/compressed", 10)
        else:
            self.pub = self.node.create_publisher(Image, f"/{monitor}/cam", 10)
        self.node.create_subscription(DiagnosticArray, f"/{monitor}/verdict", self._on_verdict, 50)
        self.node.create_subscription(Float32, f"/{monitor}/score", lambda m: self.scores.append(m.data), 50)
        latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(Bool, f"/{monitor}/ood", lambda m: self.ood.append(m.data), latched)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.monitor = monitor
        self.next_stamp = None

    def _on_verdict(self, msg):
        st = msg.status[0]
        rec = {kv.key: kv.value for kv in st.values}
        rec["level"] = st.level
        rec["arrived"] = time.monotonic()  # for round trips (scripts/soak.py)
        self.verdicts[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = rec

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith(f"/{self.monitor}:"):
                self.diagnostics.append({kv.key: kv.value for kv in st.values} | {"level": st.level, "message": st.message})

    def spin(self):
        rclpy.spin_once(self.node, timeout_sec=0.02)

    def wait_matched(self):
        """Waits until both directions are connected: our camera publisher has the monitor as a
        subscriber, and the monitor's latched ~/ood has reached us (its publishers matched)."""
        wait_for(lambda: self.pub.get_subscription_count() > 0, 30, self.spin, "the monitor to subscribe")
        wait_for(lambda: len(self.ood) > 0, 30, self.spin, "the monitor's latched ~/ood")
        end = time.monotonic() + 0.5  # let discovery of the remaining endpoints settle
        while time.monotonic() < end:
            self.spin()

    def stamp(self, offset_s=0.0):
        now = self.node.get_clock().now().nanoseconds
        if offset_s:
            return now + int(offset_s * 1e9)
        # Strictly increasing, unique stamps.
        self.next_stamp = max(now, (self.next_stamp or 0) + 1_000_000)
        return self.next_stamp

    def send(self, msg, offset_s=0.0, timeout=15, stamp_ns=None):
        """Publishes `msg` stamped now (+ `offset_s`), or at `stamp_ns` (e.g. on a simulated
        clock), and returns its verdict."""
        ns = self.stamp(offset_s) if stamp_ns is None else stamp_ns
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        msg.header.frame_id = "camera"
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.pub.publish(msg)
        try:
            wait_for(lambda: key in self.verdicts, 3, self.spin, f"the verdict for stamp {key}")
        except AssertionError:
            # The camera QoS is best effort: one resend covers a frame lost in transit.
            self.pub.publish(msg)
            wait_for(lambda: key in self.verdicts, timeout, self.spin, f"the verdict for stamp {key}")
        return self.verdicts[key]

    def close(self):
        self.node.destroy_node()


def raw_image(rgb, encoding="rgb8", pad=0):
    h, w, _ = rgb.shape
    if encoding == "bgr8":
        pix = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        pix = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    else:
        pix = rgb
    rows = pix.reshape(h, -1)
    if pad:
        rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image()
    msg.height, msg.width, msg.encoding, msg.is_bigendian = h, w, encoding, 0
    msg.step = rows.shape[1]
    msg.data = array.array("B", rows.tobytes())
    return msg


def same_f32(a, b):
    return np.float32(float(a)) == np.float32(float(b))
