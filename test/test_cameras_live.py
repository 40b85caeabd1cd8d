"""Several cameras on one node (issue 19), over real DDS with rclpy as the cameras and the
listener: each camera has its own pipeline, outputs under ~/<camera>/ and /diagnostics status;
the node's ~/ood follows the cameras that gate and ignores an advisory one; the same frame gets
the same score on either camera (one shared detector, independent streams)."""

import os
import time

import pytest

from conftest import NodeProcess, make_frames, wait_for

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402

from ros_helpers import raw_image  # noqa: E402

UID = f"{os.getpid()}"
CAMERAS = ("front", "rear")


class Rig:
    """Publishes each camera's frames and records the node's outputs."""

    def __init__(self, name):
        self.name = name
        self.node = rclpy.create_node(f"cameras_client_{UID}")
        latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        self.pubs = {c: self.node.create_publisher(Image, f"/{name}/{c}_camera", 10) for c in CAMERAS}
        self.verdicts = {c: [] for c in CAMERAS}
        self.ood = {k: [] for k in ("node", *CAMERAS)}
        self.diagnostics = {}
        for c in CAMERAS:
            self.node.create_subscription(DiagnosticArray, f"/{name}/{c}/verdict",
                                          lambda m, c=c: self.verdicts[c].append({kv.key: kv.value for kv in m.status[0].values}), 50)
            self.node.create_subscription(Bool, f"/{name}/{c}/ood", lambda m, c=c: self.ood[c].append(m.data), latched)
        self.node.create_subscription(Bool, f"/{name}/ood", lambda m: self.ood["node"].append(m.data), latched)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith(f"/{self.name}: camera "):
                self.diagnostics[st.name.rsplit(" ", 1)[1]] = {kv.key: kv.value for kv in st.values}

    def spin(self, seconds=0.0):
        end = time.monotonic() + seconds
        while True:
            rclpy.spin_once(self.node, timeout_sec=0.02)
            if time.monotonic() >= end:
                return

    def send(self, camera, msg):
        n = len(self.verdicts[camera])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pubs[camera].publish(msg)
        wait_for(lambda: len(self.verdicts[camera]) > n, 15, self.spin, f"the {camera} verdict")
        return self.verdicts[camera][-1]

    def heartbeat(self, key):
        """The next ~/ood (key "node") or ~/<camera>/ood heartbeat."""
        n = len(self.ood[key])
        wait_for(lambda: len(self.ood[key]) > n, 5, self.spin, f"a {key} heartbeat")
        return self.ood[key][-1]


def test_two_cameras_one_node_with_an_advisory_camera(ros):
    name = f"cameras_{UID}"
    params = {"cameras": "[front, rear]", "advisory_cameras": "[rear]", "max_frame_age": "0.0",
              "input_timeout": "0.0", "score_threshold": "1e30",
              "front.image_topic": f"/{name}/front_camera", "rear.image_topic": f"/{name}/rear_camera"}
    node = NodeProcess(name, params)
    rig = Rig(name)
    good = raw_image(make_frames(1, seed=7)[0])
    bad = raw_image(make_frames(1, seed=8)[0])
    bad.data = bad.data[:100]  # truncated: a fault
    try:
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in rig.pubs.values()), 60, rig.spin,
                 "both camera subscriptions")
        rig.spin(0.5)

        # Front OK: the node is OK although the advisory rear camera has seen nothing yet.
        front = rig.send("front", good)
        assert front["state"] == "OK", front
        assert rig.heartbeat("node") is False
        assert rig.heartbeat("front") is False and rig.heartbeat("rear") is True

        # The same frame on the rear camera: its own stream, the same score.
        rear = rig.send("rear", good)
        assert rear["state"] == "OK" and rear["score"] == front["score"], (rear, front)

        # An advisory camera's fault shows on its own outputs only.
        assert rig.send("rear", bad)["state"] == "FAULT"
        assert rig.heartbeat("rear") is True and rig.heartbeat("node") is False

        # A gating camera's fault makes the node OOD; its next good frame clears it.
        assert rig.send("front", bad)["state"] == "FAULT"
        assert rig.heartbeat("node") is True
        assert rig.send("front", good)["state"] == "OK" and rig.heartbeat("node") is False

        # One /diagnostics status per camera, each with its own counts.
        wait_for(lambda: rig.diagnostics.get("front", {}).get("frames_received") == "3"
                 and rig.diagnostics.get("rear", {}).get("frames_received") == "2", 10, rig.spin,
                 "per-camera diagnostics")
        assert rig.diagnostics["rear"]["faults.rejected.truncated"] == "1", rig.diagnostics["rear"]
    finally:
        rig.node.destroy_node()
        rc = node.stop()
    assert rc == 0, node.output()[-3000:]
    assert "for camera front" in node.output() and "outputs under ~/rear/" in node.output()


