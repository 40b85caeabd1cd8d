"""`managed: true` makes the monitor a ROS 2 lifecycle node (issue 19), driven here by rclpy as
the lifecycle manager over real DDS: its state machine equals rcl_lifecycle's (an rclpy
LifecycleNode is the reference), every transition works and publishes its events, and `~/ood`
is true in every state but active. A bundle that cannot load fails `configure` and leaves the
node unconfigured and alive. A managed `ood_gate` passes commands only while active."""

import os
import time

import pytest

from conftest import NodeProcess, call_idempotent, make_frames, wait_for

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")
from lifecycle_msgs.msg import Transition, TransitionEvent  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetAvailableStates, GetAvailableTransitions, GetState  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import LifecycleNode  # noqa: E402

from ros_helpers import Client, raw_image  # noqa: E402

UID = f"{os.getpid()}"
SERVICES = [("change_state", ChangeState), ("get_state", GetState), ("get_available_states", GetAvailableStates),
            ("get_available_transitions", GetAvailableTransitions),
            ("get_transition_graph", GetAvailableTransitions)]


class Manager:
    """A lifecycle manager for one node: its five services, and its transition events."""

    def __init__(self, node, executor, target):
        self.node, self.executor, self.target = node, executor, target
        self.clients = {k: node.create_client(srv, f"/{target}/{k}") for k, srv in SERVICES}
        self.events = []
        node.create_subscription(TransitionEvent, f"/{target}/transition_event",
                                 lambda m: self.events.append((m.transition.id, m.start_state.id, m.goal_state.id)), 50)
        for c in self.clients.values():
            assert c.wait_for_service(timeout_sec=30), c.srv_name
        # Events are volatile: let the event topic match before any transition is asked for.
        wait_for(lambda: node.count_publishers(f"/{target}/transition_event") >= 1, 30,
                 lambda: executor.spin_once(timeout_sec=0.02), f"{target}'s transition events")
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.02)

    def call(self, kind, request=None, timeout=60):
        c = self.clients[kind]
        request = request if request is not None else c.srv_type.Request()
        step = lambda: self.executor.spin_once(timeout_sec=0.02)  # noqa: E731
        if kind != "change_state":
            # Queries may be resent if a response is lost; a transition must not be repeated.
            return call_idempotent(c, request, step, timeout, f"{self.target} {kind}")
        fut = c.call_async(request)
        wait_for(fut.done, timeout, step, f"{self.target} {kind}")
        return fut.result()

    def change(self, label=None, tid=0):
        return self.call("change_state", ChangeState.Request(transition=Transition(id=tid, label=label or ""))).success

    def state(self):
        return self.call("get_state").current_state.label

    def graph(self, kind="get_transition_graph"):
        return sorted((t.transition.id, t.transition.label, t.start_state.id, t.goal_state.id)
                      for t in self.call(kind).available_transitions)

    def states(self):
        return sorted((s.id, s.label) for s in self.call("get_available_states").available_states)


