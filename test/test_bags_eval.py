"""Bags written by an independent tool (PyPI `rosbags`, both storage formats) read back by
`vae-ood bag` / `vae-ood eval`; metrics against scikit-learn; damaged bags give partial results."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from conftest import BUNDLE, VAE_OOD, cli, make_frames, require, write_png

rosbags = pytest.importorskip("rosbags", reason="rosbags not installed: run scripts/bootstrap.sh")
sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed: run scripts/bootstrap.sh")
from bag_helpers import T0, write_bag  # noqa: E402

def dump(bag):
    return [json.loads(l) for l in cli("bag", bag, "--dump", "/camera/image_raw").stdout.splitlines()]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed", [False, True])
def test_every_frame_is_read_with_stamp_size_encoding_and_bytes(tmp_path, storage, compressed):
    frames = make_frames(9, width=40, height=30, seed=7)
    written = write_bag(tmp_path / "bag", storage, frames, compressed=compressed, tmp=tmp_path)
    got = dump(tmp_path / "bag")
    assert len(got) == len(written)
    for g, w in zip(got, written):
        for k, v in w.items():
            assert g[k] == v, (k, g, w)
        assert g["frame_id"] == "camera" and g["log_time_ns"] == w["stamp_ns"] + 1000


def test_split_bag_is_read_file_after_file(tmp_path):
    frames = make_frames(6, width=20, height=10, seed=1)
    write_bag(tmp_path / "a", "mcap", frames[:3])
    write_bag(tmp_path / "b", "mcap", frames[3:])
    bag = tmp_path / "split"
    bag.mkdir()
    meta = yaml.safe_load((tmp_path / "a" / "metadata.yaml").read_text())
    names = []
    for part in ["a", "b"]:
        (src,) = (tmp_path / part).glob("*.mcap")
        shutil.copy(src, bag / f"split_{part}.mcap")
        names.append(f"split_{part}.mcap")
    meta["rosbag2_bagfile_information"]["relative_file_paths"] = names
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))
    assert len(dump(bag)) == 6


def test_eval_reports_metrics_delay_and_false_alarms(tmp_path):
    """ID drives and an ID->OOD drive (overexposed frames, which the seeded encoder scores
    higher) through a calibrated bundle; labels from the bag's Bool topic."""
    def over(f):
        return np.clip(f.astype(np.float32) * 2.5 + 60, 0, 255).astype(np.uint8)

    drives = {}
    for name, seed in [("cal0", 11), ("cal1", 12), ("tune0", 13), ("tune1", 14)]:
        d = tmp_path / name
        d.mkdir()
        for i, f in enumerate(make_frames(30, seed=seed)):
            write_png(d / f"{i:03d}.png", f)
        drives[name] = d
    cal = tmp_path / "calibrated"
    seeded = tmp_path / "seeded"
    cli("gen-seeded", "--out", seeded, "--preset", "tiny", "--seed", "7")
    cli("calibrate", "--bundle", seeded, "--out", cal, "--cal", drives["cal0"], drives["cal1"], "--tune-id", drives["tune0"], drives["tune1"],
        "--k", "30", "--windows", "5", "--decays", "0.5", "--quiet")
    mixed = make_frames(40, seed=21)
    labels = [i >= 20 for i in range(40)]
    write_bag(tmp_path / "drive", "mcap", [over(f) if l else f for f, l in zip(mixed, labels)], labels=labels)
    write_bag(tmp_path / "id_drive", "sqlite3", make_frames(30, seed=22))
    out = tmp_path / "report"
    r = cli("eval", "--bundle", cal, "--out", out, "--id", tmp_path / "id_drive", "--input", tmp_path / "drive",
            "--label-topic", "/ood_label", "--quiet")
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1 and report["calibrated"] and not report["partial"]
    assert report["frames"] == 70 and report["scored"] == 70
    m = report["score_metrics"]["/ood_label"]
    assert m["n_ood"] == 20 and m["n_id"] == 50 and m["auroc"] > 0.9, m
    seq = report["sequential"]
    assert len(seq["segments"]) == 1 and seq["detected"] == 1 and seq["segments"][0]["delay_frames"] <= 10, seq
    assert seq["id_frames"] == 50
    # Both inputs have clear frames (the mixed drive's first 20); the drive-level count is one
    # per input that alarmed, never more than its entries.
    assert seq["id_inputs"] == 2 and seq["inputs_with_false_alarm"] <= min(2, seq["false_alarms"]), seq
    assert abs(seq["segments"][0]["delay_s"] - seq["segments"][0]["delay_frames"] * 0.066) < 1e-6
    assert set(report["latency_ms"]) == {"decode", "preprocess", "inference", "total"}
    lines = (out / "frames.csv").read_text().splitlines()
    assert len(lines) == 71 and lines[0].startswith("input,index,stamp_ns,ood")
    assert "AUROC" in r.stdout
    # Plots (PNG) and the one-page HTML report that links them.
    assert report["plot_error"] is None, report["plot_error"]
    assert set(report["plots"]) == {"roc_score.png", "roc_cusum.png", "timeline_0.png", "timeline_1.png"}
    html = (out / "report.html").read_text()
    for p in report["plots"]:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f'src="{p}"' in html


