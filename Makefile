# Two entry points, each doing all the set-up it needs (see README.md):
#   make demo   run the monitor node on the bundled detector against a replayed camera stream
#   make test   run every test: offline core, live ROS 2 (real DDS, loopback only), colcon build
.PHONY: demo test setup build clean-venv data sample-data train-data train-var-data validation-data heldout-data falsealarm-data falsealarm2-data falsealarm3-data falsealarm4-data falsealarm5-data falsealarm6-data falsealarm7-data falsealarm8-data falsealarm9-data falsealarm10-data falsealarm11-data falsealarm12-data falsealarm13-data falsealarm14-data falsealarm15-data falsealarm16-data falsealarm17-data falsealarm18-data falsealarm19-data falsealarm20-data falsealarm21-data falsealarm22-data falsealarm23-data falsealarm24-data falsealarm25-data falsealarm26-data falsealarm27-data falsealarm28-data falsealarm29-data falsealarm30-data long-data testset-data testset2-data tuning-data tuning2-data tuning3-data tuning4-data starts-data validation2-data flow-validation-data flow-testset-data heldout-var-data tuning-var-data unseen-map-data more-maps-data compress

setup:
	bash scripts/bootstrap.sh

build: setup
	bash -c 'source scripts/env.sh && cargo build -p vae_ood_monitor --bins && cargo build -p vae_ood_cli'

demo:
	bash scripts/demo.sh $(ARGS)

test:
	bash scripts/test.sh

# The paper's compression methodology on the default detector (vae-ood compress --budget
# quick, about 3 hours on 2 cores since session 7); ships the selected detector as models/compressed. See docs/compress.md.
compress: setup
	bash scripts/compress_default.sh

clean-venv:
	rm -rf .venv

# Duckietown driving data (simulator in its own venv, .venv-data; never needed by `make test`).
DATA_VENV := .venv-data
$(DATA_VENV)/.ok:
	bash scripts/dataset/setup.sh
	touch $@

# Larger sets: make data DATA_OUT=out/data FRAMES=1000
DATA_OUT ?= out/data
FRAMES ?= 1000
data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --out $(DATA_OUT) --frames $(FRAMES) --images

# Training and calibration drives for the default detector (28 clear drives, 600 frames each;
# see models/default/MODEL_CARD.md).
TRAIN_OUT ?= out/train
train-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set train --out $(TRAIN_OUT) --frames 600

# The same 28 drives with brightness and rain drifting in [0, 0.3] severity on every frame: the
# default detector trains on them, so that its latent space spans the paper's two factors.
TRAIN_VAR_OUT ?= out/train_var
train-var-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set train --out $(TRAIN_VAR_OUT) --frames 600 --id-variation 0.3

# The varied versions (brightness and rain drifting in [0, 0.3], as train-var-data) of
# heldout-data's 18 and tuning-data's 60 clear drives: with train-var-data, the 100 drives the
# score's reference is fitted on, as training data for an encoder (session 17's study, E100).
HELDOUT_VAR_OUT ?= out/heldout_var
heldout-var-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set heldout --out $(HELDOUT_VAR_OUT) --frames 600 --id-variation 0.3
TUNING_VAR_OUT ?= out/tuning_var
tuning-var-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set tuning --out $(TUNING_VAR_OUT) --frames 600 --id-variation 0.3

# 12 clear drives on 4way (seeds 900-911), the map outside every fit and threshold set: for
# exploring a detector's false alarms on a new map without touching the gating sets.
UNSEEN_MAP_OUT ?= out/unseen_map
unseen-map-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set unseen_map --out $(UNSEEN_MAP_OUT) --frames 600

# 30 clear drives on three maps beyond the training maps (ETH_small_intersect, TTIC_ripltown,
# Montreal_loop; seeds 950-979), and their varied versions: session 17's exploration of training
# and fitting on more scene layouts (docs/detector-experiments.md).
MORE_MAPS_OUT ?= out/more_maps
more-maps-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set more_maps --out $(MORE_MAPS_OUT) --frames 600
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set more_maps --out $(MORE_MAPS_OUT)_var --frames 600 --id-variation 0.3

