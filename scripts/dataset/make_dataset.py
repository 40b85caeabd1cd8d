"""Duckietown driving data for training, calibrating and evaluating detectors.

Drives the simulated Duckiebot along its lane (pure pursuit on the map's lane curves) and
records its forward camera. In-distribution drives are clear; OOD drives apply one of the
conditions in ood_transforms.py to the whole drive, from mid-drive to the end, or to the
middle half. Every drive (map + seed + run) is one unit of the train/calibration/tuning/test
splits, recorded in its metadata. Fixed seeds reproduce every frame bit for bit.

Output per drive, under OUT/<drive_id>/:
  bag/          rosbag2 MCAP: /camera/image_raw/compressed (sensor_msgs/CompressedImage, JPEG)
                and /ood_label (std_msgs/Bool, true = OOD), written with PyPI `rosbags`
  frames/       the same frames as PNG (with --images)
  meta.json     map, seed, run, split, condition, severity, sequence, per-frame labels, sha256

Run through `make data` (its own venv, .venv-data: the simulator is never needed by the tests).
"""

import argparse
import hashlib
import io
import json
import multiprocessing
import pathlib
import shutil
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ood_transforms  # noqa: E402

FPS = 15
# The committed sample: (drive id, map, seed, split, condition, sequence). Conditions other
# than "clear" are OOD; sequences: whole, second_half (OOD from mid-drive), middle (25%..75%).
SAMPLE = [
    ("id_loop_empty_s1", "loop_empty", 1, "train", "clear", "whole"),
    ("id_small_loop_s2", "small_loop", 2, "calibration", "clear", "whole"),
    ("id_udem1_s3", "udem1", 3, "tuning", "clear", "whole"),
    ("id_loop_empty_s4", "loop_empty", 4, "test", "clear", "whole"),
    ("ood_brightness_small_loop_s5", "small_loop", 5, "test", "brightness", "middle"),
    ("ood_rain_udem1_s6", "udem1", 6, "test", "rain", "middle"),
    ("ood_fog_loop_empty_s7", "loop_empty", 7, "validation", "fog", "second_half"),
    ("ood_noise_small_loop_s8", "small_loop", 8, "test", "noise", "whole"),
]

# Drives for training and calibrating the default detector (`make train-data`): clear
# conditions on the sample's maps, seeds disjoint from every sample drive. Per map: training
# drives, one held out for early stopping (train_val) and one for conformal calibration.
# udem1 (intersections, buildings, duckies) varies most from scene to scene and gets more.
TRAIN_MAPS = [("loop_empty", 104, 8), ("small_loop", 112, 8), ("udem1", 120, 12)]
# The three training maps, in the order every set cycles through them.
MAPS = tuple(m for m, _, _ in TRAIN_MAPS)
# Three maps beyond the training maps, with intersections and towns (none is 4way or a variant).
MORE_MAP_NAMES = ("ETH_small_intersect", "TTIC_ripltown", "Montreal_loop")


def clear_drives(maps, seeds, split):
    """Whole clear drives, each seed on one of `maps` in turn (seed % len(maps))."""
    return [(f"id_{m}_s{seed}", m, seed, split, "clear", "whole")
            for seed, m in ((s, maps[s % len(maps)]) for s in seeds)]


