"""A slow stream, live over real DDS (loopback): the camera's frames arrive, but fewer of them a
second than `min_rate` asks (frames lost in the driver or transport), which neither the age nor
the input-timeout check sees. The rate is judged by the frames' stamps, which this test sets, so
the transition is exact whatever the machine's load.

Functional deadlines, each with its stated slack:
- at 15 Hz every frame is scored; at 5 Hz the 4th frame faults (7 frames stamped in its last
  second, under min_rate 8), exactly;
- the gate commands zero within 0.3 s of the monitor's first FAULT verdict;
- /diagnostics counts the frames as `faults.slow_stream`; back at 15 Hz, frames are scored again
  once 8 of them are stamped in the last second.
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
PERIOD_NS = 1_000_000_000 // 15 + 1


def test_a_slow_stream_faults_stops_the_robot_and_recovers(ros):
    monitor, gate, client, ctl = start_pair(
        f"slow_{UID}", BUNDLE, {"input_timeout": "0.0", "score_threshold": "1e9", "diagnostics_period": "0.5",
                                "min_rate": "8.0"})
    try:
        frames = [raw_image(f) for f in make_frames(4, seed=71)]
        healthy_start(client, ctl, make_frames(3, seed=72))
        t = client.stamp()

        def send(n, every):
            nonlocal t
            out = []
            for k in range(n):
                t += every * PERIOD_NS
                v = client.send(frames[k % len(frames)], stamp_ns=t)
                out.append((v["state"], v.get("fault"), time.monotonic()))
            return out

        fast = send(20, 1)
        assert [s[:2] for s in fast] == [("OK", None)] * 20, fast
        slow = send(6, 3)
        # After j frames at 5 Hz, 15 - 2j frames are stamped in the last second.
        assert [s[:2] for s in slow] == [("OK", None)] * 3 + [("FAULT", "slow_stream")] * 3, slow
        stops_on_fault(client, ctl, slow[3][2], "slow_stream", 3)

        # Back at 15 Hz: slow until 8 frames are stamped in the last second, then scored.
        back = send(16, 1)
        assert back[0][:2] == ("FAULT", "slow_stream"), back
        assert back[-1][:2] == ("OK", None), back
        t_ok = time.monotonic()
        spin_for(client, 0.3)
        assert ctl.passing_after(t_ok), "commands must pass again once the rate returns"
    finally:
        client.close()
        gate.stop()
        monitor.stop()
