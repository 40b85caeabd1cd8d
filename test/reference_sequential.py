"""Independent numpy reference of the sequential pipeline (written from the paper's
definitions, not from the Rust code):

    p_t   = (#{cal >= s_t} + 1) / (N + 1)                       inductive conformal p-value
    M_t   = mean_k prod_{i in window} eps_k * p_i^(eps_k - 1)   power martingale, eps_k = (k+0.5)/K
    S_t   = max(0, S_{t-1} + log M_t - decay)                   CUSUM, once the window is full
"""

import numpy as np


def p_values(cal, scores):
    cal = np.sort(np.asarray(cal, dtype=np.float64))
    scores = np.asarray(scores, dtype=np.float64)
    at_or_above = len(cal) - np.searchsorted(cal, scores, side="left")
    return (at_or_above + 1.0) / (len(cal) + 1.0)


def log_power_martingale(p, window, grid):
    eps = (np.arange(grid) + 0.5) / grid
    logp = np.log(p)
    out = np.empty(len(p))
    for t in range(len(p)):
        w = logp[max(0, t - window + 1): t + 1]
        terms = len(w) * np.log(eps) + (eps - 1.0) * w.sum()
        m = terms.max()
        out[t] = m + np.log(np.exp(terms - m).sum()) - np.log(grid)
    return out


def cusum(log_m, window, decay, cap=np.inf):
    """S = max(0, S + log M - decay), held at or under `cap` (the ceiling times the threshold)."""
    s, out = 0.0, np.empty(len(log_m))
    for t, lm in enumerate(log_m):
        if t + 1 >= window:
            s = min(max(0.0, s + lm - decay), cap)
        out[t] = s
    return out


def pipeline(cal, scores, window, grid, decay, cap=np.inf):
    p = p_values(cal, scores)
    lm = log_power_martingale(p, window, grid)
    return p, lm, cusum(lm, window, decay, cap)
