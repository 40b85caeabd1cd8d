"""The node's parameters as the `ros2 param` tools see them (issue 19), over real DDS with rclpy
as the client: a read-only parameter's set is refused with the reason (not "Set parameter
successful"), descriptors carry read-only flags and ranges, out-of-range and wrongly typed
values are refused, and cusum_threshold shows the threshold in force."""

import os
import pathlib
import time

import pytest
import yaml

from conftest import BUNDLE, ROOT, NodeProcess, call_idempotent, cli, wait_for

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import (  # noqa: E402
    DescribeParameters,
    GetParameters,
    SetParameters,
    SetParametersAtomically,
)

UID = f"{os.getpid()}"
CALIBRATED = ROOT / "models" / "compressed"
DEFAULT = ROOT / "models" / "default"


def value(v):
    if isinstance(v, bool):
        return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=v)
    if isinstance(v, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=v)
    if isinstance(v, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=v)
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=v)


class Params:
    """The parameter services of one node."""

    def __init__(self, node_name):
        self.node = rclpy.create_node(f"param_client_{node_name}")
        self.name = node_name
        self.types = {"set_parameters": SetParameters, "get_parameters": GetParameters,
                      "describe_parameters": DescribeParameters,
                      "set_parameters_atomically": SetParametersAtomically}
        self.clients = {kind: self.node.create_client(srv, f"/{node_name}/{kind}") for kind, srv in self.types.items()}
        for c in self.clients.values():
            assert c.wait_for_service(timeout_sec=20), c.srv_name

    def renew(self, kind):
        """A fresh client for `kind` in place of one that gets no answers (conftest.call_idempotent)."""
        self.node.destroy_client(self.clients[kind])
        self.clients[kind] = self.node.create_client(self.types[kind], f"/{self.name}/{kind}")
        self.clients[kind].wait_for_service(timeout_sec=5)
        return self.clients[kind]

    def call(self, kind, request):
        # Every call here is idempotent, so a lost response is resent, and a deaf client renewed,
        # not waited on for ever (sessions 24 and 44's CI). The wait only bounds a hang.
        return call_idempotent(self.clients[kind], request, lambda: rclpy.spin_once(self.node, timeout_sec=0.05),
                               60, kind, renew=lambda: self.renew(kind))

    def set(self, **values):
        r = self.call("set_parameters", SetParameters.Request(
            parameters=[Parameter(name=k, value=value(v)) for k, v in values.items()]))
        return r.results

    def get(self, name):
        v = self.call("get_parameters", GetParameters.Request(names=[name])).values[0]
        return {ParameterType.PARAMETER_DOUBLE: v.double_value, ParameterType.PARAMETER_INTEGER: v.integer_value,
                ParameterType.PARAMETER_STRING: v.string_value, ParameterType.PARAMETER_BOOL: v.bool_value}.get(v.type)

    def describe(self, name):
        return self.call("describe_parameters", DescribeParameters.Request(names=[name])).descriptors[0]

    def close(self):
        self.node.destroy_node()


