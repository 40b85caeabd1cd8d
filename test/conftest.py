"""Shared helpers for the Python test suite.

The suite uses independent tools on purpose: rclpy talks to the Rust node over real DDS,
onnxruntime checks tract's numbers, colcon builds the package as a ROS user would.
Every test that cannot run says so with a `SKIPPED: <why>` line (listed by .ci/run).
"""

import json
import os
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
VAE_OOD = TARGET / "vae-ood"
NODE = TARGET / "vae_ood_monitor"
GATE = TARGET / "ood_gate"
# A monitor whose detector blocks inside a frame (examples/hung_monitor.rs; make test builds it).
HUNG_MONITOR = TARGET / "examples" / "hung_monitor"
DEFAULT_BUNDLE = ROOT / "models" / "default"


def _uncalibrated_copy():
    """The default detector without its calibration section: the pipeline tests set their own
    per-frame `score_threshold`, which only uncalibrated bundles accept."""
    import tempfile

    import yaml

    d = pathlib.Path(tempfile.mkdtemp(prefix="vae_ood_uncal_"))
    manifest = yaml.safe_load((DEFAULT_BUNDLE / "manifest.yaml").read_text())
    manifest.pop("calibration", None)
    (d / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (d / manifest["encoder"]["path"]).write_bytes((DEFAULT_BUNDLE / manifest["encoder"]["path"]).read_bytes())
    return d


BUNDLE = _uncalibrated_copy()


def pytest_terminal_summary(terminalreporter):
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        terminalreporter.write_line(f"SKIPPED: {rep.nodeid}: {reason.removeprefix('Skipped: ')}")


@pytest.fixture(scope="module")
def ros():
    """rclpy initialised for one test module (skips when ROS 2 is not in the environment)."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: source scripts/env.sh (make test does)")
    rclpy.init()
    yield rclpy
    rclpy.shutdown()


def require(path: pathlib.Path, what: str):
    if not path.exists():
        pytest.skip(f"{what} not built ({path}); run `make test`")


def cli(*args, check=True) -> subprocess.CompletedProcess:
    require(VAE_OOD, "vae-ood CLI")
    return subprocess.run([str(VAE_OOD), *map(str, args)], capture_output=True, text=True, check=check, timeout=300)


def offline_scores(paths, threshold=float("inf")):
    """Scores image files with the offline core (`vae-ood score`): {path: record}."""
    out = cli("score", "--bundle", BUNDLE, "--score-threshold", repr(threshold), *paths).stdout
    return {rec["file"]: rec for rec in map(json.loads, out.splitlines())}


def make_frames(n: int, width: int = 160, height: int = 120, seed: int = 0):
    """Deterministic, structured RGB frames (gradients plus random blobs) as uint8 arrays."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(n):
        img = np.stack([xx / width * 255, yy / height * 255, np.full_like(xx, 40.0 * (i % 6))], axis=-1)
        for _ in range(6):
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, 30)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            img[mask] = rng.uniform(0, 255, size=3)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def write_png(path, rgb):
    """Writes an RGB uint8 array as PNG without extra dependencies (zlib + struct)."""
    import struct
    import zlib

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    pathlib.Path(path).write_bytes(png)
    return png


class NodeProcess:
    """A Rust node as a child process with a unique name. By default the monitor, reading
    its camera on /<name>/cam; `gate=True` starts ood_gate instead (remaps via `remaps`)."""

    def __init__(self, name, params=None, extra_args=(), gate=False, remaps=None, bundle=BUNDLE, exe=None, env=None,
                 wrapper=()):
        exe = exe or (GATE if gate else NODE)
        require(exe, exe.name)
        self.name = name
        config = ROOT / "config" / ("gate.yaml" if gate else "monitor.yaml")
        # `wrapper` runs the node under another command (e.g. taskset -c 0 for benchmarks).
        args = [*wrapper, str(exe), "--ros-args", "-r", f"__node:={name}", "--params-file", str(config)]
        if not gate:
            args += ["-r", f"image:=/{name}/cam", "-r", f"image/compressed:=/{name}/cam/compressed",
                     "-p", f"model_bundle:={bundle}"]
        for k, v in (remaps or {}).items():
            args += ["-r", f"{k}:={v}"]
        for k, v in (params or {}).items():
            args += ["-p", f"{k}:={v}"]
        args += list(extra_args)
        self.log_path = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def output(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGINT, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def call_idempotent(client, request, step, timeout=60, what="a service answer", resend_after=5.0,
                    renew=None, renew_after=20.0):
    """Calls a service whose request may be repeated harmlessly (a get, a describe, a set to the
    same values, a reset), sending it again every `resend_after` seconds until one answer comes.

    Why: `wait_for_service` only says the server's request reader is known. Under load, Fast DDS
    can drop the server's response when its writer has not yet matched this client's reader; the
    future then never completes (session 24's CI lost a get_parameters this way). Resending is
    what a real client does; a non-idempotent call (a lifecycle transition) must not use this.

    `renew`, where given, returns a fresh client (new DDS reader and writer); it replaces the
    client every `renew_after` seconds without an answer. Session 44's CI lost every one of 12
    resends over 60 s on one client while the node ran on: a client whose response reader never
    matched stays deaf however often it asks."""
    deadline = time.monotonic() + timeout
    renew_at = time.monotonic() + renew_after
    pending = []
    while time.monotonic() < deadline:
        if renew is not None and time.monotonic() >= renew_at:
            for fut in pending:
                client.remove_pending_request(fut)
            pending = []
            client = renew()
            renew_at = time.monotonic() + renew_after
        pending.append(client.call_async(request))
        resend = min(deadline, time.monotonic() + resend_after)
        while time.monotonic() < resend:
            step()
            for fut in pending:
                if fut.done():
                    for other in pending:
                        if other is not fut:
                            client.remove_pending_request(other)
                    return fut.result()
    raise AssertionError(f"timed out after {timeout} s waiting for {what} ({len(pending)} requests sent)")


def wait_for(pred, timeout, step=None, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step:
            step()
        if pred():
            return True
        if not step:
            time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