TRAIN = [
    (f"id_{m}_s{seed}", m, seed,
     "train_val" if seed == first + n - 2 else "calibration" if seed == first + n - 1 else "train", "clear", "whole")
    for m, first, n in TRAIN_MAPS
    for seed in range(first, first + n)
]
# OOD validation drives for model selection (`make validation-data`), one per map and condition:
# conditions that are not test partitions (snow, motion blur, occlusion; OOD from mid-drive),
# then the two partitions with an AUROC floor (brightness, rain; OOD in the middle half, as in
# the test drives), so that a detector is chosen on drives of the floors' conditions without
# looking at the test drives. Seeds are disjoint from every other set.
VALIDATION = [
    (f"ood_{c}_{m}_s{seed}", m, seed, "validation", c, "second_half")
    for seed, (m, c) in enumerate(
        [(m, c) for c in ("snow", "motion_blur", "occlusion") for m in MAPS],
        start=140)
] + [
    (f"ood_{c}_{m}_s{seed}", m, seed, "validation", c, "middle")
    for seed, (m, c) in enumerate(
        [(m, c) for c in ("brightness", "rain") for m in MAPS], start=150)
] + [
    # Added in session 7 so that every generated OOD type has validation drives (fog and noise
    # had none): seeds 180-185, never used before.
    (f"ood_{c}_{m}_s{seed}", m, seed, "validation", c, "second_half")
    for seed, (m, c) in enumerate(
        [(m, c) for c in ("fog", "noise") for m in MAPS], start=180)
]
# A second validation set (`make validation2-data`, session 41): the same 21 drives' design (7
# types x 3 maps, brightness and rain in the middle half, the others from mid-drive) on seeds
# 3200-3220, never used, to judge a candidate designed after the first set's figures.
VALIDATION2 = [
    (f"ood_{c}_{m}_s{seed}", m, seed, "validation", c, "middle" if c in ("brightness", "rain") else "second_half")
    for seed, (m, c) in enumerate(
        [(m, c) for c in ("brightness", "rain", "fog", "snow", "motion_blur", "noise", "occlusion") for m in MAPS],
        start=3200)
]
# Extra clear drives held out from everything (`make heldout-data`): 6 per map, for studies of
# scores that are fitted to in-distribution data (docs/detector-experiments.md).
HELDOUT = [
    (f"id_{m}_s{seed}", m, seed, "heldout", "clear", "whole")
    for i, m in enumerate(MAPS)
    for seed in range(160 + 6 * i, 166 + 6 * i)
]
# Clear drives for measuring false alarms (`make falsealarm-data`): 50 drives of 600 frames
# (30,000 frames) over the three maps, seeds 200-249, disjoint from every other set and never
# used to choose anything: the sequential test's false-alarm rate is measured on them.
FALSEALARM = clear_drives(MAPS, range(200, 250), "falsealarm")
# Clear drives for setting the alarm threshold (`make tuning-data`): 60 drives of 600 frames,
# seeds 400-459 over the three maps, never used before. The threshold is a quantile of their
# largest CUSUM statistic, one value per drive, so the more drives, the less a rare drive
# decides it: 60 drives certify 0.1 false alarms per 1000 frames with the 4th largest of them.
TUNING = clear_drives(MAPS, range(400, 460), "tuning")
# Fresh threshold drives (`make tuning2-data`, issue 14, session 15), fixed before any figure on
# them: the study "A reference fitted on more clear drives" (docs/detector-experiments.md) fits
# the score's reference on the 78 drives of heldout-data and tuning-data, so the threshold needs
# clear drives of the same kind that the reference never saw. 78 drives of 600 frames on the
# three training maps, seeds 700-777, never used before.
TUNING2 = clear_drives(MAPS, range(700, 778), "tuning")


def four_map_clear(seeds):
    """Clear drives for counting false alarms, each seed on one of the three training maps or
    4way in turn (seed % 4)."""
    return clear_drives(MAPS + ("4way",), seeds, "falsealarm")


