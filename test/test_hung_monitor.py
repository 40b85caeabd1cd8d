"""A hung inference thread in a live monitor process (examples/hung_monitor.rs: the real node
with a detector that blocks forever inside its 6th frame), and a monitor frozen whole with
SIGSTOP, over real DDS (loopback).

Functional deadlines, each with its stated slack:
- /diagnostics reports ERROR ("inference stalled") within max_busy + diagnostics_period + 0.5 s;
- ~/reset answers failure within 1 s + 0.5 s, and a reset answered so is not carried out when
  a stall ends;
- the gate, started before the hang, commands zero within max_busy + watchdog_timeout + one
  command period + 0.3 s; a gate started after the hang never passes a command;
- SIGINT: the process exits within 2 s, and the last ~/ood it published is true;
- SIGSTOP: zero within watchdog_timeout + one command period + 0.3 s; a gate started meanwhile
  never passes a command; after SIGCONT commands pass again.
"""

import os
import signal
import time

import pytest

from conftest import BUNDLE, HUNG_MONITOR, NodeProcess, make_frames, require, wait_for

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")
from std_srvs.srv import Trigger  # noqa: E402

from ros_helpers import Client, raw_image  # noqa: E402
from test_gate_live import CMD_PERIOD, WATCHDOG, Controller, spin_for, start_pair  # noqa: E402

UID = f"{os.getpid()}"
MAX_BUSY = 0.5
DIAG_PERIOD = 0.5


def start_late_gate(client, monitor, name):
    """A gate started now on `monitor`'s ~/ood, once it publishes: it must block every command
    for a second (it may only have the latched sample)."""
    gate = NodeProcess(name, {"watchdog_timeout": repr(WATCHDOG)}, gate=True,
                       remaps={"ood": f"/{monitor}/ood", "cmd_vel_in": f"/{name}/cmd_in", "cmd_vel_out": f"/{name}/cmd_out"})
    try:
        ctl = Controller(client, name)
        wait_for(lambda: len(ctl.out) > 10, 30, client.spin, "the late gate's output")
        spin_for(client, 1.0)
    except BaseException:
        gate.stop()
        raise
    return gate, ctl


def healthy_start(client, ctl, frames):
    """Frames scored OK, and commands passing through the running gate."""
    for f in frames:
        assert client.send(raw_image(f))["state"] == "OK"
    t_ok = time.monotonic()
    spin_for(client, 0.3)
    assert ctl.passing_after(t_ok), "commands must pass while the monitor is healthy"


def test_a_hung_inference_thread_is_reported_stops_the_robot_and_does_not_block_shutdown(ros):
    require(HUNG_MONITOR, "examples/hung_monitor (cargo build -p vae_ood_monitor --example hung_monitor)")
    name = f"m_hung_{UID}"
    monitor, gate, client, ctl = start_pair(
        f"hung_{UID}", BUNDLE, {"input_timeout": "0.0", "max_busy": repr(MAX_BUSY),
                                "diagnostics_period": repr(DIAG_PERIOD), "score_threshold": "1e9"},
        exe=HUNG_MONITOR, env={"VAE_OOD_HANG_AFTER": "5"})
    late_gate = None
    try:
        frames = make_frames(6, seed=60)
        healthy_start(client, ctl, frames[:5])

        # The 6th frame never comes back.
        msg = raw_image(frames[5])
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(client.stamp(), 1_000_000_000)
        client.pub.publish(msg)
        t_hang = time.monotonic()

        stalled = lambda: any(d["level"] in (2, b"\x02") and "stalled" in d["message"] for d in client.diagnostics)  # noqa: E731
        deadline = MAX_BUSY + DIAG_PERIOD + 0.5
        wait_for(stalled, deadline + 2, client.spin, "/diagnostics ERROR for the stalled inference")
        assert time.monotonic() - t_hang <= deadline + 0.3, "ERROR came too late"

        zero_deadline = MAX_BUSY + WATCHDOG + CMD_PERIOD + 0.3
        wait_for(lambda: ctl.first_zero_after(t_hang) is not None, zero_deadline + 1, client.spin, "zero velocity")
        assert ctl.first_zero_after(t_hang) - t_hang <= zero_deadline

        reset = client.node.create_client(Trigger, f"/{name}/reset")
        assert reset.wait_for_service(timeout_sec=10)
        t_reset = time.monotonic()
        fut = reset.call_async(Trigger.Request())
        wait_for(lambda: fut.done(), 1.5, client.spin, "the reset answer")
        assert not fut.result().success and "did not answer" in fut.result().message, fut.result()
        assert time.monotonic() - t_reset <= 1.5

        # A gate that starts now gets the monitor's latched ~/ood; it must not pass commands.
        late_gate, late = start_late_gate(client, name, f"g_late_{UID}")
        assert not any(x != 0.0 for _, x in late.out), "a gate started during the hang passed a command"

        n_ood = len(client.ood)
        monitor.proc.send_signal(signal.SIGINT)
        t_int = time.monotonic()
        wait_for(lambda: monitor.proc.poll() is not None, 2.0, client.spin, "the monitor to exit after SIGINT")
        assert time.monotonic() - t_int <= 2.0
        spin_for(client, 0.3)
        assert len(client.ood) > n_ood and client.ood[-1] is True, client.ood[-5:]
        assert "stalled" in monitor.output() or "hung" in monitor.output(), monitor.output()[-2000:]
    finally:
        client.close()
        monitor.stop(timeout=3)
        gate.stop()
        if late_gate:
            late_gate.stop()