def test_read_only_ranges_types_and_the_threshold_in_force(ros):
    own = yaml.safe_load((CALIBRATED / "manifest.yaml").read_text())["calibration"]["pipeline"]["cusum_threshold"]
    name = f"vae_ood_params_{UID}"
    node = NodeProcess(name, bundle=str(CALIBRATED))
    p = None
    try:
        p = Params(name)
        # The threshold in force, once the bundle has loaded (the parameter asked for 0).
        wait_for(lambda: p.get("cusum_threshold") == pytest.approx(own), 60, lambda: time.sleep(0.1), "cusum_threshold in force")

        # Read-only: refused with the reason, and the value unchanged.
        before = p.get("model_bundle")
        [r] = p.set(model_bundle="/another/bundle")
        assert not r.successful and "read-only" in r.reason and "restart" in r.reason, r
        assert p.get("model_bundle") == before
        d = p.describe("model_bundle")
        assert d.read_only and "Detector bundle directory" in d.description

        # Ranges in the descriptors; out-of-range and wrongly typed values refused.
        d = p.describe("score_threshold")
        assert not d.read_only and d.floating_point_range[0].from_value == 0.0, d
        d = p.describe("threads")
        assert d.read_only and (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 64)
        assert "cuda-fp16" in p.describe("backend").additional_constraints
        [r] = p.set(score_threshold=-1.0)
        assert not r.successful and "outside its range" in r.reason, r
        [r] = p.set(score_threshold="high")
        assert not r.successful and "type" in r.reason, r
        [r] = p.set(score_threshold=55.0)
        assert r.successful, r
        assert p.get("score_threshold") == 55.0

        # cusum_threshold: an override, then 0 goes back to the bundle's, which it shows.
        [r] = p.set(cusum_threshold=500.0)
        assert r.successful, r
        wait_for(lambda: p.get("cusum_threshold") == 500.0, 5, lambda: time.sleep(0.1), "the override")
        [r] = p.set(cusum_threshold=0.0)
        assert r.successful, r
        wait_for(lambda: p.get("cusum_threshold") == pytest.approx(own), 5, lambda: time.sleep(0.1), "back to the bundle's")

        # Atomically: one refused value refuses the whole request.
        r = p.call("set_parameters_atomically", SetParametersAtomically.Request(parameters=[
            Parameter(name="score_threshold", value=value(60.0)),
            Parameter(name="threads", value=value(2))]))
        assert not r.result.successful and "read-only" in r.result.reason, r
        assert p.get("score_threshold") == 55.0
        assert node.proc.poll() is None, node.output()
    finally:
        if p:
            p.close()
        node.stop()


def test_cusum_threshold_of_an_uncalibrated_bundle_is_refused(ros):
    name = f"vae_ood_params_unc_{UID}"
    node = NodeProcess(name)  # conftest's BUNDLE: an uncalibrated copy
    assert pathlib.Path(BUNDLE).exists()
    p = None
    try:
        p = Params(name)
        # The validator is installed once the bundle has loaded.
        def refused():
            [r] = p.set(cusum_threshold=100.0)
            return not r.successful and "not calibrated" in r.reason
        wait_for(refused, 60, lambda: time.sleep(0.1), "the refusal")
        assert p.get("cusum_threshold") == 0.0
    finally:
        if p:
            p.close()
        node.stop()


def test_thresholds_are_refused_at_run_time_before_a_managed_node_is_configured(ros):
    """Unconfigured, whether a threshold set would apply is unknown (it depends on the
    detectors and cameras configure loads): both are refused with the reason, and keep the
    value the node started with."""
    name = f"vae_ood_params_unconf_{UID}"
    node = NodeProcess(name, {"managed": "true", "score_threshold": "40.0"})
    p = None
    try:
        p = Params(name)
        [r] = p.set(score_threshold=55.0)
        assert not r.successful and "before the node is configured" in r.reason, r
        [r] = p.set(cusum_threshold=10.0)
        assert not r.successful and "before the node is configured" in r.reason, r
        assert p.get("score_threshold") == 40.0
    finally:
        if p:
            p.close()
        node.stop()


def test_threshold_scale_multiplies_the_threshold_in_force(ros):
    """threshold_scale (the joint scale of detectors run together) multiplies the bundle's own
    threshold; the node shows the product as the threshold in force, and 0 goes back to it."""
    own = yaml.safe_load((CALIBRATED / "manifest.yaml").read_text())["calibration"]["pipeline"]["cusum_threshold"]
    name = f"vae_ood_params_scale_{UID}"
    node = NodeProcess(name, bundle=str(CALIBRATED), params={"threshold_scale": "1.18"})
    p = None
    try:
        p = Params(name)
        wait_for(lambda: p.get("cusum_threshold") == pytest.approx(own * 1.18), 60, lambda: time.sleep(0.1),
                 "the scaled threshold in force")
        d = p.describe("threshold_scale")
        assert d.read_only and d.floating_point_range[0].from_value == 1.0, d
        [r] = p.set(cusum_threshold=0.0)
        assert r.successful, r
        wait_for(lambda: p.get("cusum_threshold") == pytest.approx(own * 1.18), 5, lambda: time.sleep(0.1),
                 "back to the scaled threshold")
        assert node.proc.poll() is None, node.output()
    finally:
        if p:
            p.close()
        node.stop()