@pytest.mark.parametrize("params,needle", [
    ({"cameras": "[front, front]"}, "twice"),
    ({"cameras": "[front]", "advisory_cameras": "[front]"}, "every camera is advisory"),
    ({"cameras": "[front]", "advisory_cameras": "[rear]"}, "not in 'cameras'"),
    ({"cameras": "['1st']"}, "not a valid name"),
    ({"cameras": "[front]", "front.transport": "carrier_pigeon"}, "front.transport"),
])
def test_a_bad_camera_list_stops_the_node_with_the_reason(ros, params, needle):
    node = NodeProcess(f"cameras_bad_{UID}_{abs(hash(needle)) % 1000}", params)
    try:
        node.proc.wait(timeout=30)
    finally:
        node.stop()
    assert node.proc.returncode != 0 and needle in node.output(), node.output()


def test_the_example_cameras_config_runs(ros):
    """config/monitor_cameras.yaml as launch/monitor_cameras.launch.py loads it (over
    monitor.yaml): both cameras subscribed, each on its own topic and transport."""
    from conftest import ROOT

    name = f"cameras_example_{UID}"
    node = NodeProcess(name, extra_args=["--params-file", str(ROOT / "config" / "monitor_cameras.yaml")])
    probe = rclpy.create_node(f"cameras_probe_{UID}")
    try:
        wait_for(lambda: probe.count_subscribers("/front_camera/image_raw") >= 1
                 and probe.count_subscribers("/rear_camera/image_raw/compressed") >= 1, 60,
                 lambda: rclpy.spin_once(probe, timeout_sec=0.05), "both cameras' subscriptions")
        assert probe.count_publishers(f"/{name}/front/ood") == 1 and probe.count_publishers(f"/{name}/rear/ood") == 1
    finally:
        probe.destroy_node()
        rc = node.stop()
    assert rc == 0, node.output()[-3000:]


def test_a_silent_camera_times_out_while_the_other_streams(ros):
    """Each camera has its own silent-camera timer: rear silent while front streams at 20 Hz
    faults rear (input_timeout) and makes the node OOD (rear gates), front stays OK."""
    name = f"cameras_silent_{UID}"
    params = {"cameras": "[front, rear]", "max_frame_age": "0.0", "input_timeout": "0.5",
              "score_threshold": "1e30",
              "front.image_topic": f"/{name}/front_camera", "rear.image_topic": f"/{name}/rear_camera"}
    node = NodeProcess(name, params)
    rig = Rig(name)
    # Different frames: one frame repeated is a frozen camera.
    frames = [raw_image(f) for f in make_frames(8, seed=9)]
    try:
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in rig.pubs.values()), 60, rig.spin,
                 "both camera subscriptions")
        rig.spin(0.5)
        t_end, i = time.monotonic() + 2.5, 0
        while time.monotonic() < t_end:
            msg = frames[i % len(frames)]
            msg.header.stamp = rig.node.get_clock().now().to_msg()
            rig.pubs["front"].publish(msg)
            rig.spin(0.05)
            i += 1
        assert rig.verdicts["front"] and all(v["state"] == "OK" for v in rig.verdicts["front"][-10:]), [(i, v["state"], v.get("fault")) for i, v in enumerate(rig.verdicts["front"]) if v["state"] != "OK"] + [len(rig.verdicts["front"])]
        assert any(v["state"] == "FAULT" and "input_timeout" in v.get("fault", "") for v in rig.verdicts["rear"]), \
            rig.verdicts["rear"]
        assert rig.heartbeat("node") is True and rig.heartbeat("rear") is True
    finally:
        rig.node.destroy_node()
        rc = node.stop()
    assert rc == 0, node.output()[-3000:]


def test_a_single_named_cameras_own_threshold_is_the_one_in_force(ros):
    """One named camera with its own score_threshold override (uncalibrated bundle, per-frame
    decision): the camera's threshold decides, not the node's (0 flags every frame, where the
    node's 1e30 would pass them all)."""
    name = f"onecam_{UID}"
    params = {"cameras": "[front]", "max_frame_age": "0.0", "input_timeout": "0.0",
              "score_threshold": "1e30", "front.score_threshold": "0.0",
              "front.image_topic": f"/{name}/front_camera"}
    node = NodeProcess(name, params)
    rig = Rig(name)
    try:
        wait_for(lambda: rig.pubs["front"].get_subscription_count() > 0, 60, rig.spin, "the camera subscription")
        rig.spin(0.5)
        for f in make_frames(2, seed=9):
            v = rig.send("front", raw_image(f))
            assert v["state"] == "OOD", v
    finally:
        rig.node.destroy_node()
        node.stop()