# A second false-alarm set (`make falsealarm2-data`, issue 14, session 11), fixed before any
# figure on it: the first set was looked at when the mixture reference was judged, so a
# decision that weighs the false-alarm floor again needs drives nobody has seen. 52 drives of
# 600 frames (31,200 frames), 13 on each of the three training maps and on 4way (the floor asks
# for clear frames on all maps), seeds 500-551, never used before.
FALSEALARM2 = four_map_clear(range(500, 552))
# A third false-alarm set (`make falsealarm3-data`, issue 14, session 18), fixed before any
# figure on it: both earlier sets were looked at by session 17's encoder study, so the gate of
# the next candidate needs drives nobody has seen. As falsealarm2: 52 drives of 600 frames
# (31,200 frames), 13 on each training map and on 4way, seeds 1000-1051, never used before.
FALSEALARM3 = four_map_clear(range(1000, 1052))
# A fourth false-alarm set (`make falsealarm4-data`, session 18), fixed before any figure on it:
# the recovery hysteresis (`recovery_level`) was designed after falsealarm3 showed a drive
# alarming again and again, so its figures need drives that played no part in that. As
# falsealarm3: 52 drives of 600 frames, 13 per map on four maps, seeds 1100-1151, never used.
FALSEALARM4 = four_map_clear(range(1100, 1152))
# A fifth (`make falsealarm5-data`, session 18), fixed before any figure on it: the figures of
# the joint threshold of the node's two detectors, designed after falsealarm3 and falsealarm4
# showed their combined alarms. As falsealarm3: seeds 1200-1251, never used.
FALSEALARM5 = four_map_clear(range(1200, 1252))
# A sixth (`make falsealarm6-data`, session 19), fixed before any figure on it: the gate of
# the regional detail channel (docs/detector-experiments.md). As falsealarm3: seeds 1300-1351,
# never used.
FALSEALARM6 = four_map_clear(range(1300, 1352))
# A seventh (`make falsealarm7-data`, session 19), fixed before any figure on it: the gate of
# the sorted regional detail, designed after falsealarm6 showed the positional one alarming on
# 4way. As falsealarm3: seeds 1400-1451, never used.
FALSEALARM7 = four_map_clear(range(1400, 1452))
# An eighth (`make falsealarm8-data`, session 20), fixed before any figure on it: the fresh gate
# of the student recalibrated with the teacher's regional detail and fit, after both it and the
# shipped student raised 4 alarms on falsealarm7. As falsealarm3: seeds 1500-1551, never used.
FALSEALARM8 = four_map_clear(range(1500, 1552))
# A ninth (`make falsealarm9-data`, session 21), fixed before any figure on it: the gate of the
# drive-relative branch (docs/detector-experiments.md). As falsealarm3: seeds 1600-1651, never used.
FALSEALARM9 = four_map_clear(range(1600, 1652))
# A tenth (`make falsealarm10-data`, session 21), fixed before any figure on it: the gate of the
# drive-relative branch's second candidate, after the first failed on falsealarm9. As
# falsealarm3: seeds 1700-1751, never used.
FALSEALARM10 = four_map_clear(range(1700, 1752))
# An eleventh (`make falsealarm11-data`, session 21), fixed before any figure on it: the gate of
# the drive-relative branch's third candidate (the long start-up hold). As falsealarm3: seeds
# 1800-1851, never used.
FALSEALARM11 = four_map_clear(range(1800, 1852))
# A twelfth (`make falsealarm12-data`, session 22), fixed before any figure on it: the gate of
# the student with the drive-relative branch tuned on six maps. As falsealarm3: seeds 1900-1951,
# never used.
FALSEALARM12 = four_map_clear(range(1900, 1952))
# A thirteenth (`make falsealarm13-data`, session 23), fixed before any figure on it: the gate of
# the flow detector's fine residual. As falsealarm3: seeds 2100-2151, never used.
FALSEALARM13 = four_map_clear(range(2100, 2152))
# A fourteenth (`make falsealarm14-data`, session 25), generated before any study uses it: the
# gate of the next change to the flow detector's residual (falsealarm13 has been looked at
# alarm by alarm). As falsealarm3: seeds 2200-2251, never used.
FALSEALARM14 = four_map_clear(range(2200, 2252))
# A fifteenth (`make falsealarm15-data`, session 26), generated before any study uses it: the
# gate of the pair's unequal threshold split (falsealarm14 has been looked at by session 25's
# gate). As falsealarm3: seeds 2300-2351, never used.
FALSEALARM15 = four_map_clear(range(2300, 2352))
# A sixteenth (`make falsealarm16-data`, session 27), generated before any study uses it: the
# gate of the motion residual judged given the motion (falsealarm15 has been looked at by
# session 26's gate). As falsealarm3: seeds 2400-2451, never used.
FALSEALARM16 = four_map_clear(range(2400, 2452))
# A seventeenth (`make falsealarm17-data`, session 33), generated before any study uses it: the
# gate of the compressed pair (falsealarm16 has been looked at by session 32's flow student).
# As falsealarm3: seeds 2500-2551, never used.
FALSEALARM17 = four_map_clear(range(2500, 2552))
# An eighteenth (`make falsealarm18-data`, session 34), generated before any study uses it: the
# gate of the detail's direction (docs/detector-experiments.md). As falsealarm3: seeds
# 2600-2651, never used.
FALSEALARM18 = four_map_clear(range(2600, 2652))
# A nineteenth (`make falsealarm19-data`, session 35), generated before any study uses it: the
# gate of the direction branch's next form (falsealarm18 has been looked at by session 35's
# first form). As falsealarm3: seeds 2700-2751, never used.
FALSEALARM19 = four_map_clear(range(2700, 2752))
# A twentieth (`make falsealarm20-data`, session 37), generated before any study uses it: the
# gate of an encoder trained on the 130 fit drives (falsealarm18 and 19 have been looked at by
# the shipped detectors' choices). As falsealarm3: seeds 2800-2851, never used.
FALSEALARM20 = four_map_clear(range(2800, 2852))
# A twenty-first (`make falsealarm21-data`, session 40), generated before any study uses it: the
# gate of the teacher with an MSCN branch beside its drive-relative one (falsealarm18 to 20 have
# been looked at by the shipped detectors' choices). As falsealarm3: seeds 2900-2951, never used.
FALSEALARM21 = four_map_clear(range(2900, 2952))
# A twenty-second (`make falsealarm22-data`, session 41), generated before any figure of the
# candidate it gates (a score fitted on drives that start over, docs/detector-experiments.md).
# As falsealarm3: seeds 3100-3151, never used.
FALSEALARM22 = four_map_clear(range(3100, 3152))
# A twenty-third (`make falsealarm23-data`, session 42), generated before any figure of the
# candidate it gates (the student's score fitted with the starts drives). As falsealarm3: seeds
# 3300-3351, never used.
FALSEALARM23 = four_map_clear(range(3300, 3352))
# A twenty-fourth (`make falsealarm24-data`, session 43), generated before any figure of the
# candidates it gates (a gentle end to the start-up phase). As falsealarm3: seeds 3400-3451,
# never used.
FALSEALARM24 = four_map_clear(range(3400, 3452))
# A twenty-fifth (`make falsealarm25-data`, session 44), generated before any figure of the
# candidates it gates (the pooled statistic's decay). As falsealarm3: seeds 3600-3651, never used.
FALSEALARM25 = four_map_clear(range(3600, 3652))
# A twenty-sixth (`make falsealarm26-data`, session 44), generated before any figure of the
# candidate it gates (the student with a drive-relative branch). As falsealarm3: seeds
# 3800-3851, never used.
FALSEALARM26 = four_map_clear(range(3800, 3852))
# A twenty-seventh (`make falsealarm27-data`, session 45), generated before any figure of the
# candidates it gates (a latent-step branch). As falsealarm3: seeds 3900-3951, never used.
FALSEALARM27 = four_map_clear(range(3900, 3952))
# A twenty-eighth (`make falsealarm28-data`, session 46), generated before any figure of the
# candidate it gates (the teacher's change branch with its share from the start-up phase). As
# falsealarm3: seeds 4000-4051, never used.
FALSEALARM28 = four_map_clear(range(4000, 4052))
# A twenty-ninth (`make falsealarm29-data`, session 46), generated before any figure of the
# candidate it gates (the teacher calibrated with tuning4's drives too). As falsealarm3: seeds
# 4200-4251, never used.
FALSEALARM29 = four_map_clear(range(4200, 4252))
# A thirtieth (`make falsealarm30-data`, session 47), generated before any figure of the
# candidates it gates (the teacher with the change branch in place of its drive-relative branch).
# As falsealarm3: seeds 4300-4351, never used.
FALSEALARM30 = four_map_clear(range(4300, 4352))
# Long drives (`make long-data`, session 43): 12 clear drives of 3000 frames (200 s) on four
# maps, seeds 3500-3511, never used; hashes recorded before any figure. They measure what a
# stream's first 600 frames do not: the cruise thresholds over a long run (SAFETY.md, the
# start-up phase's per-stretch estimate).
LONG = four_map_clear(range(3500, 3512))
# The test set of the model cards (`make testset-data`, issue 14), fixed in session 7 before any
# figure on it was looked at, with seeds 300-328 never used before: per OOD type and map one
# drive, OOD in its middle half at the default severity; two clear drives per map, and two on
# 4way, a map no detector has seen (chosen for having only the training maps' textures, so that
# it tests generalisation to new scenes rather than new objects). Hashes: data/testset.sha256.
OOD_TYPES = ("brightness", "rain", "fog", "snow", "motion_blur", "noise", "occlusion")