# OOD validation drives (every generated OOD type, one drive per map: 21 drives, 300 frames
# each) for choosing the default detector (see models/default/MODEL_CARD.md).
VALIDATION_OUT ?= out/validation
validation-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set validation --out $(VALIDATION_OUT) --frames 300

# 18 clear drives held out from training, calibration and tests (600 frames each), for
# scripts/score_study.py --heldout-dir (docs/detector-experiments.md).
HELDOUT_OUT ?= out/heldout
heldout-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set heldout --out $(HELDOUT_OUT) --frames 600

# 50 clear drives (600 frames each, seeds 200-249) for the sequential test's false-alarm rate
# over 30,000 held-out frames (docs/detector-experiments.md).
FALSEALARM_OUT ?= out/falsealarm
falsealarm-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set falsealarm --out $(FALSEALARM_OUT) --frames 600

# Fresh clear drives on four maps, 52 per set (13 on each training map and on 4way), each fixed
# before any figure on it and checked against data/falsealarmN.sha256: falsealarm2 (seeds
# 500-551, session 11), falsealarm3 (1000-1051: the gate of session 18's candidate encoder),
# falsealarm4 (1100-1151: the recovery hysteresis) and falsealarm5 (1200-1251: the joint
# threshold), falsealarm6 and 7 (1300-1351, 1400-1451: session 19's detail grid) and falsealarm8
# (1500-1551: session 20's student), falsealarm9 to 11 (1600-1651, 1700-1751, 1800-1851: session 21's drive-relative branch), falsealarm12 (1900-1951: session 22), falsealarm13 (2100-2151: session 23's fine residual), falsealarm14 (2200-2251: session 25, for the residual's next change), falsealarm15 (2300-2351: session 26, the pair's unequal split) falsealarm16 (2400-2451: session 27, the residual given the motion) falsealarm17 (2500-2551: session 33, the compressed pair) falsealarm18 (2600-2651: session 34, the detail's direction) falsealarm19 (2700-2751: session 35, the direction branch's next form) falsealarm20 (2800-2851: session 37, an encoder trained on the 130 fit drives) falsealarm21 (2900-2951: session 40, the teacher with an MSCN branch) falsealarm22 (3100-3151: session 41, a score fitted on drives that start over) falsealarm23 (3300-3351: session 42, the student's score fitted with the starts drives) falsealarm24 (3400-3451: session 43, a gentle end to the start-up phase) falsealarm25 (3600-3651: session 44, the pooled statistic's decay) falsealarm26 (3800-3851: session 44, the student's drive-relative branch) falsealarm27 (3900-3951: session 45, a latent-step branch) falsealarm28 (4000-4051: session 46, the teacher's latent-step branch sharing the start-up phase's allowance) falsealarm29 (4200-4251: session 46, the teacher tuned on tuning4's drives too) and falsealarm30 (4300-4351: session 47, the teacher with the change branch in place of its drive-relative branch). `make falsealarmN-data FALSEALARM_SET_OUT=DIR` writes elsewhere.
falsealarm2-data falsealarm3-data falsealarm4-data falsealarm5-data falsealarm6-data falsealarm7-data falsealarm8-data falsealarm9-data falsealarm10-data falsealarm11-data falsealarm12-data falsealarm13-data falsealarm14-data falsealarm15-data falsealarm16-data falsealarm17-data falsealarm18-data falsealarm19-data falsealarm20-data falsealarm21-data falsealarm22-data falsealarm23-data falsealarm24-data falsealarm25-data falsealarm26-data falsealarm27-data falsealarm28-data falsealarm29-data falsealarm30-data: falsealarm%-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set falsealarm$* --out $(or $(FALSEALARM_SET_OUT),out/falsealarm$*) --frames 600 --check data/falsealarm$*.sha256

