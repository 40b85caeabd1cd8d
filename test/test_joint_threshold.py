"""scripts/joint_threshold.py: one scale for several detectors' thresholds, so that the node's
combined verdict keeps the drive-level promise each threshold makes alone. Checked on hand-made
evaluations whose largest S per drive is known."""

import csv
import json
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import joint_threshold  # noqa: E402


def write(d, largest):
    """An evaluation over len(largest) drives whose S climbs to the given largest value."""
    d.mkdir()
    (d / "report.json").write_text(json.dumps({"inputs": [{"path": f"drive{i}/bag"} for i in range(len(largest))]}))
    with open(d / "frames.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["input", "index", "cusum"])
        w.writeheader()
        for i, m in enumerate(largest):
            for k, s in enumerate(["", 0.0, m / 2, m, m / 3]):  # "" = window not full yet
                w.writerow({"input": i, "index": k, "cusum": s})


def test_the_joint_scale_keeps_the_promise_for_the_pair(tmp_path):
    # Ten drives; each detector alone has 1 drive over its threshold (10), on different drives.
    a = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12]
    b = [11, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    write(tmp_path / "a", a)
    write(tmp_path / "b", b)
    inputs, largest = joint_threshold.largest_s(tmp_path / "a")
    assert largest == a and len(inputs) == 10
    mb = joint_threshold.largest_s(tmp_path / "b")[1]
    # Together at their own thresholds 2 drives alarm; rank 2 allows 1: c is the 2nd largest
    # max ratio (1.1, from b's 11 against a's 1.2), so 12 and 11 are the only ones over.
    c = joint_threshold.joint_scale([largest, mb], [10.0, 10.0], rank=2)
    assert c == pytest.approx(1.1)
    over = sum(x > c * 10 or y > c * 10 for x, y in zip(a, mb))
    assert over == 1
    # Never below the detectors' own thresholds, and too few drives certify nothing.
    assert joint_threshold.joint_scale([[1.0] * 5], [10.0], rank=2) == 1.0
    assert joint_threshold.joint_scale([[1.0] * 3], [10.0], rank=4) is None
