#!/usr/bin/env bash
# The shipped MiniSAM (docs/minisam.md): LiteMedSAM's TinyViT at 160² input, its last stage dropped and three of
# stage 3's six blocks kept (`160-s3-half`), fine-tuned on the teacher's embeddings; then the choice and test.
#   train: experiments/minisam_teacher_init.py, 600 steps, the encoder written in the shipped format
#   fit + val: teacher, the from-scratch student (OLD=<folder>, optional) and this one, box (+ one click on val),
#     on the 28 adapt_train objects (images seen without labels) and the 4 val objects of conf/splits_val.json:
#     together the 32 labelled objects outside `test`, the set the choice is made on
#   test (only with TEST=1): the teacher and this student (and OLD, already scored on test before), once, after the
#     choice; then experiments/ship_minisam.py ships the student and experiments/minisam_report.py writes the docs
# Usage: bash experiments/run_minisam_teacher_init.sh [ROOT=runs/minisam_teacher_init]
#        env: STEPS=600; SKIP_TRAIN=1 (only the evaluations); OLD=path/to/scratch_student; TEST=1
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(realpath -m "${1:-runs/minisam_teacher_init}")
source experiments/minisam_paths.sh
STUDENT="$ROOT/students/160-s3-half"
MODELS="{source: litemedsam, name: teacher_litemedsam}, {source: $STUDENT, name: teacher_init_160_s3_half}"
if [ -n "${OLD:-}" ]; then MODELS="$MODELS, {source: $(realpath "$OLD"), name: scratch_AB_average}"; fi

if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  python experiments/minisam_teacher_init.py --variants 160-s3-half --steps "${STEPS:-600}" \
    --save "$ROOT/students" --no-write
fi
for key in adapt_train val; do
  if [ ! -f "$ROOT/${key}_eval/per_object.csv" ]; then
    "${EVAL[@]}" data.split_file=$VAL_SPLITS data.split_key=$key "models=[$MODELS]" \
      "prompts=[box,point1]" output_dir="$ROOT/${key}_eval"
  fi
done
if [ "${TEST:-0}" = 1 ]; then
  "${EVAL[@]}" data.split_file=$DATA/splits.json data.split_key=test "models=[$MODELS]" \
    "prompts=[box,point1]" output_dir="$ROOT/test_eval"
  python experiments/ship_minisam.py "$ROOT"
  python experiments/minisam_report.py "$ROOT" --teacher-init ${OLD:+--old "$OLD"}
fi