# Regenerates the committed sample in data/sample (300 frames per drive, 160x120 JPEG).
sample-data: $(DATA_VENV)/.ok
	rm -rf data/sample
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --out data/sample --frames 300

# The model cards' test set (issue 14): 21 OOD drives (7 types x 3 maps) and 8 clear drives (the
# 3 maps and the unseen 4way), 400 frames each, seeds 300-328; every drive's hash is checked
# against data/testset.sha256, so the figures are those of the recorded set.
TESTSET_OUT ?= out/testset
testset-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set testset --out $(TESTSET_OUT) --frames 400 --check data/testset.sha256

# A second test set laid out as the first (session 44): seeds 3700-3728, never used, hashes in
# data/testset2.sha256 recorded before any figure on it.
TESTSET2_OUT ?= out/testset2
testset2-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set testset2 --out $(TESTSET2_OUT) --frames 400 --check data/testset2.sha256

# The optical-flow detector's drives (issue 18): 9 motion OOD validation drives (camera shake,
# abnormal speed, frame drops; seeds 600-608, 300 frames) and its test set: rain, snow and the
# three motion types on the three maps plus 8 clear drives (seeds 610-637, 400 frames), hashes
# checked against data/flow_testset.sha256.
FLOW_VALIDATION_OUT ?= out/flow_validation
flow-validation-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set flow_validation --out $(FLOW_VALIDATION_OUT) --frames 300
FLOW_TESTSET_OUT ?= out/flow_testset
flow-testset-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set flow_testset --out $(FLOW_TESTSET_OUT) --frames 400 --check data/flow_testset.sha256

# 60 clear drives (600 frames each, seeds 400-459) that, with the 18 of make heldout-data, set
# the alarm threshold: a quantile of each drive's largest CUSUM statistic (docs/detector-experiments.md).
TUNING_OUT ?= out/tuning
tuning-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set tuning --out $(TUNING_OUT) --frames 600

# 78 fresh clear drives (600 frames each, seeds 700-777) for the alarm threshold of a reference
# fitted on heldout-data and tuning-data (docs/detector-experiments.md, session 15).
TUNING2_OUT ?= out/tuning2
tuning2-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set tuning2 --out $(TUNING2_OUT) --frames 600

TUNING3_OUT ?= out/tuning3
# 12 clear drives of 3000 frames (200 s; seeds 3500-3511, four maps; session 43): false alarms
# over long streams, past the 600 frames a tuning drive certifies (SAFETY.md, the start-up phase).
long-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set long --out $(or $(LONG_OUT),out/long) --frames 3000 --check data/long.sha256

tuning3-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set tuning3 --out $(TUNING3_OUT) --frames 600

# 54 more clear tuning drives on the six maps of tuning2 and tuning3 (seeds 4100-4153; session 46),
# checked against data/tuning4.sha256.
tuning4-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set tuning4 --out $(or $(TUNING4_OUT),out/tuning4) --frames 600 --check data/tuning4.sha256

# 30 clear drives (600 frames, seeds 3000-3029, 5 on each training map and each of the three more
# maps) that start over at a new random pose every 60 frames: more of the rare clear views a
# drive's start gives, for a score's fit (docs/detector-experiments.md, session 41); hashes
# checked against data/starts.sha256.
STARTS_OUT ?= out/starts
starts-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set starts --out $(STARTS_OUT) --frames 600 --check data/starts.sha256

# A second validation set (session 41): 21 OOD drives as make validation-data's (7 types x 3
# maps, 300 frames) on seeds 3200-3220, for a candidate designed after the first set's figures;
# hashes checked against data/validation2.sha256.
VALIDATION2_OUT ?= out/validation2
validation2-data: $(DATA_VENV)/.ok
	$(DATA_VENV)/bin/python scripts/dataset/make_dataset.py --set validation2 --out $(VALIDATION2_OUT) --frames 300 --check data/validation2.sha256
