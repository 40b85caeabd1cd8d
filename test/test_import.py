"""`vae-ood import` (issue 19, "Bring your own model"): a bundle from an ONNX encoder written
here with onnx.helper, independently of our exporter, the way PyTorch exports one (torch-style
names, numbered outputs, a symbolic batch). The imported bundle scores like onnxruntime runs the
same file, and what the file cannot say is reported as a default."""

import json
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from conftest import VAE_OOD

LATENTS = 8


def torch_style_encoder(path, *, nhwc=False, names=("15", "16"), extra_output=False, declare_hw=True, channels=3):
    """Conv(3->4, 3x3, stride 2) -> Relu -> Flatten -> two Gemms (mu, logvar), random weights."""
    rng = np.random.default_rng(3)
    h, w = 32, 48
    hw = [h, w] if declare_hw else ["height", "width"]
    shape = ["batch", *hw, channels] if nhwc else ["batch", channels, *hw]
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, shape)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, channels, 3, 3)).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "conv.bias"),
        numpy_helper.from_array(rng.normal(0, 0.05, (LATENTS, 4 * (h // 2) * (w // 2))).astype(np.float32), "fc_mu.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, LATENTS).astype(np.float32), "fc_mu.bias"),
        numpy_helper.from_array(rng.normal(0, 0.05, (LATENTS, 4 * (h // 2) * (w // 2))).astype(np.float32), "fc_logvar.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, LATENTS).astype(np.float32), "fc_logvar.bias"),
    ]
    nodes = []
    src = "input.1"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["input.1"], ["/Transpose_output_0"], perm=[0, 3, 1, 2]))
        src = "/Transpose_output_0"
    nodes += [
        helper.make_node("Conv", [src, "conv.weight", "conv.bias"], ["/conv/Conv_output_0"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["/conv/Conv_output_0"], ["/Relu_output_0"]),
        helper.make_node("Flatten", ["/Relu_output_0"], ["/Flatten_output_0"], axis=1),
        helper.make_node("Gemm", ["/Flatten_output_0", "fc_mu.weight", "fc_mu.bias"], [names[0]], transB=1),
        helper.make_node("Gemm", ["/Flatten_output_0", "fc_logvar.weight", "fc_logvar.bias"], [names[1]], transB=1),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", LATENTS]) for n in names]
    if extra_output:
        nodes.append(helper.make_node("Identity", ["/Relu_output_0"], ["17"]))
        outputs.append(helper.make_tensor_value_info("17", TensorProto.FLOAT, ["batch", 4, h // 2, w // 2]))
    graph = helper.make_graph(nodes, "torch_jit", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


def run(*args):
    return subprocess.run([str(VAE_OOD), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_pytorch_style_encoder_imports_and_scores_as_onnxruntime_runs_it(tmp_path):
    onnx_path = tmp_path / "vae_encoder.onnx"
    torch_style_encoder(onnx_path)
    out = tmp_path / "bundle"
    r = run("import", onnx_path, "--out", out)
    assert r.returncode == 0, r.stderr
    # What the file said, and what was a default, are both reported.
    assert "size 48x32 (from the input)" in r.stdout, r.stdout
    assert "layout NCHW (from input 'input.1'" in r.stdout
    assert "the only two outputs" in r.stdout and "8 latents (from the outputs)" in r.stdout
    assert "(default" in r.stdout and "vae-ood calibrate --bundle" in r.stdout
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    assert m["input"]["width"] == 48 and m["input"]["height"] == 32 and m["input"]["layout"] == "nchw"
    assert m["outputs"] == {"mu": {"index": 0}, "logvar": {"index": 1}}
    assert m["latents"]["count"] == LATENTS and m["provenance"]["created_by"].startswith("vae-ood import")
    assert "calibration" not in m

    # The bundle runs: `vae-ood encode` on a tensor gives onnxruntime's posterior of the same file.
    x = np.random.default_rng(0).random((1, 3, 32, 48), dtype=np.float32)
    (tmp_path / "x.bin").write_bytes(x.astype("<f4").tobytes())
    r = run("encode", "--bundle", out, tmp_path / "x.bin")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    mu, logvar = ort.InferenceSession(str(onnx_path)).run(None, {"input.1": x})
    np.testing.assert_allclose(got["mu"], mu[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["logvar"], logvar[0], rtol=1e-4, atol=1e-5)


def test_flags_say_what_the_file_cannot(tmp_path):
    onnx_path = tmp_path / "enc.onnx"
    torch_style_encoder(onnx_path, nhwc=True, names=("z_mean", "z_log_var"), declare_hw=False)
    out = tmp_path / "b"
    # Undeclared height and width: a clear error, and nothing written.
    r = run("import", onnx_path, "--out", out)
    assert r.returncode != 0 and "give --height" in r.stderr, r.stderr
    assert not out.exists()
    r = run("import", onnx_path, "--out", out, "--width", 48, "--height", 32, "--channel-order", "bgr",
            "--normalize", "0.485,0.456,0.406/0.229,0.224,0.225", "--resize", "center-crop", "--filter", "bilinear")
    assert r.returncode == 0, r.stderr
    assert "layout NHWC (from input" in r.stdout and "by their names" in r.stdout, r.stdout
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    assert m["input"]["layout"] == "nhwc" and m["input"]["channel_order"] == "bgr"
    assert m["input"]["resize"] == "center_crop" and m["input"]["filter"] == "bilinear"
    assert m["input"]["normalize"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert m["outputs"] == {"mu": {"name": "z_mean"}, "logvar": {"name": "z_log_var"}}
    # A second import into the same directory is refused rather than overwriting it.
    r = run("import", onnx_path, "--out", out, "--width", 48, "--height", 32)
    assert r.returncode != 0 and "already holds a bundle" in r.stderr


def test_ambiguous_or_wrong_outputs_are_clear_errors(tmp_path):
    onnx_path = tmp_path / "enc.onnx"
    torch_style_encoder(onnx_path, extra_output=True)
    r = run("import", onnx_path, "--out", tmp_path / "b")
    assert r.returncode != 0 and "give --mu and --logvar" in r.stderr and "'17'" in r.stderr, r.stderr
    # Positions work where names are numbers; an output of the wrong size is refused by name.
    r = run("import", onnx_path, "--out", tmp_path / "b", "--mu", "0", "--logvar", "17")
    assert r.returncode != 0 and "same size" in r.stderr, r.stderr
    r = run("import", onnx_path, "--out", tmp_path / "b", "--mu", "15", "--logvar", "1")
    assert r.returncode == 0, r.stderr
    # A channel order that contradicts the input is refused.
    r = run("import", onnx_path, "--out", tmp_path / "c", "--channel-order", "gray")
    assert r.returncode != 0 and "does not fit" in r.stderr
