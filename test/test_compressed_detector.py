"""The shipped compressed detector (models/compressed): its model card's figures are exactly
those of its sweep report (scripts/compress_card.py), and its claims hold against the teacher.
(The Rust test `compress_sweep` re-evaluates the bundle against the same report.)"""

import json
import re
import sys

import yaml

from conftest import DEFAULT_BUNDLE, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import compress_card  # noqa: E402

BUNDLE = ROOT / "models" / "compressed"


def test_compressed_card_figures_come_from_its_sweep_report():
    report = json.loads((BUNDLE / "compress_report.json").read_text())
    card = (BUNDLE / "MODEL_CARD.md").read_text()
    block = re.search(re.escape(compress_card.BEGIN) + ".*?" + re.escape(compress_card.END), card, re.S).group(0)
    assert block == compress_card.block(report), \
        "MODEL_CARD.md differs from its report: run scripts/compress_card.py models/compressed/compress_report.json --update models/compressed/MODEL_CARD.md"


def test_compressed_detector_meets_the_budget_against_its_teacher():
    report = json.loads((BUNDLE / "compress_report.json").read_text())
    rows = {r["spec"]["name"]: r for r in report["rows"]}
    teacher, sel = rows["teacher"], rows[report["selected"]]
    assert report["selected"] != "teacher"
    # The budget holds where it was checked: the selection inputs (validation drives of every
    # OOD type) when the sweep had them, else the test inputs of older reports.
    key = "select_auroc_cusum" if report.get("select") else "auroc_cusum"
    assert teacher[key], key
    for p, a in teacher[key].items():
        assert a - sel[key][p] <= report["auroc_drop"] + 1e-12, p
    m = yaml.safe_load((BUNDLE / "manifest.yaml").read_text())
    t = yaml.safe_load((DEFAULT_BUNDLE / "manifest.yaml").read_text())
    assert m["provenance"]["trained"] and m["calibration"] is not None
    assert m["latents"]["selected"] == t["latents"]["selected"]
    assert m.get("score", {}).get("kind", "kl") == t.get("score", {}).get("kind", "kl")
