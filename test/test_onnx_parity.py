"""tract (in the Rust core) against onnxruntime, an independent ONNX implementation, on the
bundled encoder and on a PyTorch-style export with numeric output names; KL and score (KL or
Mahalanobis, as the bundle says) against an independent numpy computation."""

import json

import numpy as np
import pytest
import yaml

from conftest import DEFAULT_BUNDLE as BUNDLE, cli

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: run scripts/bootstrap.sh")


def run_both(bundle, tmp_path, seed):
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    spec = manifest["input"]
    shape = (1, 3, spec["height"], spec["width"])
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=shape).astype(np.float32)
    f = tmp_path / f"x{seed}.f32"
    f.write_bytes(x.astype("<f4").tobytes())
    # A score with the detail channel takes the frame's detail features beside the tensor.
    detail = manifest.get("score", {}).get("detail")
    extra = []
    if detail:
        grid = detail.get("grid", 1)  # the cells of a grid follow the octaves (session 19)
        d = rng.uniform(-6, -2, size=detail["octaves"] + (grid * grid if grid > 1 else 0))
        extra = ["--detail", ",".join(repr(float(v)) for v in d)]
    rust = json.loads(cli("encode", "--bundle", bundle, f, *extra).stdout)
    rust["detail_in"] = [float(v) for v in extra[1].split(",")] if extra else []
    sess = ort.InferenceSession(str(bundle / manifest["encoder"]["path"]), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    names = [o.name for o in sess.get_outputs()]

    def pick(ref):
        return outs[ref["index"]] if "index" in ref else outs[names.index(ref["name"])]

    return rust, pick(manifest["outputs"]["mu"])[0], pick(manifest["outputs"]["logvar"])[0], manifest


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tract_matches_onnxruntime_and_the_score_matches_numpy(tmp_path, seed):
    rust, mu, logvar, manifest = run_both(BUNDLE, tmp_path, seed)
    np.testing.assert_allclose(rust["mu"], mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rust["logvar"], logvar, rtol=1e-5, atol=1e-5)
    mu64, lv64 = np.asarray(rust["mu"], np.float64), np.asarray(rust["logvar"], np.float64)
    kl = 0.5 * (mu64**2 + np.exp(lv64) - lv64 - 1.0)
    np.testing.assert_allclose(rust["kl"], kl, rtol=1e-12, atol=1e-12)
    score = manifest.get("score", {"kind": "kl"})
    if score["kind"] == "kl":
        want = kl[manifest["latents"]["selected"]].sum()
    else:
        x = np.r_[mu64, lv64, rust["detail_in"]]

        def m2(mean, precision):
            d = x - np.asarray(mean)
            return d @ np.asarray(precision).reshape(d.size, d.size) @ d

        if "components" not in score:  # Mahalanobis distance from the fitted Gaussian
            want = m2(score["mean"], score["precision"])
        else:  # -2 ln of the mixture's density, shifted by its largest normaliser (>= 0)
            comps = score["components"]
            top = max(c["log_det_precision"] for c in comps)
            t = np.array([np.log(c["weight"]) + 0.5 * (c["log_det_precision"] - top) - 0.5 * m2(c["mean"], c["precision"]) for c in comps])
            want = max(0.0, -2.0 * (t.max() + np.log(np.exp(t - t.max()).sum())))
    assert abs(rust["score"] - want) <= 1e-9 * max(1.0, abs(rust["score"])), (rust["score"], want)


def test_numeric_output_names_are_addressed_by_index(tmp_path):
    out = tmp_path / "pt_style"
    cli("gen-seeded", "--out", out, "--seed", "3", "--numeric-outputs")
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    assert manifest["outputs"] == {"mu": {"index": 0}, "logvar": {"index": 1}}
    sess = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["0", "1"]
    rust, mu, logvar, _ = run_both(out, tmp_path, 5)
    np.testing.assert_allclose(rust["mu"], mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rust["logvar"], logvar, rtol=1e-5, atol=1e-5)


def test_wrong_input_size_is_a_clear_error(tmp_path):
    f = tmp_path / "short.f32"
    f.write_bytes(b"\x00" * 12)
    r = cli("encode", "--bundle", BUNDLE, f, check=False)
    assert r.returncode != 0 and "needs" in r.stderr
