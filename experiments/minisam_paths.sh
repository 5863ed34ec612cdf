# Paths and the evaluation step shared by the MiniSAM experiment scripts; sourced after they cd to the
# repository root.
DATA=../shared/data
SLICES=${MINISAM_UNLABELLED_DIR:-$HOME/.cache/napari-qlora-minisam/unlabelled_slices}
VAL_SPLITS=src/minisam_train/conf/splits_val.json
EVAL=(minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" device=cpu plots=false)

# validate ROOT MODELS: box and one click on the labelled objects outside `test` (adapt_train + val of
# VAL_SPLITS), each split once into ROOT/<split>_eval, then the pooled table the choice is made on.
validate() {
  local key
  for key in adapt_train val; do
    if [ ! -f "$1/${key}_eval/per_object.csv" ]; then
      "${EVAL[@]}" data.split_file=$VAL_SPLITS data.split_key=$key "models=[$2]" \
        "prompts=[box,point1]" output_dir="$1/${key}_eval"
    fi
  done
  python experiments/ship_minisam.py "$1" --validation-only
}

# require_w10: W10 = the s3_w10 student's folder (env W10, default runs/minisam_window/s3_w10/160-s3), or exit
# naming the run that makes it.
require_w10() {
  W10=$(realpath -m "${W10:-runs/minisam_window/s3_w10/160-s3}")
  if [ ! -f "$W10/encoder.safetensors" ]; then
    echo "no s3_w10 student at $W10: run 'bash experiments/run_minisam_window.sh' first, or set W10=" >&2
    exit 2
  fi
}

# test_once ROOT NAME FOLDER: ship_minisam's budget rule for candidate NAME (refuses if it fails), then the one
# test run of the teacher and NAME (the model in FOLDER) into ROOT/test_eval.
test_once() {
  python experiments/ship_minisam.py "$1" --candidate "$2" --within-budget 0.6 --min-ratio 0.97 --check-only
  "${EVAL[@]}" data.split_file=$DATA/splits.json data.split_key=test \
    "models=[{source: litemedsam, name: teacher_litemedsam}, {source: $3, name: $2}]" \
    "prompts=[box,point1]" output_dir="$1/test_eval"
  cat "$1/test_eval/summary.md"
}
