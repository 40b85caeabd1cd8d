"""The shipped compressed detectors (models/compressed, and models/flow_compressed since session
32): each model card's figures are exactly those of its sweep report (scripts/compress_card.py),
and its claims hold against its teacher. Each was calibrated with the report's drive roles, and
re-evaluated on the report's test inputs (the generated test sets, `make testset-data` and `make
flow-testset-data`) it gives the report's AUROC exactly, or for a student whose score was fitted again since, its model card's test-set block. (The Rust test `compress_sweep` checks
the bundles' structure against the same reports.)"""

import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import DEFAULT_BUNDLE, ROOT, VAE_OOD, require

sys.path.insert(0, str(ROOT / "scripts"))
import compress_card  # noqa: E402

# Each shipped student, its teacher, and the make target of its report's test drives.
SHIPPED = [(ROOT / "models" / "compressed", DEFAULT_BUNDLE, "make testset-data"),
           (ROOT / "models" / "flow_compressed", ROOT / "models" / "flow", "make flow-testset-data")]
shipped = pytest.mark.parametrize("student", SHIPPED, ids=lambda s: s[0].name)
# Students whose score's reference was fitted again after their sweep: the sweep report's
# figures are of the earlier reference, so what the shipped bundle must reproduce is its model
# card's test-set block (scripts/testset_card.py, at the node's default ceiling).
REFITTED = {"compressed": "session 42 refitted its score's reference with the starts drives (S43)"}


@shipped
def test_compressed_card_figures_come_from_its_sweep_report(student):
    bundle = student[0]
    report = json.loads((bundle / "compress_report.json").read_text())
    card = (bundle / "MODEL_CARD.md").read_text()
    block = re.search(re.escape(compress_card.BEGIN) + ".*?" + re.escape(compress_card.END), card, re.S).group(0)
    assert block == compress_card.block(report), \
        f"MODEL_CARD.md differs from its report: run scripts/compress_card.py {bundle}/compress_report.json --update {bundle}/MODEL_CARD.md"


@shipped
def test_compressed_detector_meets_the_budget_against_its_teacher(student):
    bundle, teacher_dir, _ = student
    report = json.loads((bundle / "compress_report.json").read_text())
    rows = {r["spec"]["name"]: r for r in report["rows"]}
    teacher, sel = rows["teacher"], rows[report["selected"]]
    assert report["selected"] != "teacher"
    # The budget holds where it was checked: the selection inputs (validation drives of every
    # OOD type) when the sweep had them, else the test inputs of older reports.
    key = "select_auroc_cusum" if report.get("select") else "auroc_cusum"
    assert teacher[key], key
    for p, a in teacher[key].items():
        assert a - sel[key][p] <= report["auroc_drop"] + 1e-12, p
    m = yaml.safe_load((bundle / "manifest.yaml").read_text())
    t = yaml.safe_load((teacher_dir / "manifest.yaml").read_text())
    assert m["provenance"]["trained"] and m["calibration"] is not None
    assert m["latents"]["selected"] == t["latents"]["selected"]
    assert m.get("score", {}).get("kind", "kl") == t.get("score", {}).get("kind", "kl")


@shipped
def test_the_shipped_bundle_was_calibrated_with_the_reports_roles(student):
    bundle = student[0]
    report = json.loads((bundle / "compress_report.json").read_text())
    data = yaml.safe_load((bundle / "manifest.yaml").read_text())["calibration"]["data"]
    strip = lambda ids: [i.split(" (")[0] for i in ids]  # noqa: E731  ("PATH (N frames)")
    assert strip(data["calibration"]) == report["cal"]
    assert strip(data["tuning_id"]) == report["tune_id"]


@shipped
def test_the_shipped_bundle_reproduces_its_reports_test_figures(student, tmp_path):
    bundle, _, make = student
    report = json.loads((bundle / "compress_report.json").read_text())
    paths = [ROOT / t.split("=")[0] for t in report["test"]]
    missing = [p for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"the report's test set is not generated here ({len(missing)} of {len(paths)} drives missing): {make}")
    require(VAE_OOD, "vae-ood CLI")
    if bundle.name in REFITTED:
        import testset_card

        test = testset_card.evaluate(VAE_OOD, bundle, tmp_path, ["--label-topic", report["label_topic"], "--input",
                                                                 *testset_card.inputs_of(ROOT / "out" / "testset")])
        got = testset_card.block(testset_card.summarise(test, []))
        card = (bundle / "MODEL_CARD.md").read_text()
        shipped_block = card.split(testset_card.BEGIN)[1].split(testset_card.END)[0].strip("\n")
        assert shipped_block.startswith(got), f"{REFITTED[bundle.name]}: the card's test block differs:\n{got}"
        return
    # The report's sequential figures are the pooled statistic's, as the sweep calibrated the
    # student; a direction branch added since (session 35) is turned off to reproduce them (its
    # own figures are in the model card and docs/detector-experiments.md). The sweep's S was
    # unbounded (session 39's ceiling came later): --cusum-ceiling 0.
    r = subprocess.run([str(VAE_OOD), "eval", "--bundle", str(bundle), "--quiet", "--label-topic", report["label_topic"],
                        "--no-direction", "--cusum-ceiling", "0", "--out", str(tmp_path), "--input", *report["test"]], capture_output=True,
                       text=True, cwd=ROOT, timeout=1200)
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "report.json").read_text())["cusum_metrics"]
    row = next(r for r in report["rows"] if r["spec"]["name"] == report["selected"])
    # The report was made before the fused preprocessing (session 8), whose float rounding
    # (within 1e-5 of the reference) can swap a few near-tied frames: 1e-5 in AUROC is a
    # handful of pairs among a million, while a changed detector moves it by far more.
    for k, v in row["auroc_cusum"].items():
        assert abs(got[k]["auroc"] - v) < 1e-5, (k, got[k]["auroc"], v)