def testset_layout(first_seed):
    """A test set's drives from `first_seed` on: one per OOD type and map (OOD in the middle
    half), then two clear drives per map and two on 4way (29 seeds)."""
    ood = [(m, c) for c in OOD_TYPES for m in MAPS]
    clear = [m for m in MAPS + ("4way",) for _ in range(2)]
    return [(f"ood_{c}_{m}_s{seed}", m, seed, "test", c, "middle")
            for seed, (m, c) in enumerate(ood, start=first_seed)] + [
        (f"id_{m}_s{seed}", m, seed, "test", "clear", "whole")
        for seed, m in enumerate(clear, start=first_seed + len(ood))]


TESTSET = testset_layout(300)
# A second test set (`make testset2-data`, session 44), laid out as the first (one drive per OOD
# type and map in its middle half, two clear drives per map and on 4way), seeds 3700-3728 never
# used, hashes recorded before any figure: the first test set has been read by every session
# since 7, so a change is also reported on drives nobody has looked at.
TESTSET2 = testset_layout(3700)
# The optical-flow detector's drives (issue 18, session 12), seeds 600-651 never used before,
# fixed before any figure on them: OOD types whose signal is motion. Validation (`make
# flow-validation-data`, 300 frames, OOD from mid-drive): camera shake, abnormal speed and
# frame drops on each map (rain and snow have validation drives already). Test (`make
# flow-testset-data`, 400 frames, OOD in the middle half, hashes in data/flow_testset.sha256):
# those three plus rain and snow, one drive per map, and two clear drives per map and on 4way.
MOTION_TYPES = ("camera_shake", "fast", "frame_drops")
FLOW_VALIDATION = [
    (f"ood_{c}_{m}_s{seed}", m, seed, "validation", c, "second_half")
    for seed, (m, c) in enumerate([(m, c) for c in MOTION_TYPES for m in MAPS], start=600)
]
FLOW_TESTSET = [
    (f"ood_{c}_{m}_s{seed}", m, seed, "test", c, "middle")
    for seed, (m, c) in enumerate([(m, c) for c in ("rain", "snow") + MOTION_TYPES for m in MAPS], start=610)
] + [
    (f"id_{m}_s{seed}", m, seed, "test", "clear", "whole")
    for seed, m in enumerate([m for m in MAPS + ("4way",) for _ in range(2)], start=630)
]
# Clear drives on 4way, the map outside every fit, tuning and threshold set (`make
# unseen-map-data`, session 17), seeds 900-911 never used before: for exploring how a detector
# generalises to a new map without looking at the false-alarm sets that gate shipping.
UNSEEN_MAP = [(f"id_4way_s{seed}", "4way", seed, "explore", "clear", "whole") for seed in range(900, 912)]
# Clear drives on three maps beyond the training maps (`make more-maps-data`, session 17),
# seeds 950-979 never used before, 10 per map: for exploring whether training and fitting on more
# scene layouts lets a detector generalise to an unseen map. None is 4way or a variant of it.
MORE_MAPS = clear_drives(MORE_MAP_NAMES, range(950, 980), "train")
# Clear drives on those three more maps for setting thresholds (`make tuning3-data`, session 22),
# seeds 2000-2038 never used before, 13 per map: with tuning2, tuning drives whose scenes change
# within a drive (intersections), as a robot's do, for the drive-relative branch. None is 4way.
TUNING3 = clear_drives(MORE_MAP_NAMES, range(2000, 2039), "tuning")
# More tuning drives (`make tuning4-data`, session 46): 54 clear drives of 600 frames on the six
# maps of tuning2 and tuning3 (9 each), seeds 4100-4153 never used before. The drive-level
# promise's quantile is over K tuning drives: at the teacher's 5e-5 per frame, 117 drives allow
# 2 over the threshold (3/118 per drive), 171 allow 4 (5/172), so that every branch's
# one-drive share costs less and the promise comes closer to its target.
TUNING4 = clear_drives(MAPS + MORE_MAP_NAMES, range(4100, 4154), "tuning")
# Clear drives that start over every RESTART_EVERY frames (`make starts-data`, session 41), seeds
# 3000-3029 never used before, 5 on each training map and each of the three more maps: 300 starts
# from the simulator's random poses. The clear scenes that score like a shift (the map's edge, a
# building or bus close up) come mostly in a drive's first 70 frames (session 36); these drives
# give a score's fit more of them. For fitting only (split "fit").
RESTART_EVERY = 60
STARTS = [(f"id_{m}_s{seed}", m, seed, "fit", "clear", "restarts")
          for seed, m in ((s, (MAPS + MORE_MAP_NAMES)[s % 6]) for s in range(3000, 3030))]
