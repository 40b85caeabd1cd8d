"""The flow detector's per-branch rule (issue 18; the reference design's verdict: a frame whose
KL in either branch exceeds the bundle's `calibration.branch_thresholds` is OOD), live over real
DDS (loopback), rclpy as the client, on copies of the shipped `models/flow`:

- off by default: the verdict is the calibrated sequential test's, and ~/verdict reports each
  branch's KL and whether the rule fires;
- with `branch_rule: true` a frame over a threshold is OOD on its own;
- asking for the rule with a bundle that has no thresholds is refused at start-up, by name.
"""

import os
import re
import shutil
import time

import pytest

from conftest import ROOT, NodeProcess, make_frames

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")

from ros_helpers import Client, raw_image  # noqa: E402

UID = f"{os.getpid()}"
PERIOD_NS = 66_666_667


def flow_copy(tmp_path, thresholds):
    """models/flow with its branch thresholds replaced by `thresholds` (h, v), or removed."""
    out = tmp_path / "flow"
    shutil.copytree(ROOT / "models" / "flow", out)
    manifest = out / "manifest.yaml"
    text = re.sub(r"\n  branch_thresholds:\n    horizontal: [^\n]+\n    vertical: [^\n]+", "", manifest.read_text())
    if thresholds is not None:
        h, v = thresholds
        text = text.replace("\ncalibration:\n", f"\ncalibration:\n  branch_thresholds:\n    horizontal: {h}\n    vertical: {v}\n", 1)
    manifest.write_text(text)
    return out


def states(name, bundle, branch_rule):
    node = NodeProcess(name, bundle=str(bundle), params={
        "branch_rule": "true" if branch_rule else "false", "max_frame_age": "0.0", "input_timeout": "0.0",
        # The calibrated test far out of reach, so that only the rule can alarm.
        "cusum_threshold": "1000000.0"})
    client = Client(name, compressed=False)
    try:
        client.wait_matched()
        t0 = client.stamp()
        frames = make_frames(9, seed=5)
        verdicts = [client.send(raw_image(f), stamp_ns=t0 + k * PERIOD_NS) for k, f in enumerate(frames)]
        # ~/verdict carries each branch's KL and the rule's own say on every scored frame.
        for v in verdicts[6:]:
            assert float(v["kl_horizontal"]) >= 0 and float(v["kl_vertical"]) >= 0, v
            assert v["branch_ood"] == "true", v
        assert all("kl_horizontal" not in v for v in verdicts[:6])
        return [v["state"] for v in verdicts]
    finally:
        client.close()
        assert node.stop() == 0, node.output()


def test_the_branch_rule_alarms_on_single_frames_only_when_asked(ros, tmp_path):
    # Thresholds under any stack's KL: the rule fires on every scored frame.
    low = flow_copy(tmp_path, (1e-6, 1e-6))
    # The calibrated test cannot alarm (its threshold is set out of reach), so without the rule
    # the verdict is OK after the 6-frame warm-up.
    assert states(f"branch_off_{UID}", low, False) == ["STARTING"] * 6 + ["OK"] * 3
    assert states(f"branch_on_{UID}", low, True) == ["STARTING"] * 6 + ["OOD"] * 3


def test_the_branch_rule_without_thresholds_is_refused_at_start_up(tmp_path):
    bare = flow_copy(tmp_path, None)
    node = NodeProcess(f"branch_bare_{UID}", bundle=str(bare), params={"branch_rule": "true"})
    deadline = time.monotonic() + 30
    while node.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    code = node.stop()
    assert code not in (0, None), node.output()
    assert "branch_rule" in node.output() and "branch_thresholds" in node.output(), node.output()
