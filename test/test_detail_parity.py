"""The detail channel (crates/core/src/detail.rs) against an independent numpy computation
(scripts/detail_study.py, the definition in docs/detector-experiments.md) on real sample
frames, read back from PNG so both sides see the same pixels."""

import io
import json
import pathlib
import sys

import numpy as np
import yaml

from conftest import DEFAULT_BUNDLE, ROOT, cli

sys.path.insert(0, str(ROOT / "scripts"))
import detail_study  # noqa: E402

DRIVES = ["id_loop_empty_s4", "ood_noise_small_loop_s8", "ood_rain_udem1_s6"]


def sample_pngs(tmp_path, every=60):
    from PIL import Image
    from rosbags.highlevel import AnyReader

    out = []
    for drive in DRIVES:
        with AnyReader([ROOT / "data/sample" / drive / "bag"]) as r:
            conns = [c for c in r.connections if c.topic.endswith("compressed")]
            for i, (c, _, raw) in enumerate(r.messages(connections=conns)):
                if i % every == 0:
                    img = Image.open(io.BytesIO(bytes(r.deserialize(raw, c.msgtype).data))).convert("RGB")
                    f = tmp_path / f"{drive}_{i:04d}.png"
                    img.save(f)
                    out.append(f)
    return out


def test_the_default_detector_scores_the_detail_channel():
    m = yaml.safe_load((DEFAULT_BUNDLE / "manifest.yaml").read_text())
    d = m["score"]["detail"]
    assert (d["width"], d["height"], d["octaves"], d.get("grid", 1)) == (160, 120, 3, 3)
    # One Gaussian (mean) or a mixture (each component's mean): the features are the posterior's
    # mu and logvar, then the three detail octaves, then the 3x3 grid's cells (session 19).
    means = [c["mean"] for c in m["score"]["components"]] if "components" in m["score"] else [m["score"]["mean"]]
    assert all(len(mean) == 2 * m["latents"]["count"] + 3 + 9 for mean in means)


def test_detail_features_match_numpy_on_sample_frames(tmp_path):
    from PIL import Image

    files = sample_pngs(tmp_path)
    assert len(files) >= 15
    records = [json.loads(line) for line in cli("score", "--bundle", DEFAULT_BUNDLE, "--kl", *files).stdout.splitlines()]
    assert len(records) == len(files)
    worst = 0.0
    for f, rec in zip(files, records):
        want = detail_study.detail(np.asarray(Image.open(f).convert("RGB")), grid=3)
        got = np.asarray(rec["detail"])
        worst = max(worst, float(np.abs(got - want).max()))
    # The Rust side computes luma in f32 before the f64 Laplacian: 1e-4 in log energy is a
    # relative error of 0.01 %.
    assert worst < 1e-4, worst
    print(f"largest difference in ln E over {len(files)} frames: {worst:.2e}")


def test_the_detail_grid_and_directions_match_numpy_on_sample_frames(tmp_path):
    """`vae-ood calibrate --detail-grid 3 --detail-directions`: the bundle measures the finest
    octave on each cell of a 3x3 grid after the three octaves, then its balance over four
    directions (session 34), as the numpy definition does."""
    from PIL import Image

    bags = {d: str(ROOT / "data/sample" / d / "bag") for d in ("id_loop_empty_s1", "id_small_loop_s2", "id_udem1_s3", "id_loop_empty_s4")}
    bundle = tmp_path / "grid"
    cli("calibrate", "--bundle", DEFAULT_BUNDLE, "--out", bundle, "--quiet", "--score", "mahalanobis",
        "--fit", bags["id_loop_empty_s1"], bags["id_udem1_s3"], "--detail", "160x120", "--detail-grid", "3",
        "--detail-directions",
        "--cal", bags["id_small_loop_s2"], "--tune-id", bags["id_loop_empty_s4"])
    m = yaml.safe_load((bundle / "manifest.yaml").read_text())
    assert m["score"]["detail"]["grid"] == 3 and m["score"]["detail"]["directions"] is True
    assert len(m["score"]["mean"]) == 2 * m["latents"]["count"] + 3 + 9 + 3
    files = sample_pngs(tmp_path, every=100)
    records = [json.loads(line) for line in cli("score", "--bundle", bundle, "--kl", *files).stdout.splitlines()]
    worst = 0.0
    for f, rec in zip(files, records):
        want = detail_study.detail(np.asarray(Image.open(f).convert("RGB")), grid=3, directions=True)
        got = np.asarray(rec["detail"])
        assert got.shape == (15,), got
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst < 1e-4, worst