SETS = {"sample": SAMPLE, "starts": STARTS, "validation2": VALIDATION2, "unseen_map": UNSEEN_MAP, "more_maps": MORE_MAPS, "flow_validation": FLOW_VALIDATION, "flow_testset": FLOW_TESTSET, "train": TRAIN, "validation": VALIDATION, "heldout": HELDOUT,
        "falsealarm": FALSEALARM, "falsealarm2": FALSEALARM2, "falsealarm3": FALSEALARM3, "falsealarm4": FALSEALARM4, "falsealarm5": FALSEALARM5, "falsealarm6": FALSEALARM6, "falsealarm7": FALSEALARM7, "falsealarm8": FALSEALARM8, "falsealarm9": FALSEALARM9, "falsealarm10": FALSEALARM10, "falsealarm11": FALSEALARM11, "testset": TESTSET, "tuning": TUNING,
        "falsealarm12": FALSEALARM12, "falsealarm13": FALSEALARM13, "falsealarm14": FALSEALARM14, "falsealarm15": FALSEALARM15, "falsealarm16": FALSEALARM16, "falsealarm17": FALSEALARM17, "falsealarm18": FALSEALARM18, "falsealarm19": FALSEALARM19, "falsealarm20": FALSEALARM20, "falsealarm21": FALSEALARM21, "falsealarm22": FALSEALARM22, "falsealarm23": FALSEALARM23, "falsealarm24": FALSEALARM24, "falsealarm25": FALSEALARM25, "falsealarm26": FALSEALARM26, "falsealarm27": FALSEALARM27, "falsealarm28": FALSEALARM28, "falsealarm29": FALSEALARM29, "falsealarm30": FALSEALARM30, "testset2": TESTSET2, "long": LONG, "tuning2": TUNING2, "tuning3": TUNING3, "tuning4": TUNING4}


