"""Our optical flow (`vae-ood flow`, crates/core/src/flow.rs and clahe.rs) against OpenCV's
calcOpticalFlowFarneback (opencv-python, the reference) on real frame pairs of the committed
sample drives, with the paper authors' parameters (issue 18): greyscale, resized to 160x120,
centre-cropped to 152x113, CLAHE (clip 2, 8x8 tiles); pyramid scale 0.5, levels 1, window 15,
1 iteration, poly_n 5, poly_sigma 1.1. Floors: mean endpoint error <= 0.05 px and its 99th
percentile <= 0.5 px on every pair."""

import pathlib

import numpy as np
import pytest

from conftest import ROOT, cli

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless not installed: run scripts/bootstrap.sh")
rosbags = pytest.importorskip("rosbags", reason="rosbags not installed: run scripts/bootstrap.sh")
from rosbags.highlevel import AnyReader  # noqa: E402

DRIVES = ["id_loop_empty_s1", "ood_rain_udem1_s6", "ood_brightness_small_loop_s5"]
PAIRS = [(10, 11), (150, 151), (280, 281)]
PARAMS = dict(pyr_scale=0.5, levels=1, winsize=15, iterations=1, poly_n=5, poly_sigma=1.1, flags=0)


def frames(drive, wanted):
    out = {}
    with AnyReader([ROOT / "data" / "sample" / drive / "bag"]) as r:
        conns = [c for c in r.connections if c.msgtype.endswith("CompressedImage")]
        for i, (c, _, raw) in enumerate(r.messages(connections=conns)):
            if i in wanted:
                msg = r.deserialize(raw, c.msgtype)
                out[i] = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    return out


def preprocess(bgr):
    """The reference design's flow input: 120x160 grey, centre crop 113x152, CLAHE."""
    g = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (160, 120))
    y0, x0 = (120 - 113) // 2, (160 - 152) // 2
    g = g[y0:y0 + 113, x0:x0 + 152]
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(g)


@pytest.mark.parametrize("drive", DRIVES)
def test_our_farneback_flow_matches_opencv_on_sample_frame_pairs(tmp_path, drive):
    imgs = frames(drive, {i for p in PAIRS for i in p})
    for a, b in PAIRS:
        prev, nxt = preprocess(imgs[a]), preprocess(imgs[b])
        pa, pb, out = tmp_path / f"{a}.png", tmp_path / f"{b}.png", tmp_path / f"flow_{a}.npy"
        cv2.imwrite(str(pa), prev)
        cv2.imwrite(str(pb), nxt)
        cli("flow", pa, pb, "--out", out)
        ours = np.load(out)
        ref = cv2.calcOpticalFlowFarneback(prev, nxt, None, **PARAMS)
        assert ours.shape == ref.shape == (113, 152, 2)
        epe = np.linalg.norm(ours - ref, axis=2)
        # The flow must be non-trivial for the comparison to mean something.
        assert np.abs(ref).mean() > 0.01, (drive, a)
        print(f"{drive} frames {a}-{b}: mean |flow| {np.linalg.norm(ref, axis=2).mean():.3f} px, EPE mean {epe.mean():.2e} p99 {np.percentile(epe, 99):.2e} max {epe.max():.2e} px")
        assert epe.mean() <= 0.05 and np.percentile(epe, 99) <= 0.5, (drive, a, epe.mean(), np.percentile(epe, 99), epe.max())


@pytest.mark.parametrize("drive", DRIVES)
def test_our_reference_preprocessing_matches_opencv_and_so_does_the_flow_after_it(tmp_path, drive):
    """Grey (cvtColor's fixed point), crop and CLAHE in Rust against cv2 on the same colour
    frames; then the whole path, preprocessing included, within the same flow floors."""
    imgs = frames(drive, {i for p in PAIRS for i in p})
    for a, b in PAIRS:
        pa, pb = tmp_path / f"{a}.png", tmp_path / f"{b}.png"
        cv2.imwrite(str(pa), imgs[a])
        cv2.imwrite(str(pb), imgs[b])
        prefix, out = tmp_path / f"in_{a}", tmp_path / f"flow_{a}.npy"
        cli("flow", pa, pb, "--preprocess", "--save-inputs", prefix, "--out", out)
        for src, which in [(imgs[a], "prev"), (imgs[b], "next")]:
            ours = cv2.imread(f"{prefix}_{which}.png", cv2.IMREAD_GRAYSCALE).astype(int)
            diff = np.abs(ours - preprocess(src).astype(int))
            print(f"{drive} frame {a} {which}: {int((diff > 0).sum())} of {diff.size} pixels differ, at most {diff.max()}")
            assert diff.max() == 0, (drive, a, which, diff.max())
        ref = cv2.calcOpticalFlowFarneback(preprocess(imgs[a]), preprocess(imgs[b]), None, **PARAMS)
        epe = np.linalg.norm(np.load(out) - ref, axis=2)
        assert epe.mean() <= 0.05 and np.percentile(epe, 99) <= 0.5, (drive, a, epe.mean())


@pytest.mark.parametrize("drive", DRIVES)
def test_the_motion_residual_statistics_match_the_study_reference(tmp_path, drive):
    """`vae-ood flow --residual` against scripts/residual_study.py's NumPy/OpenCV version (which
    chose the flow detector's statistic) on the same prepared pairs. The flows differ by the
    parity floors above, so the statistics (ln of grey-level fractions) may differ a little:
    at most 0.05 apart, against 1-3 between a clear and a snowy pair."""
    import json
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    from residual_study import pair_stats

    imgs = frames(drive, {i for p in PAIRS for i in p})
    for a, b in PAIRS:
        prev, nxt = preprocess(imgs[a]), preprocess(imgs[b])
        pa, pb = tmp_path / f"{a}.png", tmp_path / f"{b}.png"
        cv2.imwrite(str(pa), prev)
        cv2.imwrite(str(pb), nxt)
        out = cli("flow", pa, pb, "--out", tmp_path / "f.npy", "--residual")
        ours = json.loads(out.stdout.strip().splitlines()[-1])
        ref = pair_stats(prev, nxt)
        for k in ("mean", "p99", "fine"):
            print(f"{drive} {a}-{b} {k}: ours {ours[k]:.4f} reference {ref[k]:.4f}")
            assert abs(ours[k] - ref[k]) <= 0.05, (drive, a, k, ours[k], ref[k])