def test_a_reset_refused_during_a_stall_is_not_carried_out_when_it_ends(ros):
    """The inference thread stalls for 3 s inside a frame; ~/reset called meanwhile answers
    failure ("nothing was reset"), and when the stall ends the node drops the request instead of
    resetting behind the operator's back (its log says so)."""
    require(HUNG_MONITOR, "examples/hung_monitor (cargo build -p vae_ood_monitor --example hung_monitor)")
    name = f"m_stall_{UID}"
    monitor = NodeProcess(name, {"max_frame_age": "0.0", "input_timeout": "0.0", "score_threshold": "1e9"},
                          exe=HUNG_MONITOR, env={"VAE_OOD_HANG_AFTER": "2", "VAE_OOD_HANG_FOR": "3"})
    client = Client(name, compressed=False)
    try:
        client.wait_matched()
        frames = make_frames(4, seed=62)
        for f in frames[:2]:
            assert client.send(raw_image(f))["state"] == "OK"
        msg = raw_image(frames[2])
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(client.stamp(), 1_000_000_000)
        client.pub.publish(msg)
        wait_for(lambda: "blocking inside inference" in monitor.output(), 10, client.spin, "the stall")
        reset = client.node.create_client(Trigger, f"/{name}/reset")
        assert reset.wait_for_service(timeout_sec=10)
        fut = reset.call_async(Trigger.Request())
        wait_for(lambda: fut.done(), 1.5, client.spin, "the reset answer")
        assert not fut.result().success and "nothing was reset" in fut.result().message, fut.result()
        # The stall ends; the next frame is scored, after the stalled one and the dropped request.
        wait_for(lambda: "inference resumes" in monitor.output(), 10, client.spin, "the end of the stall")
        assert client.send(raw_image(frames[3]))["state"] == "OK"
        out = monitor.output()
        assert "caller had given up waiting: nothing reset" in out, out[-2000:]
        assert "reset requested, but the bundle is uncalibrated" not in out, out[-2000:]
    finally:
        client.close()
        monitor.stop()


def test_a_stopped_monitor_never_lets_a_command_through(ros):
    """SIGSTOP freezes the whole monitor process (no heartbeat, no discovery answers): the
    running gate stops the robot within the watchdog bound, a gate started meanwhile never
    passes a command, and after SIGCONT both pass again once frames flow."""
    name = f"m_stop_{UID}"
    monitor, gate, client, ctl = start_pair(f"stop_{UID}", BUNDLE, {"input_timeout": "0.0", "score_threshold": "1e9"})
    late_gate = None
    try:
        frames = make_frames(10, seed=61)
        healthy_start(client, ctl, frames[:3])

        monitor.proc.send_signal(signal.SIGSTOP)
        t_stop = time.monotonic()
        deadline = WATCHDOG + CMD_PERIOD + 0.3
        wait_for(lambda: ctl.first_zero_after(t_stop) is not None, deadline + 1, client.spin, "zero velocity")
        assert ctl.first_zero_after(t_stop) - t_stop <= deadline

        late_gate, late = start_late_gate(client, name, f"g_stoplate_{UID}")
        assert not any(x != 0.0 for _, x in late.out), "a gate started while the monitor was stopped passed a command"
        assert not ctl.passing_after(t_stop + deadline), "the running gate passed a command while the monitor was stopped"

        monitor.proc.send_signal(signal.SIGCONT)
        for f in frames[3:]:
            client.send(raw_image(f))
        t_cont = time.monotonic()
        spin_for(client, 1.0)
        assert ctl.passing_after(t_cont) and late.passing_after(t_cont), "commands must pass again after SIGCONT"
    finally:
        if monitor.proc.poll() is None:
            monitor.proc.send_signal(signal.SIGCONT)
        client.close()
        monitor.stop()
        gate.stop()
        if late_gate:
            late_gate.stop()
