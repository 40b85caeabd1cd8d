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
