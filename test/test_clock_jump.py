"""Clock jumps under `use_sim_time`, live over real DDS (loopback): the monitor takes its time
from /clock (as when a bag is replayed with its clock) and checks each frame's age against it.

- /clock jumps ahead while the camera keeps its own stamps: once the monitor has the new
  /clock, the frames are older than `max_frame_age`, FAULT (stale), and the gate commands zero
  within 0.3 s of that verdict (the time from the jump is printed);
- /clock jumps back while the camera keeps its stamps: the frames are from the future, FAULT
  (ahead_of_clock), zero within 0.3 s of the verdict;
- the clock and the camera jump back together (a bag that loops): frames are consistent and
  are scored; commands pass.
The gate's watchdog runs on the steady clock, so no jump of /clock can make it pass a command.
"""

import os
import time

import pytest

from conftest import BUNDLE, make_frames

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")
from rosgraph_msgs.msg import Clock  # noqa: E402

from ros_helpers import raw_image  # noqa: E402
from test_gate_live import SLACK, spin_for, start_pair  # noqa: E402

UID = f"{os.getpid()}"
PERIOD = 1.0 / 15
JUMP = 10.0


class SimClock:
    """Publishes /clock at 100 Hz: `base` + steady time elapsed + the jumps so far."""

    def __init__(self, node, base=1000.0):
        self.pub = node.create_publisher(Clock, "/clock", 10)
        self.t0, self.base, self.offset = time.monotonic(), base, 0.0
        node.create_timer(0.01, self.tick)

    def now(self):
        return self.base + time.monotonic() - self.t0 + self.offset

    def tick(self):
        m = Clock()
        m.clock.sec, ns = divmod(int(self.now() * 1e9), 1_000_000_000)
        m.clock.nanosec = ns
        self.pub.publish(m)


def send_at(client, msg, stamp_s):
    """Publishes one frame stamped `stamp_s` (sim seconds) and returns its verdict."""
    return client.send(msg, stamp_ns=int(stamp_s * 1e9))


def test_clock_jumps_fail_safe_and_a_looping_bag_does_not(ros):
    monitor, gate, client, ctl = start_pair(
        f"clock_{UID}", BUNDLE, {"use_sim_time": "true", "max_frame_age": "0.5", "input_timeout": "0.0",
                                 "score_threshold": "1e9"})
    clock = SimClock(client.node)
    try:
        frames = [raw_image(f) for f in make_frames(4, seed=90)]

        def stream(n, stamp_offset=0.0):
            """n frames at 15 Hz stamped with the sim clock (+ offset); their verdicts."""
            out = []
            for i in range(n):
                out.append(send_at(client, frames[i % len(frames)], clock.now() + stamp_offset))
                spin_for(client, PERIOD)
            return out

        def stream_until(state, stamp_offset, within=2.0):
            """Frames at 15 Hz until one is `state` (the monitor takes the new /clock from its
            subscription, a few ms after the jump); returns when that frame's verdict came."""
            end = time.monotonic() + within
            while True:
                v = send_at(client, frames[0], clock.now() + stamp_offset)
                if v["state"] == state:
                    return v, time.monotonic()
                assert time.monotonic() < end, f"no {state} within {within} s: {v}"
                spin_for(client, PERIOD)

        # Until the first /clock reaches it, the monitor's sim clock reads 0 and every frame is
        # ahead of it (a fault): wait for that, then frames on the sim clock are scored.
        stream_until("OK", 0.0, within=15.0)
        assert [v["state"] for v in stream(4)] == ["OK"] * 4
        t_ok = time.monotonic()
        spin_for(client, 0.3)
        assert ctl.passing_after(t_ok), "commands must pass on a consistent sim clock"

        for name, clock_jump, fault in (("ahead", JUMP, "stale"), ("back", -JUMP, "ahead_of_clock")):
            # /clock jumps; the camera's stamps keep their own timeline.
            camera_offset = -clock_jump
            clock.offset += clock_jump
            t_jump = time.monotonic()
            v, t_fault = stream_until("FAULT", camera_offset)
            assert v["fault"] == fault, (name, v)
            vs = stream(3, camera_offset)
            assert all(v["state"] == "FAULT" and v["fault"] == fault for v in vs), (name, vs)
            # The gate stops the robot as soon as the fault is published (functional deadline:
            # 0.3 s slack for scheduling and DDS).
            zero = ctl.first_zero_after(t_jump)
            assert zero is not None and zero <= t_fault + SLACK, (name, zero and zero - t_fault)
            print(f"/clock jumped {name} by {JUMP:.0f} s: FAULT ({fault}), zero command {zero - t_jump:.3f} s later")
            # The camera follows the new clock: frames are scored and commands pass again.
            stream_until("OK", 0.0)
            t_ok = time.monotonic()
            spin_for(client, 0.3)
            assert ctl.passing_after(t_ok), f"commands must pass again after the jump {name}"

        # A looping bag: clock and stamps jump back together; nothing is wrong with the frames.
        clock.offset -= JUMP
        stream_until("OK", 0.0)
        assert [v["state"] for v in stream(4)] == ["OK"] * 4
        t_ok = time.monotonic()
        spin_for(client, 0.3)
        assert ctl.passing_after(t_ok), "a consistent jump of clock and stamps must not stop the robot"
        assert monitor.proc.poll() is None
    finally:
        client.close()
        gate.stop()
        monitor.stop()
