"""scripts/gpu_check.sh (issue 17) prints its steps with --dry-run, for both halves, on a machine
without a GPU or a CUDA build: what a session with a GPU will run is reviewable here."""

import subprocess

from conftest import ROOT


def dry_run(*args):
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line[2:] for line in r.stdout.splitlines() if line.startswith("+ ")]


def test_the_build_half_packs_a_small_cuda13_binary_without_ros_or_train():
    steps = dry_run()
    assert any("--no-default-features --features cuda13" in s and "-p vae_ood_cli" in s for s in steps), steps
    assert any(s.startswith("strip ") for s in steps) and any(s.startswith("gzip ") for s in steps)
    assert any("quantize" in s and "--precision fp16" in s for s in steps)


def test_the_device_half_compares_both_backends_on_every_bundle():
    steps = dry_run("--on-device")
    assert any("gen-seeded --preset paper" in s for s in steps)
    for b in ["default", "compressed", "default-fp16"]:
        for be in ["tract", "cuda"]:
            assert any(f"--bundle .gpu-check/bundles/{b} --backend {be}" in s and " eval " in s for s in steps), (b, be)
    assert any("bench-encoders" in s and "--backend tract,cuda" in s for s in steps)