def test_eval_scores_equal_offline_scores_of_the_same_frames(tmp_path):
    frames = make_frames(5, seed=4)
    write_bag(tmp_path / "b", "sqlite3", frames)
    folder = tmp_path / "png"
    folder.mkdir()
    for i, f in enumerate(frames):
        write_png(folder / f"{i}.png", f)
    cli("eval", "--out", tmp_path / "r1", "--id", tmp_path / "b", "--ood", f"{folder}=same", "--quiet")
    rows = [l.split(",") for l in (tmp_path / "r1" / "frames.csv").read_text().splitlines()[1:]]
    bag_scores = [float(r[5]) for r in rows if r[0] == "0"]
    png_scores = [float(r[5]) for r in rows if r[0] == "1"]
    assert bag_scores == png_scores and len(bag_scores) == 5


def test_time_range_labels_and_unreadable_images(tmp_path):
    frames = make_frames(20, width=40, height=30, seed=2)
    write_bag(tmp_path / "b", "mcap", frames)  # stamps T0 + i * 66 ms
    ranges = tmp_path / "ranges.csv"
    start, end = (T0 + 5 * 66_000_000) / 1e9, (T0 + 9 * 66_000_000) / 1e9
    ranges.write_text(f"start,end,type\n{start:.3f},{end:.3f},glare\n")
    cli("eval", "--out", tmp_path / "r", "--input", tmp_path / "b", "--labels", ranges, "--quiet")
    rows = [l.split(",") for l in (tmp_path / "r" / "frames.csv").read_text().splitlines()[1:]]
    assert [int(r[1]) for r in rows if r[3] == "true"] == [5, 6, 7, 8, 9]
    assert {r[4] for r in rows if r[3] == "true"} == {"glare"}

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(frames[:4]):
        write_png(folder / f"{i}.png", f)
    (folder / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = cli("eval", "--out", tmp_path / "r2", "--id", folder, "--quiet", check=False)
    rep = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert r.returncode == 2 and rep["frames"] == 2 and "2.png" in rep["inputs"][0]["error"], rep["inputs"]


def test_metrics_match_scikit_learn_including_ties(tmp_path):
    rng = np.random.default_rng(0)
    for n_id, n_ood in [(100, 30), (7, 50), (500, 500)]:
        s = np.concatenate([rng.normal(0, 1, n_id), rng.normal(1, 1, n_ood)]).round(1)  # many ties
        y = np.array([False] * n_id + [True] * n_ood)
        f = tmp_path / "m.json"
        f.write_text(json.dumps({"scores": s.tolist(), "ood": y.tolist()}))
        got = json.loads(cli("metrics", f).stdout)
        fpr, tpr, _ = sklearn_metrics.roc_curve(y, s)
        assert abs(got["auroc"] - sklearn_metrics.roc_auc_score(y, s)) < 1e-12
        assert abs(got["aupr_out"] - sklearn_metrics.average_precision_score(y, s)) < 1e-12
        assert abs(got["aupr_in"] - sklearn_metrics.average_precision_score(~y, -s)) < 1e-12
        assert abs(got["fpr_at_95_tpr"] - fpr[np.searchsorted(tpr, 0.95, side="left")]) < 1e-12
    f.write_text(json.dumps({"scores": [1.0, 2.0], "ood": [True, True]}))
    r = cli("metrics", f, check=False)
    assert r.returncode != 0 and "both classes" in r.stderr


def test_damaged_bags_give_partial_results_and_clear_errors(tmp_path):
    frames = make_frames(30, width=64, height=48, seed=9)
    write_bag(tmp_path / "m", "mcap", frames)
    (mcap,) = (tmp_path / "m").glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])
    require(VAE_OOD, "vae-ood CLI")
    r = subprocess.run([str(VAE_OOD), "eval", "--out", tmp_path / "r", "--id", tmp_path / "m", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["partial"] and 0 < rep["frames"] < 30 and mcap.name in rep["inputs"][0]["error"], rep["inputs"]

    write_bag(tmp_path / "s", "sqlite3", frames)
    (db,) = (tmp_path / "s").glob("*.db3")
    raw = db.read_bytes()
    db.write_bytes(raw[: len(raw) // 2])
    r = subprocess.run([str(VAE_OOD), "eval", "--out", tmp_path / "r2", "--id", tmp_path / "s", "--quiet"], capture_output=True, text=True)
    rep = json.loads((tmp_path / "r2" / "report.json").read_text())
    # Damage after some frames is a partial result (2); an input with no frame at all is an error (1).
    assert r.returncode == (2 if rep["frames"] > 0 else 1), (r.returncode, rep["inputs"])
    assert rep["partial"] and db.name in rep["inputs"][0]["error"], rep["inputs"]

    r = cli("eval", "--out", tmp_path / "r3", "--id", tmp_path / "m", "--topic", "/nope", "--quiet", check=False)
    assert r.returncode == 1 and "/nope" in r.stderr
    meta = tmp_path / "m" / "metadata.yaml"
    meta.write_text(meta.read_text().replace("storage_identifier: mcap", "storage_identifier: rocks"))
    r = cli("bag", tmp_path / "m", check=False)
    assert r.returncode != 0 and "unknown storage 'rocks'" in r.stderr


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_undecodable_frames_and_labels_are_counted_and_reported(tmp_path, storage):
    """Damage that costs no frame is still reported: an undecodable image message is a fault
    of its frame (as in the node) and an undecodable label message leaves the label as it
    was; the input's error counts both and names the first of each, and the result is partial."""
    from bag_helpers import STORAGE, TS, raw_msg
    from rosbags.rosbag2 import Writer
    from rosbags.typesys.stores.ros2_jazzy import sensor_msgs__msg__Image as Image
    from rosbags.typesys.stores.ros2_jazzy import std_msgs__msg__Bool as Bool

    frames = make_frames(6, width=64, height=48, seed=11)
    bag = tmp_path / "b"
    with Writer(bag, version=9, storage_plugin=STORAGE[storage]) as w:
        cam = w.add_connection("/camera/image_raw", Image.__msgtype__, typestore=TS)
        lab = w.add_connection("/ood_label", Bool.__msgtype__, typestore=TS)
        for i, f in enumerate(frames):
            ns = T0 + i * 66_000_000
            label = b"\x00\x01" if i == 3 else TS.serialize_cdr(Bool(data=False), Bool.__msgtype__)
            w.write(lab, ns - 1, label)
            image = b"\x00\x01\x00\x00\x07" if i == 4 else TS.serialize_cdr(raw_msg(f, ns, "rgb8", 0), Image.__msgtype__)
            w.write(cam, ns + 1000, image)
    require(VAE_OOD, "vae-ood CLI")
    r = subprocess.run([str(VAE_OOD), "eval", "--out", tmp_path / "r", "--input", bag, "--label-topic", "/ood_label",
                        "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    error = rep["inputs"][0]["error"]
    assert rep["partial"] and rep["frames"] == 6 and rep["faulted"] == 1, rep
    assert "1 undecodable frame(s)" in error and "message 4 on /camera/image_raw" in error, error
    assert "1 undecodable label message(s)" in error and "label message 3 on /ood_label" in error, error
