"""Restarting either node, live over real DDS (loopback), with the measured time to a zero
command (SAFETY.md's table).

- The monitor is killed and started again under the same name: the gate commands zero within
  watchdog_timeout + one command period + 0.3 s of the kill, no command passes while it is
  dead, and commands pass again once the new monitor has scored a frame.
- The gate is killed and started again: it publishes nothing while dead (the base driver's own
  timeout must stop the robot, SAFETY.md); the new gate passes commands once the monitor's
  live heartbeat proves the verdict fresh (a gate started while the monitor is hung never
  does: test_hung_monitor.py).
"""

import os
import signal
import time

import pytest

from conftest import BUNDLE, NodeProcess, make_frames, wait_for

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")

from ros_helpers import raw_image  # noqa: E402
from test_gate_live import CMD_PERIOD, SLACK, WATCHDOG, spin_for, start_pair  # noqa: E402
from test_hung_monitor import healthy_start  # noqa: E402

UID = f"{os.getpid()}"
PARAMS = {"input_timeout": "0.0", "score_threshold": "1e9"}


def test_restarting_the_monitor_or_the_gate_never_passes_an_unproven_command(ros):
    name = f"restart_{UID}"
    monitor, gate, client, ctl = start_pair(name, BUNDLE, PARAMS)
    try:
        frames = make_frames(4, seed=95)
        healthy_start(client, ctl, frames[:3])

        # The monitor dies.
        monitor.proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        deadline = WATCHDOG + CMD_PERIOD + SLACK
        wait_for(lambda: ctl.first_zero_after(t_kill) is not None, deadline + 1, client.spin, "zero after the kill")
        stop = ctl.first_zero_after(t_kill) - t_kill
        assert stop <= deadline, f"zero {stop:.3f} s after the monitor died (bound {deadline} s)"
        monitor.stop()

        # ... and comes back under the same name.
        t_restart = time.monotonic()
        monitor = NodeProcess(f"m_{name}", {"max_frame_age": "0.0", **PARAMS}, bundle=BUNDLE)
        v = client.send(raw_image(frames[0]), timeout=30)
        t_scored = time.monotonic()
        assert v["state"] == "OK", v
        # From the first zero until the new monitor runs, nothing passes (afterwards the gate
        # follows the new monitor's verdicts: STARTING is `true` until it scores a frame).
        passed_early = [t for t, x in ctl.out if t_kill + stop <= t <= t_restart and x != 0.0]
        assert not passed_early, "a command passed while the monitor was dead"
        wait_for(lambda: ctl.passing_after(t_scored), 2, client.spin, "commands passing after the restart")
        print(f"monitor killed: zero after {stop:.3f} s; restarted: first verdict after "
              f"{t_scored - t_restart:.2f} s, commands passing after {ctl_pass(ctl, t_scored) - t_restart:.2f} s")

        # The gate dies: nothing is published until it is back.
        gate.proc.send_signal(signal.SIGKILL)
        t_gate_kill = time.monotonic()
        spin_for(client, 0.3)
        silent = [x for t, x in ctl.out if t >= t_gate_kill + 0.1]
        assert not silent, "a killed gate published"
        gate.stop()
        t_gate = time.monotonic()
        gate = NodeProcess(f"g_{name}", {"watchdog_timeout": repr(WATCHDOG)}, gate=True,
                           remaps={"ood": f"/m_{name}/ood", "cmd_vel_in": f"/g_{name}/cmd_in",
                                   "cmd_vel_out": f"/g_{name}/cmd_out"})
        wait_for(lambda: any(t >= t_gate for t, _ in ctl.out), 30, client.spin, "the new gate's first output")
        t_first = next(t for t, _ in ctl.out if t >= t_gate)
        # The monitor's heartbeat (frames or not) proves the verdict fresh: commands pass again.
        wait_for(lambda: ctl.passing_after(t_gate), 5, client.spin, "commands passing through the new gate")
        print(f"gate killed: silent; restarted: first output {t_first - t_gate:.2f} s after its start, "
              f"commands passing {ctl_pass(ctl, t_gate) - t_gate:.2f} s after it")
    finally:
        client.close()
        gate.stop()
        monitor.stop()


def ctl_pass(ctl, t0):
    return next(t for t, x in ctl.out if t >= t0 and x == 0.5)
