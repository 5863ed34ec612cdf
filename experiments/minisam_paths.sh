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