def rust(x):
    """Rust's Display of an f64: no ".0" on whole numbers."""
    return repr(float(x)).removesuffix(".0")


def start_up_line(name, bundle, params):
    """The node's start-up line that states its sequential test (read from its log: no parameter
    client, so this adds no DDS traffic)."""
    node = NodeProcess(name, bundle=str(bundle), params=params)
    try:
        wait_for(lambda: "calibrated: window" in node.output(), 60, lambda: time.sleep(0.1), "the start-up log")
        assert node.proc.poll() is None, node.output()
        return next(x for x in node.output().splitlines() if "calibrated: window" in x)
    finally:
        node.stop()


@pytest.mark.parametrize("on", [True, False])
def test_direction_branch_runs_unless_turned_off(ros, on):
    """models/compressed has a direction branch (calibration.direction, session 35): the node runs
    it by default and says so at start-up with its threshold, the pooled statistic at its share;
    direction_branch: false runs without it, the pooled threshold at its value before the split
    (before the change branch's, which keeps its share, where the bundle has one)."""
    bundle = ROOT / "models" / "compressed"
    c = yaml.safe_load((bundle / "manifest.yaml").read_text())["calibration"]
    d = c["direction"]
    line = start_up_line(f"vae_ood_params_direction_{int(on)}_{UID}", bundle,
                         {} if on else {"direction_branch": "false"})
    # Off: the pooled threshold before the split, or beside a running change branch (session 45)
    # before that branch's split only: the change branch keeps its share.
    alone = c["change"]["pooled_threshold_before"] if "change" in c else d["pooled_threshold_alone"]
    pooled = c["pipeline"]["cusum_threshold"] if on else alone
    assert f"cusum_threshold {rust(pooled)}" in line, line
    said = f"direction branch: threshold {rust(d['pipeline']['cusum_threshold'])}"
    assert (said in line) is on, line


@pytest.mark.parametrize("on", [True, False])
def test_change_branch_runs_unless_turned_off(ros, on):
    """A bundle with a change branch (calibration.change, session 45): the node runs it by
    default and says so at start-up with its threshold; change_branch: false runs without it,
    every other threshold as it was."""
    bundle = next((b for b in (DEFAULT, CALIBRATED)
                   if "change" in yaml.safe_load((b / "manifest.yaml").read_text())["calibration"]), None)
    if bundle is None:
        pytest.skip("SKIPPED: no shipped bundle has a change branch (calibration.change)")
    c = yaml.safe_load((bundle / "manifest.yaml").read_text())["calibration"]
    line = start_up_line(f"vae_ood_params_change_{int(on)}_{UID}", bundle,
                         {} if on else {"change_branch": "false"})
    assert f"cusum_threshold {rust(c['pipeline']['cusum_threshold'])}" in line, line
    said = f"change branch: threshold {rust(c['change']['pipeline']['cusum_threshold'])}"
    assert (said in line) is on, line