def ood_mask(n, sequence, condition):
    if condition == "clear":
        return np.zeros(n, bool)
    idx = np.arange(n)
    if sequence == "whole":
        return np.ones(n, bool)
    if sequence == "second_half":
        return idx >= n // 2
    if sequence == "middle":
        return (idx >= n // 4) & (idx < 3 * n // 4)
    raise ValueError(f"unknown sequence '{sequence}'")


def make_env(map_name, seed, width, height):
    import duckietown_world  # noqa: F401  (switches PyContracts off; must come first)
    import geometry

    original = geometry.se2_from_linear_angular

    def flat(linear, angular):  # numpy >= 1.24 shim (see shared NOTES)
        scalar = lambda v: float(np.asarray(v, dtype=float).reshape(-1)[0])  # noqa: E731
        return original(np.array([scalar(v) for v in linear]), scalar(angular))

    geometry.se2_from_linear_angular = flat
    from gym_duckietown.envs import DuckietownEnv

    env = DuckietownEnv(map_name=map_name, seed=seed, camera_width=width, camera_height=height, domain_rand=False,
                        distortion=False, max_steps=100_000, draw_curve=False, draw_bbox=False, accept_start_angle_deg=4)
    env.reset()
    return env


def pure_pursuit(env):
    pos, angle = env.cur_pos, env.cur_angle
    point, tangent = env.closest_curve_point(pos, angle)
    if point is None:
        return 0.2, 0.0
    lookahead, target = 0.24, None
    for _ in range(10):
        target, _ = env.closest_curve_point(point + tangent * lookahead, angle)
        if target is not None:
            break
        lookahead *= 0.5
    if target is None:
        return 0.2, 0.0
    to_target = target - pos
    to_target /= np.linalg.norm(to_target) + 1e-9
    right = np.array([np.sin(angle), 0.0, np.cos(angle)])
    steer = -6.0 * float(np.dot(right, to_target))
    speed = 0.25 if abs(steer) > 1.5 else 0.5
    return speed, steer


# Conditions of the drive itself rather than of its frames (the optical-flow detector's motion
# OOD types, issue 18): `fast` drives at twice the controller's speed; `frame_drops` loses 1 or
# 2 camera frames after each one it records (the stamps show the time that passed).
DRIVE_CONDITIONS = ("fast", "frame_drops")


def drive(map_name, seed, n_frames, width, height, condition="clear", mask=None, restart_every=0):
    """`n_frames` recorded frames and each one's simulator step (15 steps a second). Clear and
    per-frame conditions record every step, so their drives are unchanged by the drive-level
    conditions' code. With `restart_every`, the robot is put down at a new random pose every
    that many frames."""
    env = make_env(map_name, seed, width, height)
    rng = np.random.default_rng(seed * 7907 + 3)
    frames, steps = [], []
    obs = env.render_obs()
    step = 0
    while len(frames) < n_frames:
        if restart_every and frames and len(frames) % restart_every == 0:
            env.reset()
            obs = env.render_obs()
        ood = mask is not None and bool(mask[len(frames)])
        skip = int(rng.integers(1, 3)) if ood and condition == "frame_drops" else 0
        for _ in range(skip + 1):
            speed, steer = pure_pursuit(env)
            if ood and condition == "fast":
                speed *= 2.0
            obs, _, done, _ = env.step(np.array((speed, steer)))[:4]
            step += 1
            if done:
                env.reset()
        frames.append(np.ascontiguousarray(obs, dtype=np.uint8))
        steps.append(step - 1)
    env.close()
    return frames, steps


def jpeg(rgb, quality=90):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def id_levels(seed, n_frames, max_level):
    """In-distribution variation of the paper's two generative factors (a β-VAE can only spend a
    latent on a factor that varies in its training data): per frame, a brightness and a rain
    severity in [0, max_level], each a slow sinusoid (a period of 10-40 s, a drive-specific
    phase), like passing clouds and showers. Off by default (docs/detector-experiments.md)."""
    rng = np.random.default_rng(seed * 7919 + 17)
    t = np.arange(n_frames) / FPS
    levels = {}
    for factor in ("brightness", "rain"):
        period, phase = rng.uniform(10, 40), rng.uniform(0, 2 * np.pi)
        levels[factor] = max_level * 0.5 * (1 + np.sin(2 * np.pi * t / period + phase))
    return levels


def write_drive(out, drive_id, map_name, seed, split, condition, sequence, n_frames, width, height, severity, images,
                id_variation=0.0):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    CompressedImage, Bool = ts.types["sensor_msgs/msg/CompressedImage"], ts.types["std_msgs/msg/Bool"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    mask = ood_mask(n_frames, sequence, condition)
    clean, steps = drive(map_name, seed, n_frames, width, height, condition, mask,
                         RESTART_EVERY if sequence == "restarts" else 0)
    d = out / drive_id
    if (d / "bag").exists():  # regenerating: rosbags refuses to write over an existing bag
        shutil.rmtree(d / "bag")
    d.mkdir(parents=True, exist_ok=True)
    if images:
        (d / "frames").mkdir(exist_ok=True)
    t0 = 1_700_000_000_000_000_000 + seed * 10**12
    digest = hashlib.sha256()
    with Writer(d / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cam = w.add_connection("/camera/image_raw/compressed", CompressedImage.__msgtype__, typestore=ts)
        lab = w.add_connection("/ood_label", Bool.__msgtype__, typestore=ts)
        levels = id_levels(seed, n_frames, id_variation) if id_variation > 0 else {}
        for i, frame in enumerate(clean):
            for factor, level in levels.items():
                frame = ood_transforms.apply(factor, frame, float(level[i]), seed=seed * 100_019 + i)
            if mask[i] and condition not in DRIVE_CONDITIONS:
                frame = ood_transforms.apply(condition, frame, severity, seed=seed * 100_003 + i)
            data = jpeg(frame)
            digest.update(data)
            ns = t0 + steps[i] * 10**9 // FPS
            w.write(lab, ns, ts.serialize_cdr(Bool(data=bool(mask[i])), Bool.__msgtype__))
            msg = CompressedImage(header=Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="camera"),
                                  format="jpeg", data=np.frombuffer(data, np.uint8))
            w.write(cam, ns, ts.serialize_cdr(msg, CompressedImage.__msgtype__))
            if images:
                from PIL import Image
                Image.fromarray(frame).save(d / "frames" / f"{i:06d}.png")
    meta = {"drive_id": drive_id, "map": map_name, "seed": seed, "run": 0, "split": split, "condition": condition,
            "ood": condition != "clear", "severity": severity if condition != "clear" else 0.0, "sequence": sequence,
            "frames": n_frames, "fps": FPS, "size": [width, height], "ood_frames": [int(i) for i in np.flatnonzero(mask)],
            "sha256_jpeg": digest.hexdigest(), "simulator": "duckietown-gym-daffy 6.1.34"}
    if levels:
        meta["id_variation"] = {"max_level": id_variation,
                                **{f: [round(float(v), 4) for v in lv] for f, lv in levels.items()}}
    (d / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--severity", type=float, default=ood_transforms.DEFAULT_SEVERITY)
    ap.add_argument("--images", action="store_true", help="also write PNG frames")
    ap.add_argument("--id-variation", type=float, default=0.0, metavar="MAX",
                    help="vary brightness and rain within [0, MAX] severity on every frame (in-distribution "
                         "variation of the paper's two factors; 0 = clear frames)")
    ap.add_argument("--only", nargs="*", help="drive ids to generate (default: all)")
    ap.add_argument("--check", type=pathlib.Path, metavar="SHA256_FILE",
                    help="fail unless every generated drive's JPEG hash matches the one recorded in this file "
                         "(lines 'SHA256  DRIVE_ID'); with --record, write the file instead")
    ap.add_argument("--record", action="store_true", help="write the --check file from this run")
    ap.add_argument("--set", choices=sorted(SETS), default="sample",
                    help="sample: the committed drives; train: 28 clear drives for training and calibration; "
                         "validation: 15 OOD drives (snow, motion blur, occlusion, brightness, rain) for model selection; "
                         "heldout: 18 clear drives for studies of fitted scores; "
                         "falsealarm: 50 clear drives (seeds 200-249) for false-alarm rates; "
                         "falsealarm2: 52 fresh clear drives on four maps (seeds 500-551); "
                         "falsealarm3: 52 fresh clear drives on four maps (seeds 1000-1051); "
                         "falsealarm4: 52 fresh clear drives on four maps (seeds 1100-1151); "
                         "falsealarm5: 52 fresh clear drives on four maps (seeds 1200-1251); "
                         "falsealarm6: 52 fresh clear drives on four maps (seeds 1300-1351); "
                         "falsealarm7: 52 fresh clear drives on four maps (seeds 1400-1451); "
                         "falsealarm8: 52 fresh clear drives on four maps (seeds 1500-1551); "
                         "falsealarm9: 52 fresh clear drives on four maps (seeds 1600-1651); "
                         "falsealarm10: 52 fresh clear drives on four maps (seeds 1700-1751); "
                         "falsealarm11: 52 fresh clear drives on four maps (seeds 1800-1851); "
                         "falsealarm12: 52 fresh clear drives on four maps (seeds 1900-1951); "
                         "falsealarm13: 52 fresh clear drives on four maps (seeds 2100-2151); "
                         "falsealarm14: 52 fresh clear drives on four maps (seeds 2200-2251); "
                         "falsealarm15: 52 fresh clear drives on four maps (seeds 2300-2351); "
                         "falsealarm16: 52 fresh clear drives on four maps (seeds 2400-2451); "
                         "falsealarm17: 52 fresh clear drives on four maps (seeds 2500-2551); "
                         "falsealarm18: 52 fresh clear drives on four maps (seeds 2600-2651); "
                         "falsealarm19: 52 fresh clear drives on four maps (seeds 2700-2751); "
                         "falsealarm20: 52 fresh clear drives on four maps (seeds 2800-2851); "
                         "falsealarm21: 52 fresh clear drives on four maps (seeds 2900-2951); "
                         "falsealarm22: 52 fresh clear drives on four maps (seeds 3100-3151); "
                         "falsealarm23: 52 fresh clear drives on four maps (seeds 3300-3351); "
                         "falsealarm24: 52 fresh clear drives on four maps (seeds 3400-3451); "
                         "falsealarm25: 52 fresh clear drives on four maps (seeds 3600-3651); "
                         "falsealarm26: 52 fresh clear drives on four maps (seeds 3800-3851); "
                         "falsealarm27: 52 fresh clear drives on four maps (seeds 3900-3951); "
                         "falsealarm28: 52 fresh clear drives on four maps (seeds 4000-4051); "
                         "falsealarm29: 52 fresh clear drives on four maps (seeds 4200-4251); "
                         "falsealarm30: 52 fresh clear drives on four maps (seeds 4300-4351); "
                         "long: 12 clear drives on four maps (seeds 3500-3511), 3000 frames each; "
                         "testset: 29 drives (seeds 300-328), the model cards' test set; "
                         "testset2: 29 drives (seeds 3700-3728), a second test set laid out as the first; "
                         "tuning: 60 clear drives (seeds 400-459) for the alarm threshold; "
                         "tuning2: 78 fresh clear drives (seeds 700-777) for the alarm threshold; "
                         "tuning3: 39 clear drives on three more maps (seeds 2000-2038) for the alarm threshold; "
                         "tuning4: 54 clear drives on the six maps of tuning2 and tuning3 (seeds 4100-4153); "
                         "flow_validation: 9 motion OOD drives (seeds 600-608); "
                         "flow_testset: 23 drives (seeds 610-637), the flow detector's test set; "
                         "unseen_map: 12 clear drives on 4way (seeds 900-911) for exploration; "
                         "more_maps: 30 clear drives on three more maps (seeds 950-979) for exploration; "
                         "validation2: 21 OOD drives (seeds 3200-3220), a second validation set; "
                         "starts: 30 clear drives on six maps that start over every 60 frames (seeds 3000-3029), for fitting")
    args = ap.parse_args()
    specs = [spec for spec in SETS[args.set] if not args.only or spec[0] in args.only]
    # One process per drive: the simulator's OpenGL context leaks, and a long set otherwise
    # fails after a few dozen drives with "invalid operation".
    ctx = multiprocessing.get_context("spawn")
    jobs = [(args.out, *spec, args.frames, args.width, args.height, args.severity, args.images, args.id_variation)
            for spec in specs]
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for meta in pool.imap(_write_drive, jobs):
            print(f"{meta['drive_id']:<32} {meta['split']:<12} {meta['condition']:<11} {meta['sequence']:<12} {len(meta['ood_frames']):4d} OOD frames  sha256 {meta['sha256_jpeg'][:12]}", flush=True)
    if args.check:
        # Every drive of the set, as written in --out (this run's and earlier runs').
        hashes = {spec[0]: json.loads((args.out / spec[0] / "meta.json").read_text())["sha256_jpeg"]
                  for spec in SETS[args.set] if (args.out / spec[0] / "meta.json").is_file()}
        if args.record:
            args.check.write_text("".join(f"{h}  {d}\n" for d, h in hashes.items()))
            return
        recorded = dict(reversed(line.split()) for line in args.check.read_text().splitlines() if line.strip())
        bad = sorted(d for d in recorded if hashes.get(d) != recorded[d])
        if bad:
            sys.exit(f"{len(bad)} drive(s) missing or different from {args.check}: {', '.join(bad)} (a different "
                     f"simulator or library version renders other frames; figures on them are not the recorded set's)")
        print(f"all {len(recorded)} drives match {args.check}")


def _write_drive(job):
    return write_drive(*job)

if __name__ == "__main__":
    main()
