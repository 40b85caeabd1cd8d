"""The OOD transforms of the dataset tool on committed Duckietown frames (no simulator needed):
each changes the frame more as severity grows, severity 0 leaves it (nearly) unchanged, and the
same seed reproduces the same output bit for bit."""

import hashlib
import io
import pathlib
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "dataset"))
import ood_transforms  # noqa: E402

PIL = pytest.importorskip("PIL.Image", reason="Pillow not installed: run scripts/bootstrap.sh")
rosbags = pytest.importorskip("rosbags", reason="rosbags not installed: run scripts/bootstrap.sh")
SAMPLE = ROOT / "data" / "sample"


def committed_frames(n=4):
    from rosbags.highlevel import AnyReader

    drive = SAMPLE / "id_loop_empty_s1" / "bag"
    if not drive.exists():
        pytest.skip(f"committed sample data missing ({drive}); generate it with `make sample-data`")
    frames = []
    with AnyReader([drive]) as reader:
        conns = [c for c in reader.connections if c.topic == "/camera/image_raw/compressed"]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            frames.append(np.asarray(PIL.open(io.BytesIO(bytes(msg.data))).convert("RGB")))
            if len(frames) == n:
                break
    return frames


@pytest.mark.parametrize("name", sorted(ood_transforms.TRANSFORMS))
def test_effect_grows_with_severity_and_seeds_reproduce(name):
    for frame in committed_frames():
        effect = []
        for sev in [0.0, 0.3, 0.6, 0.9]:
            out = ood_transforms.apply(name, frame, sev, seed=3)
            assert out.shape == frame.shape and out.dtype == np.uint8
            effect.append(np.abs(out.astype(np.float32) - frame).mean())
        assert effect[0] < 1.0, (name, effect)
        assert effect[1] < effect[2] < effect[3], (name, effect)
        a = hashlib.sha256(ood_transforms.apply(name, frame, 0.6, seed=5).tobytes()).hexdigest()
        b = hashlib.sha256(ood_transforms.apply(name, frame, 0.6, seed=5).tobytes()).hexdigest()
        assert a == b


def test_bad_arguments_are_clear_errors():
    f = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown OOD transform"):
        ood_transforms.apply("hail", f)
    with pytest.raises(ValueError, match="severity"):
        ood_transforms.apply("rain", f, 1.5)


def test_committed_sample_matches_its_metadata():
    import json

    metas = sorted(SAMPLE.glob("*/meta.json"))
    if not metas:
        pytest.skip("committed sample data missing; generate it with `make sample-data`")
    splits = {}
    for m in metas:
        meta = json.loads(m.read_text())
        splits.setdefault(meta["split"], []).append(meta["drive_id"])
        digest = hashlib.sha256()
        from rosbags.highlevel import AnyReader
        with AnyReader([m.parent / "bag"]) as reader:
            conns = [c for c in reader.connections if c.topic == "/camera/image_raw/compressed"]
            count = 0
            for conn, _, raw in reader.messages(connections=conns):
                digest.update(bytes(reader.deserialize(raw, conn.msgtype).data))
                count += 1
        assert count == meta["frames"] and digest.hexdigest() == meta["sha256_jpeg"], m
    assert {"train", "calibration", "tuning", "test"} <= set(splits)


def test_in_distribution_variation_is_seeded_bounded_and_slow():
    """`make_dataset.py --id-variation MAX` varies brightness and rain within [0, MAX] on every
    frame of a drive. The levels are reproducible from the seed, stay in range, cover it, and
    drift slowly (a passing shower, not per-frame flicker)."""
    import make_dataset

    a, b = make_dataset.id_levels(131, 600, 0.3), make_dataset.id_levels(131, 600, 0.3)
    other = make_dataset.id_levels(130, 600, 0.3)
    assert set(a) == {"brightness", "rain"}
    for factor, lv in a.items():
        assert np.array_equal(lv, b[factor]), "same seed must give the same levels"
        assert not np.array_equal(lv, other[factor]), "another drive must get other levels"
        assert lv.min() >= 0.0 and lv.max() <= 0.3 + 1e-12
        assert lv.max() - lv.min() > 0.15, f"{factor}: a 40 s drive should sweep most of the range"
        assert np.abs(np.diff(lv)).max() < 0.3 * 2 * np.pi / (10 * make_dataset.FPS), "levels must drift slowly"
