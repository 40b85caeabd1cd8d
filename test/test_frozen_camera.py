"""A frozen camera, live over real DDS (loopback): the driver keeps sending the same image with
fresh stamps (a stuck driver or republisher), which the age check cannot see.

Functional deadlines, each with its stated slack:
- the first `max_repeated_frames` repeats are scored, the next one faults (exactly);
- the gate commands zero within 0.3 s of the monitor's first FAULT verdict, so within
  (max_repeated_frames + 1) frame periods + 0.3 s of the freeze;
- /diagnostics counts the frames as `faults.frozen`; a different frame is scored again and
  commands pass.
"""

import os
import time

import pytest

from conftest import BUNDLE, make_frames

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")

from ros_helpers import raw_image  # noqa: E402
from test_gate_live import spin_for, start_pair, stops_on_fault  # noqa: E402
from test_hung_monitor import healthy_start  # noqa: E402

UID = f"{os.getpid()}"
MAX_REPEATS = 5
PERIOD = 1.0 / 15


def test_a_frozen_camera_faults_stops_the_robot_and_recovers(ros):
    monitor, gate, client, ctl = start_pair(
        f"frozen_{UID}", BUNDLE, {"input_timeout": "0.0", "score_threshold": "1e9", "diagnostics_period": "0.5",
                                  "max_repeated_frames": str(MAX_REPEATS)})
    try:
        frames = make_frames(4, seed=70)
        healthy_start(client, ctl, frames[:3])

        frozen = raw_image(frames[3])
        t_freeze = time.monotonic()
        states, t_fault = [], None
        for i in range(MAX_REPEATS + 4):
            v = client.send(frozen)  # the same pixels, a fresh stamp
            states.append((v["state"], v.get("fault")))
            if v["state"] == "FAULT" and t_fault is None:
                t_fault = time.monotonic()
            spin_for(client, max(0.0, t_freeze + (i + 1) * PERIOD - time.monotonic()))
        # The new image and MAX_REPEATS repeats of it are scored; every later repeat faults.
        assert states[:MAX_REPEATS + 1] == [("OK", None)] * (MAX_REPEATS + 1), states
        assert states[MAX_REPEATS + 1:] == [("FAULT", "frozen")] * 3, states
        zero = stops_on_fault(client, ctl, t_fault, "frozen", 3)
        print(f"frozen camera at 15 Hz, max_repeated_frames {MAX_REPEATS}: zero command "
              f"{zero - t_freeze:.2f} s after the freeze")

        # The camera lives again.
        assert client.send(raw_image(frames[0]))["state"] == "OK"
        t_ok = time.monotonic()
        spin_for(client, 0.3)
        assert ctl.passing_after(t_ok), "commands must pass again once frames change"
    finally:
        client.close()
        gate.stop()
        monitor.stop()
