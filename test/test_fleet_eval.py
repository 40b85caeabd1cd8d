"""Fleet evaluation (issue 19): `vae-ood eval` per input, `vae-ood report` merging the shards,
and the Ray driver on a local Ray instance confined to loopback. The merged detection figures
must equal one `eval` over all inputs exactly."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, VAE_OOD, cli

SAMPLE = ROOT / "data" / "sample"
BUNDLE = ROOT / "models" / "compressed"
ID = [SAMPLE / "id_loop_empty_s4" / "bag", SAMPLE / "id_udem1_s3" / "bag"]
LABELLED = [f"{SAMPLE / 'ood_rain_udem1_s6' / 'bag'}=rain", f"{SAMPLE / 'ood_brightness_small_loop_s5' / 'bag'}=brightness"]
DETECTION = ["frames", "scored", "faulted", "warming_up", "score_metrics", "cusum_metrics", "sequential", "calibrated", "model_id", "cusum_threshold", "promise"]


def single(tmp_path):
    out = tmp_path / "single"
    cli("eval", "--bundle", BUNDLE, "--out", out, "--quiet", "--id", *ID, "--input", *LABELLED, "--label-topic", "/ood_label")
    return json.loads((out / "report.json").read_text()), out


def rows(path):
    """frames.csv without the latency columns, which belong to the run."""
    with open(path) as f:
        return [r[:11] for r in csv.reader(f)]


def assert_same_detection(merged_dir, single_report, single_dir):
    merged = json.loads((merged_dir / "report.json").read_text())
    for key in DETECTION:
        assert merged.get(key) == single_report.get(key), key
    assert [i["path"] for i in merged["inputs"]] == [i["path"] for i in single_report["inputs"]]
    assert rows(merged_dir / "frames.csv") == rows(single_dir / "frames.csv")
    return merged


def test_merged_shards_give_exactly_the_single_evaluation(tmp_path):
    want, want_dir = single(tmp_path)
    assert want["sequential"]["segments"], "the sample drives hold OOD segments"
    # The bundle's own threshold: its promise, set against these drives (pooled alike below).
    g = yaml.safe_load((BUNDLE / "manifest.yaml").read_text())["calibration"]["guarantee"]
    assert want["promise"]["per_drive"] == g["per_drive_false_alarm"]
    assert want["promise"]["seen"] == want["sequential"]["inputs_with_false_alarm"]
    dirs = []
    for k, (flag, path) in enumerate([("--id", p) for p in ID] + [("--input", p) for p in LABELLED]):
        d = tmp_path / f"shard{k}"
        extra = ["--label-topic", "/ood_label"] if flag == "--input" else []
        cli("eval", "--bundle", BUNDLE, "--out", d, "--quiet", flag, path, *extra)
        dirs.append(d)
    r = cli("report", *dirs, "--out", tmp_path / "merged")
    assert "shard" in r.stdout
    merged = assert_same_detection(tmp_path / "merged", want, want_dir)
    # Latency, throughput and memory stay per shard.
    assert len(merged["shards"]) == 4 and merged["latency_ms"] == {}
    assert all(s["latency_ms"] and s["throughput_fps"] > 0 for s in merged["shards"])
    # Shards of another detector do not merge.
    other = tmp_path / "other"
    cli("eval", "--bundle", ROOT / "models" / "default", "--out", other, "--quiet", "--id", ID[0])
    r = cli("report", dirs[0], other, "--out", tmp_path / "bad", check=False)
    assert r.returncode != 0 and "one detector" in r.stderr, r.stderr


def test_the_ray_driver_on_a_local_instance_gives_the_single_evaluation(tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.fail("ray is not installed: scripts/requirements-test.txt lists it (make test installs it)")
    want, want_dir = single(tmp_path)
    out = tmp_path / "fleet"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, ROOT / "scripts" / "fleet_eval.py", "--bundle", BUNDLE, "--out", out,
                        "--vae-ood", VAE_OOD, "--num-cpus", "2", "--id", *map(str, ID), "--input", *LABELLED,
                        "--label-topic", "/ood_label"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 shard(s) on Ray" in r.stdout
    assert_same_detection(out / "report", want, want_dir)
