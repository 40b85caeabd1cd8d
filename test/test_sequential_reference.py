"""The Rust pipeline (`vae-ood sequential`, f64) against the numpy reference:
|a - b| <= 1e-6 * max(1, |b|) for every p-value, log M and S."""

import json

import numpy as np
import pytest

from conftest import cli
from reference_sequential import pipeline

CASES = [
    # (seed, n_cal, n_scores, window, grid, decay, shift)
    (0, 200, 300, 20, 100, 1.0, 0.0),
    (1, 50, 200, 10, 100, 0.5, 3.0),     # shifted: p-values collapse, S grows
    (2, 1000, 500, 20, 37, 2.0, 1.5),
    (3, 5, 100, 1, 100, 0.0, 0.0),       # tiny calibration set, window 1
    (4, 300, 400, 25, 100, 0.0, 10.0),   # far out: smallest p-values, long window
]


@pytest.mark.parametrize("case", CASES)
def test_rust_matches_numpy_reference(tmp_path, case):
    seed, n_cal, n, window, grid, decay, shift = case
    rng = np.random.default_rng(seed)
    cal = rng.gamma(2.0, 2.0, n_cal).round(2)  # rounding creates ties
    scores = rng.gamma(2.0, 2.0, n).round(2)
    scores[n // 2:] += shift
    f = tmp_path / "in.json"
    f.write_text(json.dumps({"calibration": cal.tolist(), "scores": scores.tolist(), "window": window,
                             "epsilon_grid": grid, "decay": decay}))
    rust = json.loads(cli("sequential", f).stdout)
    p, lm, s = pipeline(cal, scores, window, grid, decay)
    for name, ref in [("p_value", p), ("log_martingale", lm), ("cusum", s)]:
        got = np.asarray(rust[name])
        err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
        assert err.max() <= 1e-6, (name, int(err.argmax()), got[err.argmax()], ref[err.argmax()])
    if shift >= 3.0:
        assert s[-1] > 10.0, "a shifted stream must build up evidence"


def test_the_ceiling_matches_the_numpy_reference(tmp_path):
    """S held at or under ceiling x threshold (the node's cusum_ceiling): a shifted stream
    reaches the cap and stays there, and falls back once the shift ends, as the reference says."""
    rng = np.random.default_rng(7)
    cal = rng.gamma(2.0, 2.0, 300).round(2)
    scores = rng.gamma(2.0, 2.0, 400).round(2)
    scores[100:250] += 10.0
    threshold, ceiling = 8.0, 2.0
    f = tmp_path / "in.json"
    f.write_text(json.dumps({"calibration": cal.tolist(), "scores": scores.tolist(), "window": 1,
                             "epsilon_grid": 100, "decay": 1.0, "threshold": threshold, "ceiling": ceiling}))
    rust = np.asarray(json.loads(cli("sequential", f).stdout)["cusum"])
    _, _, ref = pipeline(cal, scores, 1, 100, 1.0, cap=ceiling * threshold)
    assert np.abs(rust - ref).max() <= 1e-6 * max(1.0, ref.max())
    assert ref[100:250].max() == ceiling * threshold, "the shift reaches the ceiling"
    _, _, free = pipeline(cal, scores, 1, 100, 1.0)
    assert free[249] > 4 * ceiling * threshold, "unbounded, the same shift goes far past it"
    # Back under the threshold within (ceiling - 1) x threshold clear frames (drift 1).
    assert ref[250 + int((ceiling - 1) * threshold)] <= threshold