@pytest.mark.parametrize("on", [True, False])
def test_start_up_phase_runs_unless_turned_off(ros, on):
    """models/compressed has a start-up phase (calibration.startup, sessions 42 and 43): the node
    runs it by default and says so at start-up with its length, cruise scale and floor; startup_phase:
    false holds the calibrated thresholds for the whole stream and says nothing of it."""
    bundle = ROOT / "models" / "compressed"
    st = yaml.safe_load((bundle / "manifest.yaml").read_text())["calibration"]["startup"]
    line = start_up_line(f"vae_ood_params_startup_{int(on)}_{UID}", bundle,
                         {} if on else {"startup_phase": "false"})
    c = yaml.safe_load((bundle / "manifest.yaml").read_text())["calibration"]
    pooled = c["pipeline"]["cusum_threshold"]
    calibrated = [pooled] + ([pooled * c["relative"]["pooled_scale"], c["relative"]["cusum_threshold"]] if c.get("relative") else []) \
        + ([c["direction"]["pipeline"]["cusum_threshold"]] if c.get("direction") else [])
    if all(max(t * st["cruise_scale"], st["floor"]) == st["floor"] for t in calibrated):
        cruise = f"every threshold at the floor of {st['floor']:.2f}"  # the student's (scale 2.2e-308)
    else:
        cruise = f"every threshold x{st['cruise_scale']:.4f}, never under {st['floor']:.2f}"
    said = f"start-up phase: {st['frames']} frames, then {cruise} (S falls with it)"
    assert (said in line) is on, line
    assert ("start-up phase" in line) is on, line


@pytest.fixture(scope="module")
def relative_bundle(tmp_path_factory):
    """The student recalibrated on sample drives with a drive-relative branch (no shipped bundle
    has one since session 47): `vae-ood calibrate --relative`, as a user would."""
    out = tmp_path_factory.mktemp("relative") / "bundle"
    sample = ROOT / "data" / "sample"
    cli("calibrate", "--bundle", CALIBRATED, "--out", out, "--quiet", "--windows", "1", "--decays", "1",
        "--cal", sample / "id_loop_empty_s1" / "bag",
        "--tune-id", *(sample / d / "bag" for d in ("id_udem1_s3", "id_small_loop_s2", "id_loop_empty_s4")),
        "--relative", "20,30", "--false-alarm-rate", "0.004")
    return out


@pytest.mark.parametrize("on", [True, False])
def test_relative_branch_runs_unless_turned_off(ros, relative_bundle, on):
    """A bundle with a drive-relative branch (calibration.relative): the node runs it by default
    and says so at start-up with its threshold and pooled scale; relative_branch: false runs
    without it, the pooled statistic at the bundle's own threshold."""
    c = yaml.safe_load((relative_bundle / "manifest.yaml").read_text())["calibration"]
    rel = c["relative"]
    line = start_up_line(f"vae_ood_params_relative_{int(on)}_{UID}", relative_bundle,
                         {} if on else {"relative_branch": "false"})
    assert f"cusum_threshold {rust(c['pipeline']['cusum_threshold'])}" in line, line
    said = f"drive-relative branch: threshold {rust(rel['cusum_threshold'])}, pooled threshold x{rust(rel['pooled_scale'])}"
    assert (said in line) is on, line


def test_a_client_that_gets_no_answer_is_renewed(ros):
    """conftest.call_idempotent's renewal, which the other tests lean on when DDS loses a
    client's responses: a client on a service nobody serves stands for a deaf one; the renewed
    client, on the node's own service, gets the answer."""
    name = f"vae_ood_params_renew_{UID}"
    node = NodeProcess(name, bundle=str(CALIBRATED))
    p = None
    try:
        p = Params(name)
        deaf = p.node.create_client(GetParameters, f"/nobody_{UID}/get_parameters")
        r = call_idempotent(deaf, GetParameters.Request(names=["threshold_scale"]),
                            lambda: rclpy.spin_once(p.node, timeout_sec=0.05), 30, "an answer after renewal",
                            resend_after=0.5, renew=lambda: p.renew("get_parameters"), renew_after=1.0)
        assert r.values[0].type == ParameterType.PARAMETER_DOUBLE, r
    finally:
        if p:
            p.close()
        node.stop()
