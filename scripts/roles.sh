# Drive roles of the bundled default detector, in one place (sourced by train_default.sh,
# model_card.sh, sample_figures.sh, compress_default.sh and score_study.py). Set S (the committed sample,
# data/sample) before sourcing; `split ROLE DIR` lists the bags of a generated set's drives whose
# meta.json records that split (make train-data: train, train_val, calibration).
TUNE_ID=("$S/id_small_loop_s2/bag" "$S/id_udem1_s3/bag")          # CUSUM threshold (clear drives)
VAL_OOD=("$S/ood_fog_loop_empty_s7/bag:150")                       # k, window, decay (fog from frame 150)
TEST=("$S/id_loop_empty_s4/bag" "$S/ood_brightness_small_loop_s5/bag=brightness"
      "$S/ood_rain_udem1_s6/bag=rain" "$S/ood_noise_small_loop_s8/bag=noise")   # model-card figures
split() { for m in "$2"/*/meta.json; do grep -q "\"split\": \"$1\"" "$m" && echo "$(dirname "$m")/bag"; done; }
