"""Several detectors on one camera, live over real DDS (loopback), rclpy as the client: the
image detector and the optical-flow detector (issue 18) in one node via `model_bundles`.

- each detector publishes under ~/<bundle directory name>/ (score, ood, verdict, ...);
- the node's ~/ood and ~/verdict combine them: OK only when every detector is OK, so the flow
  detector's warm-up (its first 6 frames, and again after a gap in the stamps) keeps the node
  STARTING (OOD) while the image detector already says OK;
- /diagnostics has one entry per detector; two bundles with one name are refused at start-up.
"""

import os
import re
import time

import pytest
import yaml

from conftest import BUNDLE, ROOT, NodeProcess, cli, make_frames, wait_for

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from std_msgs.msg import Bool, Float32  # noqa: E402

from ros_helpers import Client, raw_image  # noqa: E402

UID = f"{os.getpid()}"
PERIOD_NS = 66_666_667


def records(into):
    def on(msg):
        into.append({kv.key: kv.value for kv in msg.status[0].values})
    return on


def test_image_and_flow_detectors_run_side_by_side_and_the_node_combines_them(ros, tmp_path):
    flow = tmp_path / "flow"
    cli("gen-seeded", "--preset", "flow", "--out", flow, "--name", "seeded-flow")
    image = re.sub(r"[^A-Za-z0-9]", "_", BUNDLE.name)  # the uncalibrated default's directory: its namespace
    name = f"multi_{UID}"
    node = NodeProcess(name, bundle="models/compressed", params={
        "model_bundles": f"[{BUNDLE},{flow}]", "score_threshold": "1e9", "max_frame_age": "0.0",
        "input_timeout": "0.0", "diagnostics_period": "0.5"})
    client = Client(name, compressed=False)
    flow_verdicts, flow_scores, image_scores, flow_ood = [], [], [], []
    client.node.create_subscription(DiagnosticArray, f"/{name}/flow/verdict", records(flow_verdicts), 50)
    client.node.create_subscription(Float32, f"/{name}/flow/score", lambda m: flow_scores.append(m.data), 50)
    client.node.create_subscription(Float32, f"/{name}/{image}/score", lambda m: image_scores.append(m.data), 50)
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    client.node.create_subscription(Bool, f"/{name}/flow/ood", lambda m: flow_ood.append(m.data), latched)
    try:
        client.wait_matched()
        frames = make_frames(12, seed=81)
        t0 = client.stamp()
        states = []
        for k in range(9):
            v = client.send(raw_image(frames[k]), stamp_ns=t0 + k * PERIOD_NS)
            states.append((v["state"], v[f"detector.{image}"], v["detector.flow"]))
        # 6 frames warm the flow stack up; the image detector scores from the first frame.
        assert states[:6] == [("STARTING", "OK", "STARTING")] * 6, states
        assert states[6:] == [("OK", "OK", "OK")] * 3, states
        wait_for(lambda: len(flow_scores) >= 3 and len(image_scores) >= 9, 5, client.spin, "per-detector scores")
        assert len(flow_scores) == 3, flow_scores  # no score while warming up
        wait_for(lambda: flow_verdicts and flow_verdicts[-1]["state"] == "OK", 5, client.spin, "~/flow/verdict")
        assert [r["state"] for r in flow_verdicts[:6]] == ["STARTING"] * 6
        assert flow_verdicts[0]["fault"] == "warming_up"
        wait_for(lambda: flow_ood and flow_ood[-1] is False, 5, client.spin, "~/flow/ood false")
        wait_for(lambda: client.ood and client.ood[-1] is False, 5, client.spin, "~/ood false")

        # A gap of 2 s in the stamps: the flow detector restarts its stack (no flow across the
        # gap); the node is STARTING again until it is warm.
        later = t0 + 8 * PERIOD_NS + 2_000_000_000
        v = client.send(raw_image(frames[9]), stamp_ns=later)
        assert (v["state"], v[f"detector.{image}"], v["detector.flow"]) == ("STARTING", "OK", "STARTING"), v
        wait_for(lambda: client.ood and client.ood[-1] is True, 5, client.spin, "~/ood true after the gap")

        def diag_ok():
            return any(int(d.get("detector.flow.frames_warming_up", 0)) >= 7
                       and int(d.get(f"detector.{image}.frames_scored", 0)) >= 10 for d in client.diagnostics)
        wait_for(diag_ok, 5, client.spin, "per-detector counts in /diagnostics")
        assert "(flow) from" in node.output() and f"outputs under ~/{image}/" in node.output()
    finally:
        client.close()
        assert node.stop() == 0, node.output()


def test_two_bundles_with_one_name_are_refused_at_start_up(tmp_path):
    a, b = tmp_path / "a" / "det", tmp_path / "b" / "det"
    for d in (a, b):
        cli("gen-seeded", "--out", d)
    node = NodeProcess(f"dupe_{UID}", bundle="models/compressed", params={"model_bundles": f"[{a},{b}]"})
    deadline = time.monotonic() + 30
    while node.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    code = node.stop()
    assert code not in (0, None), node.output()
    assert "both named 'det'" in node.output(), node.output()


def test_calibrated_detectors_at_their_own_thresholds_are_warned_about(ros):
    """Two calibrated detectors promise up to twice one threshold's false-alarm rate together:
    at threshold_scale 1 the node says so and names the tool that computes their joint scale;
    at their joint scale it does not, nor under an unequal split (threshold_scales), where each
    detector runs at its own bundle's threshold times its own scale."""
    outputs = {}
    cases = {"1.0": {"threshold_scale": "1.0"}, "1.51": {"threshold_scale": "1.51"},
             "split": {"threshold_scales": "[1.51,1.0]"}}
    for case, params in cases.items():
        name = f"joint_{case.replace('.', '_')}_{UID}"
        node = NodeProcess(name, bundle="models/compressed", params={
            "model_bundles": "[models/compressed,models/flow]", **params})
        try:
            wait_for(lambda: node.output().count("loaded detector") >= 2 or node.proc.poll() is not None, 60,
                     lambda: time.sleep(0.1), "both detectors loaded")
            time.sleep(0.5)  # the warning follows the second detector's line
            assert node.proc.poll() is None, node.output()
        finally:
            node.stop()
        outputs[case] = node.output()
    assert "2 calibrated detectors" in outputs["1.0"] and "vae-ood joint-threshold" in outputs["1.0"], outputs["1.0"]
    assert "joint-threshold" not in outputs["1.51"], outputs["1.51"]
    assert "joint-threshold" not in outputs["split"], outputs["split"]

    def in_force(output, bundle):
        [line] = [ln for ln in output.splitlines() if "loaded detector" in ln and f"{bundle} on " in ln]
        return float(re.search(r"cusum_threshold ([0-9.e+-]+)", line).group(1))

    own = {b: yaml.safe_load((ROOT / b / "manifest.yaml").read_text())["calibration"]["pipeline"]["cusum_threshold"]
           for b in ("models/compressed", "models/flow")}
    assert in_force(outputs["split"], "models/compressed") == pytest.approx(own["models/compressed"] * 1.51)
    assert in_force(outputs["split"], "models/flow") == pytest.approx(own["models/flow"])
    assert in_force(outputs["1.51"], "models/flow") == pytest.approx(own["models/flow"] * 1.51)
