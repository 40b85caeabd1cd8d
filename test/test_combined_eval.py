"""scripts/combined_eval.py merges per-detector evaluations the way the node merges verdicts
(OK only when every detector is OK): checked on hand-made frames.csv files."""

import csv
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import combined_eval  # noqa: E402

FIELDS = ["input", "index", "stamp_ns", "ood", "ood_type", "state"]


def write(d, rows):
    d.mkdir()
    with open(d / "frames.csv", "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for i, (ood, state) in enumerate(rows):
            w.writerow({"input": 0, "index": i, "stamp_ns": i, "ood": str(ood).lower(),
                        "ood_type": "rain" if ood else "", "state": state})


def test_the_union_detects_earlier_and_false_alarms_add_up(tmp_path):
    labels = [False] * 4 + [True] * 4 + [False] * 2
    image = ["OK", "OOD", "OK", "OK", "OK", "OK", "OK", "OOD", "OK", "OK"]
    flow = ["STARTING", "STARTING", "OK", "OOD", "OK", "OOD", "OOD", "OOD", "OK", "OK"]
    write(tmp_path / "image", list(zip(labels, image)))
    write(tmp_path / "flow", list(zip(labels, flow)))
    s = combined_eval.summarise(combined_eval.combine([tmp_path / "image", tmp_path / "flow"]))
    # Combined: OOD at 1 (image), STARTING..., OOD at 3 (flow): two entries on ID frames.
    assert s["false_alarms"] == 2 and s["id_frames"] == 6
    # Both entries are on the one drive: the drive-level count is 1.
    assert (s["drives_alarming"], s["drives"]) == (1, 1)
    # The segment (frames 4-7) is first OOD at frame 5 (flow): delay 1.
    assert s["types"]["rain"] == {"drives": 1, "detected": 1, "delays": [1], "median_delay": 1, "max_delay": 1}
    assert abs(combined_eval.poisson_upper(0) - 2.9957) < 1e-3