def test_a_managed_monitor_follows_the_lifecycle_and_fails_safe_in_every_state(ros):
    name, broken = f"managed_{UID}", f"managed_broken_{UID}"
    node = NodeProcess(name, {"managed": "true", "max_frame_age": "0.0", "input_timeout": "0.0",
                              "score_threshold": "1e30"})
    bad = NodeProcess(broken, {"managed": "true", "model_bundle": "/nonexistent/bundle"})
    reference = LifecycleNode(f"lifecycle_reference_{UID}")
    manager_node = rclpy.create_node(f"lifecycle_manager_{UID}")
    executor = SingleThreadedExecutor()
    executor.add_node(manager_node)
    executor.add_node(reference)
    client = Client(name, compressed=False)
    frame = raw_image(make_frames(1, seed=3)[0])
    try:
        m = Manager(manager_node, executor, name)
        ref = Manager(manager_node, executor, reference.get_name())

        # The same state machine as rcl_lifecycle's.
        assert m.graph() == ref.graph() and len(m.graph()) == 25
        assert m.states() == ref.states()
        assert m.graph("get_available_transitions") == ref.graph("get_available_transitions")
        assert m.state() == "unconfigured"

        def step():
            executor.spin_once(timeout_sec=0.01)
            client.spin()

        def spin_for(seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                step()

        def no_verdict_for(seconds):
            n = len(client.verdicts)
            client.pub.publish(frame)
            spin_for(seconds)
            return len(client.verdicts) == n

        def ood_now():
            """The next heartbeat's ~/ood (what a gate sees now)."""
            n = len(client.ood)
            wait_for(lambda: len(client.ood) > n, 5, step, "a heartbeat")
            return client.ood[-1]

        # Unconfigured: fail-safe and not scoring; activate is not available yet.
        wait_for(lambda: client.pub.get_subscription_count() == 0 and len(client.ood) > 0, 30,
                 step, "the heartbeat")
        assert ood_now() is True
        assert not m.change("activate") and m.state() == "unconfigured"

        # Configure loads the bundle and subscribes; inactive still scores nothing.
        assert m.change("configure") and m.state() == "inactive"
        wait_for(lambda: client.pub.get_subscription_count() > 0, 30, step,
                 "the camera subscription")
        spin_for(0.5)
        assert no_verdict_for(1.0) and ood_now() is True
        wait_for(lambda: any(d.get("lifecycle_state") == "inactive" for d in client.diagnostics), 5,
                 step, "diagnostics saying inactive")

        # Active: frames are scored and ~/ood goes false (the threshold passes every frame).
        assert m.change(tid=Transition.TRANSITION_ACTIVATE) and m.state() == "active"
        v = client.send(frame)
        assert v["state"] == "OK", v
        assert ood_now() is False

        # Deactivate: true at once, and no more verdicts.
        assert m.change("deactivate") and m.state() == "inactive"
        assert ood_now() is True and no_verdict_for(1.0)

        # Cleanup unloads: the detector's outputs go away; configure and activate again work.
        assert m.change("cleanup") and m.state() == "unconfigured"
        wait_for(lambda: manager_node.count_publishers(f"/{name}/score") == 0, 10,
                 step, "the score publisher to go")
        assert ood_now() is True
        assert m.change("configure") and m.change("activate") and m.state() == "active"
        assert client.send(frame)["state"] == "OK"

        # Shutdown from active: finalized, fail-safe, nothing left to request.
        assert m.change("shutdown") and m.state() == "finalized"
        assert ood_now() is True and no_verdict_for(1.0)
        assert m.graph("get_available_transitions") == []
        assert not m.change("configure")

        # Every transition published its two events (request, then result), in order.
        wait_for(lambda: len(m.events) >= 14, 5, step, "transition events")
        assert m.events == [(1, 1, 10), (10, 10, 2), (3, 2, 13), (30, 13, 3), (4, 3, 14), (40, 14, 2),
                            (2, 2, 11), (20, 11, 1), (1, 1, 10), (10, 10, 2), (3, 2, 13), (30, 13, 3),
                            (7, 3, 12), (50, 12, 4)], m.events

        # A bundle that cannot load: configure fails, the node stays unconfigured and running.
        b = Manager(manager_node, executor, broken)
        assert not b.change("configure")
        assert b.state() == "unconfigured" and bad.proc.poll() is None
        assert "manifest.yaml" in bad.output(), bad.output()[-2000:]
        wait_for(lambda: len(b.events) >= 2, 5, step, "the failed configure's events")
        assert b.events == [(1, 1, 10), (11, 10, 1)], b.events
    finally:
        client.close()
        manager_node.destroy_node()
        reference.destroy_node()
        rc, rc_bad = node.stop(), bad.stop()
    assert rc == 0, node.output()[-3000:]
    assert rc_bad == 0, bad.output()[-3000:]


def test_a_managed_gate_passes_commands_only_while_active(ros):
    from geometry_msgs.msg import Twist

    name = f"lc_pair_{UID}"
    monitor = NodeProcess(f"m_{name}", {"max_frame_age": "0.0", "input_timeout": "0.0", "score_threshold": "1e30"})
    gate = NodeProcess(f"g_{name}", {"managed": "true"}, gate=True,
                       remaps={"ood": f"/m_{name}/ood", "cmd_vel_in": f"/g_{name}/cmd_in",
                               "cmd_vel_out": f"/g_{name}/cmd_out"})
    manager_node = rclpy.create_node(f"gate_manager_{UID}")
    executor = SingleThreadedExecutor()
    executor.add_node(manager_node)
    client = Client(f"m_{name}", compressed=False)
    out = []
    cmd = client.node.create_publisher(Twist, f"/g_{name}/cmd_in", 10)
    client.node.create_subscription(Twist, f"/g_{name}/cmd_out", lambda m: out.append((time.monotonic(), m.linear.x)), 50)
    last_cmd = [0.0]

    def step():
        executor.spin_once(timeout_sec=0.005)
        client.spin()
        if time.monotonic() - last_cmd[0] >= 0.05:  # the controller, at 20 Hz
            msg = Twist()
            msg.linear.x = 0.5
            cmd.publish(msg)
            last_cmd[0] = time.monotonic()

    def outputs_for(seconds):
        t0 = time.monotonic()
        while time.monotonic() < t0 + seconds:
            step()
        return [x for t, x in out if t >= t0]

    try:
        m = Manager(manager_node, executor, f"g_{name}")
        client.wait_matched()
        # The monitor says in-distribution (the threshold passes every frame): only the gate's
        # state decides.
        assert client.send(raw_image(make_frames(1, seed=4)[0]))["state"] == "OK"
        for state, transition in [("unconfigured", None), ("inactive", "configure")]:
            if transition:
                assert m.change(transition)
            assert m.state() == state
            got = outputs_for(1.0)
            assert got and all(x == 0.0 for x in got), (state, got)
        assert m.change("activate") and m.state() == "active"
        wait_for(lambda: any(x == 0.5 for _, x in out[-5:]), 10, step, "commands passing while active")
        assert m.change("deactivate")
        outputs_for(0.2)  # commands already in flight
        got = outputs_for(1.0)
        assert got and all(x == 0.0 for x in got), got
        assert m.change("shutdown") and m.state() == "finalized"
        got = outputs_for(0.5)
        assert all(x == 0.0 for x in got), got
        wait_for(lambda: m.events[-2:] == [(6, 2, 12), (50, 12, 4)], 5, step, "the shutdown events")
    finally:
        client.close()
        manager_node.destroy_node()
        rcs = monitor.stop(), gate.stop()
    assert rcs == (0, 0), gate.output()[-2000:]
