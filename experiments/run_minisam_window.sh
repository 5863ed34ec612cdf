#!/usr/bin/env bash
# MiniSAM with stage 3 attending in 10² windows instead of TinyViT's 14² (docs/minisam.md, "Smaller attention
# windows"): the 40² token grid then splits into 16 windows with no padding, and each block's attention costs
# and caches less. Two candidates, chosen on validation against the student they grew from:
#   w10_mask: the half-stage teacher-initialised student (experiments/run_minisam_teacher_init.sh) rewindowed and
#             trained 300 more steps (lr 5e-5): embedding MSE + 0.05 x mask KL on boxes round objects the teacher
#             segments consistently (teacher_objects in experiments/minisam_teacher_init.py; no labels read);
#   s3_w10:   the whole third stage (six blocks, which fit 10 GMACs only with the smaller windows), from the
#             teacher, 400 steps of embedding MSE (stage 1's recipe otherwise).
#   fit + val: the teacher, the starting student and both candidates, box and one click, on the 32 labelled
#     objects outside `test` (adapt_train + val of conf/splits_val.json), the set the choice is made on;
#   test (only with TEST=1): once, the best on validation, if it is a new one; then experiments/ship_minisam.py
#     ships it.
# Usage: bash experiments/run_minisam_window.sh [ROOT=runs/minisam_window]; env: SKIP_TRAIN=1, TEST=1,
#   HALF=the half-stage student's folder (default runs/minisam_teacher_init/students/160-s3-half)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(realpath -m "${1:-runs/minisam_window}")
source experiments/minisam_paths.sh
# The half-stage student this stage starts from (stage 1), copied once into ROOT.
HALF=$(realpath -m "${HALF:-runs/minisam_teacher_init/students/160-s3-half}")
START="$ROOT/students/160-s3-half"
mkdir -p "$ROOT"
if [ ! -f "$START/encoder.safetensors" ]; then
  if [ ! -f "$HALF/encoder.safetensors" ]; then
    echo "no half-stage student at $HALF: run 'bash experiments/run_minisam_teacher_init.sh' first, or set HALF=" >&2
    exit 2
  fi
  mkdir -p "$START" && cp "$HALF"/{config.json,encoder.safetensors} "$START"
fi
TRAIN=(python experiments/minisam_teacher_init.py --window 10 --no-write)
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  "${TRAIN[@]}" --variants 160-s3-half --init "$START" --steps 300 --lr 5e-5 --mask-weight 0.05 \
    --mask-prompts objects --boxes-per-image 3 --save "$ROOT/w10_mask"
  "${TRAIN[@]}" --variants 160-s3 --steps 400 --save "$ROOT/s3_w10"
fi
MODELS="{source: litemedsam, name: teacher_litemedsam}, {source: $START, name: teacher_init_160_s3_half}"
MODELS="$MODELS, {source: $ROOT/w10_mask/160-s3-half, name: w10_mask_objects}"
MODELS="$MODELS, {source: $ROOT/s3_w10/160-s3, name: s3_w10}"
validate "$ROOT" "$MODELS"
if [ "${TEST:-0}" = 1 ]; then
  read -r BEST FOLDER < <(python experiments/ship_minisam.py "$ROOT" --print-best)
  if [ "$BEST" = teacher_init_160_s3_half ]; then
    echo "the starting student is still the best on validation: nothing to test or ship"; exit 0
  fi
  "${EVAL[@]}" data.split_file=$DATA/splits.json data.split_key=test \
    "models=[{source: litemedsam, name: teacher_litemedsam}, {source: $FOLDER, name: $BEST}]" \
    "prompts=[box,point1]" output_dir="$ROOT/test_eval"
  python experiments/ship_minisam.py "$ROOT" --candidate "$BEST"
fi
