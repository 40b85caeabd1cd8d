"""Static checks of launch files and config against the node's declared parameters.

`ros2 launch` (launch, launch_ros) is not installable from PyPI, so the launch files are
checked by parsing them: every parameter they set is declared by the node, every remap names
one of the node's topics, the executable is the one the package installs, and the YAML config
holds exactly the declared parameters with the declared defaults.
"""

import ast
import json
import subprocess
import tomllib
import xml.etree.ElementTree as ET

import yaml

from conftest import GATE, NODE, ROOT, require

TOPICS = {"image", "image/compressed"}
GATE_TOPICS = {"ood", "cmd_vel_in", "cmd_vel_out"}


def declared(exe=NODE):
    require(exe, exe.name)
    out = subprocess.run([str(exe), "--describe-parameters"], capture_output=True, text=True, check=True).stdout
    return {p["name"]: p for p in json.loads(out)}


def check_config(path, params):
    cfg = yaml.safe_load(path.read_text())
    values = cfg["/**"]["ros__parameters"]
    assert set(values) == set(params), set(values) ^ set(params)
    for name, v in values.items():
        d = params[name]["default"]
        assert v == d and type(v) is type(d), (name, v, d)
        assert params[name]["description"], name


def node_executable_name():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    bins = {b["name"]: b for b in cargo["bin"]}
    # Built by default (features ros + replay, on for colcon), no required-features: cargo-ament-build
    # only installs a bin whose required features are spelled out in --features.
    assert "vae_ood_monitor" in bins and "required-features" not in bins["vae_ood_monitor"]
    assert {"ros", "replay"} <= set(cargo["features"]["default"])
    share = cargo["package"]["metadata"]["ros"]["install_to_share"]
    assert {"launch", "config", "models"} <= set(share)
    return "vae_ood_monitor"


def test_config_yaml_matches_declared_defaults():
    check_config(ROOT / "config" / "monitor.yaml", declared())
    check_config(ROOT / "config" / "gate.yaml", declared(GATE))


def test_monitor_gate_launch_file():
    monitor, gate = declared(), declared(GATE)
    tree, args, configs, nodes = launch_parts(ROOT / "launch" / "monitor_gate.launch.py")
    assert configs <= args, configs - args
    assert set(nodes) == {"vae_ood_monitor", "ood_gate"}
    for exe, params, topics, table in [("vae_ood_monitor", monitor, TOPICS, "MONITOR_OVERRIDES"), ("ood_gate", gate, GATE_TOPICS, "GATE_OVERRIDES")]:
        kw = nodes[exe]
        overrides = overrides_table(tree, table)
        assert overrides <= set(params) and overrides <= args, (exe, overrides - set(params))
        assert {t.elts[0].value for t in kw["remappings"].elts} == topics
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert {"vae_ood_monitor", "ood_gate"} <= {b["name"] for b in cargo["bin"]}


def overrides_table(tree, name):
    """Keys of a module-level `NAME = {...}` dict of launch overrides."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return {k.value for k in node.value.keys}
    raise AssertionError(f"{name} not found")


def launch_parts(path):
    tree = ast.parse(path.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    args = {c.args[0].value for c in calls if c.func.id == "DeclareLaunchArgument"}
    configs = {c.args[0].value for c in calls if c.func.id == "LaunchConfiguration" and isinstance(c.args[0], ast.Constant)}
    nodes = {}
    for c in calls:
        if c.func.id == "Node":
            kw = {k.arg: k.value for k in c.keywords}
            nodes[kw["executable"].value] = kw
    return tree, args, configs, nodes


def test_python_launch_file():
    params = declared()
    tree, args, configs, nodes = launch_parts(ROOT / "launch" / "monitor.launch.py")
    assert configs <= args, f"launch configurations without arguments: {configs - args}"
    assert set(nodes) == {node_executable_name()}
    kw = nodes["vae_ood_monitor"]
    assert kw["package"].value == "vae_ood_monitor"
    overrides = overrides_table(tree, "OVERRIDES")
    assert overrides <= set(params) and overrides <= args, overrides - set(params)
    assert {"model_bundle", "transport", "score_threshold", "threads"} <= overrides
    assert {"camera_topic", "params_file"} <= args
    assert {t.elts[0].value for t in kw["remappings"].elts} == TOPICS


def test_xml_launch_file_mirrors_the_python_one():
    params = declared()
    root = ET.parse(ROOT / "launch" / "monitor.launch.xml").getroot()
    args = {a.get("name") for a in root.iter("arg")}
    (node,) = list(root.iter("node"))
    assert node.get("pkg") == "vae_ood_monitor" and node.get("exec") == node_executable_name()
    set_params = {p.get("name") for p in node.iter("param") if p.get("name")}
    assert set_params <= set(params)
    assert {r.get("from") for r in node.iter("remap")} == TOPICS
    py_args = {c.args[0].value for c in ast.walk(ast.parse((ROOT / "launch" / "monitor.launch.py").read_text()))
               if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "DeclareLaunchArgument"}
    assert args <= py_args and {"params_file", "camera_topic", "namespace"} <= args


def test_package_xml():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.find("name").text == "vae_ood_monitor"
    assert root.find("export/build_type").text == "ament_cargo"
    assert root.find("license").text == "Apache-2.0"
    deps = {d.text for d in root.iter("depend")}
    assert {"rcl", "std_msgs", "sensor_msgs", "diagnostic_msgs"} <= deps


def flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_cameras_config_and_launch_file():
    """config/monitor_cameras.yaml sets only declared parameters and per-camera parameters of
    the cameras it lists; the launch file loads it over monitor.yaml."""
    params = declared()
    out = subprocess.run([str(NODE), "--describe-camera-parameters"], capture_output=True, text=True, check=True).stdout
    per_camera = {p["name"] for p in json.loads(out)}
    values = dict(flatten(yaml.safe_load((ROOT / "config" / "monitor_cameras.yaml").read_text())["/**"]["ros__parameters"]))
    cameras = values["cameras"]
    assert len(cameras) >= 2 and set(values["advisory_cameras"]) < set(cameras)
    for k in values:
        cam, _, rest = k.partition(".")
        assert k in params or (cam in cameras and rest in per_camera), k
    assert {f"{c}.image_topic" for c in cameras} <= set(values)
    tree = ast.parse((ROOT / "launch" / "monitor_cameras.launch.py").read_text())
    text = ast.unparse(tree)
    assert "monitor_cameras.yaml" in text and "monitor.yaml" in text and "vae_ood_monitor" in text
