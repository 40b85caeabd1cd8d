"""The bundled default detector (models/default): trained, calibrated, meets the AUROC floor on
the held-out sample drives, its model card's figures come out of scripts/model_card.sh exactly,
and `make demo` (scripts/demo.sh) flags what the offline pipeline flags (brightness and rain at
least) and raises no alarm in ID frames."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import DEFAULT_BUNDLE, ROOT, VAE_OOD, require

sys.path.insert(0, str(ROOT / "scripts"))
import model_card_figures  # noqa: E402


@pytest.fixture(scope="module")
def card_run(tmp_path_factory):
    require(VAE_OOD, "vae-ood CLI")
    out = tmp_path_factory.mktemp("model_card")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "model_card.sh")], capture_output=True, text=True,
                       env={**os.environ, "MODEL_CARD_OUT": str(out)}, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout, json.loads((out / "report.json").read_text())


def test_default_detector_is_trained_and_calibrated():
    m = yaml.safe_load((DEFAULT_BUNDLE / "manifest.yaml").read_text())
    assert m["provenance"]["trained"] is True
    assert m["calibration"] is not None
    # Its score's reference was fitted on 160 clear drives (training, heldout-data, tuning-data,
    # since session 19 more-maps-data and since session 41 starts-data), none of them a
    # calibration, tuning or test drive.
    assert m["score"]["kind"] == "mahalanobis"
    fitted = {f.split(" ")[0] for f in m["score"]["fitted_on"]}
    used = {f.split(" ")[0] for role in m["calibration"]["data"].values() for f in role}
    assert len(fitted) == 160 and not fitted & used
    assert (DEFAULT_BUNDLE / "MODEL_CARD.md").is_file()
    # The full VAE ships beside the encoder: compression distils and fine-tunes from it.
    assert (DEFAULT_BUNDLE / "vae.bpk").is_file() and (DEFAULT_BUNDLE / "training.json").is_file()


def test_auroc_floor_brightness(card_run):
    _, report = card_run
    assert report["score_metrics"]["brightness"]["auroc"] >= 0.90
    assert report["faulted"] == 0 and not report["partial"]


def test_auroc_floor_rain(card_run):
    _, report = card_run
    assert max(report["score_metrics"]["rain"]["auroc"], report["cusum_metrics"]["rain"]["auroc"]) >= 0.90


def test_model_card_figures_come_from_the_documented_command(card_run):
    printed, _ = card_run
    card = (DEFAULT_BUNDLE / "MODEL_CARD.md").read_text()
    assert model_card_figures.deterministic(model_card_figures.card_block(card)) == model_card_figures.deterministic(printed.strip("\n")), \
        "MODEL_CARD.md's figures differ from scripts/model_card.sh: run `scripts/model_card.sh --update`"


@pytest.fixture(scope="module")
def demo(ros, tmp_path_factory):
    """One `scripts/demo.sh` run (what `make demo` runs) at 3x speed: verdicts per drive. In
    lockstep (each frame waits for the previous verdict): a node that falls behind on a loaded
    machine scores the newest frame and drops the rest, and the comparison with the offline
    evaluation needs every frame."""
    import demo_replay

    out = tmp_path_factory.mktemp("demo") / "demo.json"
    # The image detector alone: its verdicts are compared with its offline evaluation (the
    # demo's default adds the flow detector, whose combined verdict test_multi_detector covers).
    env = {**os.environ, "VAE_OOD_DEMO_DOMAIN": os.environ.get("ROS_DOMAIN_ID", "73"), "VAE_OOD_DEMO_FLOW": ""}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--rate", "3", "--lockstep", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout[-1500:], r.stderr[-1500:])
    drives = json.loads(out.read_text())
    assert [d["drive"] for d in drives] == demo_replay.DRIVES
    for d in drives:
        assert len(d["states"]) == 300, f"{d['drive']}: {len(d['states'])} verdicts (frames lost)"
    return drives


def raised(states):
    """Frames where an alarm is raised (the verdict turns OOD from OK or STARTING)."""
    return [i for i, s in enumerate(states) if s == "OOD" and (i == 0 or states[i - 1] != "OOD")]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """`vae-ood eval` of the node's bundle (models/compressed) on the demo's drives: the first
    alarm frame per OOD segment, or None where the offline pipeline misses it."""
    require(VAE_OOD, "vae-ood CLI")
    import demo_replay

    out = tmp_path_factory.mktemp("offline")
    bags = [str(ROOT / "data" / "sample" / d / "bag") for d in demo_replay.DRIVES]
    r = subprocess.run([str(VAE_OOD), "eval", "--bundle", str(ROOT / "models" / "compressed"), "--out", str(out),
                        "--quiet", "--label-topic", "/ood_label", "--input", *bags],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    return {demo_replay.DRIVES[g["input"]]: g["delay_frames"] for g in report["sequential"]["segments"]}


def test_demo_flags_what_the_offline_pipeline_flags_and_no_clear_drive(demo, offline):
    """The live node decides as `vae-ood eval` does on the same frames (one pipeline), and the
    paper's two conditions are flagged. A segment the offline pipeline misses at the certified
    false-alarm rate (the sample's sensor noise: models/compressed/MODEL_CARD.md) is missed live
    too, and that is asserted, not skipped: the demo shows it."""
    for d in demo:
        states, ood = d["states"], sorted(d["ood_frames"])
        if not ood:
            assert "OOD" not in states, f"{d['drive']}: alarm on a clear drive at {raised(states)}"
            continue
        live = next((i - ood[0] for i in ood if states[i] == "OOD"), None)
        assert (live is None) == (offline[d["drive"]] is None), \
            f"{d['drive']}: live first alarm {live} frames after onset, offline {offline[d['drive']]}"
        if any(c in d["drive"] for c in ("brightness", "rain")):
            assert live is not None, f"{d['drive']}: no alarm in its OOD segment"


def test_demo_raises_no_alarm_in_id_frames(demo):
    for d in demo:
        ood = set(d["ood_frames"])
        early = [i for i in raised(d["states"]) if i not in ood]
        assert not early, f"{d['drive']}: alarm raised on in-distribution frames {early}"
