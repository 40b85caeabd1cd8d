"""Calibrated sequential detection and the command gate, live over real DDS (loopback).

A bundle is calibrated from synthetic drives with `vae-ood calibrate` (ID: structured frames;
OOD: the same kind of frames overexposed, which the seeded encoder scores higher). Then
monitor + gate run as separate processes and rclpy plays camera and controller.

Functional deadlines, each with its stated slack:
- OOD onset -> zero velocity within (window + 5) frames;
- frames stop -> zero within watchdog_timeout + one command period + 300 ms;
- monitor killed -> zero within watchdog_timeout + one command period + 300 ms.
"""

import os
import re
import signal
import time

import numpy as np
import pytest

from conftest import NodeProcess, call_idempotent, cli, make_frames, wait_for, write_png

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")
from geometry_msgs.msg import Twist  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ros_helpers import Client, raw_image  # noqa: E402

UID = f"{os.getpid()}"
WATCHDOG = 0.5
CMD_PERIOD = 0.05
SLACK = 0.3


def overexpose(img):
    return np.clip(img.astype(np.float32) * 2.5 + 60, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("drives")

    def drive(name, frames):
        d = root / name
        d.mkdir()
        for i, f in enumerate(frames):
            write_png(d / f"{i:04d}.png", f)
        return d

    cal = [drive(f"cal{i}", make_frames(40, seed=10 + i)) for i in range(2)]
    tune = [drive(f"tune{i}", make_frames(60, seed=20 + i)) for i in range(2)]
    mixed = make_frames(40, seed=30)
    val = drive("val", mixed[:20] + [overexpose(f) for f in mixed[20:]])
    out = root / "bundle"
    r = cli("calibrate", "--out", out, "--cal", *cal, "--tune-id", *tune, "--val-ood", f"{val}:20",
            "--k", "10,30", "--windows", "5,10", "--decays", "0.5,1", "--false-alarm-rate", "1e-6", "--quiet",
            "--camera", "rear")
    window = int(re.search(r"window\s+(\d+)", r.stdout).group(1))
    return out, window, r.stdout


def test_a_bundle_calibrated_for_another_camera_is_used_with_a_warning(ros, calibrated):
    """Per-camera calibration (issue 19): the bundle records its drives' camera, and a node whose
    `camera` names another one warns (and still runs); on the same camera it does not."""
    import yaml

    bundle, _, _ = calibrated
    assert yaml.safe_load((bundle / "manifest.yaml").read_text())["calibration"]["camera"] == "rear"
    for camera, warns in [("front", True), ("rear", False)]:
        node = NodeProcess(f"cam_{camera}_{UID}", {"camera": camera}, bundle=bundle)
        try:
            wait_for(lambda: "loaded detector" in node.output(), 60, what="the bundle to load")
            time.sleep(0.2)
            assert node.proc.poll() is None, node.output()
            out = node.output()
        finally:
            node.stop()
        assert ("calibrated on camera 'rear' but this node watches camera 'front'" in out) == warns, out


def test_calibrate_rejects_overlapping_drives(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_png(d / "0.png", make_frames(1)[0])
    r = cli("calibrate", "--out", tmp_path / "o", "--cal", d, "--tune-id", d, check=False)
    assert r.returncode != 0 and "disjoint" in r.stderr


class Controller:
    """Publishes a constant forward command at 20 Hz and records the gate's output."""

    def __init__(self, client: Client, gate: str):
        self.out = []  # (monotonic time, linear.x)
        self.pub = client.node.create_publisher(Twist, f"/{gate}/cmd_in", 10)
        client.node.create_subscription(Twist, f"/{gate}/cmd_out", lambda m: self.out.append((time.monotonic(), m.linear.x)), 100)
        self.timer = client.node.create_timer(CMD_PERIOD, self._tick)

    def _tick(self):
        m = Twist()
        m.linear.x = 0.5
        self.pub.publish(m)

    def first_zero_after(self, t0):
        return next((t for t, x in self.out if t >= t0 and x == 0.0), None)

    def passing_after(self, t0):
        return any(x == 0.5 for t, x in self.out if t >= t0)


def start_pair(name, bundle, params=None, exe=None, env=None):
    """Monitor m_NAME (exe: another monitor executable), gate g_NAME on its ~/ood, and an rclpy
    client and controller; returns once the gate publishes."""
    monitor = NodeProcess(f"m_{name}", {"max_frame_age": "0.0", **(params or {})}, bundle=bundle, exe=exe, env=env)
    gate = NodeProcess(f"g_{name}", {"watchdog_timeout": repr(WATCHDOG)}, gate=True,
                       remaps={"ood": f"/m_{name}/ood", "cmd_vel_in": f"/g_{name}/cmd_in", "cmd_vel_out": f"/g_{name}/cmd_out"})
    client = Client(f"m_{name}", compressed=False)
    ctl = Controller(client, f"g_{name}")
    client.wait_matched()
    wait_for(lambda: len(ctl.out) > 0, 30, client.spin, "the gate's first output")
    return monitor, gate, client, ctl


def stops_on_fault(client, ctl, t_fault, kind, count):
    """The gate commands zero within SLACK of the monitor's first FAULT verdict (received at
    `t_fault`), and /diagnostics counts at least `count` faults of `kind`; returns the zero
    command's time."""
    wait_for(lambda: ctl.first_zero_after(t_fault - 0.05) is not None, SLACK + 1, client.spin, "a zero command")
    zero = ctl.first_zero_after(t_fault - 0.05)
    assert zero - t_fault <= SLACK, f"zero command {zero - t_fault} s after the fault"
    wait_for(lambda: any(int(d.get(f"faults.{kind}", 0)) >= count for d in client.diagnostics), 3, client.spin,
             f"faults.{kind} in /diagnostics")
    return zero


def spin_for(client, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.spin()


def test_alarm_gate_watchdog_and_auto_recovery(ros, calibrated):
    bundle, window, _ = calibrated
    monitor, gate, client, ctl = start_pair(f"auto_{UID}", bundle, {"recovery": "auto", "recovery_frames": "5"})
    try:
        frames = make_frames(60, seed=40)
        # STARTING blocks commands until the window is full; then in-distribution frames pass.
        states = [client.send(raw_image(f))["state"] for f in frames[:window + 10]]
        assert states[0] == "STARTING" and states[-1] == "OK", states
        t_ok = time.monotonic()
        spin_for(client, 0.3)
        assert ctl.passing_after(t_ok), "commands must pass while in-distribution"

        # OOD onset: the gate publishes zero within (window + 5) frames.
        onset_time, alarm_at = time.monotonic(), None
        for i, f in enumerate(frames[:window + 5]):
            v = client.send(raw_image(overexpose(f)))
            if v["state"] == "OOD":
                alarm_at = i
                break
        assert alarm_at is not None and alarm_at < window + 5, f"no alarm within {window + 5} OOD frames"
        wait_for(lambda: ctl.first_zero_after(onset_time) is not None, 1.0, client.spin, "zero velocity after the alarm")
        assert float(v["cusum"]) > 0 and float(v["p_value"]) < 0.1, v

        # Auto recovery: S falls back under the threshold, then recovery_frames good frames.
        recovered = None
        for i, f in enumerate(frames * 2):
            if client.send(raw_image(f))["state"] == "OK":
                recovered = i
                break
        assert recovered is not None, "auto recovery never happened"
        t_rec = time.monotonic()
        spin_for(client, 0.3)
        assert ctl.passing_after(t_rec)

        # Frames stop: the monitor faults after input_timeout (0.5 s), the gate stops the robot.
        t_stop = time.monotonic()
        wait_for(lambda: ctl.first_zero_after(t_stop) is not None, WATCHDOG + CMD_PERIOD + SLACK + 0.5, client.spin,
                 "zero velocity after the camera stopped")
        assert ctl.first_zero_after(t_stop) - t_stop <= 0.5 + WATCHDOG + CMD_PERIOD + SLACK

        # Camera back: passes again; then the monitor is killed: zero within the watchdog bound.
        for f in frames[:window]:
            client.send(raw_image(f))
        t_back = time.monotonic()
        spin_for(client, 0.3)
        assert ctl.passing_after(t_back)
        # Keep frames flowing so only the monitor's death can stop the robot.
        monitor.proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        deadline = WATCHDOG + CMD_PERIOD + SLACK
        wait_for(lambda: ctl.first_zero_after(t_kill) is not None, deadline, client.spin, "zero velocity after the monitor died")
        assert ctl.first_zero_after(t_kill) - t_kill <= deadline
    finally:
        client.close()
        monitor.stop()
        gate.stop()
    assert gate.proc.returncode == 0, gate.output()


def test_manual_recovery_needs_reset(ros, calibrated):
    bundle, window, _ = calibrated
    monitor, gate, client, ctl = start_pair(f"manual_{UID}", bundle, {"recovery": "manual"})
    try:
        frames = make_frames(40, seed=50)
        for f in frames[:window + 2]:
            client.send(raw_image(f))
        for f in frames[:window + 5]:
            if client.send(raw_image(overexpose(f)))["state"] == "OOD":
                break
        # In-distribution frames again: manual recovery keeps OOD.
        states = [client.send(raw_image(f))["state"] for f in frames]
        assert set(states) == {"OOD"}, states
        reset = client.node.create_client(Trigger, f"/m_manual_{UID}/reset")
        assert reset.wait_for_service(timeout_sec=10)
        r = call_idempotent(reset, Trigger.Request(), client.spin, 30, "the reset response")
        assert r.success and "OK" in r.message, r
        v = client.send(raw_image(frames[0]))
        assert v["state"] == "OK" and float(v["cusum"]) < 1.0, v
        t = time.monotonic()
        spin_for(client, 0.3)
        assert ctl.passing_after(t)
    finally:
        client.close()
        monitor.stop()
        gate.stop()


def test_gate_publishes_zero_on_shutdown(ros):
    name = f"g_shutdown_{UID}"
    gate = NodeProcess(name, {}, gate=True, remaps={"cmd_vel_out": f"/{name}/out"})
    node = rclpy.create_node(f"listener_{UID}")
    got = []
    node.create_subscription(Twist, f"/{name}/out", lambda m: got.append((time.monotonic(), m.linear.x)), 10)
    try:
        wait_for(lambda: len(got) > 0, 30, lambda: rclpy.spin_once(node, timeout_sec=0.02), "zero velocity while no verdict")
        assert all(x == 0.0 for _, x in got)
        gate.proc.send_signal(signal.SIGINT)
        t = time.monotonic()
        wait_for(lambda: gate.proc.poll() is not None, 10, lambda: rclpy.spin_once(node, timeout_sec=0.02), "gate exit")
        spin_end = time.monotonic() + 0.3
        while time.monotonic() < spin_end:
            rclpy.spin_once(node, timeout_sec=0.02)
        assert any(ts >= t and x == 0.0 for ts, x in got), "a final zero on shutdown"
    finally:
        gate.stop()
        node.destroy_node()
    assert "shutting down: publishing zero velocity" in gate.output()
