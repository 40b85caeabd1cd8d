# Drive roles of the bundled default detector, in one place (sourced by train_default.sh,
# model_card.sh, sample_figures.sh, compress_default.sh and score_study.py). Set S (the committed sample,
# data/sample) before sourcing; `split ROLE DIR` lists the bags of a generated set's drives whose
# meta.json records that split (make train-data: train, train_val, calibration; make
# heldout-data: heldout); `onsets DIR` lists a set's OOD drives as BAG:FIRST_OOD_FRAME (make
# validation-data), the form `vae-ood calibrate --val-ood` takes; `calibration_args` (below)
# puts the roles together.
TUNE_ID=("$S/id_small_loop_s2/bag" "$S/id_udem1_s3/bag")          # clear sample drives (score_study negatives)
VAL_OOD=("$S/ood_fog_loop_empty_s7/bag:150")                       # window, decay (fog from frame 150), with onsets of make validation-data
TEST=("$S/id_loop_empty_s4/bag" "$S/ood_brightness_small_loop_s5/bag=brightness"
      "$S/ood_rain_udem1_s6/bag=rain" "$S/ood_noise_small_loop_s8/bag=noise")   # model-card figures
split() { for m in "$2"/*/meta.json; do grep -q "\"split\": \"$1\"" "$m" && echo "$(dirname "$m")/bag"; done; }
onsets() {
  python3 -c 'import json, pathlib, sys
for m in sorted(pathlib.Path(sys.argv[1]).glob("*/meta.json")):
    ood = json.loads(m.read_text())["ood_frames"]
    if ood:
        print(f"{m.parent}/bag:{ood[0]}")' "$1"
}
# The default detector's `vae-ood calibrate` roles on generated sets (also passed to `vae-ood
# compress`): `calibration_args TRAIN_DIR VALIDATION_DIR HELDOUT_DIR TUNING_DIR TUNING2_DIR`
# (make train-data, validation-data, heldout-data, tuning-data, tuning2-data): the score's
# reference is fitted on 100 clear drives (the training drives, heldout-data and tuning-data;
# session 15, docs/detector-experiments.md "A reference fitted on more clear drives"), the
# calibration drives give the conformal scores, the 78 clear drives of tuning2-data are the
# tuning drives (the alarm threshold is a quantile of their largest S, one value per drive: 78
# drives of 600 frames certify 1e-4 false alarms per frame with the 4th largest), and the
# validation OOD drives of every generated type choose window and decay.
# `recalibration_args` gives the same roles without --fit (the bundle keeps its reference).
# SKIP_TYPE=fog (say) leaves that OOD type's validation drives out: leave-one-type-out.
calibration_args() {
  echo --fit $(split train "$1") $(split heldout "$3") $(split tuning "$4") $(recalibration_args "$@")
}
recalibration_args() {
  echo --cal $(split calibration "$1") $(split train_val "$1") --tune-id $(split tuning "$5") \
    --val-ood $( { printf '%s\n' "${VAL_OOD[@]}"; onsets "$2"; } | grep -v "ood_${SKIP_TYPE:-none}_")
}
# The default detector's thresholds from session 22 to 46 (docs/detector-experiments.md, "The
# relative branch tuned on six maps"; since session 47 it is calibrated as its student is, without
# them): the drive-relative branch's baseline DEFAULT_RELATIVE (W,G,H), and
# `default_threshold_args TUNING3_DIR` (make tuning3-data): half the rate, with that set's clear
# drives among the tuning drives beside recalibration_args' (make tuning2-data). scripts/loto.sh
# and the studies of those sessions use them.
DEFAULT_RELATIVE=60,120,360
default_threshold_args() { echo --false-alarm-rate 5e-5 --tune-id $(split tuning "$1"); }
# A generated set (make testset-data, make validation-data) as `vae-ood eval --input` arguments:
# OOD drives as BAG=TYPE, clear drives as BAG (every frame labelled by /ood_label). The test set
# this way gives the model cards' figures; the validation set is what `vae-ood compress --select`
# checks its AUROC budget on.
eval_inputs() {
  python3 -c 'import json, pathlib, sys
for m in sorted(pathlib.Path(sys.argv[1]).glob("*/meta.json")):
    c = json.loads(m.read_text())["condition"]
    print(f"{m.parent}/bag" + ("" if c == "clear" else f"={c}"))' "$1"
}
