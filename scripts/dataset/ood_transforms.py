"""Out-of-distribution conditions applied to camera frames (uint8 RGB, HxWx3).

Every transform takes a `severity` in [0, 1] (0 = unchanged, 1 = strongest) and a numpy
Generator, so a (frame, severity, seed) triple always gives the same output. The paper's two
conditions come first (brightness: HSV value scaled down; rain: drops of several sizes), then
those a driving team also cares about. Pure numpy: no simulator, no OpenCV.
"""

import numpy as np

DEFAULT_SEVERITY = 0.6


def _hsv_value_scale(img, factor):
    # Scaling HSV value V = max(R, G, B) by `factor` with hue and saturation fixed is the same
    # as scaling all three channels by it.
    return np.clip(img.astype(np.float32) * factor, 0, 255)


def brightness(img, severity, rng):
    """Darker scene: HSV value scaled by 1 - 0.85 * severity (the paper's brightness OOD)."""
    return _hsv_value_scale(img, 1.0 - 0.85 * severity).astype(np.uint8)


def rain(img, severity, rng):
    """Rain drops of several sizes drawn over the frame: streaks lighter and bluer than the scene,
    their number growing with severity (the paper's rain OOD)."""
    h, w, _ = img.shape
    out = img.astype(np.float32)
    n = int(severity * 0.02 * h * w)
    for _ in range(n):
        length = int(rng.integers(2, max(3, h // 12)))
        width = int(rng.integers(1, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        drop = out[y:y + length, x:x + width]
        drop[:] = 0.5 * drop + 0.5 * np.array([200, 200, 230], np.float32)
    # Rain also dims and blurs the scene slightly.
    out = out * (1 - 0.2 * severity)
    return np.clip(out, 0, 255).astype(np.uint8)


def fog(img, severity, rng):
    """Fog: blend toward grey, stronger toward the top of the frame (farther away)."""
    h = img.shape[0]
    depth = np.linspace(1.0, 0.4, h, dtype=np.float32)[:, None, None]
    alpha = np.clip(severity * 0.9 * depth, 0, 1)
    return np.clip(img * (1 - alpha) + 200.0 * alpha, 0, 255).astype(np.uint8)


def snow(img, severity, rng):
    """Snow: white flakes and a whitened scene."""
    h, w, _ = img.shape
    out = img.astype(np.float32) * (1 - 0.3 * severity) + 255 * 0.3 * severity
    n = int(severity * 0.03 * h * w)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    out[ys, xs] = 255
    return np.clip(out, 0, 255).astype(np.uint8)


def motion_blur(img, severity, rng):
    """Horizontal motion blur, kernel up to a tenth of the width."""
    k = 1 + int(severity * img.shape[1] / 10)
    if k <= 1:
        return img.copy()
    pad = np.pad(img.astype(np.float32), ((0, 0), (k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    c = np.cumsum(pad, axis=1)
    c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)
    return np.clip((c[:, k:] - c[:, :-k]) / k, 0, 255).astype(np.uint8)


def noise(img, severity, rng):
    """Sensor noise: Gaussian, sigma up to 60 grey levels."""
    return np.clip(img + rng.normal(0, 60 * severity, img.shape), 0, 255).astype(np.uint8)


def occlusion(img, severity, rng):
    """Lens dirt: dark blotches covering up to about half of the frame."""
    h, w, _ = img.shape
    out = img.astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(round(severity * 7))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.08, 0.2) * min(h, w) * (0.5 + severity)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        out[mask] = out[mask] * 0.15 + 20
    return np.clip(out, 0, 255).astype(np.uint8)


def camera_shake(img, severity, rng):
    """Camera shake (a loose mount, a rough floor): every frame shifted by its own random offset
    of up to 8 * severity pixels each way, the revealed border filled by edge pixels. One frame
    looks normal; the motion between frames is the signal (the optical-flow detector's)."""
    m = int(round(8 * severity))
    if m == 0:
        return img.copy()
    dx, dy = (int(v) for v in rng.integers(-m, m + 1, 2))
    h, w, _ = img.shape
    pad = np.pad(img, ((m, m), (m, m), (0, 0)), mode="edge")
    return pad[m + dy:m + dy + h, m + dx:m + dx + w].copy()


TRANSFORMS = {
    "brightness": brightness,
    "rain": rain,
    "fog": fog,
    "snow": snow,
    "motion_blur": motion_blur,
    "noise": noise,
    "occlusion": occlusion,
    "camera_shake": camera_shake,
}


def apply(name, img, severity=DEFAULT_SEVERITY, seed=0):
    """Applies transform `name` with a generator seeded by `seed` (reproducible)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown OOD transform '{name}' (known: {', '.join(TRANSFORMS)})")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return TRANSFORMS[name](img, severity, np.random.default_rng(seed))
